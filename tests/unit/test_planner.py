"""The planner: every built-in profile x every capability combination, user hooks, pinned settings,
the grace period formula and idempotence of `render`.

Expected hooks are written out literally here (not rendered with podgrace.core.hook_intent) so that any change
to what podgrace writes into users' Deployments shows up as a test failure.
"""

from __future__ import annotations

from typing import Any

import pytest
from tests.support.podgrace_env import generic_profile
from tests.unit.hook_texts import signal_wait

from podgrace.core import apply_body, assess, planner, timing, workload_parser
from podgrace.core.capabilities import STOP_SIGNALS_GATE, Capabilities, from_description
from podgrace.core.constants import ANN_DRAIN, ANN_EXISTING_PRESTOP, ANN_PRESTOP_SLEEP, HOOK_MARKER
from podgrace.core.findings import RISKS, Code
from podgrace.core.hook_intent import SignalAndWait
from podgrace.core.models import Ownership, Role, ShutdownProfile
from podgrace.core.planner import Outcome
from podgrace.core.profiles import parse as parse_profile

# --- capabilities of the target API server ----------------------------------------------------------------

CAPS: dict[str, Capabilities] = {
    "1.29": from_description((1, 29), {}),  # exec sleep, no stopSignal
    "1.34": from_description((1, 34), {}),  # native sleep, gate off (the Kubernetes default)
    "1.34+gate": from_description((1, 34), {STOP_SIGNALS_GATE: True}),
    "1.35+gate": from_description((1, 35), {STOP_SIGNALS_GATE: True}),
}


def test_capability_matrix_is_what_the_tables_assume() -> None:
    assert CAPS["1.29"] == Capabilities(native_sleep=False, stop_signal=False)
    assert CAPS["1.34"] == Capabilities(native_sleep=True, stop_signal=False)
    assert CAPS["1.34+gate"] == Capabilities(native_sleep=True, stop_signal=True)
    assert CAPS["1.35+gate"] == Capabilities(native_sleep=True, stop_signal=True)


# --- the hooks podgrace writes, spelled out ---------------------------------------------------------------


def exec_sleep(seconds: int) -> dict[str, Any]:
    return {"exec": {"command": ["/bin/sh", "-c", f"{HOOK_MARKER}\nsleep {seconds}"]}}


def native(seconds: int) -> dict[str, Any]:
    return {"sleep": {"seconds": seconds}}


# --- representative pods per built-in profile ---------------------------------------------------------------

SIDECAR = {"name": "log-shipper", "image": "fluent/fluent-bit:3.0"}  # matches no rule except web's "*"

PODS: dict[str, list[dict[str, Any]]] = {
    "nginx": [{"name": "nginx", "image": "nginx:1.27"}, SIDECAR],
    "php-fpm": [{"name": "app", "image": "php:8.3-fpm"}, SIDECAR],
    "nginx-php-fpm": [{"name": "nginx", "image": "nginx:1.27"}, {"name": "php-fpm", "image": "php:8.3-fpm"}],
    "apache": [{"name": "web", "image": "httpd:2.4"}, SIDECAR],
    "web": [{"name": "app", "image": "ghcr.io/acme/shop:1.4.2"}],
}

# One row per built-in profile x capability combination:
#   containers: {container: (preStop podgrace owns, lifecycle.stopSignal podgrace owns)}
#   os: spec.os.name podgrace owns; grace: terminationGracePeriodSeconds; required: grace without margin
MATRIX = [
    # nginx: SIGQUIT; 5s propagation, 30s drain -> grace 5 + 30 + 5
    ("nginx", "1.29", {"nginx": (signal_wait(5, "QUIT", 33, "nginx"), None)}, None, 40, 35),
    ("nginx", "1.34", {"nginx": (signal_wait(5, "QUIT", 33, "nginx"), None)}, None, 40, 35),
    ("nginx", "1.34+gate", {"nginx": (native(5), "SIGQUIT")}, "linux", 40, 35),
    ("nginx", "1.35+gate", {"nginx": (native(5), "SIGQUIT")}, "linux", 40, 35),
    # php-fpm alone: signalled only after its propagation + its longest request (5 + 30)
    ("php-fpm", "1.29", {"app": (signal_wait(35, "QUIT", 33, "php-fpm*"), None)}, None, 70, 65),
    ("php-fpm", "1.34", {"app": (signal_wait(35, "QUIT", 33, "php-fpm*"), None)}, None, 70, 65),
    ("php-fpm", "1.34+gate", {"app": (native(35), "SIGQUIT")}, "linux", 70, 65),
    ("php-fpm", "1.35+gate", {"app": (native(35), "SIGQUIT")}, "linux", 70, 65),
    # nginx in front of php-fpm: php-fpm waits nginx's sleep + nginx's drain (5 + 30)
    (
        "nginx-php-fpm",
        "1.29",
        {
            "nginx": (signal_wait(5, "QUIT", 63, "nginx"), None),
            "php-fpm": (signal_wait(35, "QUIT", 33, "php-fpm*"), None),
        },
        None,
        70,
        65,
    ),
    (
        "nginx-php-fpm",
        "1.34",
        {
            "nginx": (signal_wait(5, "QUIT", 63, "nginx"), None),
            "php-fpm": (signal_wait(35, "QUIT", 33, "php-fpm*"), None),
        },
        None,
        70,
        65,
    ),
    (
        "nginx-php-fpm",
        "1.34+gate",
        {"nginx": (native(5), "SIGQUIT"), "php-fpm": (native(35), "SIGQUIT")},
        "linux",
        70,
        65,
    ),
    (
        "nginx-php-fpm",
        "1.35+gate",
        {"nginx": (native(5), "SIGQUIT"), "php-fpm": (native(35), "SIGQUIT")},
        "linux",
        70,
        65,
    ),
    # Apache: SIGWINCH (graceful-stop); the fallback hook restarts the parent gracefully (USR1) instead
    ("apache", "1.29", {"web": (signal_wait(5, "USR1", 33, "apache2|httpd"), None)}, None, 40, 35),
    ("apache", "1.34", {"web": (signal_wait(5, "USR1", 33, "apache2|httpd"), None)}, None, 40, 35),
    ("apache", "1.34+gate", {"web": (native(5), "SIGWINCH")}, "linux", 40, 35),
    ("apache", "1.35+gate", {"web": (native(5), "SIGWINCH")}, "linux", 40, 35),
    # generic web server: a sleep only, never a signal (so never spec.os either)
    ("web", "1.29", {"app": (exec_sleep(5), None)}, None, 40, 35),
    ("web", "1.34", {"app": (native(5), None)}, None, 40, 35),
    ("web", "1.34+gate", {"app": (native(5), None)}, None, 40, 35),
    ("web", "1.35+gate", {"app": (native(5), None)}, None, 40, 35),
]
MATRIX_IDS = [f"{profile}@{caps}" for profile, caps, *_ in MATRIX]
PROFILE_CAPS = [(profile, caps) for profile, caps, *_ in MATRIX]


def _workload_of(deployment: Any, profile: str) -> Any:
    return workload_parser.from_object(deployment(PODS[profile], profile=profile), with_ownership=False)


