"""The effective stop signal (controller/stop_signal_check.py): what the pods' status says about the runtime,
and the reconciler giving the fallback hook to a Deployment whose runtime ignores lifecycle.stopSignal."""

from __future__ import annotations

from typing import Any

import pytest
from fake_api import FakeApi
from test_reconciler import deployment, make, pod_spec

from podgrace.controller.kube_api import ApiError
from podgrace.controller.reconciler import Result
from podgrace.controller.stop_signal_check import Evidence, Finding, StopSignalCheck, evidence, label_selector


def pod(
    name: str = "shop-1",
    *,
    asked: str | None = "SIGQUIT",
    reported: str | None = "SIGQUIT",
    running: bool = True,
    deleting: bool = False,
    container: str = "nginx",
) -> dict[str, Any]:
    lifecycle = {"stopSignal": asked} if asked else {}
    status: dict[str, Any] = {"name": container, "state": {"running": {}} if running else {"waiting": {}}}
    if reported:
        status["stopSignal"] = reported
    metadata: dict[str, Any] = {"name": name, "labels": {"app": "shop"}}
    if deleting:
        metadata["deletionTimestamp"] = "2026-11-30T06:00:00Z"
    return {
        "metadata": metadata,
        "spec": {"containers": [{"name": container, "lifecycle": lifecycle}]},
        "status": {"containerStatuses": [status]},
    }


H, IG, U = Evidence.HONOURED, Evidence.IGNORED, Evidence.UNKNOWN
EVIDENCE = [
    pytest.param([pod()], H, (), id="asked-and-reported"),
    pytest.param([pod(reported=None)], IG, ("nginx",), id="asked-not-reported"),  # containerd 1.x
    pytest.param([pod(reported="SIGTERM")], IG, ("nginx",), id="asked-other-reported"),
    pytest.param([pod(asked=None, reported="SIGTERM")], H, (), id="not-asked-reported"),  # fallback-hook pod
    pytest.param([pod(asked=None, reported=None)], IG, ("nginx",), id="not-asked-not-reported"),
    pytest.param([pod(running=False, reported=None)], U, (), id="not-running-yet"),
    pytest.param([pod(deleting=True, reported=None)], U, (), id="terminating"),
    pytest.param([pod(container="sidecar", reported=None)], U, (), id="other-container"),
    pytest.param([], U, (), id="no-pods"),
    pytest.param([pod("a"), pod("b", reported=None)], IG, ("nginx",), id="one-of-two-nodes-ignores"),
]


@pytest.mark.parametrize(("pods", "expected", "containers"), EVIDENCE)
def test_evidence(pods: list[dict[str, Any]], expected: Evidence, containers: tuple[str, ...]) -> None:
    finding = evidence(pods, ["nginx"])
    assert (finding.evidence, finding.containers) == (expected, containers)


