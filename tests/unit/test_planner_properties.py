"""Property-based tests of the pure core: arbitrary input never raises anything but the documented errors,
and for valid profiles and workloads the plan is deterministic, idempotent and meets the timing formula."""

from __future__ import annotations

import contextlib
import copy
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from podgrace.core import apply_body, overrides, planner, profiles, workload_parser
from podgrace.core.capabilities import Capabilities
from podgrace.core.constants import (
    ANN_CONTAINERS,
    ANN_DRAIN,
    ANN_EXISTING_PRESTOP,
    ANN_GRACE,
    ANN_MODE,
    ANN_PRESTOP_SLEEP,
    ANN_PROFILE,
    HOOK_MARKER,
    KNOWN_ANNOTATIONS,
    KUBERNETES_DEFAULT_GRACE,
    MAX_DRAIN_SECONDS,
    MAX_GRACE_SECONDS,
    MAX_SLEEP_SECONDS,
)
from podgrace.core.findings import Code
from podgrace.core.models import GRACEFUL_SIGNAL, ContainerView, Role, ShutdownProfile, Signal, Workload
from podgrace.core.planner import Outcome

PROPERTIES = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
BUILTIN = profiles.builtin()
CAPS = [
    Capabilities(native_sleep=False, stop_signal=False),
    Capabilities(native_sleep=True, stop_signal=False),
    Capabilities(native_sleep=True, stop_signal=True),
]

# --- arbitrary annotations ----------------------------------------------------------------------------------

TRICKY = [
    "",
    " ",
    "\t\n",
    "0",
    "-1",
    "5s",
    "1e3",
    "0x10",
    "1_000",
    "+5",
    "5.0",
    "9" * 7,
    "9" * 40,
    str(2**64),
    "\u0663",  # Arabic-Indic three
    "\uff15",  # fullwidth five
    "five",
    "nginx",
    "NGINX",
    "audit",
    "replace",
    "nginx,php-fpm",
    ",",
    "nginx-php-fpm",
    "a" * 300,
    "\x00",
    "\u200b5",  # zero-width space
    "5\n",
]
values = st.one_of(
    st.sampled_from(TRICKY),
    st.text(),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.integers(min_value=0, max_value=5000).map(lambda n: f" {n} "),
    st.lists(st.sampled_from(["nginx", "php-fpm", "redis", "Nginx", "", " ", "a_b"]), max_size=4).map(
        ",".join
    ),
)
keys = st.one_of(
    st.sampled_from(sorted(KNOWN_ANNOTATIONS)),
    st.sampled_from(
        ["podgrace.dev/", "podgrace.dev/sleep", "podgrace.dev/Profile", "app.kubernetes.io/name"]
    ),
    st.text(max_size=30),
)
annotations = st.dictionaries(keys, values, max_size=8)


@PROPERTIES
@given(annotations)
def test_overrides_parse_never_raises(raw: dict[str, str]) -> None:
    parsed = overrides.parse(raw)
    assert parsed == overrides.parse(raw)
    for error in parsed.errors:
        assert any(error.startswith(f"{key}: ") for key in raw)
    if parsed.pre_stop_sleep_seconds is not None:
        assert 0 <= parsed.pre_stop_sleep_seconds <= MAX_SLEEP_SECONDS
    if parsed.drain_seconds is not None:
        assert 0 <= parsed.drain_seconds <= MAX_DRAIN_SECONDS
    if parsed.termination_grace_period_seconds is not None:
        assert 1 <= parsed.termination_grace_period_seconds <= MAX_GRACE_SECONDS
    if parsed.containers is not None and not parsed.errors:
        assert parsed.containers


SHOP = (
    ContainerView(name="nginx", image="nginx:1.27"),
    ContainerView(name="php-fpm", image="php:8.3-fpm"),
    ContainerView(name="redis", image="redis:7"),
)


