"""On an API server with ContainerStopSignals, podgrace writes lifecycle.stopSignal and spec.os.name, and
the server keeps them (the plain server's fallback hook is covered in test_operator.py)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from tests.support.podgrace_env import OperatorProcess, deployment, running_operator, wait_until


@pytest.fixture(scope="module")
def operator_stopsignals(cluster_stopsignals: Any) -> Iterator[OperatorProcess]:
    with running_operator(cluster_stopsignals) as op:
        yield op


def test_native_stop_signal_and_sleep(
    cluster_stopsignals: Any, operator_stopsignals: OperatorProcess
) -> None:
    cluster = cluster_stopsignals
    cluster.kubectl("apply", "-f", "-", input=json.dumps(deployment("shop", "default", {
        "podgrace.dev/profile": "nginx-php-fpm"})))  # fmt: skip

    def injected() -> dict[str, Any] | None:
        obj: dict[str, Any] = cluster.kubectl_json("get", "deployment", "shop", "-n", "default")
        spec = obj["spec"]["template"]["spec"]
        return spec if "stopSignal" in (spec["containers"][0].get("lifecycle") or {}) else None

    spec = wait_until("lifecycle.stopSignal", injected, timeout=60)
    nginx, php = spec["containers"]
    assert spec["os"] == {"name": "linux"}
    assert nginx["lifecycle"] == {"preStop": {"sleep": {"seconds": 5}}, "stopSignal": "SIGQUIT"}
    assert php["lifecycle"] == {"preStop": {"sleep": {"seconds": 35}}, "stopSignal": "SIGQUIT"}
    assert spec["terminationGracePeriodSeconds"] == 70

    def pod_kept_it() -> bool:
        pods = cluster.kubectl_json("get", "pods", "-n", "default", "-l", "app=shop")["items"]
        return any(
            (p["spec"]["containers"][0].get("lifecycle") or {}).get("stopSignal") == "SIGQUIT" for p in pods
        )

    wait_until("a pod with stopSignal", pod_kept_it, timeout=60)

    # kwok reports the effective signal as a kubelet with the gate does (tests/cluster/localcluster.py), so
    # podgrace's check of the pods' status (stop_signal_check.py) finds the runtime honouring it.
    def reported() -> dict[str, set[str]] | None:
        """The reported signals of the pods with podgrace's stopSignal, and of the others (the first
        ReplicaSet's, while they last)."""
        pods = cluster.kubectl_json("get", "pods", "-n", "default", "-l", "app=shop")["items"]
        found: dict[str, set[str]] = {"with": set(), "without": set()}
        for pod in pods:
            asked = pod["spec"]["containers"][0].get("lifecycle", {}).get("stopSignal")
            which = "with" if asked else "without"
            for status in pod.get("status", {}).get("containerStatuses") or []:
                if "running" in status.get("state", {}):  # kwok's ready stage has run
                    found[which].add(str(status.get("stopSignal")))
        return found if found["with"] else None

    signals = wait_until("the pods' reported stop signals", reported, timeout=60)
    assert signals["with"] == {"SIGQUIT"} and signals["without"] <= {"SIGTERM"}, signals
    operator_stopsignals.restart()  # a fresh process asks the pods again: it keeps stopSignal, no Warning
    wait_until("a reconcile after the restart", lambda: operator_stopsignals.metric(
        "podgrace_reconcile_total", controller="deployment") > 0, timeout=60)  # fmt: skip
    time.sleep(5)  # an apply to the fallback would follow that first reconcile at once
    assert (injected() or {})["containers"][0]["lifecycle"]["stopSignal"] == "SIGQUIT"
    assert operator_stopsignals.metric("podgrace_stop_signal_ignored_workloads") == 0
    ignored = "reason=StopSignalIgnored"
    assert cluster.kubectl_json("get", "events", "-n", "default", "--field-selector", ignored)["items"] == []
