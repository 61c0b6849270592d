"""Per-Deployment annotations: parsing (overrides.parse) and their effect on the plan."""

from __future__ import annotations

from typing import Any

import pytest

from podgrace.core import apply_body, overrides, planner
from podgrace.core.capabilities import Capabilities
from podgrace.core.constants import (
    ANN_CONTAINERS,
    ANN_DRAIN,
    ANN_EXISTING_PRESTOP,
    ANN_GRACE,
    ANN_MODE,
    ANN_PRESTOP_SLEEP,
    ANN_PROFILE,
)
from podgrace.core.findings import Code
from podgrace.core.models import ExistingPreStop, Mode, Overrides, ShutdownProfile
from podgrace.core.planner import Outcome

GATE = Capabilities(native_sleep=True, stop_signal=True)
NO_GATE = Capabilities(native_sleep=True, stop_signal=False)


def test_no_annotations() -> None:
    parsed = overrides.parse({})
    assert parsed == Overrides()
    assert parsed.profile is None  # not opted in
    assert parsed.mode is Mode.ENFORCE


def test_all_annotations_valid() -> None:
    parsed = overrides.parse(
        {
            ANN_PROFILE: " nginx-php-fpm ",
            ANN_MODE: "audit",
            ANN_PRESTOP_SLEEP: " 10 ",
            ANN_DRAIN: "60",
            ANN_GRACE: "120",
            ANN_CONTAINERS: "nginx, php-fpm,,",
            ANN_EXISTING_PRESTOP: "replace",
            "app.kubernetes.io/name": "shop",  # other prefixes are not podgrace's business
        }
    )
    assert parsed == Overrides(
        profile="nginx-php-fpm",
        mode=Mode.AUDIT,
        pre_stop_sleep_seconds=10,
        drain_seconds=60,
        termination_grace_period_seconds=120,
        containers=frozenset({"nginx", "php-fpm"}),
        existing_pre_stop=ExistingPreStop.REPLACE,
    )


@pytest.mark.parametrize(
    ("annotations", "name"),
    [({}, None), ({ANN_PROFILE: " nginx "}, "nginx"), ({ANN_PROFILE: ""}, ""), ({"other": "nginx"}, None)],
)
def test_profile_name(annotations: dict[str, str], name: str | None) -> None:
    # the one reading of the profile annotation: parse() and the operator's profile index use it
    assert overrides.profile_name(annotations) == name
    assert overrides.parse(annotations).profile == name


# (annotation, value, parsed attribute, expected value) for values that parse
VALID = [
    pytest.param(ANN_PRESTOP_SLEEP, "0", "pre_stop_sleep_seconds", 0, id="sleep-zero"),
    pytest.param(ANN_PRESTOP_SLEEP, "3600", "pre_stop_sleep_seconds", 3600, id="sleep-max"),
    pytest.param(ANN_PRESTOP_SLEEP, "007", "pre_stop_sleep_seconds", 7, id="sleep-leading-zeros"),
    pytest.param(ANN_PRESTOP_SLEEP, "\t5\n", "pre_stop_sleep_seconds", 5, id="sleep-whitespace"),
    pytest.param(ANN_DRAIN, "0", "drain_seconds", 0, id="drain-zero"),
    pytest.param(ANN_DRAIN, "3600", "drain_seconds", 3600, id="drain-max"),
    pytest.param(ANN_GRACE, "1", "termination_grace_period_seconds", 1, id="grace-min"),
    pytest.param(ANN_GRACE, "86400", "termination_grace_period_seconds", 86400, id="grace-max"),
    pytest.param(ANN_MODE, "enforce", "mode", Mode.ENFORCE, id="mode-enforce"),
    pytest.param(ANN_MODE, " audit", "mode", Mode.AUDIT, id="mode-audit"),
    pytest.param(ANN_EXISTING_PRESTOP, "keep", "existing_pre_stop", ExistingPreStop.KEEP, id="existing-keep"),
    pytest.param(ANN_CONTAINERS, "nginx", "containers", frozenset({"nginx"}), id="containers-one"),
    pytest.param(ANN_PROFILE, "team.web", "profile", "team.web", id="profile-dns-subdomain"),
]


@pytest.mark.parametrize(("key", "value", "attribute", "expected"), VALID)
def test_valid_value(key: str, value: str, attribute: str, expected: Any) -> None:
    parsed = overrides.parse({key: value})
    assert parsed.errors == ()
    assert getattr(parsed, attribute) == expected