@pytest.mark.parametrize(
    ("profile", "caps", "expected", "os_name", "grace", "required"), MATRIX, ids=MATRIX_IDS
)
def test_builtin_profile_plan(
    handler: Any,
    builtin_profiles: dict[str, ShutdownProfile],
    deployment: Any,
    profile: str,
    caps: str,
    expected: dict[str, tuple[dict[str, Any], str | None]],
    os_name: str | None,
    grace: int,
    required: int,
) -> None:
    result = planner.plan(_workload_of(deployment, profile), builtin_profiles, CAPS[caps])

    assert result.outcome is Outcome.MANAGED
    assert result.profile == profile
    assert {s.name: (handler(s), s.stop_signal) for s in result.containers} == expected
    assert result.os_name == os_name
    assert result.termination_grace_period_seconds == grace
    assert result.required_grace_seconds == required
    assert result.force is False
    assert result.decisions == ()
    assert result.errors == ()
    assert result.findings_after == ()
    # as written, the manifest has every risk the profile addresses
    before = {f.code for f in result.findings_before}
    assert {Code.NO_PRESTOP, Code.GRACE_TOO_SHORT} <= before
    if profile != "web":
        assert Code.FAST_STOP_SIGNAL in before


@pytest.mark.parametrize(
    ("profile", "caps", "expected", "os_name", "grace", "required"), MATRIX, ids=MATRIX_IDS
)
def test_builtin_profile_apply_body(
    builtin_profiles: dict[str, ShutdownProfile],
    deployment: Any,
    profile: str,
    caps: str,
    expected: dict[str, tuple[dict[str, Any], str | None]],
    os_name: str | None,
    grace: int,
    required: int,
) -> None:
    result = planner.plan(_workload_of(deployment, profile), builtin_profiles, CAPS[caps])
    body = apply_body.apply_body("default", "shop", result)

    assert body["apiVersion"] == "apps/v1"
    assert body["kind"] == "Deployment"
    assert body["metadata"] == {"name": "shop", "namespace": "default"}
    assert set(body["spec"]) == {"template"}
    assert set(body["spec"]["template"]) == {"spec"}
    pod_spec = body["spec"]["template"]["spec"]
    want_containers = []
    for name, (pre_stop, stop_signal) in expected.items():
        lifecycle: dict[str, Any] = {"preStop": pre_stop}
        if stop_signal is not None:
            lifecycle["stopSignal"] = stop_signal
        want_containers.append({"name": name, "lifecycle": lifecycle})
    want: dict[str, Any] = {"terminationGracePeriodSeconds": grace}
    if os_name is not None:
        want["os"] = {"name": os_name}
    want["containers"] = want_containers
    assert pod_spec == want
    # lifecycle.stopSignal and spec.os only ever come together, and only with the ContainerStopSignals gate
    has_signal = any("stopSignal" in c["lifecycle"] for c in pod_spec["containers"])
    assert has_signal == ("os" in pod_spec)
    if not CAPS[caps].stop_signal:
        assert not has_signal


@pytest.mark.parametrize(("profile", "caps"), PROFILE_CAPS, ids=MATRIX_IDS)
def test_render_is_idempotent(
    builtin_profiles: dict[str, ShutdownProfile], deployment: Any, profile: str, caps: str
) -> None:
    manifest = deployment(PODS[profile], profile=profile)
    first = planner.plan(
        workload_parser.from_object(manifest, with_ownership=False), builtin_profiles, CAPS[caps]
    )
    rendered = apply_body.merge_into_manifest(manifest, first)
    assert rendered != manifest

    reread = workload_parser.from_object(rendered, with_ownership=False)
    second = planner.plan(reread, builtin_profiles, CAPS[caps])
    assert apply_body.merge_into_manifest(rendered, second) == rendered
    assert second.decisions == ()
    assert second.findings_before == ()
    assert second.findings_after == ()
    # and an independent assessment of the rendered manifest finds nothing at risk
    expectations = planner.profile_expectations(reread, builtin_profiles[profile].spec, reread.overrides)
    assert [f for f in assess.assess(reread, expectations) if f.is_risk] == []
    # an untouched sidecar keeps its (absent) lifecycle
    for container in rendered["spec"]["template"]["spec"]["containers"]:
        if container["name"] == "log-shipper":
            assert "lifecycle" not in container


@pytest.mark.parametrize(("profile", "caps"), PROFILE_CAPS, ids=MATRIX_IDS)
def test_plan_is_deterministic(
    builtin_profiles: dict[str, ShutdownProfile], deployment: Any, profile: str, caps: str
) -> None:
    w = _workload_of(deployment, profile)
    assert planner.plan(w, builtin_profiles, CAPS[caps]) == planner.plan(w, builtin_profiles, CAPS[caps])


def test_merge_into_manifest_does_not_mutate_its_input(
    builtin_profiles: dict[str, ShutdownProfile], deployment: Any
) -> None:
    manifest = deployment(PODS["nginx-php-fpm"], profile="nginx-php-fpm")
    snapshot = repr(manifest)
    result = planner.plan(
        workload_parser.from_object(manifest, with_ownership=False), builtin_profiles, CAPS["1.34"]
    )
    apply_body.merge_into_manifest(manifest, result)
    assert repr(manifest) == snapshot


# --- the grace period formula -------------------------------------------------------------------------------

CUSTOM_NGINX_PHP = {
    "apiVersion": "podgrace.dev/v1alpha1",
    "kind": "ShutdownProfile",
    "metadata": {"name": "custom"},
    "spec": {
        "gracePeriodMarginSeconds": 5,
        "containers": [
            {
                "name": "front",
                "match": {"containerNames": ["nginx"]},
                "role": "nginx",
                "preStopSleepSeconds": 10,
                "drainSeconds": 60,
            },
            {
                "name": "back",
                "match": {"containerNames": ["php-fpm"]},
                "role": "php-fpm",
                "preStopSleepSeconds": 5,
                "drainSeconds": 10,
                "stopAfter": ["front"],
            },
        ],
    },
}
CHAIN = {
    "apiVersion": "podgrace.dev/v1alpha1",
    "kind": "ShutdownProfile",
    "metadata": {"name": "chain"},
    "spec": {
        "gracePeriodMarginSeconds": 0,
        "containers": [
            {
                "name": "a",
                "match": {"containerNames": ["a"]},
                "role": "generic",
                "preStopSleepSeconds": 3,
                "drainSeconds": 7,
            },
            {
                "name": "b",
                "match": {"containerNames": ["b"]},
                "role": "apache",
                "preStopSleepSeconds": 1,
                "drainSeconds": 20,
                "stopAfter": ["a"],
            },
            {
                "name": "c",
                "match": {"containerNames": ["c"]},
                "role": "php-fpm",
                "preStopSleepSeconds": 2,
                "drainSeconds": 4,
                "stopAfter": ["b"],
            },
        ],
    },
}

