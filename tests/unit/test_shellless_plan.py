"""Containers without a shell (distroless, Chainguard, chiselled images, or `podgrace.dev/no-shell`): podgrace
writes no exec hook into them, says what it could not do, and audit flags exec hooks there as broken.

Expected hooks are spelled out literally (as in test_planner.py): a change to what podgrace writes fails here.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from podgrace.core import overrides, planner, workload_parser
from podgrace.core.capabilities import STOP_SIGNALS_GATE, Capabilities, from_description
from podgrace.core.constants import ANN_EXISTING_PRESTOP, ANN_NO_SHELL, HOOK_MARKER
from podgrace.core.findings import Code
from podgrace.core.models import ShutdownProfile
from podgrace.core.planner import Outcome
from podgrace.core.shellless import known_shellless

CAPS: dict[str, Capabilities] = {
    "1.29": from_description((1, 29), {}),  # no native sleep, no stopSignal
    "1.34": from_description((1, 34), {}),  # native sleep, no stopSignal (the default)
    "1.34+gate": from_description((1, 34), {STOP_SIGNALS_GATE: True}),
}

# --- which images podgrace knows to have no shell ------------------------------------------------------

IMAGES: list[tuple[str, str | None]] = [
    ("gcr.io/distroless/static", "distroless"),
    ("gcr.io/distroless/static-debian12:nonroot", "distroless"),
    ("gcr.io/distroless/base@sha256:" + "a" * 64, "distroless"),
    ("ghcr.io/acme/distroless-static-debian12", "distroless"),
    ("mcr.microsoft.com/dotnet/aspnet:10.0-azurelinux3.0-distroless", "distroless"),
    ("gcr.io/distroless/static:debug", None),  # busybox sh
    ("gcr.io/distroless/base-debian12:debug-nonroot", None),
    ("cgr.dev/chainguard/nginx", "Chainguard"),
    ("cgr.dev/chainguard/nginx:latest", "Chainguard"),
    ("cgr.dev/chainguard/php:latest-fpm", "Chainguard"),
    ("cgr.dev/acme.com/nginx:1.27", "Chainguard"),  # an organisation's own Chainguard registry
    ("cgr.dev/chainguard/nginx:latest-dev", None),  # -dev variants have a shell
    ("cgr.dev/chainguard/php:latest-fpm-dev", None),
    ("cgr.dev/acme.com/php:8.3-dev", None),
    ("mcr.microsoft.com/dotnet/aspnet:8.0-jammy-chiseled", "Ubuntu chiselled"),
    ("mcr.microsoft.com/dotnet/runtime-deps:9.0-noble-chiseled-extra", "Ubuntu chiselled"),
    ("ubuntu/dotnet-aspnet:8.0_edge", "Ubuntu chiselled"),
    ("nginx:1.27", None),
    ("php:8.3-fpm-alpine", None),
    ("httpd:2.4", None),
    ("ubuntu/nginx:1.24-24.04_beta", None),
    ("", None),
]


@pytest.mark.parametrize(("image", "base"), IMAGES, ids=[i or "(none)" for i, _ in IMAGES])
def test_known_shellless_images(image: str, base: str | None) -> None:
    assert known_shellless(image) == base


# --- the annotation ------------------------------------------------------------------------------------

ANNOTATION = [
    ("true", True, ()),
    (" TRUE ", True, ()),
    ("false", False, ()),
    ("php-fpm", frozenset({"php-fpm"}), ()),
    ("nginx, php-fpm", frozenset({"nginx", "php-fpm"}), ()),
    ("yes", frozenset({"yes"}), ()),  # a container name (the pod must have it: see the planner test)
    (
        ",",
        frozenset(),
        (f"{ANN_NO_SHELL}: expected true, false or a comma-separated list of container names",),
    ),
    ("Nginx", frozenset({"Nginx"}), (f"{ANN_NO_SHELL}: 'Nginx' not valid container names",)),
    ("x" * 1025, None, (f"{ANN_NO_SHELL}: the value is 1025 characters long, more than 1024",)),
]


@pytest.mark.parametrize(("value", "parsed", "errors"), ANNOTATION, ids=[a[0][:20] for a in ANNOTATION])
def test_no_shell_annotation(value: str, parsed: object, errors: tuple[str, ...]) -> None:
    result = overrides.parse({ANN_NO_SHELL: value})
    assert (result.no_shell, result.errors) == (parsed, errors)


# --- the planner: shell-less x capabilities x roles ----------------------------------------------------


def native(seconds: int) -> dict[str, Any]:
    return {"sleep": {"seconds": seconds}}


def exec_sleep(seconds: int) -> dict[str, Any]:
    return {"exec": {"command": ["/bin/sh", "-c", f"{HOOK_MARKER}\nsleep {seconds}"]}}


CHAINGUARD = {
    "nginx": "cgr.dev/chainguard/nginx:latest",
    "php-fpm": "cgr.dev/chainguard/php:latest-fpm",
    "apache": "gcr.io/distroless/base-debian12",  # (an httpd built on distroless, recognised by name)
    "web": "gcr.io/distroless/static-debian12:nonroot",
}
SHELL_IMAGES = {"nginx": "nginx:1.27", "php-fpm": "php:8.3-fpm", "apache": "httpd:2.4", "web": "acme/shop:1"}
CONTAINER = {"nginx": "nginx", "php-fpm": "php-fpm", "apache": "httpd", "web": "app"}
LOST = Code.NO_SHELL_FOR_FALLBACK

# (profile, how the container is known to have no shell, caps, preStop, stopSignal, Warnings, risks after)
#   how: "image" (a known shell-less image) or "annotation" (a shell image, podgrace.dev/no-shell: true)
PLAN_TABLE: list[tuple[str, str, str, dict[str, Any] | None, str | None, list[Code], set[Code]]] = []
for _how in ("image", "annotation"):
    PLAN_TABLE += [
        # nginx: 5 s sleep then SIGQUIT; without stopSignal it gets the kubelet's SIGTERM
        ("nginx", _how, "1.29", None, None, [LOST, LOST], {Code.NO_PRESTOP, Code.FAST_STOP_SIGNAL}),
        ("nginx", _how, "1.34", native(5), None, [LOST], {Code.FAST_STOP_SIGNAL}),
        ("nginx", _how, "1.34+gate", native(5), "SIGQUIT", [], set()),
        # php-fpm alone: signalled after 5 + 30 s
        ("php-fpm", _how, "1.29", None, None, [LOST, LOST], {Code.NO_PRESTOP, Code.FAST_STOP_SIGNAL}),
        ("php-fpm", _how, "1.34", native(35), None, [LOST], {Code.FAST_STOP_SIGNAL}),
        ("php-fpm", _how, "1.34+gate", native(35), "SIGQUIT", [], set()),
        # Apache: SIGWINCH
        ("apache", _how, "1.29", None, None, [LOST, LOST], {Code.NO_PRESTOP, Code.FAST_STOP_SIGNAL}),
        ("apache", _how, "1.34", native(5), None, [LOST], {Code.FAST_STOP_SIGNAL}),
        ("apache", _how, "1.34+gate", native(5), "SIGWINCH", [], set()),
        # generic: no signal to deliver, only the sleep, which needs the native form
        ("web", _how, "1.29", None, None, [LOST], {Code.NO_PRESTOP}),
        ("web", _how, "1.34", native(5), None, [], set()),
        ("web", _how, "1.34+gate", native(5), None, [], set()),
    ]


def _pod(profile: str, how: str, deployment: Any, **kwargs: Any) -> Any:
    image = CHAINGUARD[profile] if how == "image" else SHELL_IMAGES[profile]
    annotations = {ANN_NO_SHELL: "true"} if how == "annotation" else {}
    annotations.update(kwargs.pop("annotations", {}))
    container = {"name": CONTAINER[profile], "image": image, **kwargs.pop("extra", {})}
    return deployment([container], profile=profile, annotations=annotations, **kwargs)


@pytest.mark.parametrize(
    ("profile", "how", "caps", "pre_stop", "stop_signal", "warnings", "after"),
    PLAN_TABLE,
    ids=[f"{p}-{h}@{c}" for p, h, c, *_ in PLAN_TABLE],
)
def test_shellless_plan(
    builtin_profiles: dict[str, ShutdownProfile],
    deployment: Any,
    handler: Any,
    profile: str,
    how: str,
    caps: str,
    pre_stop: dict[str, Any] | None,
    stop_signal: str | None,
    warnings: list[Code],
    after: set[Code],
) -> None:
    w = workload_parser.from_object(_pod(profile, how, deployment), with_ownership=False)
    result = planner.plan(w, builtin_profiles, CAPS[caps])

    assert result.outcome is Outcome.MANAGED
    (settings,) = result.containers
    assert (handler(settings), settings.stop_signal) == (pre_stop, stop_signal)
    assert [d.code for d in result.decisions] == warnings
    assert {f.code for f in result.findings_after} == after
    # the grace period still covers the waits and the drain
    assert result.termination_grace_period_seconds == (70 if profile == "php-fpm" else 40)


def test_no_shell_warnings_say_what_podgrace_could_not_do(
    builtin_profiles: dict[str, ShutdownProfile], deployment: Any
) -> None:
    w = workload_parser.from_object(_pod("php-fpm", "image", deployment), with_ownership=False)
    [lost] = planner.plan(w, builtin_profiles, CAPS["1.34"]).decisions
    assert lost.container == "php-fpm"
    assert lost.message == (
        "php-fpm gets SIGTERM (a fast shutdown), not its graceful SIGQUIT: the cluster has no "
        "lifecycle.stopSignal (feature gate ContainerStopSignals), and podgrace's fallback hook that sends "
        "SIGQUIT needs a shell (its image 'cgr.dev/chainguard/php:latest-fpm' is a Chainguard image, "
        "without a shell)"
    )
    w = workload_parser.from_object(_pod("nginx", "annotation", deployment), with_ownership=False)
    decisions = planner.plan(w, builtin_profiles, CAPS["1.29"]).decisions
    assert [d.message for d in decisions][1] == (
        "no preStop wait of 5s: the cluster has no native preStop sleep (Kubernetes 1.30+) and an exec "
        f"sleep needs a shell ({ANN_NO_SHELL} declares no shell in it); the stop signal races endpoint "
        "removal"
    )


@pytest.mark.parametrize("caps", list(CAPS))
def test_shell_images_keep_the_fallback_hooks(
    builtin_profiles: dict[str, ShutdownProfile], deployment: Any, handler: Any, caps: str
) -> None:
    """The control rows: the same pods with a shell (`-dev`, `:debug`, or no-shell: false over a known
    image) get podgrace's exec forms where the cluster needs them."""
    pods = [
        deployment([{"name": "nginx", "image": "cgr.dev/chainguard/nginx:latest-dev"}], profile="nginx"),
        deployment([{"name": "nginx", "image": "gcr.io/distroless/base:debug"}], profile="nginx"),
        deployment(
            [{"name": "nginx", "image": "cgr.dev/chainguard/nginx"}],
            profile="nginx",
            annotations={ANN_NO_SHELL: "false"},
        ),
    ]
    for pod in pods:
        result = planner.plan(
            workload_parser.from_object(pod, with_ownership=False), builtin_profiles, CAPS[caps]
        )
        (settings,) = result.containers
        assert ("exec" in (handler(settings) or {})) is (caps != "1.34+gate")
        assert result.decisions == ()