# (annotation, value, words the error must contain)
INVALID = [
    pytest.param(ANN_PRESTOP_SLEEP, "-5", "not a whole number", id="sleep-negative"),
    pytest.param(ANN_PRESTOP_SLEEP, "5s", "not a whole number", id="sleep-with-unit"),
    pytest.param(ANN_PRESTOP_SLEEP, "5.0", "not a whole number", id="sleep-decimal"),
    pytest.param(ANN_PRESTOP_SLEEP, "+5", "not a whole number", id="sleep-plus-sign"),
    pytest.param(ANN_PRESTOP_SLEEP, "1e3", "not a whole number", id="sleep-exponent"),
    pytest.param(ANN_PRESTOP_SLEEP, "", "not a whole number", id="sleep-empty"),
    pytest.param(ANN_PRESTOP_SLEEP, "five", "not a whole number", id="sleep-word"),
    pytest.param(ANN_PRESTOP_SLEEP, "3601", "out of range 0..3600", id="sleep-above-max"),
    pytest.param(ANN_DRAIN, "999999", "out of range 0..3600", id="drain-huge-6-digits"),
    pytest.param(ANN_GRACE, "0", "out of range 1..86400", id="grace-zero"),
    pytest.param(ANN_GRACE, "86401", "out of range 1..86400", id="grace-above-max"),
    pytest.param(ANN_MODE, "AUDIT", "not one of enforce, audit", id="mode-case"),
    pytest.param(ANN_MODE, "dry-run", "not one of enforce, audit", id="mode-unknown"),
    pytest.param(ANN_EXISTING_PRESTOP, "Replace", "not one of keep, replace", id="existing-case"),
    pytest.param(ANN_CONTAINERS, "", "comma-separated list", id="containers-empty"),
    pytest.param(ANN_CONTAINERS, " , ,", "comma-separated list", id="containers-only-commas"),
    pytest.param(ANN_CONTAINERS, "nginx,PHP", "'PHP'", id="containers-bad-name"),
    pytest.param(ANN_PROFILE, "", "not a valid ShutdownProfile name", id="profile-empty"),
    pytest.param(ANN_PROFILE, "Nginx", "not a valid ShutdownProfile name", id="profile-uppercase"),
    pytest.param(ANN_PROFILE, "nginx php", "not a valid ShutdownProfile name", id="profile-space"),
    pytest.param("podgrace.dev/sleep", "5", "unknown podgrace annotation", id="unknown-annotation"),
    pytest.param("podgrace.dev/Profile", "nginx", "unknown podgrace annotation", id="annotation-case"),
]


@pytest.mark.parametrize(("key", "value", "words"), INVALID)
def test_invalid_value(key: str, value: str, words: str) -> None:
    parsed = overrides.parse({key: value})
    assert len(parsed.errors) == 1
    (error,) = parsed.errors
    assert error.startswith(f"{key}: ")  # names the annotation
    assert words in error


@pytest.mark.parametrize("value", ["9999999", "99999999999999999999"])
def test_huge_number_is_reported_out_of_range(value: str) -> None:
    (error,) = overrides.parse({ANN_DRAIN: value}).errors
    assert "out of range" in error


@pytest.mark.parametrize("value", ["\u0663", "\uff11\uff10"], ids=["arabic-indic-3", "fullwidth-10"])
def test_non_ascii_digits_are_rejected(value: str) -> None:
    parsed = overrides.parse({ANN_PRESTOP_SLEEP: value})
    assert parsed.pre_stop_sleep_seconds is None
    assert parsed.errors


def test_all_errors_are_collected() -> None:
    parsed = overrides.parse(
        {
            ANN_PROFILE: "nginx",
            ANN_DRAIN: "x",
            ANN_PRESTOP_SLEEP: "-1",
            ANN_MODE: "off",
            "podgrace.dev/typo": "1",
        }
    )
    assert len(parsed.errors) == 4
    assert parsed.drain_seconds is None and parsed.pre_stop_sleep_seconds is None


# --- the effect on the plan --------------------------------------------------------------------------------


def _nginx_php(workload: Any, container: Any, **annotations: str) -> Any:
    return workload(
        container("nginx", "nginx:1.27"),
        container("php-fpm", "php:8.3-fpm"),
        container("redis", "redis:7"),
        profile="nginx-php-fpm",
        annotations=annotations,
    )


def test_sleep_and_drain_overrides_apply_to_every_rule(
    handler: Any, builtin_profiles: dict[str, ShutdownProfile], workload: Any, container: Any
) -> None:
    w = _nginx_php(workload, container, **{ANN_PRESTOP_SLEEP: "12", ANN_DRAIN: "20"})
    result = planner.plan(w, builtin_profiles, GATE)
    assert {s.name: (s.signal_delay_seconds, s.drain_seconds) for s in result.containers} == {
        "nginx": (12, 20),
        "php-fpm": (32, 20),  # max(12 + 20 own, 12 + 20 after nginx)
    }
    assert {s.name: handler(s) for s in result.containers} == {
        "nginx": {"sleep": {"seconds": 12}},
        "php-fpm": {"sleep": {"seconds": 32}},
    }
    assert result.termination_grace_period_seconds == 32 + 20 + 5