# (profile, pod, annotations, signal delays, required, grace)
GRACE_TABLE = [
    pytest.param("nginx", PODS["nginx"], {}, {"nginx": 5}, 35, 40, id="nginx-default"),
    pytest.param("php-fpm", PODS["php-fpm"], {}, {"app": 35}, 65, 70, id="php-fpm-waits-own-drain"),
    pytest.param(
        "nginx-php-fpm", PODS["nginx-php-fpm"], {}, {"nginx": 5, "php-fpm": 35}, 65, 70, id="nginx-php-fpm"
    ),
    pytest.param(
        "nginx-php-fpm",
        PODS["nginx-php-fpm"],
        {ANN_PRESTOP_SLEEP: "10"},
        {"nginx": 10, "php-fpm": 40},
        70,
        75,
        id="nginx-php-fpm-sleep-10",
    ),
    pytest.param(
        "nginx-php-fpm",
        PODS["nginx-php-fpm"],
        {ANN_DRAIN: "60"},
        {"nginx": 5, "php-fpm": 65},
        125,
        130,
        id="nginx-php-fpm-drain-60",
    ),
    pytest.param(
        "nginx-php-fpm",
        PODS["nginx-php-fpm"],
        {ANN_PRESTOP_SLEEP: "0", ANN_DRAIN: "0"},
        {"nginx": 0, "php-fpm": 0},
        0,
        30,
        id="never-below-kubernetes-default",
    ),
    pytest.param("web", PODS["web"], {ANN_DRAIN: "10"}, {"app": 5}, 15, 30, id="web-floor-30"),
    pytest.param("web", PODS["web"], {ANN_DRAIN: "20"}, {"app": 5}, 25, 30, id="web-exactly-30"),
    pytest.param("web", PODS["web"], {ANN_DRAIN: "21"}, {"app": 5}, 26, 31, id="web-just-above-30"),
    pytest.param(
        "apache", PODS["apache"], {ANN_PRESTOP_SLEEP: "15", ANN_DRAIN: "45"}, {"web": 15}, 60, 65, id="apache"
    ),
    pytest.param(
        "custom",
        [{"name": "nginx", "image": "nginx"}, {"name": "php-fpm", "image": "php:fpm"}],
        {},
        {"nginx": 10, "php-fpm": 70},  # upstream (10 + 60) dominates php-fpm's own 5 + 10
        80,
        85,
        id="custom-upstream-dominates",
    ),
    pytest.param(
        "chain",
        [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}, {"name": "c", "image": "z"}],
        {},
        {"a": 3, "b": 10, "c": 30},  # b: max(1, 3 + 7); c: max(2 + 4, 10 + 20)
        34,
        34,  # margin 0, above 30
        id="three-level-chain-margin-0",
    ),
]


@pytest.mark.parametrize(("profile", "pod", "annotations", "delays", "required", "grace"), GRACE_TABLE)
def test_grace_period_formula(
    builtin_profiles: dict[str, ShutdownProfile],
    workload: Any,
    container: Any,
    profile: str,
    pod: list[dict[str, str]],
    annotations: dict[str, str],
    delays: dict[str, int],
    required: int,
    grace: int,
) -> None:
    known = {**builtin_profiles, "custom": parse_profile(CUSTOM_NGINX_PHP), "chain": parse_profile(CHAIN)}
    w = workload(*(container(c["name"], c["image"]) for c in pod), profile=profile, annotations=annotations)
    result = planner.plan(w, known, CAPS["1.34+gate"])
    assert result.outcome is Outcome.MANAGED
    assert {s.name: s.signal_delay_seconds for s in result.containers} == delays
    assert result.required_grace_seconds == required
    assert result.termination_grace_period_seconds == grace
    # the formula itself: required = max(signal delay + drain); grace = max(required + margin, 30)
    assert required == max(s.signal_delay_seconds + s.drain_seconds for s in result.containers)
    margin = known[profile].spec.grace_period_margin_seconds
    assert grace == max(required + margin, timing.KUBERNETES_DEFAULT_GRACE)


def test_timing_functions_directly() -> None:
    e = [
        timing.Expectation("nginx", "nginx", Role.NGINX, 5, 30, None),
        timing.Expectation("php", "php-fpm", Role.PHP_FPM, 5, 30, None, after=("nginx", "not-in-pod")),
    ]
    delays = timing.signal_delays(e)
    assert delays == {"nginx": 5, "php": 35}
    assert timing.required_grace(e, delays) == 65
    assert timing.required_grace([], {}) == 0
    assert timing.grace_with_margin(0, 0) == 30
    assert timing.grace_with_margin(26, 5) == 31


# --- what podgrace leaves as the user had it ---------------------------------------------------------------

NGINX_QUIT = {"exec": {"command": ["/usr/sbin/nginx", "-s", "quit"]}}  # the seed article's hook that fails


@pytest.mark.parametrize("caps", list(CAPS), ids=list(CAPS))
def test_user_hook_kept_file_mode(
    builtin_profiles: dict[str, ShutdownProfile], workload: Any, container: Any, caps: str
) -> None:
    w = workload(container("nginx", "nginx:1.27", pre_stop=NGINX_QUIT), profile="nginx")
    result = planner.plan(w, builtin_profiles, CAPS[caps])

    (settings,) = result.containers
    assert settings.pre_stop is None  # podgrace owns no preStop
    assert result.force is False
    assert [(d.code, d.container) for d in result.decisions] == [(Code.USER_HOOK_KEPT, "nginx")]
    assert "5s" in result.decisions[0].message
    after = {f.code for f in result.findings_after}
    assert Code.KNOWN_BAD_HOOK in after  # the risk is still reported
    if CAPS[caps].stop_signal:
        # lifecycle.stopSignal still makes the kubelet's signal the graceful one
        assert settings.stop_signal == "SIGQUIT"
        assert Code.FAST_STOP_SIGNAL not in after
    else:
        assert settings.stop_signal is None
        assert Code.FAST_STOP_SIGNAL in after
    assert result.termination_grace_period_seconds == 40
    body = apply_body.apply_body("default", "shop", result)
    for c in body["spec"]["template"]["spec"].get("containers", []):
        assert "preStop" not in c["lifecycle"]


@pytest.mark.parametrize("caps", ["1.29", "1.34"])
def test_user_hook_replaced_file_mode(
    handler: Any, builtin_profiles: dict[str, ShutdownProfile], workload: Any, container: Any, caps: str
) -> None:
    w = workload(
        container("nginx", "nginx:1.27", pre_stop=NGINX_QUIT),
        profile="nginx",
        annotations={ANN_EXISTING_PRESTOP: "replace"},
    )
    result = planner.plan(w, builtin_profiles, CAPS[caps])
    (settings,) = result.containers
    assert handler(settings) == signal_wait(5, "QUIT", 33, "nginx")
    assert result.force is True
    assert result.decisions == ()
    assert result.findings_after == ()
    assert {f.code for f in result.findings_before} == {
        Code.KNOWN_BAD_HOOK,
        Code.FAST_STOP_SIGNAL,
        Code.GRACE_TOO_SHORT,
    }


def test_replace_policy_from_the_profile(
    handler: Any, builtin_profiles: dict[str, ShutdownProfile], workload: Any, container: Any
) -> None:
    spec = builtin_profiles["nginx"].model_dump(by_alias=True)
    spec["metadata"]["name"] = "nginx-replace"
    spec["spec"]["existingPreStop"] = "replace"
    known = {**builtin_profiles, "nginx-replace": parse_profile(spec)}
    w = workload(container("nginx", "nginx:1.27", pre_stop=NGINX_QUIT), profile="nginx-replace")
    result = planner.plan(w, known, CAPS["1.34"])
    assert result.force is True
    assert handler(result.containers[0]) == signal_wait(5, "QUIT", 33, "nginx")
    # ... and the annotation wins over the profile
    w_keep = workload(
        container("nginx", "nginx:1.27", pre_stop=NGINX_QUIT),
        profile="nginx-replace",
        annotations={ANN_EXISTING_PRESTOP: "keep"},
    )
    kept = planner.plan(w_keep, known, CAPS["1.34"])
    assert kept.force is False
    assert kept.containers[0].pre_stop is None


CLUSTER_USER_HOOK = Ownership(known=True, foreign_pre_stop=frozenset({"nginx"}))


@pytest.mark.parametrize("caps", list(CAPS), ids=list(CAPS))
def test_user_hook_kept_cluster_mode(
    builtin_profiles: dict[str, ShutdownProfile], workload: Any, container: Any, caps: str
) -> None:
    w = workload(
        container("nginx", "nginx:1.27", pre_stop=NGINX_QUIT), profile="nginx", ownership=CLUSTER_USER_HOOK
    )
    result = planner.plan(w, builtin_profiles, CAPS[caps])
    assert result.containers[0].pre_stop is None
    assert [d.code for d in result.decisions] == [Code.USER_HOOK_KEPT]
    assert Code.KNOWN_BAD_HOOK in {f.code for f in result.findings_after}


