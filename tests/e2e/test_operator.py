"""podgrace on a real control plane: installed by its chart, running with the chart's RBAC.

Write counts come from the API server's audit log, never from podgrace's own metrics.
The tests share one cluster and one operator process and run in file order; the API server restart is last.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.support.accepted_writes import accepted_writes
from tests.support.podgrace_env import (
    CHART,
    NAMESPACE,
    OPERATOR_USER,
    OperatorProcess,
    deployment,
    nginx_profile,
    running_operator,
    wait_until,
)

APP_NS = "operator-e2e"


@pytest.fixture(scope="module")
def operator(cluster: Any) -> Iterator[OperatorProcess]:
    cluster.kubectl("create", "namespace", APP_NS)
    with running_operator(cluster) as op:
        yield op


def apply(cluster: Any, obj: dict[str, Any], *, manager: str | None = None) -> None:
    args = ["apply", "-f", "-"]
    if manager is not None:
        args += ["--server-side", f"--field-manager={manager}"]
    cluster.kubectl(*args, input=json.dumps(obj))


def get(cluster: Any, name: str, kind: str = "deployment", namespace: str = APP_NS) -> dict[str, Any]:
    obj: dict[str, Any] = cluster.kubectl_json("get", kind, name, "-n", namespace, "--show-managed-fields")
    return obj


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = obj["spec"]["template"]["spec"]
    return spec


def replica_sets(cluster: Any, app: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.kubectl_json(
        "get", "replicasets", "-n", APP_NS, "-l", f"app={app}"
    )["items"]
    return items


def injected(cluster: Any, name: str) -> dict[str, Any] | None:
    obj = get(cluster, name)
    lifecycle = pod_spec(obj)["containers"][0].get("lifecycle") or {}
    return obj if "preStop" in lifecycle else None


def podgrace_writes(cluster: Any, since: float, resource: str | None = None) -> list[Any]:
    return list(cluster.write_events(user=OPERATOR_USER, since=since, resource=resource))


def events(cluster: Any, name: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.kubectl_json(
        "get", "events", "-n", APP_NS, "--field-selector", f"involvedObject.name={name}"
    )["items"]
    return items


def settle(op: OperatorProcess, deployments: int) -> None:
    """Wait until podgrace has reconciled at least `deployments` Deployments, then a little longer."""
    wait_until(
        "podgrace to reconcile every Deployment",
        lambda: op.metric("podgrace_reconcile_total", controller="deployment") >= deployments,
        timeout=60,
    )
    time.sleep(3)


# 1 -----------------------------------------------------------------------------------------------------


def test_chart_registers_the_crd_before_the_operator_and_profiles_become_ready(
    cluster: Any, operator: OperatorProcess
) -> None:
    # Helm 4 creates with server-side apply, so the first write of each object is what counts.
    crd_written = [
        e
        for e in cluster.write_events(resource="customresourcedefinitions")
        if e.name == "shutdownprofiles.podgrace.dev"
    ]
    operator_written = cluster.write_events(resource="deployments", namespace=NAMESPACE)
    assert crd_written and operator_written
    assert crd_written[0].received <= operator_written[0].received
    crd = cluster.kubectl_json("get", "crd", "shutdownprofiles.podgrace.dev")
    assert any(c["type"] == "Established" and c["status"] == "True" for c in crd["status"]["conditions"])

    def all_ready() -> bool:
        items = cluster.kubectl_json("get", "shutdownprofiles")["items"]
        names = {p["metadata"]["name"] for p in items}
        ready = all(
            any(
                c["type"] == "Ready"
                and c["status"] == "True"
                and c["observedGeneration"] == p["metadata"]["generation"]
                for c in (p.get("status") or {}).get("conditions", [])
            )
            for p in items
        )
        return names >= {"nginx", "php-fpm", "nginx-php-fpm", "apache", "web"} and ready

    wait_until("built-in profiles Ready", all_ready, timeout=60)


def test_crd_upgrade_by_the_documented_mechanism(
    cluster: Any, tmp_path: Path, operator: OperatorProcess
) -> None:
    chart = tmp_path / "podgrace"
    shutil.copytree(CHART, chart)
    crd_file = chart / "crds" / "shutdownprofiles.podgrace.dev.yaml"
    crd = yaml.safe_load(crd_file.read_text())
    spec_schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec_schema["properties"]["upgradeMarker"] = {"type": "string", "description": "added by the e2e upgrade"}
    crd_file.write_text(yaml.safe_dump(crd, sort_keys=False))
    # The mechanism charts/podgrace/README.md documents: apply the chart's CRDs, then upgrade.
    crds = cluster.helm("show", "crds", str(chart)).stdout
    cluster.kubectl(
        "apply", "--server-side", "--force-conflicts", "--field-manager=podgrace-crds", "-f", "-", input=crds
    )
    cluster.helm("upgrade", "podgrace", str(chart), "--namespace", NAMESPACE)
    live = cluster.kubectl_json("get", "crd", "shutdownprofiles.podgrace.dev")
    live_spec = live["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert live_spec["properties"]["upgradeMarker"]["type"] == "string"


# 2 -----------------------------------------------------------------------------------------------------


def test_opt_in_injects_once_and_rolls_out_once(cluster: Any, operator: OperatorProcess) -> None:
    apply(cluster, deployment("checkout", APP_NS))
    wait_until("first ReplicaSet", lambda: len(replica_sets(cluster, "checkout")) == 1)
    t0 = time.time()
    cluster.kubectl("annotate", "deployment", "checkout", "-n", APP_NS, "podgrace.dev/profile=nginx-php-fpm")
    obj = wait_until("podgrace's settings", lambda: injected(cluster, "checkout"), timeout=60)
    spec = pod_spec(obj)
    nginx, php = spec["containers"]
    # The plain API server (ContainerStopSignals off): the signal goes through the preStop fallback hook.
    assert "kill -QUIT $w" in nginx["lifecycle"]["preStop"]["exec"]["command"][2]
    assert "sleep 35" in php["lifecycle"]["preStop"]["exec"]["command"][2]
    assert "stopSignal" not in nginx["lifecycle"]
    assert spec["terminationGracePeriodSeconds"] == 70
    # What a co-owner sees (README "Who owns what"): one Update entry under podgrace, never an Apply one.
    ours = [
        (m["operation"], m.get("subresource"))
        for m in obj["metadata"]["managedFields"]
        if m["manager"] == "podgrace"
    ]
    assert ours == [("Update", None)]
    wait_until("the rollout", lambda: len(replica_sets(cluster, "checkout")) == 2)
    time.sleep(3)
    assert len(replica_sets(cluster, "checkout")) == 2
    # a patch refused with 409 (the deployment controller's status update came in between) changes nothing
    writes = accepted_writes(cluster, t0, ("deployments",), namespace=APP_NS)
    assert [(w.verb, w.name) for w in writes] == [("patch", "checkout")]

    def new_pod_has_hooks() -> bool:
        pods = cluster.kubectl_json("get", "pods", "-n", APP_NS, "-l", "app=checkout")["items"]
        return any(
            p["status"].get("phase") == "Running"
            and "preStop" in (p["spec"]["containers"][0].get("lifecycle") or {})
            and p["spec"]["terminationGracePeriodSeconds"] == 70
            for p in pods
        )

    wait_until("a running kwok pod carrying the settings", new_pod_has_hooks, timeout=60)
    reasons = [e["reason"] for e in events(cluster, "checkout")]
    assert "Applied" in reasons


# 3 -----------------------------------------------------------------------------------------------------


def test_restart_makes_zero_writes(cluster: Any, operator: OperatorProcess) -> None:
    sets_before = len(replica_sets(cluster, "checkout"))
    total = len(cluster.kubectl_json("get", "deployments", "-A")["items"])
    t0 = time.time()
    operator.restart()
    settle(operator, total)
    assert podgrace_writes(cluster, t0) == []
    assert len(replica_sets(cluster, "checkout")) == sets_before


# 4 -----------------------------------------------------------------------------------------------------


def test_profile_change_updates_exactly_its_users(cluster: Any, operator: OperatorProcess) -> None:
    apply(cluster, nginx_profile("team-nginx", 4))
    nginx_only = [{"name": "nginx", "image": "nginx:1.27"}]
    for name in ("team-a", "team-b"):
        apply(cluster, deployment(name, APP_NS, {"podgrace.dev/profile": "team-nginx"}, nginx_only))
    apply(cluster, deployment("other", APP_NS, {"podgrace.dev/profile": "nginx"}, nginx_only))
    for name in ("team-a", "team-b", "other"):
        wait_until(f"{name} injected", lambda n=name: injected(cluster, n))
    wait_until(
        "team-nginx status counts 2 workloads",
        lambda: (get(cluster, "team-nginx", "shutdownprofile").get("status") or {}).get("workloads") == 2,
    )
    generation_other = get(cluster, "other")["metadata"]["generation"]
    t0 = time.time()
    apply(cluster, nginx_profile("team-nginx", 6))

    def updated(name: str) -> bool:
        command = pod_spec(get(cluster, name))["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
        return "sleep 6" in command[2]

    wait_until("team-a and team-b updated", lambda: updated("team-a") and updated("team-b"))
    time.sleep(3)
    writes = accepted_writes(cluster, t0, ("deployments",), namespace=APP_NS)
    assert sorted(w.name for w in writes) == ["team-a", "team-b"]
    assert get(cluster, "other")["metadata"]["generation"] == generation_other


# 5 -----------------------------------------------------------------------------------------------------


def test_opt_out_reverts_only_podgrace_fields(cluster: Any, operator: OperatorProcess) -> None:
    sidecar = {"name": "sidecar", "image": "busybox", "lifecycle": {"preStop": {"sleep": {"seconds": 2}}}}
    original = deployment(
        "legacy",
        APP_NS,
        {"podgrace.dev/profile": "nginx"},
        [{"name": "nginx", "image": "nginx:1.27"}, sidecar],
        terminationGracePeriodSeconds=90,
    )
    apply(cluster, original)
    wait_until("legacy injected", lambda: injected(cluster, "legacy"))
    applied = get(cluster, "legacy")
    assert pod_spec(applied)["terminationGracePeriodSeconds"] == 90  # the user's longer value is kept
    assert pod_spec(applied)["containers"][1]["lifecycle"] == sidecar["lifecycle"]
    cluster.kubectl("annotate", "deployment", "legacy", "-n", APP_NS, "podgrace.dev/profile-")
    wait_until("legacy reverted", lambda: not injected(cluster, "legacy"))
    reverted = get(cluster, "legacy")
    spec = pod_spec(reverted)
    assert "lifecycle" not in spec["containers"][0]
    assert spec["containers"][1]["lifecycle"] == sidecar["lifecycle"]
    assert spec["terminationGracePeriodSeconds"] == 90
    assert "os" not in spec
    assert not [m for m in reverted["metadata"]["managedFields"] if m["manager"] == "podgrace"]
    assert "Reverted" in [e["reason"] for e in events(cluster, "legacy")]


# 6 -----------------------------------------------------------------------------------------------------


def test_gitops_reapply_does_not_fight_podgrace(cluster: Any, operator: OperatorProcess) -> None:
    manifest = deployment("gitops", APP_NS, {"podgrace.dev/profile": "nginx-php-fpm"})
    apply(cluster, manifest, manager="argocd-controller")
    wait_until("gitops injected", lambda: injected(cluster, "gitops"))
    wait_until("gitops rolled out", lambda: len(replica_sets(cluster, "gitops")) == 2)
    t0 = time.time()
    for _ in range(3):
        apply(cluster, manifest, manager="argocd-controller")  # raises on a conflict error
        time.sleep(1)
    time.sleep(3)
    assert injected(cluster, "gitops")
    assert podgrace_writes(cluster, t0, "deployments") == []
    assert len(replica_sets(cluster, "gitops")) == 2


# 7 -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("annotations", "reason"),
    [
        ({"podgrace.dev/profile": "does-not-exist"}, "UnknownProfile"),
        ({"podgrace.dev/profile": "nginx", "podgrace.dev/drain-seconds": "5s"}, "InvalidAnnotation"),
    ],
    ids=["unknown-profile", "invalid-annotation"],
)
def test_bad_input_warns_and_leaves_the_deployment(
    cluster: Any, operator: OperatorProcess, annotations: dict[str, str], reason: str
) -> None:
    name = f"bad-{reason.lower()}"
    t0 = time.time()
    apply(cluster, deployment(name, APP_NS, annotations))
    wait_until(
        f"a {reason} Warning",
        lambda: [e for e in events(cluster, name) if e["type"] == "Warning" and e["reason"] == reason],
    )
    assert get(cluster, name)["metadata"]["generation"] == 1
    assert podgrace_writes(cluster, t0, "deployments") == []
    assert operator.alive()


@pytest.mark.parametrize(
    ("rule", "field"),
    [
        ({"role": "nginx", "stopSignal": "SIGTERM"}, "stopSignal"),
        ({"role": "nginx", "preStopSleepSeconds": -1}, "preStopSleepSeconds"),
        ({"role": "teapot"}, "role"),
        ({"role": "php-fpm", "stopAfter": ["x"]}, "stopAfter"),
    ],
    ids=["nginx-sigterm", "negative-sleep", "unknown-role", "self-stop-after"],
)
def test_invalid_profile_is_rejected_by_the_api_server(
    cluster: Any, rule: dict[str, Any], field: str
) -> None:
    profile = {
        "apiVersion": "podgrace.dev/v1alpha1",
        "kind": "ShutdownProfile",
        "metadata": {"name": "invalid"},
        "spec": {"containers": [{"name": "x", "match": {"containerNames": ["x"]}, **rule}]},
    }
    result = cluster.kubectl("apply", "-f", "-", input=json.dumps(profile), check=False)
    assert result.returncode != 0
    assert f"spec.containers[0].{field}" in result.stderr, result.stderr


# 9 -----------------------------------------------------------------------------------------------------


def test_survives_an_api_server_restart(cluster: Any, operator: OperatorProcess) -> None:
    apply(cluster, deployment("before-restart", APP_NS, {"podgrace.dev/profile": "nginx-php-fpm"}))
    cluster.restart_apiserver(down_seconds=5)
    apply(cluster, deployment("after-restart", APP_NS, {"podgrace.dev/profile": "nginx-php-fpm"}))
    for name in ("before-restart", "after-restart"):
        wait_until(f"{name} injected", lambda n=name: injected(cluster, n), timeout=120)
    assert operator.alive()