@PROPERTIES
@given(annotations, st.sampled_from([None, *sorted(BUILTIN), "nope"]), st.sampled_from(CAPS))
def test_plan_never_raises_for_any_annotations(
    raw: dict[str, str], profile: str | None, caps: Capabilities
) -> None:
    ann = dict(raw)
    if profile is not None:
        ann.setdefault(ANN_PROFILE, profile)
    parsed = overrides.parse(ann)
    w = Workload(name="shop", overrides=parsed, containers=SHOP)
    result = planner.plan(w, BUILTIN, caps)
    assert result == planner.plan(w, BUILTIN, caps)  # deterministic
    body = apply_body.apply_body("default", "shop", result)
    if parsed.profile is None:
        assert result.outcome is Outcome.NOT_OPTED_IN  # leftovers never block a revert
    elif parsed.errors:
        assert result.outcome is Outcome.INVALID
    if result.outcome is Outcome.INVALID:
        assert result.errors and all(e.is_error for e in result.errors)
        assert not result.owns_anything
        assert "spec" not in body
        assert result.findings_before == result.findings_after == ()
    elif result.outcome is not Outcome.MANAGED:
        assert "spec" not in body
    assert all(f.is_risk for f in (*result.findings_before, *result.findings_after))


# --- arbitrary profile documents ----------------------------------------------------------------------------

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=20)),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
VALID_DOC = {
    "apiVersion": "podgrace.dev/v1alpha1",
    "kind": "ShutdownProfile",
    "metadata": {"name": "mine"},
    "spec": {
        "existingPreStop": "keep",
        "gracePeriodMarginSeconds": 5,
        "containers": [
            {
                "name": "nginx",
                "match": {"containerNames": ["nginx"], "images": ["*nginx*"]},
                "role": "nginx",
                "preStopSleepSeconds": 5,
                "drainSeconds": 30,
                "stopSignal": "SIGQUIT",
            },
            {
                "name": "php",
                "match": {"images": ["*php*fpm*"]},
                "role": "php-fpm",
                "stopAfter": ["nginx"],
            },
        ],
    },
}
PATHS = [
    ("apiVersion",),
    ("kind",),
    ("metadata",),
    ("metadata", "name"),
    ("spec",),
    ("spec", "existingPreStop"),
    ("spec", "gracePeriodMarginSeconds"),
    ("spec", "containers"),
    ("spec", "containers", 0),
    ("spec", "containers", 0, "name"),
    ("spec", "containers", 0, "match"),
    ("spec", "containers", 0, "match", "images"),
    ("spec", "containers", 0, "role"),
    ("spec", "containers", 0, "stopSignal"),
    ("spec", "containers", 0, "preStopSleepSeconds"),
    ("spec", "containers", 1, "stopAfter"),
    ("spec", "containers", 1, "drainSeconds"),
    ("spec", "containers", 1, "match", "containerNames"),
]


@st.composite
def mutated_profiles(draw: st.DrawFn) -> dict[str, Any]:
    doc = copy.deepcopy(VALID_DOC)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        path = draw(st.sampled_from(PATHS))
        target: Any = doc
        try:
            for step in path[:-1]:
                target = target[step]
            target[path[-1]] = draw(
                st.one_of(
                    json_values, st.sampled_from(["SIGTERM", "nginx", "generic", "", -1, 3601, ["php"]])
                )
            )
        except (KeyError, IndexError, TypeError):
            pass
    return doc


@PROPERTIES
@given(st.one_of(mutated_profiles(), st.dictionaries(st.text(max_size=12), json_values, max_size=5)))
def test_profiles_parse_raises_only_profile_error(doc: dict[str, Any]) -> None:
    try:
        profile = profiles.parse(doc)
    except profiles.ProfileError as error:
        assert str(error).startswith("ShutdownProfile ")
        return
    # whatever loads is coherent
    names = [r.name for r in profile.spec.containers]
    assert len(set(names)) == len(names)
    for rule in profile.spec.containers:
        assert set(rule.stop_after) <= set(names) - {rule.name}
        graceful = GRACEFUL_SIGNAL[rule.role]
        assert graceful is None or rule.effective_signal is graceful


@PROPERTIES
@given(st.lists(mutated_profiles(), max_size=3))
def test_from_documents_raises_only_profile_error(docs: list[dict[str, Any]]) -> None:
    with contextlib.suppress(profiles.ProfileError):
        profiles.from_documents(docs)


# --- valid profiles and workloads ---------------------------------------------------------------------------

seconds = st.integers(min_value=0, max_value=120)