def test_user_hook_replaced_cluster_mode_without_gate(
    handler: Any, builtin_profiles: dict[str, ShutdownProfile], workload: Any, container: Any
) -> None:
    w = workload(
        container("nginx", "nginx:1.27", pre_stop=NGINX_QUIT),
        profile="nginx",
        annotations={ANN_EXISTING_PRESTOP: "replace"},
        ownership=CLUSTER_USER_HOOK,
    )
    result = planner.plan(w, builtin_profiles, CAPS["1.34"])
    assert result.force is True
    # an exec form takes over the user's exec.command: the object keeps a single handler
    assert handler(result.containers[0]) == signal_wait(5, "QUIT", 33, "nginx")


def test_replacing_a_users_exec_hook_keeps_one_handler_type(
    handler: Any, builtin_profiles: dict[str, ShutdownProfile], workload: Any, container: Any
) -> None:
    w = workload(
        container("nginx", "nginx:1.27", pre_stop=NGINX_QUIT),
        profile="nginx",
        annotations={ANN_EXISTING_PRESTOP: "replace"},
        ownership=CLUSTER_USER_HOOK,
    )
    result = planner.plan(w, builtin_profiles, CAPS["1.34+gate"])
    assert result.force is True
    # SSA merges preStop field by field: only an `exec` handler can take over the user's exec.command
    assert set(handler(result.containers[0]) or {}) == {"exec"}


def test_replacing_a_users_sleep_hook_keeps_one_handler_type(
    handler: Any, builtin_profiles: dict[str, ShutdownProfile], workload: Any, container: Any
) -> None:
    w = workload(
        container("app", "ghcr.io/acme/shop:1", pre_stop=native(2)),
        profile="web",
        annotations={ANN_EXISTING_PRESTOP: "replace"},
        ownership=Ownership(known=True, foreign_pre_stop=frozenset({"app"})),
    )
    result = planner.plan(w, builtin_profiles, CAPS["1.34"])
    assert result.force is True
    assert handler(result.containers[0]) == native(5)


@pytest.mark.parametrize(
    "hook", [native(2), {"httpGet": {"path": "/drain", "port": 8080}}], ids=["native-sleep", "http-get"]
)
def test_render_replace_of_a_non_exec_hook_is_idempotent(
    builtin_profiles: dict[str, ShutdownProfile], deployment: Any, hook: dict[str, Any]
) -> None:
    manifest = deployment(
        [{"name": "app", "image": "ghcr.io/acme/shop:1", "lifecycle": {"preStop": hook}}],
        profile="web",
        annotations={ANN_EXISTING_PRESTOP: "replace"},
    )
    caps = CAPS["1.34"]
    once = apply_body.merge_into_manifest(
        manifest,
        planner.plan(workload_parser.from_object(manifest, with_ownership=False), builtin_profiles, caps),
    )
    twice = apply_body.merge_into_manifest(
        once, planner.plan(workload_parser.from_object(once, with_ownership=False), builtin_profiles, caps)
    )
    assert twice == once


@pytest.mark.parametrize("caps", ["1.34", "1.34+gate"])
def test_grace_covers_a_kept_users_longer_hook(
    builtin_profiles: dict[str, ShutdownProfile], workload: Any, container: Any, caps: str
) -> None:
    w = workload(
        container("nginx", "nginx:1.27", pre_stop=native(60), stop_signal="SIGQUIT"), profile="nginx"
    )
    result = planner.plan(w, builtin_profiles, CAPS[caps])
    assert [d.code for d in result.decisions] == [Code.USER_HOOK_KEPT]
    grace = result.termination_grace_period_seconds
    assert (grace is not None and grace >= 60 + 30) or Code.GRACE_TOO_SHORT in {
        f.code for f in result.findings_after
    }


def test_user_exec_sleep_without_marker_is_the_users(
    builtin_profiles: dict[str, ShutdownProfile], workload: Any, container: Any
) -> None:
    # identical in effect to podgrace's 1.29 sleep but without HOOK_MARKER: file mode cannot claim it
    hook = {"exec": {"command": ["/bin/sh", "-c", "sleep 5"]}}
    result = planner.plan(
        workload(container("app", "x", pre_stop=hook), profile="web"), builtin_profiles, CAPS["1.29"]
    )
    assert result.containers[0].pre_stop is None
    assert [d.code for d in result.decisions] == [Code.USER_HOOK_KEPT]
    assert result.findings_after == ()  # 5s is enough: kept, and not a risk


@pytest.mark.parametrize("caps", ["1.29", "1.34"])
def test_podgraces_own_exec_hook_is_recognised_by_its_marker(
    handler: Any, builtin_profiles: dict[str, ShutdownProfile], workload: Any, container: Any, caps: str
) -> None:
    # an older render with other timings: carries the marker, so it is podgrace's and gets updated
    old = signal_wait(3, "QUIT", 10, None)
    w = workload(container("nginx", "nginx:1.27", pre_stop=old), profile="nginx")
    result = planner.plan(w, builtin_profiles, CAPS[caps])
    assert handler(result.containers[0]) == signal_wait(5, "QUIT", 33, "nginx")
    assert result.force is False
    assert result.decisions == ()


def test_file_mode_cannot_recognise_its_own_native_sleep(
    builtin_profiles: dict[str, ShutdownProfile], workload: Any, container: Any
) -> None:
    """Documented limitation (models.Ownership): a native sleep carries no marker, so after a change of
    timings a re-render treats podgrace's previous native sleep as the user's hook and keeps it."""
    w = workload(
        container("nginx", "nginx:1.27", pre_stop=native(5), stop_signal="SIGQUIT"),
        profile="nginx",
        annotations={ANN_PRESTOP_SLEEP: "10"},
        grace=40,
    )
    result = planner.plan(w, builtin_profiles, CAPS["1.34+gate"])
    assert result.containers[0].pre_stop is None
    assert [d.code for d in result.decisions] == [Code.USER_HOOK_KEPT]
    assert [f.code for f in result.findings_after] == [Code.SLEEP_TOO_SHORT]


def test_cluster_mode_updates_podgraces_own_native_sleep(
    handler: Any, builtin_profiles: dict[str, ShutdownProfile], workload: Any, container: Any
) -> None:
    ownership = Ownership(
        known=True,
        podgrace_pre_stop=frozenset({"nginx"}),
        podgrace_stop_signal=frozenset({"nginx"}),
    )
    w = workload(
        container("nginx", "nginx:1.27", pre_stop=native(5), stop_signal="SIGQUIT"),
        profile="nginx",
        annotations={ANN_PRESTOP_SLEEP: "10"},
        grace=40,
        os_name="linux",
        ownership=ownership,
    )
    result = planner.plan(w, builtin_profiles, CAPS["1.34+gate"])
    assert handler(result.containers[0]) == native(10)
    assert result.containers[0].stop_signal == "SIGQUIT"
    assert result.termination_grace_period_seconds == 45
    assert result.decisions == ()
    assert result.force is False


def test_cluster_mode_trusts_managed_fields_over_the_marker(
    builtin_profiles: dict[str, ShutdownProfile], workload: Any, container: Any
) -> None:
    # a user copied an old podgrace hook into their own manifest: kubectl owns it, so it is theirs
    w = workload(
        container("nginx", "nginx:1.27", pre_stop=signal_wait(3, "QUIT", 10, None)),
        profile="nginx",
        ownership=CLUSTER_USER_HOOK,
    )
    result = planner.plan(w, builtin_profiles, CAPS["1.34"])
    assert result.containers[0].pre_stop is None
    assert [d.code for d in result.decisions] == [Code.USER_HOOK_KEPT]


