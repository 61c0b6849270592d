"""`podgrace render` and `audit` in pipelines: kubectl's Lists, every workload kind, values the API server
would reject, exit codes that never confuse bad input or a bug with a finding, and a closed pipe."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from podgrace.cli import main as cli
from podgrace.core.constants import ANN_DRAIN, ANN_PROFILE

REPO = Path(__file__).resolve().parents[2]


def _as_list(*items: dict[str, Any]) -> dict[str, Any]:
    """What `kubectl get deployments -A -o yaml` prints."""
    return {"apiVersion": "v1", "kind": "List", "items": list(items), "metadata": {"resourceVersion": ""}}


def _nginx(deployment: Any, **kwargs: Any) -> dict[str, Any]:
    manifest: dict[str, Any] = deployment([{"name": "nginx", "image": "nginx:1.27"}], **kwargs)
    return manifest


# --- kind: List ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["yaml", "json"])
def test_audit_reads_a_list_item_by_item(run_cli: Any, yaml_file: Any, deployment: Any, form: str) -> None:
    listing = _as_list(_nginx(deployment, name="a"), _nginx(deployment, name="b", profile="nginx"))
    text = json.dumps(listing, indent=4) if form == "json" else yaml.safe_dump(listing)
    result = run_cli("audit", "-f", yaml_file(text=text), "-o", "json")
    assert result.code == 1  # used to be "0 of 0 at risk", exit 0
    report = json.loads(result.out)
    assert [(w["name"], w["atRisk"]) for w in report["workloads"]] == [("a", True), ("b", True)]


@pytest.mark.parametrize("form", ["yaml", "json"])
def test_render_keeps_the_list_shape(run_cli: Any, yaml_file: Any, deployment: Any, form: str) -> None:
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}}
    listing = _as_list(_nginx(deployment, name="a", profile="nginx"), service)
    text = json.dumps(listing, indent=4) if form == "json" else yaml.safe_dump(listing, sort_keys=False)
    result = run_cli("render", "-f", yaml_file(text=text))
    assert (result.code, result.err) == (0, "")
    (rendered,) = yaml.safe_load_all(result.out)
    assert rendered["kind"] == "List" and rendered["metadata"] == {"resourceVersion": ""}
    first, second = rendered["items"]
    assert first["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 40
    assert second == service
    single = run_cli("render", "-f", yaml_file(listing["items"][0]))
    assert first == yaml.safe_load(single.out)  # the same rendering as on its own


def test_typed_list_items_get_their_kind_from_the_list(run_cli: Any, yaml_file: Any, deployment: Any) -> None:
    item = _nginx(deployment, profile="nginx")
    del item["apiVersion"], item["kind"]
    listing = {"apiVersion": "apps/v1", "kind": "DeploymentList", "items": [item]}
    result = run_cli("render", "-f", yaml_file(listing))
    assert result.code == 0
    (rendered,) = yaml.safe_load_all(result.out)
    assert set(rendered["items"][0]) == {"metadata", "spec"}  # printed as it came
    assert "lifecycle" in rendered["items"][0]["spec"]["template"]["spec"]["containers"][0]


def test_empty_list(run_cli: Any, yaml_file: Any) -> None:
    result = run_cli("audit", "-f", yaml_file(_as_list()))
    assert (result.code, result.out) == (0, "0 of 0 workloads at risk of dropping requests on termination\n")


def test_bad_list_item_names_the_item(run_cli: Any, yaml_file: Any, deployment: Any) -> None:
    path = yaml_file(_as_list(_nginx(deployment), "text"))
    result = run_cli("audit", "-f", path)
    assert (result.code, result.out) == (2, "")
    assert f"{path}: document 1 item 1 (line " in result.err and "not a mapping" in result.err


# --- workload kinds --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["StatefulSet", "DaemonSet"])
def test_statefulsets_and_daemonsets_are_handled_like_deployments(
    run_cli: Any, yaml_file: Any, deployment: Any, kind: str
) -> None:
    as_deployment = _nginx(deployment, profile="nginx")
    other = {**copy.deepcopy(as_deployment), "kind": kind}
    rendered = run_cli("render", "-f", yaml_file(other))
    assert (rendered.code, rendered.err) == (0, "")
    expected = yaml.safe_load(run_cli("render", "-f", yaml_file(as_deployment)).out)
    assert yaml.safe_load(rendered.out) == {**expected, "kind": kind}
    audit = run_cli("audit", "-f", yaml_file({**_nginx(deployment), "kind": kind}))
    assert audit.code == 1
    assert audit.out.splitlines()[0] == f"default/shop ({kind}, not opted in)"


@pytest.mark.parametrize(
    ("obj", "words"),
    [
        ({"apiVersion": "batch/v1", "kind": "CronJob"},
         "podgrace handles apps/v1 Deployments, StatefulSets and DaemonSets, not CronJob batch/v1"),
        ({"apiVersion": "batch/v1", "kind": "Job"}, "not Job batch/v1"),
        ({"apiVersion": "v1", "kind": "Pod"}, "not Pod v1"),
        ({"apiVersion": "apps/v1", "kind": "ReplicaSet"}, "not ReplicaSet apps/v1"),
        ({"apiVersion": "extensions/v1beta1", "kind": "Deployment"}, "Deployment extensions/v1beta1 is not "
         "handled"),
        ({"apiVersion": "apps/v1beta2", "kind": "StatefulSet"}, "StatefulSet apps/v1beta2 is not handled"),
    ],
    ids=["cronjob", "job", "pod", "replicaset", "extensions-deployment", "v1beta2-statefulset"],
)  # fmt: skip
@pytest.mark.parametrize("command", ["render", "audit"])
def test_unhandled_kinds_with_the_annotation_get_a_warning(
    run_cli: Any, yaml_file: Any, obj: dict[str, Any], words: str, command: str
) -> None:
    manifest = {**obj, "metadata": {"name": "x", "annotations": {ANN_PROFILE: "nginx"}}, "spec": {}}
    path = yaml_file(manifest)
    result = run_cli(command, "-f", path)
    assert result.code == 0
    (line,) = result.err.splitlines()
    assert line.startswith(
        f"warning: {path}: document 1 (line 1): {obj['kind']} default/x: podgrace.dev/profile"
    )
    assert words in line
    if command == "audit":
        report = json.loads(run_cli("audit", "-f", path, "-o", "json").out)
        assert [w["object"] for w in report["warnings"]] == [f"{obj['kind']} default/x"]


def test_annotation_on_the_pod_template_gets_a_warning(run_cli: Any, yaml_file: Any, deployment: Any) -> None:
    manifest = _nginx(deployment)
    manifest["spec"]["template"]["metadata"]["annotations"] = {ANN_PROFILE: "nginx"}
    result = run_cli("render", "-f", yaml_file(manifest))
    assert result.code == 0
    assert "is on the pod template (spec.template.metadata.annotations)" in result.err


def test_unannotated_other_kinds_pass_silently(run_cli: Any, yaml_file: Any) -> None:
    result = run_cli(
        "render", "-f", yaml_file({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"}})
    )
    assert (result.code, result.err) == (0, "")


# --- values the API server would reject ----------------------------------------------------------------

POD = "spec.template.spec"


def _with(deployment: Any, where: str, value: Any) -> dict[str, Any]:
    manifest = _nginx(deployment, profile="nginx")
    pod = manifest["spec"]["template"]["spec"]
    if where == "grace":
        pod["terminationGracePeriodSeconds"] = value
    elif where == "name":
        pod["containers"][0]["name"] = value
    elif where == "sleep":
        pod["containers"][0]["lifecycle"] = {"preStop": {"sleep": {"seconds": value}}}
    elif where == "annotation":
        manifest["metadata"]["annotations"][ANN_DRAIN] = value
    return manifest


REJECTED = [
    ("grace", "30", f"{POD}.terminationGracePeriodSeconds: '30' is a string, not an integer"),
    ("grace", 30.0, f"{POD}.terminationGracePeriodSeconds: 30.0 is a number, not an integer"),
    ("grace", 30.5, "30.5 is a number, not an integer"),
    ("grace", -1, f"{POD}.terminationGracePeriodSeconds: -1 is out of range 0..9223372036854775807"),
    ("grace", 2**63, "is out of range 0..9223372036854775807"),
    ("grace", True, "True is a boolean, not an integer"),
    ("grace", float("inf"), "inf is a number, not an integer"),
    ("sleep", "5", f"{POD}.containers[0].lifecycle.preStop.sleep.seconds: '5' is a string"),
    ("sleep", float("inf"), "inf is a number, not an integer"),
    ("name", "PHP_FPM", f"{POD}.containers[0].name: 'PHP_FPM' is not a DNS label"),
    ("name", "a" * 64, "is not a DNS label"),
    ("name", "-web", "is not a DNS label"),
    ("name", 5, f"{POD}.containers[0].name: 5 is a number, not a string"),
    ("annotation", 30, f"metadata.annotations['{ANN_DRAIN}']: 30 is a number; annotation values are strings"),
    ("annotation", 0x1E, "30 is a number"),  # YAML 1.1 reads an unquoted 0x1E as 30
    ("annotation", "0x1E", "podgrace.dev/drain-seconds: '0x1E' is not a whole number of seconds"),
    ("annotation", True, "True is a boolean"),
]  # fmt: skip


@pytest.mark.parametrize("command", ["render", "audit"])
@pytest.mark.parametrize(("where", "value", "words"), REJECTED)
def test_values_the_api_server_rejects_exit_2(
    run_cli: Any, yaml_file: Any, deployment: Any, command: str, where: str, value: Any, words: str
) -> None:
    result = run_cli(command, "-f", yaml_file(_with(deployment, where, value)))
    if command == "audit" and where == "annotation" and isinstance(value, str):
        # a string the annotation parser rejects is a finding of the workload, as before
        assert (result.code, words in result.out) == (1, True)
        return
    assert (result.code, result.out) == (2, "")
    assert words in result.err
    assert len(result.err.splitlines()) == 1


def test_unquoted_hex_in_yaml_is_rejected_too(run_cli: Any, yaml_file: Any) -> None:
    text = (
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: x\n  annotations:\n"
        "    podgrace.dev/profile: nginx\n    podgrace.dev/drain-seconds: 0x1E\n"
        "spec: {template: {spec: {containers: [{name: nginx}]}}}\n"
    )
    result = run_cli("render", "-f", yaml_file(text=text))
    assert result.code == 2
    assert "metadata.annotations['podgrace.dev/drain-seconds']: 30 is a number" in result.err


def test_a_null_annotation_value_is_the_empty_string(run_cli: Any, yaml_file: Any, deployment: Any) -> None:
    manifest = _nginx(deployment, annotations={"example.com/note": None})  # the API server decodes null as ""
    assert run_cli("render", "-f", yaml_file(manifest)).code == 0


# --- exit codes ----------------------------------------------------------------------------------------


def test_an_internal_error_has_its_own_exit_code(
    run_cli: Any, yaml_file: Any, deployment: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise KeyError("boom")

    monkeypatch.setattr(cli, "plan", broken)
    for command in ("render", "audit"):
        result = run_cli(command, "-f", yaml_file(_nginx(deployment)))
        assert (result.code, result.out) == (cli.EXIT_INTERNAL, "")
        assert result.err == (
            f"podgrace {command}: internal error (a bug in podgrace, please report it): KeyError: 'boom'\n"
        )


def test_exit_codes_are_distinct() -> None:
    codes = [cli.EXIT_FINDINGS, cli.EXIT_USAGE, cli.EXIT_INTERNAL, cli.EXIT_BROKEN_PIPE]
    assert len(set(codes)) == len(codes) and 0 not in codes


def test_render_into_a_closed_pipe(tmp_path: Path, deployment: Any) -> None:
    """`podgrace render | head -1`: no traceback, exit 141 (what a shell reports for SIGPIPE)."""
    stream = yaml.safe_dump_all([_nginx(deployment, name=f"d{i}", profile="nginx") for i in range(2000)])
    source = tmp_path / "big.yaml"
    source.write_text(stream)
    env = {"PYTHONPATH": f"{REPO / 'operator'}:{REPO}", "PATH": "/usr/bin:/bin"}
    script = (
        f'{sys.executable} -m podgrace.cli.main render -f {source} | head -1; echo "rc=${{PIPESTATUS[0]}}"'
    )
    done = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, env=env, timeout=300, check=False
    )
    assert done.stdout.splitlines() == ["---", "rc=141"]
    assert done.stderr == ""