def test_grace_pinned_too_short_is_still_applied(
    builtin_profiles: dict[str, ShutdownProfile], workload: Any, container: Any
) -> None:
    w = _nginx_php(workload, container, **{ANN_GRACE: "45"})
    result = planner.plan(w, builtin_profiles, GATE)
    assert result.termination_grace_period_seconds == 45
    assert result.required_grace_seconds == 65
    assert [(d.code, d.container) for d in result.decisions] == [(Code.GRACE_PINNED, None)]
    assert "45s" in result.decisions[0].message and "65s" in result.decisions[0].message
    body = apply_body.apply_body("default", "shop", result)
    assert body["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 45
    assert [f.code for f in result.findings_after] == [Code.GRACE_TOO_SHORT]


def test_grace_pinned_longer_is_applied_without_a_decision(
    builtin_profiles: dict[str, ShutdownProfile], workload: Any, container: Any
) -> None:
    w = _nginx_php(workload, container, **{ANN_GRACE: "600"})
    result = planner.plan(w, builtin_profiles, GATE)
    assert result.termination_grace_period_seconds == 600
    assert result.decisions == ()
    assert result.findings_after == ()


def test_grace_pinned_equal_to_required_is_enough(
    builtin_profiles: dict[str, ShutdownProfile], workload: Any, container: Any
) -> None:
    # "too short" is measured against the need without margin
    w = _nginx_php(workload, container, **{ANN_GRACE: "65"})
    result = planner.plan(w, builtin_profiles, GATE)
    assert result.termination_grace_period_seconds == 65
    assert result.decisions == ()


def test_grace_annotation_loses_to_a_grace_owned_by_another_manager(
    builtin_profiles: dict[str, ShutdownProfile], workload: Any, container: Any
) -> None:
    """As designed (and worth knowing): the manifest's own value wins over the annotation, silently when it
    is long enough."""
    w = workload(container("nginx", "nginx:1.27"), profile="nginx", annotations={ANN_GRACE: "300"}, grace=60)
    result = planner.plan(w, builtin_profiles, GATE)
    assert result.termination_grace_period_seconds is None
    assert result.decisions == ()


def test_containers_annotation_touches_only_named_containers(
    builtin_profiles: dict[str, ShutdownProfile], workload: Any, container: Any
) -> None:
    w = _nginx_php(workload, container, **{ANN_CONTAINERS: "php-fpm"})
    result = planner.plan(w, builtin_profiles, GATE)
    assert [s.name for s in result.containers] == ["php-fpm"]
    # nginx is not managed, so php-fpm waits only for its own propagation + drain
    assert result.containers[0].signal_delay_seconds == 35
    body = apply_body.apply_body("default", "shop", result)
    assert [c["name"] for c in body["spec"]["template"]["spec"]["containers"]] == ["php-fpm"]


def test_containers_annotation_with_web_profile_excludes_sidecars(
    builtin_profiles: dict[str, ShutdownProfile], workload: Any, container: Any
) -> None:
    w = workload(
        container("app", "ghcr.io/acme/shop:1"),
        container("istio-proxy", "istio/proxyv2:1.22"),
        profile="web",
        annotations={ANN_CONTAINERS: "app"},
    )
    result = planner.plan(w, builtin_profiles, NO_GATE)
    assert [s.name for s in result.containers] == ["app"]


def test_containers_annotation_with_unknown_name_is_invalid(
    builtin_profiles: dict[str, ShutdownProfile], workload: Any, container: Any
) -> None:
    w = _nginx_php(workload, container, **{ANN_CONTAINERS: "php-fpm,fpm,nginx2"})
    result = planner.plan(w, builtin_profiles, GATE)
    assert result.outcome is Outcome.INVALID
    (error,) = result.errors
    assert error.code is Code.INVALID_ANNOTATION
    assert ANN_CONTAINERS in error.message and "fpm, nginx2" in error.message
    assert not result.owns_anything
    assert "spec" not in apply_body.apply_body("default", "shop", result)


def test_containers_annotation_naming_a_non_matching_container(
    builtin_profiles: dict[str, ShutdownProfile], workload: Any, container: Any
) -> None:
    w = _nginx_php(workload, container, **{ANN_CONTAINERS: "redis"})
    result = planner.plan(w, builtin_profiles, GATE)
    assert result.outcome is Outcome.MANAGED
    assert [d.code for d in result.decisions] == [Code.NO_MATCHING_CONTAINERS]
    assert not result.owns_anything


def test_mode_audit_owns_nothing_and_reports(
    builtin_profiles: dict[str, ShutdownProfile], workload: Any, container: Any
) -> None:
    w = _nginx_php(workload, container, **{ANN_MODE: "audit"})
    result = planner.plan(w, builtin_profiles, GATE)
    assert result.outcome is Outcome.AUDIT
    assert result.profile == "nginx-php-fpm"
    assert result.containers == ()
    assert result.termination_grace_period_seconds is None and result.os_name is None
    assert not result.owns_anything
    assert "spec" not in apply_body.apply_body("default", "shop", result)
    assert result.findings_after == result.findings_before
    assert {(f.code, f.container) for f in result.findings_before} == {
        (Code.NO_PRESTOP, "nginx"),
        (Code.NO_PRESTOP, "php-fpm"),
        (Code.FAST_STOP_SIGNAL, "nginx"),
        (Code.FAST_STOP_SIGNAL, "php-fpm"),
        (Code.GRACE_TOO_SHORT, None),
    }


def test_mode_audit_uses_the_overrides(
    builtin_profiles: dict[str, ShutdownProfile], workload: Any, container: Any
) -> None:
    hook = {"sleep": {"seconds": 5}}
    w = workload(
        container("nginx", "nginx:1.27", pre_stop=hook, stop_signal="SIGQUIT"),
        profile="nginx",
        grace=60,
        annotations={ANN_MODE: "audit", ANN_PRESTOP_SLEEP: "8"},
    )
    result = planner.plan(w, builtin_profiles, GATE)
    assert [f.code for f in result.findings_before] == [Code.SLEEP_TOO_SHORT]


@pytest.mark.parametrize(
    "annotations",
    [
        {ANN_PROFILE: "nginx", ANN_DRAIN: "5s"},
        {ANN_PROFILE: "nginx", ANN_GRACE: "-1"},
        {ANN_PROFILE: "nginx", ANN_CONTAINERS: ""},
        {ANN_PROFILE: "nginx", ANN_MODE: "audit", "podgrace.dev/drain": "5"},
        {ANN_PROFILE: "Nginx"},
    ],
    ids=["drain-unit", "grace-negative", "containers-empty", "unknown-key", "bad-profile"],
)
def test_invalid_annotations_make_an_invalid_plan(
    builtin_profiles: dict[str, ShutdownProfile], workload: Any, container: Any, annotations: dict[str, str]
) -> None:
    w = workload(container("nginx", "nginx:1.27"), annotations=annotations)
    result = planner.plan(w, builtin_profiles, GATE)
    assert result.outcome is Outcome.INVALID
    assert result.errors and all(e.code is Code.INVALID_ANNOTATION for e in result.errors)
    assert not result.owns_anything
    assert result.findings_before == result.findings_after == ()
    assert "spec" not in apply_body.apply_body("default", "shop", result)


@pytest.mark.parametrize(("value", "policy_kept"), [("keep", True), ("replace", False)])
def test_existing_prestop_annotation(
    builtin_profiles: dict[str, ShutdownProfile],
    workload: Any,
    container: Any,
    value: str,
    policy_kept: bool,
) -> None:
    hook = {"exec": {"command": ["/bin/sh", "-c", "sleep 1"]}}  # an exec hook can be taken over in place
    w = workload(
        container("app", "ghcr.io/acme/shop:1", pre_stop=hook),
        profile="web",
        annotations={ANN_EXISTING_PRESTOP: value},
    )
    result = planner.plan(w, builtin_profiles, NO_GATE)
    (settings,) = result.containers
    if policy_kept:
        assert settings.pre_stop is None
        assert [d.code for d in result.decisions] == [Code.USER_HOOK_KEPT]
        assert result.force is False
    else:
        assert result.force is True
        assert result.decisions == ()
        assert settings.pre_stop is not None


def test_leftover_annotations_without_a_profile_do_not_block_a_revert(
    builtin_profiles: dict[str, ShutdownProfile], workload: Any, container: Any
) -> None:
    """Not opted in: a stale, even invalid podgrace annotation must not keep podgrace's fields in place."""
    w = workload(container("nginx", "nginx:1.27"), annotations={ANN_DRAIN: "abc"})
    result = planner.plan(w, builtin_profiles, GATE)
    assert result.outcome is Outcome.NOT_OPTED_IN
    assert "spec" not in apply_body.apply_body("default", "shop", result)