def test_no_shell_names_only_some_containers(
    builtin_profiles: dict[str, ShutdownProfile], deployment: Any, handler: Any
) -> None:
    pod = deployment(
        [{"name": "nginx", "image": "nginx:1.27"}, {"name": "php-fpm", "image": "php:8.3-fpm"}],
        profile="nginx-php-fpm",
        annotations={ANN_NO_SHELL: "php-fpm"},
    )
    result = planner.plan(
        workload_parser.from_object(pod, with_ownership=False), builtin_profiles, CAPS["1.34"]
    )
    hooks = {s.name: handler(s) for s in result.containers}
    assert "exec" in hooks["nginx"]
    assert hooks["php-fpm"] == native(35)
    assert [(d.code, d.container) for d in result.decisions] == [(LOST, "php-fpm")]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("redis", f"{ANN_NO_SHELL}: the pod has no container named redis"),
        ("Nginx", f"{ANN_NO_SHELL}: 'Nginx' not valid container names"),
    ],
)
def test_bad_no_shell_annotation_changes_nothing(
    builtin_profiles: dict[str, ShutdownProfile], deployment: Any, value: str, message: str
) -> None:
    pod = deployment(
        [{"name": "nginx", "image": "nginx"}], profile="nginx", annotations={ANN_NO_SHELL: value}
    )
    result = planner.plan(
        workload_parser.from_object(pod, with_ownership=False), builtin_profiles, CAPS["1.34"]
    )
    assert result.outcome is Outcome.INVALID
    assert [(e.code, e.message) for e in result.errors] == [(Code.INVALID_ANNOTATION, message)]
    assert result.containers == ()


