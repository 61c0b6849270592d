"""Assessing hand-written manifests: exactly which risks each one has, opted in or not."""

from __future__ import annotations

from typing import Any

import pytest

from podgrace.core import apply_body, assess, planner, workload_parser
from podgrace.core.capabilities import Capabilities
from podgrace.core.constants import ANN_MODE, ANN_PRESTOP_SLEEP
from podgrace.core.findings import ERRORS, NOTICES, RISKS, Code, Finding
from podgrace.core.models import Role, ShutdownProfile
from podgrace.core.planner import Outcome
from podgrace.core.timing import Expectation

CAPS = Capabilities(native_sleep=True, stop_signal=False)

NO = Code.NO_PRESTOP
SHORT = Code.SLEEP_TOO_SHORT
EARLY = Code.KNOWN_BAD_HOOK
FAST = Code.FAST_STOP_SIGNAL
GRACE = Code.GRACE_TOO_SHORT
PHP = Code.PHP_FPM_BEFORE_DRAIN


def sleep(seconds: int, signal: str | None = None) -> dict[str, Any]:
    lifecycle: dict[str, Any] = {"preStop": {"sleep": {"seconds": seconds}}}
    if signal:
        lifecycle["stopSignal"] = signal
    return lifecycle


def exec_(*command: str) -> dict[str, Any]:
    return {"preStop": {"exec": {"command": list(command)}}}


def c(name: str, image: str, lifecycle: dict[str, Any] | None = None) -> dict[str, Any]:
    container: dict[str, Any] = {"name": name, "image": image}
    if lifecycle is not None:
        container["lifecycle"] = lifecycle
    return container


USER_SIGNAL_AND_WAIT = (
    "/bin/sh",
    "-c",
    "sleep 35; kill -QUIT 1; while kill -0 1 2>/dev/null; do sleep 1; done",
)

# (containers, terminationGracePeriodSeconds, expected {(code, container)})
NOT_OPTED_IN = [
    pytest.param(
        [c("nginx", "nginx:1.27")], None, {(NO, "nginx"), (FAST, "nginx"), (GRACE, None)}, id="nginx-bare"
    ),
    pytest.param(
        [c("frontend", "nginx:1.27", sleep(2, "SIGQUIT"))],
        60,
        {(SHORT, "frontend")},
        id="nginx-sleep-too-short",
    ),
    pytest.param(
        [c("nginx", "nginx:1.27", exec_("/usr/sbin/nginx", "-s", "quit"))],
        60,
        {(EARLY, "nginx"), (FAST, "nginx")},
        id="nginx-s-quit",
    ),
    pytest.param(
        [c("nginx", "nginx:1.27", exec_("sh", "-c", "sleep 5 && /usr/sbin/nginx -s quit"))],
        None,
        {(EARLY, "nginx"), (FAST, "nginx"), (GRACE, None)},
        id="sleep-then-nginx-s-quit",
    ),
    pytest.param([c("nginx", "nginx:1.27", sleep(5))], 60, {(FAST, "nginx")}, id="nginx-sleep-but-sigterm"),
    pytest.param(
        [c("nginx", "nginx:1.27", {**sleep(5), "stopSignal": "SIGTERM"})],
        60,
        {(FAST, "nginx")},
        id="nginx-explicit-sigterm",
    ),
    pytest.param([c("nginx", "nginx:1.27", sleep(5, "SIGQUIT"))], 60, set(), id="nginx-clean"),
    pytest.param([c("nginx", "nginx:1.27", sleep(5, "SIGQUIT"))], 30, {(GRACE, None)}, id="nginx-grace-30"),
    pytest.param(
        [
            c(
                "nginx",
                "nginx:1.27",
                {"preStop": {"httpGet": {"path": "/drain", "port": 80}}, "stopSignal": "SIGQUIT"},
            )
        ],
        60,
        {(SHORT, "nginx")},
        id="nginx-http-get-counts-0s",
    ),
    pytest.param(
        [c("nginx", "nginx:1.27", sleep(5, "SIGQUIT")), c("php-fpm", "php:8.3-fpm", sleep(10, "SIGQUIT"))],
        120,
        {(PHP, "php-fpm")},
        id="php-fpm-sleep-shorter-than-nginx-drain",
    ),
    pytest.param(
        [c("nginx", "nginx:1.27", sleep(5, "SIGQUIT")), c("php-fpm", "php:8.3-fpm", sleep(35, "SIGQUIT"))],
        65,
        set(),
        id="nginx-php-fpm-clean",
    ),
    pytest.param(
        [c("nginx", "nginx:1.27", sleep(5, "SIGQUIT")), c("php-fpm", "php:8.3-fpm", sleep(35, "SIGQUIT"))],
        64,
        {(GRACE, None)},
        id="nginx-php-fpm-grace-1s-short",
    ),
    pytest.param(
        [c("nginx", "nginx:1.27"), c("php-fpm", "php:8.3-fpm")],
        None,
        {(NO, "nginx"), (FAST, "nginx"), (GRACE, None), (NO, "php-fpm"), (FAST, "php-fpm")},
        id="seed-article-pod",
    ),
    pytest.param(
        [c("app", "php:8.3-fpm", exec_(*USER_SIGNAL_AND_WAIT))],
        65,
        set(),
        id="php-fpm-users-own-signal-and-wait",
    ),
    pytest.param(
        [c("app", "php:8.3-fpm", sleep(5, "SIGQUIT"))], 120, {(PHP, "app")}, id="php-fpm-alone-own-drain"
    ),
    pytest.param([c("web", "httpd:2.4")], None, {(NO, "web"), (FAST, "web"), (GRACE, None)}, id="httpd-bare"),
    pytest.param(
        [c("web", "httpd:2.4", exec_("apachectl", "-k", "graceful-stop"))],
        60,
        {(EARLY, "web"), (FAST, "web")},
        id="apachectl-graceful-stop",
    ),
    pytest.param([c("web", "httpd:2.4", sleep(5, "SIGQUIT"))], 60, {(FAST, "web")}, id="httpd-wrong-signal"),
    pytest.param([c("web", "httpd:2.4", sleep(5, "SIGWINCH"))], 60, set(), id="httpd-clean"),
    pytest.param([c("app", "ghcr.io/acme/shop:1")], None, set(), id="generic-not-assessed"),
    pytest.param([c("worker", "busybox:1.36"), c("cache", "redis:7")], None, set(), id="no-web-role"),
]


