"""The effective stop signal (operator/podgrace/controller/stop_signal_check.py) on a real node with
ContainerStopSignals on the API server and the kubelet (containerd v2.4: it honours lifecycle.stopSignal
and reports it in status.containerStatuses[].stopSignal).

podgrace runs as a process with the chart's ServiceAccount (so the chart's RBAC, `pods: list`, is what is
tested) and resyncs every few seconds (the re-check after a rollout comes from the resync).

- A runtime that ignores the stop signal is emulated: no containerd 1.x here (Debian 12's containerd 1.6
  would need its own node), so a pod of the Deployment is bound to a Node object without a kubelet and the
  test writes its status, as a kubelet on containerd 1.x reports it: running, no stopSignal. podgrace then
  gives the Deployment the fallback hook, posts StopSignalIgnored and counts it in its gauge.
- The real node (positive case): podgrace's stopSignal reaches nginx, the kubelet reports SIGQUIT, and
  podgrace keeps it, without a Warning. A container without lifecycle.stopSignal reports its effective
  signal too (SIGTERM): the rule "no reported signal = ignored" holds for the fallback's own pods.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from tests.support.podgrace_env import deployment, running_operator, wait_until
from tests.support.realnode_env import NodeCluster

NS = "signals"
FAKE_NODE = "containerd-1-6-emulated"


def _container(image: str) -> dict[str, Any]:
    return {"name": "nginx", "image": image, "imagePullPolicy": "Never"}


def _lifecycle(cluster: Any, name: str) -> dict[str, Any]:
    obj = cluster.kubectl_json("get", "deployment", name, "-n", NS)
    lifecycle: dict[str, Any] = obj["spec"]["template"]["spec"]["containers"][0].get("lifecycle") or {}
    return lifecycle


def _events(cluster: Any, name: str, reason: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.kubectl_json(
        "get", "events", "-n", NS, "--field-selector", f"involvedObject.name={name},reason={reason}"
    )["items"]
    return items


def _running_pod(cluster: Any, app: str) -> dict[str, Any] | None:
    pods = cluster.kubectl_json("get", "pods", "-n", NS, "-l", f"app={app}")["items"]
    for pod in pods:
        statuses = pod.get("status", {}).get("containerStatuses") or []
        if statuses and all("running" in s.get("state", {}) for s in statuses):
            return dict(pod)
    return None


def _emulated_pod(cluster: Any, app: str, image: str) -> None:
    """A pod of `app` on a Node without a kubelet, its status written as containerd 1.x's kubelet would."""
    node = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": FAKE_NODE, "labels": {"kubernetes.io/hostname": FAKE_NODE}},
        "spec": {"taints": [{"key": "podgrace.dev/emulated", "effect": "NoExecute"}]},
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(node))
    container = dict(_container(image), lifecycle={"stopSignal": "SIGQUIT"})
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{app}-on-1-6", "namespace": NS, "labels": {"app": app}},
        "spec": {
            "nodeName": FAKE_NODE,
            "os": {"name": "linux"},
            "containers": [container],
            "tolerations": [{"key": "podgrace.dev/emulated", "operator": "Exists"}],
        },
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(pod))
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    status = {
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}],
            "containerStatuses": [
                {
                    "name": "nginx",
                    "image": image,
                    "imageID": "",
                    "ready": True,
                    "restartCount": 0,
                    "started": True,
                    "state": {"running": {"startedAt": now}},
                }
            ],
        }
    }
    patch = json.dumps(status)
    name = f"{app}-on-1-6"
    cluster.kubectl("patch", "pod", name, "-n", NS, "--subresource=status", "--type=merge", "-p", patch)


@pytest.mark.slow
def test_stop_signal_checked_in_the_pods_status(node_cluster_stopsignals: NodeCluster) -> None:
    cluster, image = node_cluster_stopsignals.cluster, node_cluster_stopsignals.nginx.ref
    cluster.kubectl("create", "namespace", NS)
    annotations = {"podgrace.dev/profile": "nginx"}
    with running_operator(cluster, "--all-namespaces", "--resync-seconds", "5") as op:
        # The emulated containerd 1.x: the Deployment has no pod of its own (replicas 0) but one that its
        # selector selects, whose status shows no effective stop signal.
        ignored = deployment("old-runtime", NS, annotations, [_container(image)], os={"name": "linux"})
        ignored["spec"]["replicas"] = 0
        cluster.kubectl("apply", "-f", "-", input=json.dumps(ignored))
        wait_until("podgrace's stopSignal", lambda: _lifecycle(cluster, "old-runtime").get("stopSignal"), 60)
        _emulated_pod(cluster, "old-runtime", image)
        try:  # the answer "no running pod" from the first reconcile is kept a minute
            fallback = wait_until(
                "the fallback hook",
                lambda: (lc := _lifecycle(cluster, "old-runtime")).get("preStop", {}).get("exec") and lc,
                timeout=120,
            )
        except AssertionError:
            print(cluster.kubectl("get", "pods,events", "-n", NS, "-o", "yaml", check=False).stdout[-6000:])
            print(op.log_tail(80))
            raise
        assert "stopSignal" not in fallback and "kill -QUIT $w" in fallback["preStop"]["exec"]["command"][2]
        warned = wait_until("StopSignalIgnored", lambda: _events(cluster, "old-runtime", "StopSignalIgnored"))
        (warning,) = warned
        assert warning["type"] == "Warning" and "old-runtime-on-1-6" in warning["message"], warning
        assert op.metric("podgrace_stop_signal_ignored_workloads") == 1

        # The real node: containerd v2.4 honours and reports it.
        cluster.kubectl("apply", "-f", "-", input=json.dumps(
            deployment("honoured", NS, annotations, [_container(image)], os={"name": "linux"})
        ))  # fmt: skip
        wait_until("podgrace's stopSignal", lambda: _lifecycle(cluster, "honoured").get("stopSignal"), 60)

        def rolled_out() -> dict[str, Any] | None:
            pod = _running_pod(cluster, "honoured")
            spec = (pod or {}).get("spec", {}).get("containers", [{}])[0]
            return pod if (spec.get("lifecycle") or {}).get("stopSignal") == "SIGQUIT" else None

        pod = wait_until("a running pod with podgrace's stopSignal", rolled_out, timeout=120)
        assert pod["spec"]["nodeName"] == node_cluster_stopsignals.node.name
        assert pod["status"]["containerStatuses"][0]["stopSignal"] == "SIGQUIT"
        time.sleep(15)  # three resyncs: each reconciles "honoured" and (the answer kept) lists its pods once
        assert _lifecycle(cluster, "honoured")["stopSignal"] == "SIGQUIT"
        assert _events(cluster, "honoured", "StopSignalIgnored") == []
        assert op.metric("podgrace_stop_signal_ignored_workloads") == 1  # only old-runtime

        # A container without lifecycle.stopSignal also reports its effective signal (the image's: SIGTERM).
        plain = deployment("plain", NS, None, [_container(image)])
        cluster.kubectl("apply", "-f", "-", input=json.dumps(plain))
        plain_pod = wait_until("the plain pod running", lambda: _running_pod(cluster, "plain"), timeout=120)
        assert plain_pod["status"]["containerStatuses"][0].get("stopSignal") == "SIGTERM", plain_pod["status"]
        assert op.metric("podgrace_reconcile_errors_total") == 0, op.log_tail()