# --- existing exec hooks in shell-less containers ------------------------------------------------------

# sleeps, signals nginx and waits for it: graceful where /bin/sh exists
USERS_SH_HOOK = {
    "exec": {"command": ["/bin/sh", "-c", "sleep 10; kill -QUIT 1; while kill -0 1; do sleep 1; done"]}
}


@pytest.mark.parametrize("policy", ["keep", "replace"])
@pytest.mark.parametrize("caps", list(CAPS))
def test_users_exec_hook_is_kept_and_said_broken(
    builtin_profiles: dict[str, ShutdownProfile], deployment: Any, caps: str, policy: str
) -> None:
    """podgrace cannot put a native sleep where the user's exec hook is (a forced apply would leave both
    handler types) nor an exec hook of its own: it keeps the user's, says it fails, and audit flags it."""
    pod = _pod(
        "nginx", "image", deployment, extra={"lifecycle": {"preStop": USERS_SH_HOOK}},
        annotations={ANN_EXISTING_PRESTOP: policy},
    )  # fmt: skip
    result = planner.plan(
        workload_parser.from_object(pod, with_ownership=False), builtin_profiles, CAPS[caps]
    )
    (settings,) = result.containers
    assert settings.pre_stop is None
    kept = next(d for d in result.decisions if d.code is Code.USER_HOOK_KEPT)
    assert kept.message.endswith(
        "; it fails at once: its image 'cgr.dev/chainguard/nginx:latest' is a Chainguard image, without a "
        "shell); podgrace's needs 5s before the stop signal"
    )
    assert Code.EXEC_HOOK_WITHOUT_SHELL in {f.code for f in result.findings_before}
    assert Code.EXEC_HOOK_WITHOUT_SHELL in {f.code for f in result.findings_after}