@pytest.mark.parametrize(
    "ownership",
    [Ownership(), CLUSTER_USER_HOOK],
    ids=["file-mode", "cluster-mode-foreign"],
)
def test_hook_equal_to_podgraces_is_not_a_conflict(
    handler: Any,
    builtin_profiles: dict[str, ShutdownProfile],
    workload: Any,
    container: Any,
    ownership: Ownership,
) -> None:
    w = workload(container("nginx", "nginx:1.27", pre_stop=native(5)), profile="nginx", ownership=ownership)
    result = planner.plan(w, builtin_profiles, CAPS["1.34+gate"])
    assert handler(result.containers[0]) == native(5)
    assert result.decisions == ()
    assert result.force is False


def test_user_stop_signal_is_kept_and_podgrace_signals_from_its_hook(
    handler: Any, builtin_profiles: dict[str, ShutdownProfile], workload: Any, container: Any
) -> None:
    w = workload(container("nginx", "nginx:1.27", stop_signal="SIGTERM"), profile="nginx")
    result = planner.plan(w, builtin_profiles, CAPS["1.34+gate"])
    (settings,) = result.containers
    assert settings.stop_signal is None
    assert handler(settings) == signal_wait(
        5, "QUIT", 33, "nginx"
    )  # the graceful stop comes from the hook instead
    assert result.os_name is None
    assert [(d.code, d.container) for d in result.decisions] == [(Code.STOP_SIGNAL_KEPT, "nginx")]
    assert result.findings_after == ()


def test_stop_signal_podgrace_owned_is_updated_in_cluster_mode(
    builtin_profiles: dict[str, ShutdownProfile], workload: Any, container: Any
) -> None:
    ownership = Ownership(known=True, podgrace_stop_signal=frozenset({"nginx"}))
    w = workload(container("nginx", "nginx:1.27", stop_signal="SIGINT"), profile="nginx", ownership=ownership)
    result = planner.plan(w, builtin_profiles, CAPS["1.34+gate"])
    assert result.containers[0].stop_signal == "SIGQUIT"
    assert result.decisions == ()


def test_windows_pod_gets_no_stop_signal(
    builtin_profiles: dict[str, ShutdownProfile], workload: Any, container: Any
) -> None:
    w = workload(container("nginx", "nginx:1.27"), profile="nginx", os_name="windows")
    result = planner.plan(w, builtin_profiles, CAPS["1.34+gate"])
    assert result.containers[0].stop_signal is None
    assert result.os_name is None


# --- a grace period pinned by its owner ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ownership", "current"),
    [
        (Ownership(known=True, foreign_grace=True), 120),
        (Ownership(), 120),
    ],
    ids=["cluster-foreign", "file-mode"],
)
def test_longer_grace_of_its_owner_is_untouched(
    builtin_profiles: dict[str, ShutdownProfile],
    workload: Any,
    container: Any,
    ownership: Ownership,
    current: int,
) -> None:
    w = workload(container("nginx", "nginx:1.27"), profile="nginx", grace=current, ownership=ownership)
    result = planner.plan(w, builtin_profiles, CAPS["1.34"])
    assert result.termination_grace_period_seconds is None
    assert result.decisions == ()
    assert "terminationGracePeriodSeconds" not in apply_body.pod_spec_fields(result)
    assert result.findings_after == ()


@pytest.mark.parametrize(
    "ownership",
    [Ownership(known=True, foreign_grace=True), Ownership()],
    ids=["cluster-foreign", "file-mode"],
)
def test_shorter_grace_of_its_owner_is_kept_with_a_decision(
    builtin_profiles: dict[str, ShutdownProfile], workload: Any, container: Any, ownership: Ownership
) -> None:
    w = workload(container("nginx", "nginx:1.27"), profile="nginx", grace=20, ownership=ownership)
    result = planner.plan(w, builtin_profiles, CAPS["1.34"])
    assert result.termination_grace_period_seconds is None
    assert [d.code for d in result.decisions] == [Code.GRACE_PINNED]
    assert "20" in result.decisions[0].message and "35s" in result.decisions[0].message
    assert [f.code for f in result.findings_after] == [Code.GRACE_TOO_SHORT]


def test_grace_owned_by_podgrace_is_updated_in_cluster_mode(
    builtin_profiles: dict[str, ShutdownProfile], workload: Any, container: Any
) -> None:
    w = workload(
        container("nginx", "nginx:1.27"),
        profile="nginx",
        annotations={ANN_DRAIN: "60"},
        grace=40,
        ownership=Ownership(known=True),
    )
    result = planner.plan(w, builtin_profiles, CAPS["1.34"])
    assert result.termination_grace_period_seconds == 70
    assert result.decisions == ()


def test_grace_defaulted_by_the_api_server_is_podgraces_to_set(
    builtin_profiles: dict[str, ShutdownProfile], workload: Any, container: Any
) -> None:
    # cluster mode, no other manager owns the field (e.g. the Deployment was created by a server-side apply,
    # which does not record defaulted fields): the 30 is the API server's default, not anybody's pin
    w = workload(container("nginx", "nginx:1.27"), profile="nginx", grace=30, ownership=Ownership(known=True))
    result = planner.plan(w, builtin_profiles, CAPS["1.34"])
    assert result.termination_grace_period_seconds == 40
    assert result.decisions == ()


def test_exported_manifest_with_default_grace_counts_as_pinned(
    builtin_profiles: dict[str, ShutdownProfile], workload: Any, container: Any
) -> None:
    """Surprising but as designed: `kubectl get -o yaml` always shows terminationGracePeriodSeconds: 30; in
    file mode that reads as the owner's pin, so `render` keeps 30 and warns."""
    w = workload(container("nginx", "nginx:1.27"), profile="nginx", grace=30)
    result = planner.plan(w, builtin_profiles, CAPS["1.34"])
    assert result.termination_grace_period_seconds is None
    assert [d.code for d in result.decisions] == [Code.GRACE_PINNED]


# --- a grace period kept shorter than the pod needs: the best valid settings (issue 12) ---------------------

ANN_GRACE_PIN = "podgrace.dev/termination-grace-period-seconds"
NGINX_PHP = ("nginx", "nginx:1.27"), ("php-fpm", "php:8.3-fpm")
FOREIGN_GRACE = Ownership(known=True, foreign_grace=True)