@st.composite
def valid_profiles(draw: st.DrawFn) -> dict[str, Any]:
    count = draw(st.integers(min_value=1, max_value=4))
    rules = []
    for i in range(count):
        role = draw(st.sampled_from(list(Role)))
        graceful = GRACEFUL_SIGNAL[role]
        signal = draw(st.sampled_from([None, graceful] if graceful else [None, *Signal]))
        rule: dict[str, Any] = {
            "name": f"r{i}",
            "match": {"containerNames": [f"c{i}", f"d{i}"]},
            "role": role.value,
            "preStopSleepSeconds": draw(seconds),
            "drainSeconds": draw(seconds),
            "stopAfter": draw(st.lists(st.sampled_from([f"r{j}" for j in range(i)]), unique=True))
            if i
            else [],
        }
        if signal is not None:
            rule["stopSignal"] = signal.value
        rules.append(rule)
    return {
        "apiVersion": "podgrace.dev/v1alpha1",
        "kind": "ShutdownProfile",
        "metadata": {"name": "gen"},
        "spec": {
            "existingPreStop": draw(st.sampled_from(["keep", "replace"])),
            "gracePeriodMarginSeconds": draw(st.integers(min_value=0, max_value=60)),
            "containers": rules,
        },
    }


HOOKS = st.sampled_from(
    [
        None,
        {"sleep": {"seconds": 3}},
        {"exec": {"command": ["/usr/sbin/nginx", "-s", "quit"]}},
        {"exec": {"command": ["/bin/sh", "-c", "sleep 10"]}},
        {"exec": {"command": ["/bin/sh", "-c", f"{HOOK_MARKER}\nsleep 2"]}},
        {"httpGet": {"path": "/drain", "port": 8080}},
    ]
)


@st.composite
def manifests(draw: st.DrawFn, rule_count: int) -> dict[str, Any]:
    pool = [f"c{i}" for i in range(rule_count)] + [f"d{i}" for i in range(rule_count)] + ["sidecar"]
    names = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=5, unique=True))
    containers = []
    for name in names:
        container: dict[str, Any] = {"name": name, "image": "example/app:1"}
        lifecycle: dict[str, Any] = {}
        hook = draw(HOOKS)
        if hook is not None:
            lifecycle["preStop"] = hook
        signal = draw(st.sampled_from([None, None, "SIGTERM", "SIGQUIT"]))
        if signal is not None:
            lifecycle["stopSignal"] = signal
        if lifecycle:
            container["lifecycle"] = lifecycle
        containers.append(container)
    ann: dict[str, str] = {ANN_PROFILE: "gen"}
    if draw(st.booleans()):
        ann[ANN_PRESTOP_SLEEP] = str(draw(seconds))
    if draw(st.booleans()):
        ann[ANN_DRAIN] = str(draw(seconds))
    if draw(st.integers(min_value=0, max_value=4)) == 0:
        ann[ANN_GRACE] = str(draw(st.integers(min_value=1, max_value=400)))
    if draw(st.integers(min_value=0, max_value=4)) == 0:
        ann[ANN_CONTAINERS] = ",".join(draw(st.lists(st.sampled_from(names), min_size=1, unique=True)))
    if draw(st.integers(min_value=0, max_value=3)) == 0:
        ann[ANN_EXISTING_PRESTOP] = draw(st.sampled_from(["keep", "replace"]))
    pod_spec: dict[str, Any] = {"containers": containers}
    if draw(st.integers(min_value=0, max_value=3)) == 0:
        pod_spec["terminationGracePeriodSeconds"] = draw(st.integers(min_value=1, max_value=300))
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "gen", "namespace": "ns", "annotations": ann},
        "spec": {"template": {"spec": pod_spec}},
    }


@st.composite
def cases(draw: st.DrawFn) -> tuple[ShutdownProfile, dict[str, Any], Capabilities]:
    profile = profiles.parse(draw(valid_profiles()))
    return profile, draw(manifests(len(profile.spec.containers))), draw(st.sampled_from(CAPS))


def _render(manifest: dict[str, Any], known: dict[str, ShutdownProfile], caps: Capabilities) -> Any:
    result = planner.plan(workload_parser.from_object(manifest, with_ownership=False), known, caps)
    return result, apply_body.merge_into_manifest(manifest, result)


def _replaces_a_non_exec_hook(manifest: dict[str, Any], result: planner.Plan, caps: Capabilities) -> bool:
    """The known bug (test_planner.py::test_render_replace_of_a_native_sleep_is_idempotent): replacing a
    user's sleep/httpGet hook writes an exec form that the next render turns into a native sleep."""
    if not (result.force and caps.native_sleep):
        return False
    hooks_by_name = {
        c["name"]: (c.get("lifecycle") or {}).get("preStop")
        for c in manifest["spec"]["template"]["spec"]["containers"]
    }
    return any(hooks_by_name.get(s.name) and "exec" not in hooks_by_name[s.name] for s in result.containers)