@pytest.mark.parametrize(
    ("hook", "caps", "expected"),
    [
        (exec_sleep(5), "1.34", native(5)),  # podgrace's own exec sleep becomes its native sleep
        (exec_sleep(5), "1.34+gate", native(5)),
        (native(5), "1.34", native(5)),  # no change: no write
    ],
)
def test_podgraces_own_exec_hook_goes_native(
    builtin_profiles: dict[str, ShutdownProfile],
    deployment: Any,
    handler: Any,
    hook: dict[str, Any],
    caps: str,
    expected: dict[str, Any],
) -> None:
    pod = deployment(
        [{"name": "app", "image": CHAINGUARD["web"], "lifecycle": {"preStop": hook}}], profile="web"
    )
    result = planner.plan(
        workload_parser.from_object(pod, with_ownership=False), builtin_profiles, CAPS[caps]
    )
    (settings,) = result.containers
    assert handler(settings) == expected
    assert result.findings_after == ()


# --- audit ---------------------------------------------------------------------------------------------

AUDIT_TABLE = [
    # (image, annotations, preStop, risks)
    (CHAINGUARD["nginx"], {}, USERS_SH_HOOK, {Code.EXEC_HOOK_WITHOUT_SHELL, Code.FAST_STOP_SIGNAL}),
    (CHAINGUARD["nginx"], {}, exec_sleep(5), {Code.EXEC_HOOK_WITHOUT_SHELL, Code.FAST_STOP_SIGNAL}),
    (CHAINGUARD["nginx"], {}, {"exec": {"command": ["sleep", "5"]}}, {Code.EXEC_HOOK_WITHOUT_SHELL,
                                                                      Code.FAST_STOP_SIGNAL}),
    # the server's own binary may be there: judged as any hook (this one returns early)
    (CHAINGUARD["nginx"], {}, {"exec": {"command": ["/usr/sbin/nginx", "-s", "quit"]}},
     {Code.KNOWN_BAD_HOOK, Code.FAST_STOP_SIGNAL}),
    (CHAINGUARD["nginx"], {}, native(5), {Code.FAST_STOP_SIGNAL}),
    ("nginx:1.27", {}, USERS_SH_HOOK, set()),  # a shell image: the same hook works
    ("nginx:1.27", {ANN_NO_SHELL: "true"}, USERS_SH_HOOK, {Code.EXEC_HOOK_WITHOUT_SHELL,
                                                           Code.FAST_STOP_SIGNAL}),
    (CHAINGUARD["nginx"], {ANN_NO_SHELL: "false"}, USERS_SH_HOOK, set()),
]  # fmt: skip


