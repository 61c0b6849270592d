"""`podgrace render` and `podgrace audit`: output, determinism, exit codes and bad input."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from podgrace import __version__
from podgrace.core.constants import (
    ANN_CONTAINERS,
    ANN_DRAIN,
    ANN_EXISTING_PRESTOP,
    ANN_GRACE,
    ANN_PRESTOP_SLEEP,
    ANN_PROFILE,
    HOOK_MARKER,
)

CAPS_ARGS = {
    "1.29": ["--server-version", "1.29"],
    "1.34": [],
    "1.34+gate": ["--feature-gates", "ContainerStopSignals=true"],
    "1.35+gate": ["--server-version", "v1.35.0", "--feature-gates", "ContainerStopSignals=true"],
}


@pytest.fixture
def example(repo_root: Path) -> str:
    return str(repo_root / "examples" / "php-fpm-deployment.yaml")


def _docs(text: str) -> list[Any]:
    return list(yaml.safe_load_all(text))


def _line(path: str, text: str, after: int = 0) -> int:
    """The 1-based number of the first line after line `after` of the file that contains `text`."""
    lines = Path(path).read_text().splitlines()
    return next(n for n, line in enumerate(lines, start=1) if n > after and text in line)


# --- render -------------------------------------------------------------------------------------------------


def test_render_example(run_cli: Any, example: str) -> None:
    result = run_cli("render", "-f", example)
    assert (result.code, result.err) == (0, "")
    deployment, service = _docs(result.out)
    assert service == _docs(Path(example).read_text())[1]  # other objects pass through untouched
    pod = deployment["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 70
    assert "os" not in pod
    nginx, php = pod["containers"]
    assert nginx["image"] == "nginx:1.27" and nginx["ports"] == [{"containerPort": 80}]
    nginx_script = nginx["lifecycle"]["preStop"]["exec"]["command"][2]
    php_script = php["lifecycle"]["preStop"]["exec"]["command"][2]
    assert nginx_script.startswith(f"{HOOK_MARKER}\nsleep 5\nm=1\n")
    assert "case $c in nginx)" in nginx_script and "\nkill -QUIT $w\n" in nginx_script
    assert php_script.startswith(f"{HOOK_MARKER}\nsleep 35\nm=1\n")
    assert "case $c in php-fpm*)" in php_script and "\nkill -QUIT $w\n" in php_script
    assert "stopSignal" not in nginx["lifecycle"]
    # multi-line scripts are printed as YAML block scalars
    assert "- |-\n" in result.out
    assert result.out.startswith("---\n")


def test_render_example_with_the_gate(run_cli: Any, example: str) -> None:
    result = run_cli("render", "-f", example, *CAPS_ARGS["1.34+gate"])
    assert result.code == 0
    pod = _docs(result.out)[0]["spec"]["template"]["spec"]
    assert pod["os"] == {"name": "linux"}
    assert [c["lifecycle"] for c in pod["containers"]] == [
        {"preStop": {"sleep": {"seconds": 5}}, "stopSignal": "SIGQUIT"},
        {"preStop": {"sleep": {"seconds": 35}}, "stopSignal": "SIGQUIT"},
    ]


@pytest.mark.parametrize("caps", list(CAPS_ARGS), ids=list(CAPS_ARGS))
def test_render_is_deterministic_and_idempotent(
    run_cli: Any, yaml_file: Any, example: str, caps: str
) -> None:
    first = run_cli("render", "-f", example, *CAPS_ARGS[caps])
    second = run_cli("render", "-f", example, *CAPS_ARGS[caps])
    assert first.code == second.code == 0
    assert first.out == second.out  # byte-identical
    again = run_cli("render", "-f", yaml_file(text=first.out), *CAPS_ARGS[caps])
    assert (again.code, again.err) == (0, "")
    assert again.out == first.out  # rendering a rendered manifest changes nothing
    audit = run_cli("audit", "-f", yaml_file(text=first.out), "-o", "json", *CAPS_ARGS[caps])
    assert audit.code == 0
    assert json.loads(audit.out)["atRisk"] == 0


def test_render_as_a_subprocess_is_byte_identical(example: str) -> None:
    command = [sys.executable, "-m", "podgrace.cli.main", "render", "-f", example]
    runs = [subprocess.run(command, capture_output=True, text=True, check=True, timeout=60) for _ in range(2)]
    assert runs[0].stdout == runs[1].stdout
    assert runs[0].stdout.count("kind: Deployment") == 1


def test_render_from_stdin(run_cli: Any, example: str, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = run_cli("render", "-f", example).out
    monkeypatch.setattr(sys, "stdin", io.StringIO(Path(example).read_text()))
    assert run_cli("render", "-f", "-").out == expected


def test_render_warns_on_stderr_about_decisions(run_cli: Any, yaml_file: Any, deployment: Any) -> None:
    manifest = deployment(
        [
            {
                "name": "nginx",
                "image": "nginx:1.27",
                "lifecycle": {"preStop": {"exec": {"command": ["nginx", "-s", "quit"]}}},
            }
        ],
        profile="nginx",
        grace=20,
    )
    result = run_cli("render", "-f", yaml_file(manifest))
    assert result.code == 0
    warnings = result.err.splitlines()
    assert len(warnings) == 2
    assert any(
        w.startswith("warning: default/shop container nginx: the container's own preStop") for w in warnings
    )
    assert any(w.startswith("warning: default/shop: terminationGracePeriodSeconds 20") for w in warnings)
    (rendered,) = _docs(result.out)
    assert rendered["spec"]["template"]["spec"]["containers"][0]["lifecycle"]["preStop"]["exec"][
        "command"
    ] == [
        "nginx",
        "-s",
        "quit",
    ]


def test_render_leaves_non_opted_in_deployments_alone(run_cli: Any, yaml_file: Any, deployment: Any) -> None:
    manifest = deployment([{"name": "nginx", "image": "nginx:1.27"}])
    result = run_cli("render", "-f", yaml_file(manifest))
    assert result.code == 0
    assert _docs(result.out) == [manifest]


def test_render_with_a_user_profile(run_cli: Any, yaml_file: Any, deployment: Any) -> None:
    profile = {
        "apiVersion": "podgrace.dev/v1alpha1",
        "kind": "ShutdownProfile",
        "metadata": {"name": "nginx"},  # overrides the built-in of the same name
        "spec": {
            "gracePeriodMarginSeconds": 0,
            "containers": [
                {"name": "nginx", "match": {"images": ["*nginx*"]}, "role": "nginx", "drainSeconds": 60}
            ],
        },
    }
    manifest = deployment([{"name": "nginx", "image": "nginx:1.27"}], profile="nginx")
    result = run_cli("render", "-f", yaml_file(manifest), "--profiles", yaml_file(profile))
    assert result.code == 0, result.err
    assert _docs(result.out)[0]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 65


# --- audit --------------------------------------------------------------------------------------------------


def test_audit_json(run_cli: Any, yaml_file: Any, deployment: Any, example: str) -> None:
    clean = deployment(
        [
            {
                "name": "web",
                "image": "httpd:2.4",
                "lifecycle": {"preStop": {"sleep": {"seconds": 5}}, "stopSignal": "SIGWINCH"},
            }
        ],
        name="apache",
        namespace="team-a",
        grace=60,
    )
    path = yaml_file(*_docs(Path(example).read_text()), clean)
    result = run_cli("audit", "-f", path, "-o", "json")
    assert result.code == 1
    assert result.err == ""
    report = json.loads(result.out)
    assert set(report) == {"workloads", "atRisk", "warnings"}
    assert (report["atRisk"], report["warnings"]) == (1, [])
    shop, apache = report["workloads"]
    nginx, php = _line(path, "- name: nginx"), _line(path, "- name: php-fpm")
    pod = _line(path, "  spec:", after=_line(path, "template:"))
    assert shop == {
        "kind": "Deployment",
        "namespace": "default",
        "name": "shop",
        "file": path,
        "line": 1,
        "profile": "nginx-php-fpm",
        "optedIn": True,
        "atRisk": True,
        "status": "atRisk",
        "findings": shop["findings"],
        "unrecognised": [],
    }
    assert [(f["code"], f["container"], f["line"]) for f in shop["findings"]] == [
        ("FastStopSignal", "nginx", nginx),
        ("FastStopSignal", "php-fpm", php),
        ("GracePeriodTooShort", None, pod),  # no grace period: the pod spec's line
        ("NoPreStop", "nginx", nginx),
        ("NoPreStop", "php-fpm", php),
    ]
    assert all(set(f) == {"code", "container", "message", "line"} and f["message"] for f in shop["findings"])
    assert apache == {
        "kind": "Deployment",
        "namespace": "team-a",
        "name": "apache",
        "file": path,
        "line": [n for n, t in enumerate(Path(path).read_text().splitlines(), 1) if t.startswith("apiV")][2],
        "profile": None,
        "optedIn": False,
        "atRisk": False,
        "status": "ok",
        "findings": [],
        "unrecognised": [],
    }


def test_audit_clean_exits_0(run_cli: Any, yaml_file: Any, deployment: Any) -> None:
    path = yaml_file(
        deployment([{"name": "worker", "image": "busybox"}]), {"apiVersion": "v1", "kind": "Service"}
    )
    result = run_cli("audit", "-f", path, "-o", "json")
    assert result.code == 0
    assert json.loads(result.out) == {
        "workloads": [
            {
                "kind": "Deployment",
                "namespace": "default",
                "name": "shop",
                "file": path,
                "line": 1,
                "profile": None,
                "optedIn": False,
                "atRisk": False,
                "status": "notAssessed",  # not "safe": podgrace recognised nothing in it
                "findings": [],
                "unrecognised": [
                    {"container": "worker", "image": "busybox", "line": _line(path, "name: worker")}
                ],
            }
        ],
        "atRisk": 0,
        "warnings": [],
    }


def test_audit_text(run_cli: Any, example: str) -> None:
    result = run_cli("audit", "-f", example)
    assert result.code == 1
    lines = result.out.splitlines()
    assert lines[0] == "default/shop (profile nginx-php-fpm)"
    assert lines[1].startswith("  FastStopSignal           nginx: nginx stops on SIGTERM")
    assert lines[-1] == "1 of 1 workloads at risk of dropping requests on termination"


def test_audit_reports_invalid_annotations_as_findings(run_cli: Any, yaml_file: Any, deployment: Any) -> None:
    """As designed (worth knowing): audit does not fail on a workload's bad annotation, it reports it, and
    exits 1 like for a risk."""
    manifest = deployment(
        [{"name": "nginx", "image": "nginx:1.27"}], profile="nginx", annotations={ANN_DRAIN: "5s"}
    )
    result = run_cli("audit", "-f", yaml_file(manifest), "-o", "json")
    assert result.code == 1
    (workload,) = json.loads(result.out)["workloads"]
    assert [f["code"] for f in workload["findings"]] == ["InvalidAnnotation"]


# --- bad input: a clear message on stderr, exit 2, nothing on stdout ----------------------------------------


def _profile_doc(*rules: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "podgrace.dev/v1alpha1",
        "kind": "ShutdownProfile",
        "metadata": {"name": "mine"},
        "spec": {"containers": list(rules)},
    }


def _rule(name: str = "web", **fields: Any) -> dict[str, Any]:
    return {"name": name, "match": {"images": ["*"]}, "role": "generic", **fields}


BAD_PROFILES = [
    pytest.param(
        _profile_doc(_rule("a", stopAfter=["b"]), _rule("b", stopAfter=["a"])),
        "stopAfter forms a cycle: a -> b -> a",
        id="cycle",
    ),
    pytest.param(
        _profile_doc(_rule(stopAfter=["nginx"])), "stopAfter names unknown rules: nginx", id="unknown-after"
    ),
    pytest.param(
        _profile_doc(_rule(role="nginx", stopSignal="SIGTERM")),
        "role nginx stops gracefully only on SIGQUIT, not SIGTERM",
        id="nginx-sigterm",
    ),
    pytest.param(
        _profile_doc(_rule(), _rule()), "container rule names must be unique, repeated: web", id="dup-rules"
    ),
    pytest.param(
        _profile_doc({**_rule(), "match": {}}), "match needs containerNames or images", id="empty-match"
    ),
    pytest.param({"apiVersion": "v1", "kind": "ConfigMap"}, "no ShutdownProfile found", id="no-profile"),
]


@pytest.mark.parametrize("command", ["render", "audit"])
@pytest.mark.parametrize(("profile", "words"), BAD_PROFILES)
def test_bad_profiles_file(
    run_cli: Any, yaml_file: Any, example: str, command: str, profile: dict[str, Any], words: str
) -> None:
    result = run_cli(command, "-f", example, "--profiles", yaml_file(profile))
    assert result.code == 2
    assert result.out == ""
    assert result.err.startswith(f"podgrace {command}: ")
    assert words in result.err


@pytest.mark.parametrize("command", ["render", "audit"])
@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--server-version", "banana"], "server version 'banana' is not MAJOR.MINOR"),
        (["--feature-gates", "Foo=true"], "unknown feature gate(s): Foo; known: ContainerStopSignals"),
        (
            ["--feature-gates", "ContainerStopSignals"],
            "feature gate 'ContainerStopSignals' is not NAME=true|false",
        ),
        (
            ["--server-version", "1.32", "--feature-gates", "ContainerStopSignals=true"],
            "ContainerStopSignals needs Kubernetes 1.33 or newer, not 1.32",
        ),
    ],
    ids=["version-banana", "unknown-gate", "gate-without-value", "gate-too-old"],
)
def test_bad_cluster_description(
    run_cli: Any, example: str, command: str, args: list[str], words: str
) -> None:
    result = run_cli(command, "-f", example, *args)
    assert (result.code, result.out) == (2, "")
    assert words in result.err


@pytest.mark.parametrize("command", ["render", "audit"])
@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("kind: Deployment\n  spec: [\n", "not valid YAML"),
        ("--- [1, 2]\n", "document 1 (line 1): not a mapping"),
        ("apiVersion: v1\nkind: Service\n---\nplain text\n", "document 2 (line 4): not a mapping"),
        ("apiVersion: apps/v1\nkind: Deployment\nmetadata: {}\n", "Deployment has no metadata.name"),
        (
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n"
            "spec: {template: {spec: {containers: []}}}\n",
            "Deployment default/x: spec.template.spec.containers must be a non-empty list",
        ),
        (
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {}\n",
            "Deployment default/x: spec.template.spec is missing or not a mapping",
        ),
        (
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n"
            "spec: {template: {spec: {containers: [{name: a}, {name: a}]}}}\n",
            "container names must be unique",
        ),
    ],
    ids=[
        "bad-yaml",
        "list-document",
        "scalar-document",
        "no-name",
        "no-containers",
        "no-pod-spec",
        "dup-names",
    ],
)
def test_bad_manifest(run_cli: Any, yaml_file: Any, command: str, text: str, words: str) -> None:
    result = run_cli(command, "-f", yaml_file(text=text))
    assert (result.code, result.out) == (2, "")
    assert result.err.startswith(f"podgrace {command}: ")
    assert words in result.err


def test_missing_file(run_cli: Any, tmp_path: Path) -> None:
    result = run_cli("render", "-f", str(tmp_path / "nope.yaml"))
    assert (result.code, result.out) == (2, "")
    assert "cannot read" in result.err and "nope.yaml" in result.err


@pytest.mark.parametrize(
    ("annotations", "words"),
    [
        (
            {ANN_PROFILE: "nginxx"},
            "ShutdownProfile 'nginxx' does not exist (known: apache, nginx,",
        ),
        (
            {ANN_PRESTOP_SLEEP: "-5"},
            "podgrace.dev/prestop-sleep-seconds: '-5' is not a whole number of seconds",
        ),
        ({ANN_DRAIN: "5s"}, "podgrace.dev/drain-seconds: '5s' is not a whole number of seconds"),
        ({ANN_DRAIN: "4000"}, "podgrace.dev/drain-seconds: 4000 is out of range 0..3600"),
        (
            {ANN_GRACE: "999999"},
            "podgrace.dev/termination-grace-period-seconds: 999999 is out of range 1..86400",
        ),
        ({ANN_CONTAINERS: ""}, "podgrace.dev/containers: expected a comma-separated list of container names"),
        ({ANN_CONTAINERS: "php"}, "podgrace.dev/containers: the pod has no container named php"),
        ({ANN_EXISTING_PRESTOP: "drop"}, "podgrace.dev/existing-prestop: 'drop' is not one of keep, replace"),
        ({"podgrace.dev/sleep": "5"}, "podgrace.dev/sleep: unknown podgrace annotation"),
    ],
    ids=[
        "unknown-profile",
        "negative",
        "with-unit",
        "drain-out-of-range",
        "grace-huge",
        "containers-empty",
        "containers-unknown",
        "existing-prestop",
        "unknown-annotation",
    ],
)
def test_render_bad_annotations(
    run_cli: Any, yaml_file: Any, deployment: Any, annotations: dict[str, str], words: str
) -> None:
    good = deployment([{"name": "nginx", "image": "nginx:1.27"}], profile="nginx", name="good")
    bad = deployment(
        [{"name": "nginx", "image": "nginx:1.27"}],
        annotations={ANN_PROFILE: "nginx", **annotations},
        name="bad",
    )
    path = yaml_file(good, bad)
    result = run_cli("render", "-f", path)
    assert (result.code, result.out) == (2, "")  # nothing rendered, not even the good Deployment
    assert result.err.startswith(f"podgrace render: {path}: document 2 (line 24): default/bad: ")
    assert words in result.err


def test_render_reports_every_bad_deployment(run_cli: Any, yaml_file: Any, deployment: Any) -> None:
    one = deployment([{"name": "nginx"}], profile="nope", name="one")
    two = deployment([{"name": "nginx"}], profile="nginx", annotations={ANN_DRAIN: "x"}, name="two")
    result = run_cli("render", "-f", yaml_file(one, two))
    assert result.code == 2
    assert "default/one: " in result.err and "default/two: " in result.err


@pytest.mark.parametrize(
    "argv",
    [[], ["render"], ["audit", "-f", "x.yaml", "-o", "yaml"], ["deploy", "-f", "x.yaml"]],
    ids=["no-command", "no-file", "bad-output", "unknown-command"],
)
def test_usage_errors(run_cli: Any, argv: list[str]) -> None:
    result = run_cli(*argv)
    assert (result.code, result.out) == (2, "")
    assert "usage: podgrace" in result.err


def test_version(run_cli: Any) -> None:
    result = run_cli("--version")
    assert (result.code, result.out.strip()) == (0, f"podgrace {__version__}")


# --- bad input that crashes today ---------------------------------------------------------------------------

NGINX = (
    "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x, annotations: {podgrace.dev/profile: nginx}}\n"
)


def test_render_container_with_null_lifecycle(run_cli: Any, yaml_file: Any) -> None:
    text = (
        NGINX + "spec:\n  template:\n    spec:\n      containers:\n      - name: nginx\n        lifecycle:\n"
    )
    result = run_cli("render", "-f", yaml_file(text=text))
    assert result.code == 0
    assert "sleep 5" in result.out


@pytest.mark.parametrize(
    "lifecycle",
    ["{stopSignal: 5}", "{preStop: {sleep: {seconds: abc}}}"],
    ids=["stop-signal-int", "sleep-seconds-text"],
)
@pytest.mark.parametrize("command", ["render", "audit"])
def test_malformed_lifecycle_is_a_clear_error(
    run_cli: Any, yaml_file: Any, command: str, lifecycle: str
) -> None:
    text = (
        NGINX + f"spec: {{template: {{spec: {{containers: [{{name: nginx, lifecycle: {lifecycle}}}]}}}}}}\n"
    )
    result = run_cli(command, "-f", yaml_file(text=text))
    assert (result.code, result.out) == (2, "")
    assert "Deployment default/x" in result.err


def test_non_utf8_file_is_a_clear_error(run_cli: Any, tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"\xff\xfe\x00kind: Deployment\n")
    result = run_cli("render", "-f", str(path))
    assert (result.code, result.out) == (2, "")


# --- the termination lab's pod with shareProcessNamespace: true (pause is PID 1) -------------------------

LAB_MANIFESTS = Path("bench/termination/manifests")


def _audit(run_cli: Any, path: str) -> tuple[int, list[tuple[str, str | None]]]:
    result = run_cli("audit", "-f", path, "-o", "json")
    assert result.err == ""
    (workload,) = json.loads(result.out)["workloads"]
    return result.code, [(f["code"], f["container"]) for f in workload["findings"]]


def _render(run_cli: Any, path: str, gate: str, out: Path) -> str:
    result = run_cli("render", "-f", path, *CAPS_ARGS["1.35+gate"][:2], "--feature-gates", gate)
    assert result.code == 0, result.err
    out.write_text(result.out)
    return str(out)


@pytest.mark.parametrize("gate", ["ContainerStopSignals=true", "ContainerStopSignals=false"])
def test_audit_of_the_lab_pods_that_share_their_pid_namespace(
    run_cli: Any, repo_root: Path, tmp_path: Path, gate: str
) -> None:
    original = str(repo_root / LAB_MANIFESTS / "nginx-php-fpm-shared-pid.yaml")
    pid1_hook = str(repo_root / LAB_MANIFESTS / "nginx-php-fpm-shared-pid-hook-pid1.yaml")
    fast = [("FastStopSignal", "nginx"), ("FastStopSignal", "php-fpm")]
    assert _audit(run_cli, original) == (1, [*fast, ("NoPreStop", "nginx"), ("NoPreStop", "php-fpm")])
    pause = [("SignalHookHitsPause", "nginx"), ("SignalHookHitsPause", "php-fpm")]
    assert _audit(run_cli, pid1_hook) == (1, [*fast, *pause])  # QUIT to pause: the kubelet's TERM stops them

    rendered = _render(run_cli, original, gate, tmp_path / "rendered.yaml")
    assert _audit(run_cli, rendered) == (0, [])
    if gate.endswith("false"):  # the fallback hooks signal the workers of the master they find under /proc
        text = Path(rendered).read_text()
        assert text.count("kill -QUIT $w") == 2 and "kill -QUIT 1" not in text

    # podgrace keeps a user's hook by default: the hook still hits pause and audit still says so
    kept = _audit(run_cli, _render(run_cli, pid1_hook, gate, tmp_path / "kept.yaml"))
    assert kept == (1, pause if gate.endswith("true") else [*fast, *pause])
    # with existing-prestop: replace, podgrace's hooks replace them and the pod is safe
    doc = yaml.safe_load(Path(pid1_hook).read_text())
    doc["metadata"]["annotations"][ANN_EXISTING_PRESTOP] = "replace"
    replace = tmp_path / "replace.yaml"
    replace.write_text(yaml.safe_dump(doc))
    assert _audit(run_cli, _render(run_cli, str(replace), gate, tmp_path / "replaced.yaml")) == (0, [])