# One row per case: profile, pod, owner's grace (kept), annotations, caps,
#   expected {container: preStop podgrace writes}, the grace podgrace writes, what the Warning names shortened
FIT_TABLE = [
    # the case: nginx-php-fpm inside the owner's 30: php-fpm's 35 s sleep would be rejected (> 30)
    ("nginx-php-fpm", NGINX_PHP, 30, {}, "1.35+gate",
     {"nginx": native(5), "php-fpm": native(28)}, None, ["php-fpm is stopped after 28s (it needs 35s)"]),
    # the fallback hook: php-fpm's signal 2 s before the end; no hook waits past the end of the grace period
    ("nginx-php-fpm", NGINX_PHP, 30, {}, "1.34",
     {"nginx": signal_wait(5, "QUIT", 25, "nginx"), "php-fpm": signal_wait(28, "QUIT", 2, "php-fpm*")}, None,
     ["php-fpm is stopped after 28s (it needs 35s)"]),
    ("nginx-php-fpm", NGINX_PHP, 30, {}, "1.29",
     {"nginx": signal_wait(5, "QUIT", 25, "nginx"), "php-fpm": signal_wait(28, "QUIT", 2, "php-fpm*")}, None,
     ["php-fpm is stopped after 28s (it needs 35s)"]),
    # a grace pinned by podgrace's own annotation is written, and the hooks fit in it
    ("php-fpm", (("app", "php:8.3-fpm"),), None, {ANN_GRACE_PIN: "10"}, "1.35+gate",
     {"app": native(8)}, 10, ["app is stopped after 8s (it needs 35s)"]),
    # a long propagation sleep for nginx alone, inside the owner's 30
    ("nginx", (("nginx", "nginx:1.27"),), 30, {ANN_PRESTOP_SLEEP: "90"}, "1.35+gate",
     {"nginx": native(28)}, None, ["nginx is stopped after 28s (it needs 90s)"]),
    # order kept when both are cut: nginx never after php-fpm
    ("nginx-php-fpm", NGINX_PHP, 10, {ANN_PRESTOP_SLEEP: "20"}, "1.35+gate",
     {"nginx": native(8), "php-fpm": native(8)}, None,
     ["nginx is stopped after 8s (it needs 20s)", "php-fpm is stopped after 8s (it needs 50s)"]),
    # a grace too short for any delay: no sleep at all (a zero-second hook is none)
    ("nginx", (("nginx", "nginx:1.27"),), 2, {}, "1.35+gate", {"nginx": None}, None,
     ["nginx is stopped after 0s (it needs 5s)"]),
    # long enough for the delays, too short for the drain: nothing shortened, the hook's wait ends in time
    ("nginx-php-fpm", NGINX_PHP, 45, {}, "1.34",
     {"nginx": signal_wait(5, "QUIT", 38, "nginx"), "php-fpm": signal_wait(35, "QUIT", 10, "php-fpm*")},
     None, []),
]  # fmt: skip


@pytest.mark.parametrize(
    ("profile", "pod", "owner_grace", "annotations", "caps", "expected", "grace", "shortened"),
    FIT_TABLE,
    ids=[f"{r[0]}-grace{r[2] or r[3].get(ANN_GRACE_PIN)}-{r[4]}-{i}" for i, r in enumerate(FIT_TABLE)],
)
def test_a_too_short_grace_gets_the_best_valid_settings(
    handler: Any,
    builtin_profiles: dict[str, ShutdownProfile],
    workload: Any,
    container: Any,
    profile: str,
    pod: tuple[tuple[str, str], ...],
    owner_grace: int | None,
    annotations: dict[str, str],
    caps: str,
    expected: dict[str, dict[str, Any] | None],
    grace: int | None,
    shortened: list[str],
) -> None:
    w = workload(
        *(container(n, i) for n, i in pod),
        profile=profile,
        annotations=annotations,
        grace=owner_grace,
        ownership=FOREIGN_GRACE if owner_grace is not None else Ownership(known=True),
    )
    result = planner.plan(w, builtin_profiles, CAPS[caps])
    assert {s.name: handler(s) for s in result.containers} == expected
    assert result.termination_grace_period_seconds == grace
    kept = grace or owner_grace
    assert kept is not None
    # valid: no sleep longer than the grace period (API server), every signal 2 s before its end
    for s in result.containers:
        assert s.signal_delay_seconds <= max(kept - planner.KUBELET_STOP_TAIL, 0)
        hook = handler(s)
        if hook and "sleep" in hook:
            assert hook["sleep"]["seconds"] <= kept - planner.KUBELET_STOP_TAIL
    pinned = [d for d in result.decisions if d.code is Code.GRACE_PINNED]
    assert len(pinned) == 1, result.decisions
    for part in shortened:
        assert part in pinned[0].message
    if not shortened:
        assert "stopped after" not in pinned[0].message


# --- take once, never fight (issue 12) ----------------------------------------------------------------------

HOOK_KEY = "containers[nginx].lifecycle.preStop"
GRACE_KEY = "terminationGracePeriodSeconds"

# One row per case: ownership of the contested fields, the user's hook?, owner's grace, annotations,
#   expected: (podgrace replaces the hook, grace podgrace writes, force, [(decision code, owner named)])
OWNER_TABLE = [
    # an Update-operation owner's hook (kubectl create/edit, Helm 3) with `replace`: taken once, forced
    ("update-owner-hook-replace",
     Ownership(known=True, foreign_pre_stop=frozenset({"nginx"}), owners=((HOOK_KEY, "kubectl-create"),)),
     True, None, {ANN_EXISTING_PRESTOP: "replace"}, (True, 40, True, [])),
    # a server-side-apply owner's hook (Flux, Argo, Helm 4) with `replace`: never taken, said why
    ("apply-owner-hook-replace",
     Ownership(known=True, foreign_pre_stop=frozenset({"nginx"}),
               owners=((HOOK_KEY, "kustomize-controller"),), applied=frozenset({HOOK_KEY})),
     True, None, {ANN_EXISTING_PRESTOP: "replace"},
     (False, 40, False, [(Code.USER_HOOK_KEPT, "kustomize-controller")])),
    # the Update owner took the replaced hook back: podgrace backs off, one OwnerReclaimed
    ("update-owner-took-hook-back",
     Ownership(known=True, foreign_pre_stop=frozenset({"nginx"}), owners=((HOOK_KEY, "kubectl-edit"),),
               reclaimed=((HOOK_KEY, "kubectl-edit"),)),
     True, None, {ANN_EXISTING_PRESTOP: "replace"},
     (False, 40, False, [(Code.OWNER_RECLAIMED, "kubectl-edit")])),
    # the grace period an Update owner holds at exactly 30 (maybe the API server's default): taken once
    ("grace-defaulted-taken-once",
     Ownership(known=True, grace_defaulted=True, owners=((GRACE_KEY, "helm"),)),
     False, 30, {}, (False, 40, True, [])),
    # ... and when Helm 3 sets it back, podgrace keeps it and says so once, naming the owner
    ("grace-taken-back",
     Ownership(known=True, grace_defaulted=True, owners=((GRACE_KEY, "helm"),),
               reclaimed=((GRACE_KEY, "helm"),)),
     False, 30, {}, (False, None, False, [(Code.OWNER_RECLAIMED, "helm")])),
    # `kubectl replace` of a manifest without podgrace's settings: both taken back at once (one Warning each)
    ("replace-took-grace-and-hook-back",
     Ownership(known=True, grace_defaulted=True, owners=((GRACE_KEY, "kubectl-replace"),),
               reclaimed=((GRACE_KEY, "kubectl-replace"), (HOOK_KEY, "kubectl-replace"))),
     False, 30, {}, (False, None, False, [(Code.OWNER_RECLAIMED, "kubectl-replace")] * 2)),
    # an Apply owner's grace period is its choice: kept, the Warning names it
    ("grace-of-an-apply-owner",
     Ownership(known=True, foreign_grace=True, owners=((GRACE_KEY, "argocd-controller"),),
               applied=frozenset({GRACE_KEY})),
     False, 20, {}, (False, None, False, [(Code.GRACE_PINNED, "argocd-controller")])),
]  # fmt: skip


