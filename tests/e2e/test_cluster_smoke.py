"""Smoke test of the local control plane itself (tests/cluster): if these fail, every e2e test would."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
from tests.cluster.localcluster import ADMIN_USER, LocalCluster
from tests.support.podgrace_env import wait_until


def new_namespace(cluster: LocalCluster) -> str:
    ns = f"smoke-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", ns)
    return ns


def deployment(name: str, namespace: str, replicas: int = 2, **container: Any) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "web", "image": "nginx:1.27", **container}]},
            },
        },
    }


def test_deployment_pods_run_on_kwok_nodes_and_the_create_is_audited(cluster: LocalCluster) -> None:
    ns = new_namespace(cluster)
    t0 = time.time()
    cluster.kubectl("create", "-f", "-", input=json.dumps(deployment("web", ns, replicas=2)))

    rs = wait_until(
        "a ReplicaSet owned by the Deployment",
        lambda: [
            r
            for r in cluster.kubectl_json("get", "replicasets", "-n", ns)["items"]
            if any(o["kind"] == "Deployment" and o["name"] == "web" for o in r["metadata"]["ownerReferences"])
        ],
    )
    assert len(rs) == 1

    def running_pods() -> list[dict[str, Any]] | None:
        pods = cluster.kubectl_json("get", "pods", "-n", ns, "-l", "app=web")["items"]
        if len(pods) == 2 and all(p["status"].get("phase") == "Running" for p in pods):
            return list(pods)
        return None

    pods = wait_until("2 Running pods", running_pods)
    assert {p["spec"]["nodeName"] for p in pods} <= set(cluster.nodes)
    for pod in pods:
        ready = [c for c in pod["status"]["conditions"] if c["type"] == "Ready"]
        assert ready and ready[0]["status"] == "True"
        assert pod["metadata"]["ownerReferences"][0]["name"] == rs[0]["metadata"]["name"]

    # The audit log: exactly one real write of a Deployment by the admin, and the controllers'
    # writes are attributed to their own ServiceAccounts.
    assert cluster.count_writes(user=ADMIN_USER, resource="deployments", since=t0) == 1
    (create,) = cluster.write_events(user=ADMIN_USER, resource="deployments", since=t0)
    assert (create.verb, create.namespace, create.code) == ("create", ns, 201)
    assert (
        cluster.count_writes(
            user="system:serviceaccount:kube-system:deployment-controller",
            resource="replicasets",
            verb="create",
            namespace=ns,
            since=t0,
        )
        == 1
    )
    assert cluster.count_writes(user="kwok", resource="pods/status", namespace=ns, since=t0) >= 2


def test_service_account_token_authenticates_and_rbac_denies(cluster: LocalCluster) -> None:
    ns = new_namespace(cluster)
    cluster.kubectl("create", "serviceaccount", "robot", "-n", ns)
    token = cluster.create_token("robot", ns)

    whoami = json.loads(cluster.kubectl("auth", "whoami", "-o", "json", token=token).stdout)
    assert whoami["status"]["userInfo"]["username"] == f"system:serviceaccount:{ns}:robot"

    denied = cluster.kubectl("get", "secrets", "-n", "kube-system", token=token, check=False)
    assert denied.returncode != 0
    assert "Forbidden" in denied.stderr
    status, body = cluster.request("GET", "/api/v1/namespaces/kube-system/secrets", token=token)
    assert status == 403, body
    status, _ = cluster.request("GET", "/api/v1/namespaces/kube-system/secrets", token="not-a-token")
    assert status == 401


STOP_SIGNAL_CONTAINER: dict[str, Any] = {
    "lifecycle": {"stopSignal": "SIGQUIT", "preStop": {"sleep": {"seconds": 5}}},
}


def dry_run_apply(cluster: LocalCluster, manifest: dict[str, Any]) -> dict[str, Any]:
    out = cluster.kubectl(
        *("apply", "--server-side", "--dry-run=server", "--field-manager=podgrace-probe"),
        *("-o", "json", "-f", "-"),
        input=json.dumps(manifest),
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def stop_signal_probe(name: str) -> dict[str, Any]:
    manifest = deployment(name, "default", replicas=1, **STOP_SIGNAL_CONTAINER)
    manifest["spec"]["template"]["spec"]["os"] = {"name": "linux"}
    return manifest


def test_dry_run_keeps_stop_signal_only_with_the_feature_gate(
    cluster: LocalCluster, cluster_stopsignals: LocalCluster
) -> None:
    t0 = time.time()
    gated = dry_run_apply(cluster_stopsignals, stop_signal_probe("probe"))
    lifecycle = gated["spec"]["template"]["spec"]["containers"][0]["lifecycle"]
    assert lifecycle["stopSignal"] == "SIGQUIT"
    assert lifecycle["preStop"] == {"sleep": {"seconds": 5}}

    plain = dry_run_apply(cluster, stop_signal_probe("probe"))
    lifecycle = plain["spec"]["template"]["spec"]["containers"][0]["lifecycle"]
    assert "stopSignal" not in lifecycle  # silently dropped: no error, no warning needed
    assert lifecycle["preStop"] == {"sleep": {"seconds": 5}}  # PodLifecycleSleepAction is GA

    # Dry-run requests are in the audit log but never count as writes.
    for c in (cluster, cluster_stopsignals):
        assert c.count_writes(user=ADMIN_USER, resource="deployments", since=t0) == 0
        dry = c.audit_events(t0, user=ADMIN_USER, resource="deployments", include_dry_run=True)
        assert [(e.verb, e.dry_run) for e in dry] == [("patch", True)]
        assert "dryRun=All" in dry[0].request_uri
        # nothing was persisted
        assert c.kubectl("get", "deployment", "probe", "-n", "default", check=False).returncode != 0


def test_stop_signal_needs_os_name_on_the_gated_cluster(cluster_stopsignals: LocalCluster) -> None:
    manifest = deployment("probe-no-os", "default", replicas=1, **STOP_SIGNAL_CONTAINER)
    with pytest.raises(Exception, match=r"(?i)os"):
        dry_run_apply(cluster_stopsignals, manifest)
