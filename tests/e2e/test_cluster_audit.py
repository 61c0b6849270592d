"""`podgrace audit --cluster` and `podgrace run` with a kubeconfig, on the real control plane: the user's
kubeconfig through the official `kubernetes` client, including a user that authenticates with an exec
credential plugin (as EKS, GKE and AKS users do): here a script printing an ExecCredential with a
ServiceAccount token."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.support.podgrace_env import (
    NAMESPACE,
    RELEASE,
    SERVICE_ACCOUNT,
    OperatorProcess,
    deployment,
    install_chart,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[2]
NS = "clusteraudit-e2e"
OTHER_NS = "clusteraudit-other"
READER = "workload-reader"
PROFILE = {"podgrace.dev/profile": "nginx-php-fpm"}


def podgrace(*args: str, env: dict[str, str], input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "podgrace.cli.main", *args],
        input=input,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": f"{ROOT / 'operator'}:{ROOT}", **env},
        timeout=120,
        check=False,
    )


def workload(kind: str, name: str, namespace: str) -> dict[str, Any]:
    obj = deployment(name, namespace, annotations=PROFILE)
    obj["kind"] = kind
    spec = obj["spec"]
    del spec["replicas"]
    if kind == "DaemonSet":
        return obj
    spec["replicas"] = 1
    spec["serviceName"] = name
    return obj


def exec_kubeconfig(cluster: Any, path: Path, token: str, *, contexts: dict[str, str] | None = None) -> Path:
    """A kubeconfig whose user is an exec plugin: a script that prints an ExecCredential with `token` and
    records each call in `<path>.calls`. `contexts` maps extra context names to their namespace."""
    script = path.with_suffix(".plugin.sh")
    credential = {
        "apiVersion": "client.authentication.k8s.io/v1",
        "kind": "ExecCredential",
        "status": {"token": token},
    }
    script.write_text(
        f"#!/bin/sh\necho called >> '{path}.calls'\ncat <<'EOF'\n{json.dumps(credential)}\nEOF\n"
    )
    script.chmod(0o755)
    cluster.write_kubeconfig(path, token="unused", user="exec-user", namespace=NS)
    cfg = json.loads(path.read_text())
    cfg["users"] = [
        {
            "name": "exec-user",
            "user": {
                "exec": {
                    "apiVersion": "client.authentication.k8s.io/v1",
                    "command": str(script),
                    "interactiveMode": "Never",
                }
            },
        }
    ]
    base = cfg["contexts"][0]
    for name, namespace in (contexts or {}).items():
        cfg["contexts"].append({"name": name, "context": {**base["context"], "namespace": namespace}})
    path.write_text(json.dumps(cfg, indent=2))
    return path


def calls(kubeconfig: Path) -> int:
    record = Path(f"{kubeconfig}.calls")
    return len(record.read_text().splitlines()) if record.exists() else 0


@pytest.fixture(scope="module")
def objects(cluster: Any) -> Iterator[None]:
    """NS: an at-risk Deployment, the same fixed by `podgrace render`, a StatefulSet and a DaemonSet;
    OTHER_NS: one at-risk Deployment. A ServiceAccount that may read workloads everywhere."""
    for ns in (NS, OTHER_NS):
        cluster.kubectl("create", "namespace", ns)
    at_risk = deployment("web-at-risk", NS, annotations=PROFILE)
    fixed = copy.deepcopy(at_risk)
    fixed["metadata"]["name"] = "web-fixed"
    fixed["spec"]["selector"]["matchLabels"]["app"] = "web-fixed"
    fixed["spec"]["template"]["metadata"]["labels"]["app"] = "web-fixed"
    rendered = podgrace("render", "-f", "-", env={}, input=json.dumps(fixed))
    assert rendered.returncode == 0, rendered.stderr
    manifests = [
        at_risk,
        yaml.safe_load(rendered.stdout),
        workload("StatefulSet", "db", NS),
        workload("DaemonSet", "agent", NS),
        deployment("other", OTHER_NS, annotations=PROFILE),
    ]
    cluster.kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(m) for m in manifests))
    cluster.kubectl("create", "serviceaccount", READER, "-n", NS)
    cluster.kubectl(
        "create", "clusterrole", READER, "--verb=get,list,watch",
        "--resource=deployments.apps,statefulsets.apps,daemonsets.apps",
    )  # fmt: skip
    cluster.kubectl(
        "create", "clusterrolebinding", READER, f"--clusterrole={READER}", f"--serviceaccount={NS}:{READER}"
    )
    yield


def file_audit(cluster: Any, *scope: str) -> subprocess.CompletedProcess[str]:
    text = cluster.kubectl("get", "deploy,sts,ds", *scope, "-o", "yaml").stdout
    return podgrace("audit", "-f", "-", "-o", "json", env={}, input=text)


def comparable(stdout: str) -> list[dict[str, Any]]:
    """The report without where each object was read (file, line): the rest must be the same."""
    report = json.loads(stdout)
    out = []
    for w in report["workloads"]:
        w = {k: v for k, v in w.items() if k not in ("file", "line")}
        w["findings"] = [{k: v for k, v in f.items() if k != "line"} for f in w["findings"]]
        w["unrecognised"] = [{k: v for k, v in u.items() if k != "line"} for u in w["unrecognised"]]
        out.append(w)
    assert report["atRisk"] == sum(w["atRisk"] for w in out)
    return out


def test_cluster_audit_equals_the_file_audit_of_the_same_objects(
    cluster: Any, objects: None, tmp_path: Path
) -> None:
    from_file = file_audit(cluster, "-n", NS)
    live = podgrace("audit", "--cluster", "-n", NS, "-o", "json", env={"KUBECONFIG": str(cluster.kubeconfig)})
    assert (live.returncode, from_file.returncode) == (1, 1), live.stderr + from_file.stderr
    report = comparable(live.stdout)
    assert report == comparable(from_file.stdout)
    status = {(w["kind"], w["name"]): w["status"] for w in report}
    assert status == {
        ("Deployment", "web-at-risk"): "atRisk",
        ("Deployment", "web-fixed"): "ok",
        ("StatefulSet", "db"): "atRisk",
        ("DaemonSet", "agent"): "atRisk",
    }
    assert {w["file"] for w in json.loads(live.stdout)["workloads"]} == {f"cluster:{cluster.name}"}

    # -A: every namespace, still the same as kubectl's view
    admin = {"KUBECONFIG": str(cluster.kubeconfig)}

    def read_while_nothing_changed() -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
        # Other files' objects share this cluster, and their namespaces may still be terminating: compare
        # only a live audit that kubectl's views before and after it show read the same objects.
        before = comparable(file_audit(cluster, "-A").stdout)
        live = comparable(podgrace("audit", "--cluster", "-A", "-o", "json", env=admin).stdout)
        return (live, before) if before == comparable(file_audit(cluster, "-A").stdout) else None

    everywhere, kubectl_view = wait_until("a quiet moment for the -A audit", read_while_nothing_changed)
    assert everywhere == kubectl_view
    assert {(w["namespace"], w["name"]) for w in everywhere} >= {
        (NS, "web-at-risk"),
        (OTHER_NS, "other"),
    }

    # text output is the file audit's too
    text = podgrace("audit", "--cluster", "-n", NS, env={"KUBECONFIG": str(cluster.kubeconfig)})
    assert "3 of 4 workloads at risk" in text.stdout
    assert f"{NS}/web-at-risk" in text.stdout and f"{NS}/web-fixed" not in text.stdout


def test_exec_plugin_user_and_context_selection(cluster: Any, objects: None, tmp_path: Path) -> None:
    token = cluster.create_token(READER, NS)
    kubeconfig = exec_kubeconfig(cluster, tmp_path / "exec.kubeconfig", token, contexts={"other": OTHER_NS})
    env = {"KUBECONFIG": str(kubeconfig)}

    # the current context's namespace (NS) is the default
    live = podgrace("audit", "--cluster", "-o", "json", env=env)
    assert live.returncode == 1, live.stderr
    assert comparable(live.stdout) == comparable(file_audit(cluster, "-n", NS).stdout)
    assert calls(kubeconfig) >= 1  # the plugin gave the credentials

    other = podgrace("audit", "--cluster", "--context", "other", "-o", "json", env=env)
    assert other.returncode == 1, other.stderr
    assert [(w["namespace"], w["name"]) for w in json.loads(other.stdout)["workloads"]] == [
        (OTHER_NS, "other")
    ]
    assert {w["file"] for w in json.loads(other.stdout)["workloads"]} == {"cluster:other"}

    unknown = podgrace("audit", "--cluster", "--context", "nope", env=env)
    assert unknown.returncode == 2 and unknown.stdout == ""
    names = ", ".join(sorted([cluster.name, "other"]))
    assert unknown.stderr.splitlines() == [
        f"podgrace audit: kubeconfig: no context named 'nope' (contexts: {names})"
    ]


def test_cluster_audit_errors_are_one_line_and_exit_2(cluster: Any, objects: None, tmp_path: Path) -> None:
    def fails(env: dict[str, str], *extra: str) -> str:
        result = podgrace("audit", "--cluster", *extra, env=env)
        assert (result.returncode, result.stdout) == (2, ""), result
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
        return lines[0]

    bad = exec_kubeconfig(cluster, tmp_path / "bad.kubeconfig", "not-a-token")
    message = fails({"KUBECONFIG": str(bad)})
    assert "401 Unauthorized" in message and cluster.server in message

    # a ServiceAccount without RBAC: 403, named as such
    cluster.kubectl("create", "serviceaccount", "nobody", "-n", NS)
    nobody = exec_kubeconfig(cluster, tmp_path / "nobody.kubeconfig", cluster.create_token("nobody", NS))
    message = fails({"KUBECONFIG": str(nobody)})
    assert "403 Forbidden" in message and "deployments" in message and repr(NS) in message

    missing = tmp_path / "absent.kubeconfig"
    message = fails({"KUBECONFIG": str(missing)})
    assert message.startswith("podgrace audit: kubeconfig:") and str(missing) in message

    cfg = json.loads(cluster.kubeconfig.read_text())
    cfg["clusters"][0]["cluster"]["server"] = "https://127.0.0.1:1"  # nothing listens there
    down = tmp_path / "down.kubeconfig"
    down.write_text(json.dumps(cfg))
    message = fails({"KUBECONFIG": str(down)})
    assert "cannot reach https://127.0.0.1:1" in message

    usage = podgrace("audit", "--cluster", "-f", "-", env={}, input="")
    assert usage.returncode == 2 and "not allowed with argument" in usage.stderr


class ExecPluginOperator(OperatorProcess):
    """`podgrace run` whose only credentials are a kubeconfig whose user is an exec plugin."""

    def kubeconfig(self) -> Path:
        token = self.cluster.create_token(SERVICE_ACCOUNT, NAMESPACE, duration="2h")
        return exec_kubeconfig(self.cluster, self.workdir / "kubeconfig", token)


def test_run_logs_in_through_an_exec_plugin_kubeconfig(cluster: Any, objects: None) -> None:
    if cluster.helm("status", RELEASE, "--namespace", NAMESPACE, check=False).returncode != 0:
        install_chart(cluster)
    op = ExecPluginOperator(cluster, "-n", OTHER_NS)
    op.start()
    try:

        def injected() -> bool:
            obj = cluster.kubectl_json("get", "deployment", "other", "-n", OTHER_NS)
            containers = obj["spec"]["template"]["spec"]["containers"]
            return all("preStop" in (c.get("lifecycle") or {}) for c in containers)

        wait_until("podgrace to reconcile the opted-in Deployment", injected, timeout=90)
        assert calls(op.workdir / "kubeconfig") >= 1
        after = podgrace(
            "audit", "--cluster", "-n", OTHER_NS, "-o", "json", env={"KUBECONFIG": str(cluster.kubeconfig)}
        )
        assert after.returncode == 0, after.stdout + after.stderr
    finally:
        op.stop()
        print(f"\n[e2e] podgrace log: {op.log_path}\n{op.log_tail(30)}")
