"""On an API server with ContainerStopSignals, podgrace writes lifecycle.stopSignal and spec.os.name, and
the server keeps them (the plain server's fallback hook is covered in test_operator.py)."""

from __future__ import annotations

import json
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