@PROPERTIES
@given(cases())
def test_valid_inputs_plan_render_and_rerender(
    case: tuple[ShutdownProfile, dict[str, Any], Capabilities],
) -> None:
    profile, manifest, caps = case
    known = {"gen": profile}
    first, rendered = _render(manifest, known, caps)
    assert first.outcome is Outcome.MANAGED
    assert first == planner.plan(workload_parser.from_object(manifest, with_ownership=False), known, caps)
    assume(not _replaces_a_non_exec_hook(manifest, first, caps))

    # idempotence: plan the planned manifest, merge again: nothing changes
    second, rerendered = _render(rendered, known, caps)
    assert rerendered == rendered
    assert second.force is False or first.force is True

    by_name = {s.name: s for s in first.containers}
    # a grace period kept or pinned too short: every delay is capped at grace - 2 (issue 12, a valid spec)
    shortened = any(d.code is Code.GRACE_PINNED and "is stopped after" in d.message for d in first.decisions)
    if shortened:
        kept_grace = first.termination_grace_period_seconds or manifest["spec"]["template"]["spec"].get(
            "terminationGracePeriodSeconds"
        )
        assert kept_grace is not None
        assert all(s.signal_delay_seconds <= max(kept_grace - 2, 0) for s in first.containers)
    # the timing formula
    for s in first.containers if not shortened else ():
        rule = profile.spec.rule(s.rule)
        if s.role is Role.PHP_FPM:
            propagation = (
                int(manifest["metadata"]["annotations"][ANN_PRESTOP_SLEEP])
                if ANN_PRESTOP_SLEEP in manifest["metadata"]["annotations"]
                else rule.pre_stop_sleep_seconds
            )
            assert s.signal_delay_seconds >= propagation + s.drain_seconds
        for upstream in by_name.values():
            if upstream.rule in rule.stop_after:
                assert s.signal_delay_seconds >= upstream.signal_delay_seconds + upstream.drain_seconds
    if first.containers:
        required = max(s.signal_delay_seconds + s.drain_seconds for s in first.containers)
        # a kept user hook that waits longer than podgrace would counts too
        kept = [d for d in first.decisions if d.code is Code.USER_HOOK_KEPT]
        assert first.required_grace_seconds >= required
        if not kept and not shortened:
            assert first.required_grace_seconds == required
        required = first.required_grace_seconds
        grace = first.termination_grace_period_seconds
        if grace is not None and ANN_GRACE not in manifest["metadata"]["annotations"]:
            assert grace >= required
            assert grace >= KUBERNETES_DEFAULT_GRACE
            assert grace == max(required + profile.spec.grace_period_margin_seconds, KUBERNETES_DEFAULT_GRACE)

    # what podgrace owns
    pod_spec = apply_body.pod_spec_fields(first)
    owned = {c["name"] for c in pod_spec.get("containers", [])}
    assert owned <= set(by_name)
    if any("stopSignal" in c["lifecycle"] for c in pod_spec.get("containers", [])):
        assert caps.stop_signal and pod_spec["os"] == {"name": "linux"}

    # with nothing left as the user had it, podgrace's result is not at risk
    if not first.decisions and all(s.pre_stop is not None for s in first.containers):
        assert first.findings_after == ()
    for decision in first.decisions:
        if decision.code is Code.USER_HOOK_KEPT:
            assert by_name[decision.container or ""].pre_stop is None
            # force only comes from a replace policy (another container's hook may have been taken over)
            assert (
                not first.force
                or ANN_EXISTING_PRESTOP in manifest["metadata"]["annotations"]
                or profile.spec.existing_pre_stop.value == "replace"
            )


@PROPERTIES
@given(cases(), st.sampled_from(["audit", "enforce"]))
def test_audit_mode_owns_nothing(
    case: tuple[ShutdownProfile, dict[str, Any], Capabilities], mode: str
) -> None:
    profile, manifest, caps = case
    manifest["metadata"]["annotations"][ANN_MODE] = mode
    result = planner.plan(workload_parser.from_object(manifest, with_ownership=False), {"gen": profile}, caps)
    if mode == "audit":
        assert result.outcome is Outcome.AUDIT
        assert "spec" not in apply_body.apply_body("ns", "gen", result)
        assert apply_body.merge_into_manifest(manifest, result) == manifest