@pytest.mark.parametrize(("containers", "grace", "expected"), NOT_OPTED_IN)
def test_not_opted_in(
    builtin_profiles: dict[str, ShutdownProfile],
    deployment: Any,
    containers: list[dict[str, Any]],
    grace: int | None,
    expected: set[tuple[Code, str | None]],
) -> None:
    w = workload_parser.from_object(deployment(containers, grace=grace), with_ownership=False)
    result = planner.plan(w, builtin_profiles, CAPS)
    assert result.outcome is Outcome.NOT_OPTED_IN
    assert {(f.code, f.container) for f in result.findings_before} == expected
    assert len(result.findings_before) == len(expected)  # each code at most once per container
    assert list(result.findings_before) == sorted(result.findings_before)


OPTED_IN = [
    pytest.param(
        "web", [c("app", "ghcr.io/acme/shop:1")], None, {}, {(NO, "app"), (GRACE, None)}, id="web-bare"
    ),
    pytest.param(
        "web", [c("app", "ghcr.io/acme/shop:1", sleep(5))], 40, {}, set(), id="web-clean-no-signal-check"
    ),
    pytest.param(
        "nginx",
        [c("nginx", "nginx:1.27", sleep(5, "SIGQUIT"))],
        60,
        {ANN_PRESTOP_SLEEP: "10"},
        {(SHORT, "nginx")},
        id="override-raises-the-bar",
    ),
    pytest.param(
        "nginx-php-fpm",
        [c("nginx", "nginx:1.27", sleep(5, "SIGQUIT")), c("php-fpm", "php:8.3-fpm", sleep(10, "SIGQUIT"))],
        120,
        {ANN_MODE: "audit"},
        {(PHP, "php-fpm")},
        id="audit-mode",
    ),
    pytest.param(
        "php-fpm",
        [c("nginx", "nginx:1.27"), c("php-fpm", "php:8.3-fpm", sleep(35, "SIGQUIT"))],
        70,
        {},
        set(),
        id="profile-decides-not-detection",  # nginx is not in the php-fpm profile: not assessed
    ),
]


@pytest.mark.parametrize(("profile", "containers", "grace", "annotations", "expected"), OPTED_IN)
def test_opted_in(
    builtin_profiles: dict[str, ShutdownProfile],
    deployment: Any,
    profile: str,
    containers: list[dict[str, Any]],
    grace: int | None,
    annotations: dict[str, str],
    expected: set[tuple[Code, str | None]],
) -> None:
    manifest = deployment(containers, grace=grace, profile=profile, annotations=annotations)
    result = planner.plan(workload_parser.from_object(manifest, with_ownership=False), builtin_profiles, CAPS)
    assert result.outcome in (Outcome.MANAGED, Outcome.AUDIT)
    assert {(f.code, f.container) for f in result.findings_before} == expected


def test_messages_give_the_numbers(builtin_profiles: dict[str, ShutdownProfile], deployment: Any) -> None:
    manifest = deployment(
        [c("nginx", "nginx:1.27", sleep(2, "SIGQUIT")), c("php-fpm", "php:8.3-fpm", sleep(10))], grace=20
    )
    findings = {
        f.code: f.message
        for f in planner.plan(
            workload_parser.from_object(manifest, with_ownership=False), builtin_profiles, CAPS
        ).findings_before
    }
    assert findings[SHORT] == "preStop waits 2s, less than the 5s endpoint/load-balancer propagation"
    assert findings[GRACE] == (
        "terminationGracePeriodSeconds 20 is shorter than the 65s of preStop waits plus drain"
    )
    assert findings[FAST] == "php-fpm stops on SIGTERM, a fast shutdown; its graceful stop is SIGQUIT"
    assert "before nginx can have drained (35s)" in findings[PHP]


