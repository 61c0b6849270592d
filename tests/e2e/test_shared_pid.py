"""Pods that share their process namespace (`shareProcessNamespace: true`), on the real API server: PID 1 is
the pause process there, so a fallback hook that signals PID 1 (a generic rule with a graceful signal
other than SIGTERM, on a cluster without lifecycle.stopSignal) would signal pause. podgrace refuses such a
rule with a `SignalHookCannotReachServer` Warning and leaves the Deployment as it is, whether the pod shares
its namespace from the start or an owner turns it on after podgrace's write (that second case was planned
on the work queue's slimmed body, which had dropped the field: no Warning, found 2026-11-30)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from tests.support.accepted_writes import accepted_writes
from tests.support.podgrace_env import (
    OperatorProcess,
    deployment,
    ensure_chart,
    generic_profile,
    running_operator,
    wait_until,
)

NS = "shared-pid-e2e"
PROFILE = generic_profile("shared-pid-quit", "SIGQUIT", {"images": ["*"]})
ANNOTATIONS = {"podgrace.dev/profile": "shared-pid-quit"}
REASON = "SignalHookCannotReachServer"


@pytest.fixture(scope="module")
def operator(cluster: Any) -> Iterator[OperatorProcess]:
    cluster.kubectl("create", "namespace", NS)
    ensure_chart(cluster)  # the CRD, before the profile
    cluster.kubectl("apply", "-f", "-", input=json.dumps(PROFILE))
    with running_operator(cluster, "--namespace", NS) as op:
        yield op


def _pod_spec(cluster: Any, name: str) -> dict[str, Any]:
    spec: dict[str, Any] = cluster.kubectl_json("get", "deployment", name, "-n", NS)["spec"]["template"][
        "spec"
    ]
    return spec


def _warnings(cluster: Any, name: str) -> list[str]:
    about = f"involvedObject.name={name}"
    items = cluster.kubectl_json("get", "events", "-n", NS, "--field-selector", about)["items"]
    return [e["reason"] for e in items if e["type"] == "Warning"]


def _create(cluster: Any, name: str, **pod: Any) -> None:
    obj = deployment(name, NS, ANNOTATIONS, containers=[{"name": "app", "image": "example/app:1"}], **pod)
    cluster.kubectl("apply", "--server-side", "--field-manager=gitops", "-f", "-", input=json.dumps(obj))


def test_a_shared_pid_namespace_from_the_start_is_refused_and_left_alone(
    cluster: Any, operator: OperatorProcess
) -> None:
    t0 = time.time()
    _create(cluster, "from-start", shareProcessNamespace=True)
    wait_until("the Warning", lambda: REASON in _warnings(cluster, "from-start"), timeout=60)
    time.sleep(3)
    assert [w for w in accepted_writes(cluster, t0, namespace=NS) if w.name == "from-start"] == []
    assert "lifecycle" not in _pod_spec(cluster, "from-start")["containers"][0]


def test_a_shared_pid_namespace_turned_on_after_podgraces_write_is_said(
    cluster: Any, operator: OperatorProcess
) -> None:
    _create(cluster, "turned-on")

    def hook() -> str:
        lifecycle = _pod_spec(cluster, "turned-on")["containers"][0].get("lifecycle") or {}
        return " ".join(((lifecycle.get("preStop") or {}).get("exec") or {}).get("command") or [])

    wait_until("podgrace's hook that signals PID 1", lambda: "kill -QUIT 1" in hook(), timeout=60)
    assert REASON not in _warnings(cluster, "turned-on")
    t1 = time.time()
    on = {"spec": {"template": {"spec": {"shareProcessNamespace": True}}}}
    cluster.kubectl(
        "patch", "deployment", "turned-on", "-n", NS, "--field-manager=owner", "-p", json.dumps(on)
    )  # fmt: skip
    wait_until("the Warning", lambda: REASON in _warnings(cluster, "turned-on"), timeout=60)
    time.sleep(3)
    # said, not acted on: the Deployment is left as it is (no half-change of what the owner now runs)
    assert [w for w in accepted_writes(cluster, t1, namespace=NS) if w.name == "turned-on"] == []