@pytest.mark.parametrize(("image", "annotations", "hook", "risks"), AUDIT_TABLE)
def test_audit_of_shellless_containers(
    builtin_profiles: dict[str, ShutdownProfile],
    deployment: Any,
    image: str,
    annotations: dict[str, str],
    hook: dict[str, Any],
    risks: set[Code],
) -> None:
    """Not opted in: audit's view of the pod as it is."""
    pod = deployment(
        [{"name": "nginx", "image": image, "lifecycle": {"preStop": hook}}], annotations=annotations, grace=60
    )
    result = planner.plan(
        workload_parser.from_object(pod, with_ownership=False), builtin_profiles, CAPS["1.34"]
    )
    assert {f.code for f in result.findings_before} == risks


# --- the CLI -------------------------------------------------------------------------------------------


def test_render_writes_no_exec_hook_into_a_shellless_pod(
    run_cli: Any, yaml_file: Any, deployment: Any
) -> None:
    pod = deployment(
        [
            {"name": "nginx", "image": CHAINGUARD["nginx"]},
            {"name": "php-fpm", "image": CHAINGUARD["php-fpm"]},
        ],
        profile="nginx-php-fpm",
    )
    path = yaml_file(pod)
    result = run_cli("render", "-f", path)
    assert result.code == 0
    containers = yaml.safe_load(result.out)["spec"]["template"]["spec"]["containers"]
    assert [c["lifecycle"] for c in containers] == [{"preStop": native(5)}, {"preStop": native(35)}]
    assert result.err.splitlines() == [
        f"warning: default/shop container {name}: {name} gets SIGTERM (a fast shutdown), not its graceful "
        "SIGQUIT: the cluster has no lifecycle.stopSignal (feature gate ContainerStopSignals), and "
        f"podgrace's fallback hook that sends SIGQUIT needs a shell (its image '{CHAINGUARD[name]}' is a "
        "Chainguard image, without a shell)"
        for name in ("nginx", "php-fpm")
    ]
    # the rendered pod is still at risk, and audit says so
    audited = run_cli("audit", "-f", yaml_file(text=result.out))
    assert audited.code == 1
    assert "FastStopSignal" in audited.out and "only lifecycle.stopSignal can give it" in audited.out

    gated = run_cli("render", "-f", path, "--feature-gates", "ContainerStopSignals=true")
    assert (gated.code, gated.err) == (0, "")
    assert run_cli("audit", "-f", yaml_file(text=gated.out)).code == 0


def test_audit_flags_an_exec_hook_in_a_shellless_image(run_cli: Any, yaml_file: Any, deployment: Any) -> None:
    pod = deployment(
        [{"name": "nginx", "image": CHAINGUARD["nginx"], "lifecycle": {"preStop": USERS_SH_HOOK}}]
    )
    result = run_cli("audit", "-f", yaml_file(pod), "-o", "json")
    assert result.code == 1
    [entry] = json.loads(result.out)["workloads"]
    codes = {f["code"] for f in entry["findings"]}
    assert "ExecHookWithoutShell" in codes


@pytest.mark.parametrize("caps", ["1.29", "1.34"])
def test_render_removes_podgraces_own_exec_hook_from_a_shellless_container(
    run_cli: Any, yaml_file: Any, deployment: Any, caps: str
) -> None:
    """A manifest rendered before the image became shell-less carries podgrace's exec sleep: render now
    writes the native sleep, or (before 1.30, no native sleep) removes it, as the operator's apply would;
    the user's own hook in another container stays."""
    users = {"exec": {"command": ["/bin/sh", "-c", "sleep 3"]}}
    pod = deployment(
        [
            {"name": "app", "image": CHAINGUARD["web"], "lifecycle": {"preStop": exec_sleep(5)}},
            {"name": "sidecar", "image": "busybox", "lifecycle": {"preStop": users}},
        ],
        profile="web",
        annotations={"podgrace.dev/containers": "app"},
    )
    args = ["--server-version", caps]
    result = run_cli("render", "-f", yaml_file(pod), *args)
    assert result.code == 0
    app, sidecar = yaml.safe_load(result.out)["spec"]["template"]["spec"]["containers"]
    assert app.get("lifecycle") == ({"preStop": native(5)} if caps == "1.34" else None)
    assert sidecar["lifecycle"] == {"preStop": users}
    again = run_cli("render", "-f", yaml_file(text=result.out), *args)
    assert again.out == result.out  # idempotent