def test_detection_prefers_the_profile_matching_most_containers(
    builtin_profiles: dict[str, ShutdownProfile], workload: Any, container: Any
) -> None:
    w = workload(container("front", "nginx:1.27"), container("app", "php:8.3-fpm"), container("w", "busybox"))
    found = planner.detect_expectations(w, builtin_profiles)
    assert [(e.container, e.rule, e.role, e.after) for e in found] == [
        ("front", "nginx", Role.NGINX, ()),
        ("app", "php-fpm", Role.PHP_FPM, ("front",)),
    ]


def test_assess_directly_with_expectations(workload: Any, container: Any) -> None:
    w = workload(container("a", "x"), container("b", "y", pre_stop={"sleep": {"seconds": 40}}), grace=90)
    expectations = [
        Expectation("a", "r", Role.GENERIC, 3, 10, None),
        Expectation("b", "s", Role.PHP_FPM, 5, 30, None, after=("a",)),
    ]
    assert assess.assess(w, expectations) == (
        Finding(
            NO, "a", "no preStop hook: the stop signal races endpoint removal (expected 3s of propagation)"
        ),
    )
    assert assess.assess(w, []) == ()


def test_every_code_is_a_risk_a_decision_a_notice_or_an_error() -> None:
    decisions = {
        Code.USER_HOOK_KEPT,
        Code.STOP_SIGNAL_KEPT,
        Code.GRACE_PINNED,
        Code.OWNER_RECLAIMED,
        Code.NO_MATCHING_CONTAINERS,
        Code.NO_SHELL_FOR_FALLBACK,
        Code.STOP_SIGNAL_IGNORED,
    }
    assert RISKS.isdisjoint(ERRORS) and RISKS.isdisjoint(decisions) and ERRORS.isdisjoint(decisions)
    assert NOTICES.isdisjoint(RISKS | ERRORS | decisions)
    assert RISKS | ERRORS | decisions | NOTICES == set(Code)
    assert Finding(NO, "x", "m").to_dict() == {"code": "NoPreStop", "container": "x", "message": "m"}


@pytest.mark.parametrize("profile", ["nginx", "web"])
def test_zero_propagation_is_not_reported_as_missing_prestop(
    builtin_profiles: dict[str, ShutdownProfile], deployment: Any, profile: str
) -> None:
    manifest = deployment([c("nginx", "nginx:1.27")], profile=profile, annotations={ANN_PRESTOP_SLEEP: "0"})
    gate = Capabilities(native_sleep=True, stop_signal=True)
    result = planner.plan(workload_parser.from_object(manifest, with_ownership=False), builtin_profiles, gate)
    assert result.outcome is Outcome.MANAGED
    assert result.findings_after == ()
    rendered = apply_body.merge_into_manifest(manifest, result)
    again = planner.plan(workload_parser.from_object(rendered, with_ownership=False), builtin_profiles, gate)
    assert again.findings_before == ()


def test_hook_longer_than_the_grace_period(
    builtin_profiles: dict[str, ShutdownProfile], deployment: Any
) -> None:
    manifest = deployment([c("nginx", "nginx:1.27", sleep(60, "SIGQUIT"))], grace=40)
    result = planner.plan(workload_parser.from_object(manifest, with_ownership=False), builtin_profiles, CAPS)
    assert {(f.code, f.container) for f in result.findings_before} == {(GRACE, None)}


def test_a_custom_profile_does_not_decide_how_deployments_that_do_not_name_it_are_assessed(
    builtin_profiles: dict[str, ShutdownProfile], workload: Any, container: Any
) -> None:
    # A team's profile, first by name, expecting far longer waits for its own nginx Deployments.
    strict = ShutdownProfile.model_validate(
        {
            "apiVersion": "podgrace.dev/v1alpha1",
            "kind": "ShutdownProfile",
            "metadata": {"name": "a-team-strict"},
            "spec": {
                "containers": [
                    {
                        "name": "n",
                        "match": {"images": ["*nginx*"]},
                        "role": "nginx",
                        "preStopSleepSeconds": 60,
                    },
                ]
            },
        }
    )
    fine = workload(
        container("nginx", "nginx:1.27", pre_stop={"sleep": {"seconds": 5}}, stop_signal="SIGQUIT"), grace=60
    )
    with_custom = {**builtin_profiles, strict.name: strict}
    expected = planner.detect_expectations(fine, builtin_profiles)
    assert planner.detect_expectations(fine, with_custom) == expected
    result = planner.plan(fine, with_custom, CAPS)
    assert result.outcome is Outcome.NOT_OPTED_IN
    assert [f.code for f in result.findings_before if f.is_risk] == []