@pytest.mark.parametrize(
    ("selector", "query"),
    [
        ({"matchLabels": {"app": "shop", "tier": "web"}}, "app=shop,tier=web"),
        (
            {"matchLabels": {"app": "shop"}, "matchExpressions": [
                {"key": "env", "operator": "In", "values": ["a", "b"]},
                {"key": "x", "operator": "NotIn", "values": ["c"]},
                {"key": "y", "operator": "Exists"}, {"key": "z", "operator": "DoesNotExist"}]},
            "app=shop,env in (a,b),x notin (c),y,!z",
        ),
        ({"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]}, None),
        ({}, None),  # selects everything: not a Deployment's pods
    ],
)  # fmt: skip
def test_label_selector(selector: dict[str, Any], query: str | None) -> None:
    assert label_selector(selector) == query


async def test_answers_are_kept_and_unknown_is_asked_again_later() -> None:
    api, now = FakeApi(), [0.0]
    counts: list[int] = []
    check = StopSignalCheck(api, clock=lambda: now[0], unknown_seconds=60, answer_seconds=3600,
                            on_change=counts.append)  # fmt: skip
    body = deployment()
    body["metadata"]["uid"] = "u1"
    assert (await check.check(body, ["nginx"])).evidence is U
    api.pods["web"] = [pod(reported=None)]
    assert (await check.check(body, ["nginx"])).evidence is U  # kept for a minute: no second list
    assert len(api.pod_lists) == 1
    now[0] = 61
    assert (await check.check(body, ["nginx"])).evidence is IG
    assert api.pod_lists == [("web", "app=shop")] * 2
    assert counts == [1]
    now[0] = 61 + 3599
    await check.check(body, ["nginx"])
    assert len(api.pod_lists) == 2  # an answer is kept an hour
    check.forget("u1")
    assert counts == [1, 0]


async def test_a_failed_list_is_no_answer() -> None:
    api = FakeApi()
    api.fail_pod_list = ApiError(403, "Forbidden", "pods is forbidden")
    assert (await StopSignalCheck(api).check(deployment(), ["nginx"])).evidence is U


# --- the reconciler -------------------------------------------------------------------------------


def _hook(body: dict[str, Any], container: int = 0) -> dict[str, Any]:
    return dict(pod_spec(body)["containers"][container]["lifecycle"])


async def test_runtime_that_ignores_the_stop_signal_gets_the_fallback_hook() -> None:
    api = FakeApi()  # an API server that keeps lifecycle.stopSignal
    reconciler = make(api)
    assert (await reconciler.reconcile_workload(api.create(deployment()))).result is Result.APPLIED
    assert _hook(api.get("web", "shop"))["stopSignal"] == "SIGQUIT"
    # the rollout's pods: the kubelet reports no effective stop signal (containerd 1.x)
    api.pods["web"] = [pod(reported=None)]
    reconciler.stop_signals = type(reconciler.stop_signals)(
        api, on_change=reconciler.metrics.stop_signal_ignored.set
    )  # no answer kept from the first reconcile (the real one asks again after a minute)
    outcome = await reconciler.reconcile_workload(api.get("web", "shop"))
    assert outcome.result is Result.APPLIED
    lifecycle = _hook(api.get("web", "shop"))
    assert "stopSignal" not in lifecycle and "kill -QUIT $w" in lifecycle["preStop"]["exec"]["command"][2]
    warnings = [e for e in api.events if e["reason"] == "StopSignalIgnored"]
    assert len(warnings) == 1 and warnings[0]["type"] == "Warning", api.events
    assert "pod shop-1" in warnings[0]["message"] and "nginx" in warnings[0]["message"]
    assert reconciler.metrics.stop_signal_ignored._value.get() == 1
    # settled: the next reconcile (its pods run the fallback hook, still no signal reported) writes nothing
    api.pods["web"] = [pod(asked=None, reported=None)]
    writes = len(api.writes())
    assert (await reconciler.reconcile_workload(api.get("web", "shop"))).result is Result.UNCHANGED
    assert len(api.writes()) == writes


async def test_runtime_that_honours_the_stop_signal_keeps_it() -> None:
    api = FakeApi()
    api.pods["web"] = [pod()]
    reconciler = make(api)
    await reconciler.reconcile_workload(api.create(deployment()))
    assert _hook(api.get("web", "shop"))["stopSignal"] == "SIGQUIT"
    assert not [e for e in api.events if e["reason"] == "StopSignalIgnored"]
    assert reconciler.metrics.stop_signal_ignored._value.get() == 0


async def test_without_running_pods_a_fallback_hook_in_place_stays() -> None:
    """A restart (nothing remembered) over a Deployment that got the fallback for an ignoring runtime, with
    no running pod to tell: no rollout back to stopSignal on a guess."""
    api = FakeApi()
    api.pods["web"] = [pod(reported=None)]
    first = make(api)
    await first.reconcile_workload(api.create(deployment()))
    assert "stopSignal" not in _hook(api.get("web", "shop"))  # the fallback from the first reconcile on
    api.pods["web"] = []
    writes = len(api.writes())
    again = make(api)
    assert (await again.reconcile_workload(api.get("web", "shop"))).result is Result.UNCHANGED
    assert len(api.writes()) == writes


async def test_no_pod_list_where_the_api_server_drops_the_stop_signal() -> None:
    api = FakeApi()
    api.keep_stop_signal = False
    await make(api).reconcile_workload(api.create(deployment()))
    assert api.pod_lists == []


def test_finding_says_which_pod_and_containers() -> None:
    text = Finding(Evidence.IGNORED, ("nginx", "php-fpm"), "shop-1").describe()
    assert "pod shop-1" in text and "nginx, php-fpm" in text and "preStop hook" in text


async def test_the_work_queues_slim_body_keeps_the_selector() -> None:
    """Reconciles from the informer get the work queue's slim copy of the Deployment: it must still say
    which pods are the Deployment's (it lost spec.selector once, so every check was UNKNOWN)."""
    from podgrace.controller.work_queue import slim

    api = FakeApi()
    api.pods["web"] = [pod(reported=None)]
    reconciler = make(api)
    await reconciler.reconcile_workload(slim(api.create(deployment())))
    assert api.pod_lists == [("web", "app=shop")]
    assert "stopSignal" not in _hook(api.get("web", "shop"))