@pytest.mark.parametrize(
    ("ownership", "user_hook", "owner_grace", "annotations", "expected"),
    [row[1:] for row in OWNER_TABLE],
    ids=[row[0] for row in OWNER_TABLE],
)
def test_podgrace_takes_a_field_at_most_once_and_never_from_an_apply_owner(
    handler: Any,
    builtin_profiles: dict[str, ShutdownProfile],
    workload: Any,
    container: Any,
    ownership: Ownership,
    user_hook: bool,
    owner_grace: int | None,
    annotations: dict[str, str],
    expected: tuple[bool, int | None, bool, list[tuple[Code, str]]],
) -> None:
    replaces, grace, force, decisions = expected
    hook = USER_EXEC if user_hook else None
    w = workload(
        container("nginx", "nginx:1.27", pre_stop=hook),
        profile="nginx",
        annotations=annotations,
        grace=owner_grace,
        ownership=ownership,
    )
    result = planner.plan(w, builtin_profiles, CAPS["1.34"])
    nginx = result.containers[0]
    hook_reclaimed = ownership.reclaimed_by(HOOK_KEY) is not None
    assert (nginx.pre_stop is not None) is (replaces or not (user_hook or hook_reclaimed))
    assert result.termination_grace_period_seconds == grace
    assert result.force is force
    assert [d.code for d in result.decisions] == [code for code, _ in decisions]
    for d, (_, owner) in zip(result.decisions, decisions, strict=True):
        assert owner in d.message
        assert (GRACE_KEY if d.container is None else "preStop") in d.message


USER_EXEC = {"exec": {"command": ["sh", "-c", "echo draining; sleep 3"]}}

SIGNAL_KEY = "containers[nginx].lifecycle.stopSignal"
OS_KEY = "os.name"
REPLACE = "kubectl-replace"

# On a cluster with ContainerStopSignals: lifecycle.stopSignal and os.name taken back like any field.
# (fields reclaimed, the owner's stopSignal, the owner's os.name) ->
#   (stopSignal podgrace writes, os it writes, its hook delivers the signal, grace, fields said taken back)
SIGNAL_TABLE = [
    ("nothing-taken-back", (), None, None, ("SIGQUIT", "linux", False, 40, [])),
    ("stop-signal-removed", (SIGNAL_KEY,), None, None, (None, None, True, 40, ["lifecycle.stopSignal"])),
    ("stop-signal-changed", (SIGNAL_KEY,), "SIGTERM", "linux",
     (None, None, True, 40, ["lifecycle.stopSignal"])),
    ("os-removed", (OS_KEY,), None, None, (None, None, True, 40, [OS_KEY])),
    # `kubectl replace` of a manifest without any of podgrace's settings: everything taken back at once,
    # one Warning per field, nothing written
    ("replace-took-everything-back", (SIGNAL_KEY, OS_KEY, HOOK_KEY, GRACE_KEY), None, None,
     (None, None, False, None, sorted([GRACE_KEY, OS_KEY, "lifecycle.stopSignal", "preStop"]))),
]  # fmt: skip


@pytest.mark.parametrize(
    ("reclaimed", "owner_signal", "owner_os", "expected"),
    [row[1:] for row in SIGNAL_TABLE],
    ids=[row[0] for row in SIGNAL_TABLE],
)
def test_a_stop_signal_or_os_taken_back_is_kept_like_any_field(
    builtin_profiles: dict[str, ShutdownProfile],
    workload: Any,
    container: Any,
    reclaimed: tuple[str, ...],
    owner_signal: str | None,
    owner_os: str | None,
    expected: tuple[str | None, str | None, bool, int | None, list[str]],
) -> None:
    stop_signal, os_name, signal_hook, grace, named = expected
    ownership = Ownership(known=True, grace_defaulted=True, owners=((GRACE_KEY, REPLACE),),
                          reclaimed=tuple((key, REPLACE) for key in reclaimed))  # fmt: skip
    w = workload(
        container("nginx", "nginx:1.27", stop_signal=owner_signal),
        profile="nginx",
        grace=30,
        os_name=owner_os,
        ownership=ownership,
    )
    result = planner.plan(w, builtin_profiles, CAPS["1.35+gate"])
    nginx = result.containers[0]
    assert (nginx.stop_signal, result.os_name) == (stop_signal, os_name)
    assert isinstance(nginx.pre_stop, SignalAndWait) is signal_hook
    assert result.termination_grace_period_seconds == grace
    said = [d for d in result.decisions if d.code is Code.OWNER_RECLAIMED]
    assert all(REPLACE in d.message for d in said)
    assert sorted(_field_named(d.message) for d in said) == named


def _field_named(message: str) -> str:
    # os.name's message also says why no stopSignal is written; a hook's says "preStop hook"
    return next(f for f in (OS_KEY, "lifecycle.stopSignal", GRACE_KEY, "preStop") if f in message)


# --- outcomes that own nothing ------------------------------------------------------------------------------


def test_not_opted_in_owns_nothing_and_is_assessed(
    builtin_profiles: dict[str, ShutdownProfile], workload: Any, container: Any
) -> None:
    w = workload(container("nginx", "nginx:1.27"), container("php-fpm", "php:8.3-fpm"))
    result = planner.plan(w, builtin_profiles, CAPS["1.34+gate"])
    assert result.outcome is Outcome.NOT_OPTED_IN
    assert not result.owns_anything
    assert result.profile is None
    assert {(f.code, f.container) for f in result.findings_before} >= {
        (Code.NO_PRESTOP, "nginx"),
        (Code.NO_PRESTOP, "php-fpm"),
        (Code.GRACE_TOO_SHORT, None),
    }
    assert "spec" not in apply_body.apply_body("default", "shop", result)


def test_unknown_profile_is_invalid(
    builtin_profiles: dict[str, ShutdownProfile], workload: Any, container: Any
) -> None:
    result = planner.plan(
        workload(container("nginx", "nginx"), profile="nginxx"), builtin_profiles, CAPS["1.34"]
    )
    assert result.outcome is Outcome.INVALID
    assert [e.code for e in result.errors] == [Code.UNKNOWN_PROFILE]
    assert "nginxx" in result.errors[0].message
    assert "nginx-php-fpm" in result.errors[0].message  # lists the known ones
    assert not result.owns_anything
    assert "spec" not in apply_body.apply_body("default", "shop", result)


def test_no_matching_container_owns_nothing(
    builtin_profiles: dict[str, ShutdownProfile], workload: Any, container: Any
) -> None:
    # two containers: the sole-rule fallback (one rule, one serving container) does not apply
    pod = workload(container("worker", "busybox:1.36"), container("cron", "busybox:1.36"), profile="nginx")
    result = planner.plan(pod, builtin_profiles, CAPS["1.34"])
    assert result.outcome is Outcome.MANAGED
    assert [d.code for d in result.decisions] == [Code.NO_MATCHING_CONTAINERS]
    assert result.unrecognised == ("worker", "cron")
    assert result.notices == ()
    assert not result.owns_anything
    assert "spec" not in apply_body.apply_body("default", "shop", result)


def test_first_matching_rule_wins_and_sidecars_are_untouched(
    builtin_profiles: dict[str, ShutdownProfile], workload: Any, container: Any
) -> None:
    w = workload(
        container("nginx", "nginx:1.27"),
        container("php", "php:8.3-fpm-alpine"),
        container("redis", "redis:7"),
        profile="nginx-php-fpm",
    )
    result = planner.plan(w, builtin_profiles, CAPS["1.34"])
    assert [(s.name, s.rule, s.role) for s in result.containers] == [
        ("nginx", "nginx", Role.NGINX),
        ("php", "php-fpm", Role.PHP_FPM),
    ]


def test_findings_are_all_risks_and_decisions_are_not(
    builtin_profiles: dict[str, ShutdownProfile], workload: Any, container: Any
) -> None:
    w = workload(container("nginx", "nginx:1.27", pre_stop=NGINX_QUIT), profile="nginx", grace=10)
    result = planner.plan(w, builtin_profiles, CAPS["1.29"])
    assert all(f.code in RISKS for f in (*result.findings_before, *result.findings_after))
    assert result.decisions and not any(d.is_risk or d.is_error for d in result.decisions)


# --- pods that share their process namespace: PID 1 is the pause process ---------------------------------


def _shared_pid(w: Any) -> Any:
    return w.model_copy(update={"share_process_namespace": True})


def test_parser_reads_share_process_namespace(deployment: Any) -> None:
    doc = deployment([{"name": "web", "image": "nginx:1.27"}], profile="nginx")
    assert workload_parser.from_object(doc, with_ownership=False).share_process_namespace is False
    doc["spec"]["template"]["spec"]["shareProcessNamespace"] = True
    assert workload_parser.from_object(doc, with_ownership=False).share_process_namespace is True


def test_shared_pid_namespace_known_servers_get_the_hook_that_finds_them(
    handler: Any, builtin_profiles: dict[str, ShutdownProfile], workload: Any, container: Any
) -> None:
    w = _shared_pid(
        workload(
            container("nginx", "nginx:1.27"), container("php-fpm", "php:8.2-fpm"), profile="nginx-php-fpm"
        )
    )
    result = planner.plan(w, builtin_profiles, CAPS["1.34"])
    assert result.outcome is Outcome.MANAGED and result.errors == ()
    nginx, php = result.containers
    assert handler(nginx) == signal_wait(5, "QUIT", 63, "nginx")
    assert handler(php) == signal_wait(35, "QUIT", 33, "php-fpm*")
    assert result.findings_after == ()


GENERIC_SIGTERM = generic_profile("term", "SIGTERM", {"images": ["*"]})


GENERIC_SIGQUIT = generic_profile("quit", "SIGQUIT", {"images": ["*"]})


@pytest.mark.parametrize("caps", ["1.29", "1.34"])
def test_shared_pid_namespace_generic_signal_hook_is_refused(
    builtin_profiles: dict[str, ShutdownProfile], workload: Any, container: Any, caps: str
) -> None:
    profiles = {**builtin_profiles, "quit": parse_profile(GENERIC_SIGQUIT)}
    w = workload(container("app", "example/app:1"), profile="quit")
    assert planner.plan(w, profiles, CAPS[caps]).outcome is Outcome.MANAGED  # its own PID namespace: fine
    result = planner.plan(_shared_pid(w), profiles, CAPS[caps])
    assert result.outcome is Outcome.INVALID
    assert [(e.code, e.container) for e in result.errors] == [(Code.SIGNAL_UNREACHABLE, "app")]
    assert result.containers == () and not result.owns_anything  # the Deployment is left unchanged


@pytest.mark.parametrize(
    ("caps", "hook"),
    [
        ("1.29", exec_sleep(5)),
        ("1.34", native(5)),
    ],
)
def test_generic_sigterm_is_a_sleep_before_the_kubelets_own_signal(
    handler: Any,
    builtin_profiles: dict[str, ShutdownProfile],
    workload: Any,
    container: Any,
    caps: str,
    hook: Any,
) -> None:
    # SIGTERM is what the kubelet sends after the hook: no hook signals it (it would end with PID 1, a
    # FailedPreStopHook Warning, and beside pause it could not reach the server), also in a shared PID
    # namespace
    profiles = {**builtin_profiles, "term": parse_profile(GENERIC_SIGTERM)}
    for w in (
        workload(container("app", "x:1"), profile="term"),
        _shared_pid(workload(container("app", "x:1"), profile="term")),
    ):
        result = planner.plan(w, profiles, CAPS[caps])
        assert result.outcome is Outcome.MANAGED and result.errors == ()
        (app,) = result.containers
        assert (handler(app), app.stop_signal) == (hook, None)
        assert Code.HOOK_ENDS_WITH_SERVER not in {n.code for n in result.notices}
    # a container that names another stop signal does not get the kubelet's SIGTERM: the hook sends it
    result = planner.plan(
        workload(container("app", "x:1", stop_signal="SIGQUIT"), profile="term"), profiles, CAPS[caps]
    )
    assert isinstance(result.containers[0].pre_stop, SignalAndWait)
    assert result.containers[0].pre_stop.signal.value == "SIGTERM"


def test_shared_pid_namespace_generic_with_stop_signal_needs_no_hook(
    builtin_profiles: dict[str, ShutdownProfile], workload: Any, container: Any
) -> None:
    profiles = {**builtin_profiles, "term": parse_profile(GENERIC_SIGTERM)}
    result = planner.plan(
        _shared_pid(workload(container("app", "x:1"), profile="term")), profiles, CAPS["1.35+gate"]
    )
    assert result.outcome is Outcome.MANAGED and result.errors == ()
    assert result.containers[0].stop_signal == "SIGTERM"


@pytest.mark.parametrize(
    ("profile", "image", "caps", "noticed"),
    [
        ("quit", "example/app:1", "1.29", ["app"]),  # exec sleep + kill -QUIT 1 + wait: ends with PID 1
        ("quit", "example/app:1", "1.34", ["app"]),
        ("term", "example/app:1", "1.34", []),  # an explicit SIGTERM: a sleep, the kubelet sends it
        ("quit", "example/app:1", "1.35+gate", []),  # lifecycle.stopSignal: no signal from the hook
        ("web", "example/app:1", "1.34", []),  # the built-in generic rule: a sleep, no signal
        ("nginx", "nginx:1.27", "1.34", []),  # nginx's hook returns while its master lives
        ("apache", "httpd:2.4", "1.34", []),  # Apache's too (a graceful restart)
    ],
)
def test_a_generic_servers_signal_hook_is_announced_as_ending_with_pid1(
    builtin_profiles: dict[str, ShutdownProfile],
    workload: Any,
    container: Any,
    profile: str,
    image: str,
    caps: str,
    noticed: list[str],
) -> None:
    profiles = {
        **builtin_profiles,
        "term": parse_profile(GENERIC_SIGTERM),
        "quit": parse_profile(GENERIC_SIGQUIT),
    }
    result = planner.plan(workload(container("app", image), profile=profile), profiles, CAPS[caps])
    assert result.outcome is Outcome.MANAGED and result.errors == ()
    assert [c.pre_stop is not None for c in result.containers] == [True]  # every row writes a hook
    notices = [n for n in result.notices if n.code is Code.HOOK_ENDS_WITH_SERVER]
    assert [n.container for n in notices] == noticed
    assert all("FailedPreStopHook" in n.message and "PID 1" in n.message for n in notices)


@pytest.mark.parametrize(
    ("script", "at_risk"),
    [
        ("sleep 5; kill -QUIT 1; while kill -0 1; do sleep 1; done", True),
        ("sleep 5; kill -TERM 1; while kill -0 1; do sleep 1; done", True),
        ('sleep 5; kill -QUIT "$m"; while kill -0 "$m"; do sleep 1; done', False),
        ("sleep 5", False),
    ],
)
def test_audit_flags_a_hook_that_signals_pause(
    builtin_profiles: dict[str, ShutdownProfile], workload: Any, container: Any, script: str, at_risk: bool
) -> None:
    hook = {"exec": {"command": ["/bin/sh", "-c", script]}}
    w = workload(container("nginx", "nginx:1.27", pre_stop=hook), profile="nginx", grace=60)
    expectations = planner.profile_expectations(w, builtin_profiles["nginx"].spec, w.overrides)
    assert Code.SIGNAL_HITS_PAUSE not in {f.code for f in assess.assess(w, expectations)}
    codes = {f.code for f in assess.assess(_shared_pid(w), expectations)}
    assert (Code.SIGNAL_HITS_PAUSE in codes) is at_risk
    if at_risk:
        assert Code.FAST_STOP_SIGNAL in codes  # the server gets the kubelet's SIGTERM instead
