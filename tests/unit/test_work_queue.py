"""The Deployment work queue (work_queue.WorkQueue) and the Normal-Event lane that waits for it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fake_api import FakeApi
from prometheus_client import CollectorRegistry

from podgrace.controller import event_recorder as events_mod
from podgrace.controller.event_recorder import NORMAL, EventRecorder
from podgrace.controller.metrics import Metrics
from podgrace.controller.work_queue import Item, WorkQueue
from podgrace.controller.workload_key import Key


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_events_of_a_waiting_deployment_are_coalesced_and_idle_follows_the_work() -> None:
    release = asyncio.Event()
    handled: list[tuple[Key, str]] = []

    async def handle(key: Key, item: Item) -> None:
        handled.append((key, str(item.body["v"])))
        await release.wait()

    queue = WorkQueue(workers=1)
    await asyncio.wait_for(queue.wait_idle(), 1)  # idle before any work
    queue.start(handle)
    try:
        queue.put(("shop", "web"), Item("ADDED", {"v": 1}))
        await settle()
        for v in (2, 3, 4):  # arrive while v1 is being reconciled: only the newest is kept
            queue.put(("shop", "web"), Item("MODIFIED", {"v": v}))
        idle = asyncio.create_task(queue.wait_idle())
        await settle()
        assert not idle.done()
        release.set()
        await asyncio.wait_for(idle, 1)
        assert handled == [(("shop", "web"), "1"), (("shop", "web"), "4")]
    finally:
        await queue.stop()


async def test_background_normal_events_wait_for_idle_reconcilers() -> None:
    api = FakeApi()
    idle = asyncio.Event()
    recorder = EventRecorder(api, Metrics(CollectorRegistry()), background=1, idle=idle.wait)
    obj: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "uid": "u1"},
    }
    try:
        await recorder.post(obj, NORMAL, "Applied", "podgrace applied")
        await settle()
        assert api.events == []  # Deployments still wait for their settings
        idle.set()
        await settle()
        assert [e["reason"] for e in api.events] == ["Applied"]
    finally:
        await recorder.close()


async def test_a_background_event_is_posted_anyway_after_the_wait_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(events_mod, "IDLE_WAIT_LIMIT", 0.05)
    api = FakeApi()
    never = asyncio.Event()
    recorder = EventRecorder(api, Metrics(CollectorRegistry()), background=1, idle=never.wait)
    obj: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "uid": "u1"},
    }
    try:
        await recorder.post(obj, NORMAL, "Applied", "podgrace applied")
        for _ in range(50):
            if api.events:
                break
            await asyncio.sleep(0.01)
        assert [e["reason"] for e in api.events] == ["Applied"]
    finally:
        await recorder.close()


async def test_a_fan_out_and_the_queue_never_reconcile_one_workload_at_once() -> None:
    """A profile's fan-out works on a workload outside the queue: while it does, the queue's workers
    leave that workload alone (an event meanwhile waits for it); a workload the queue has already is left
    to the queue, which reconciles it once more, afresh, afterwards. Two at once both wrote."""
    key = Key("Deployment", "shop", "web")
    release = asyncio.Event()
    handled: list[str] = []

    async def handle(k: Key, item: Item) -> None:
        handled.append(item.event_type)
        await release.wait()

    queue = WorkQueue(workers=2)
    queue.start(handle)
    try:
        async with queue.exclusive(key) as mine:
            assert mine
            queue.put(key, Item("MODIFIED", {}))
            await settle()
            assert handled == []  # the fan-out has it: the event waits
        await settle()
        assert handled == ["MODIFIED"]  # then the queue's turn
        async with queue.exclusive(key) as mine:  # the queue is reconciling it now
            assert not mine
        release.set()
        await asyncio.wait_for(queue.wait_idle(), 1)
        assert handled == ["MODIFIED", "RETRY"]  # once more, afresh (RETRY reads the workload again)
    finally:
        await queue.stop()


def test_the_slim_body_plans_as_the_whole_one() -> None:
    """A queued workload is kept slimmed (work_queue.slim); the reconciler plans on it, so every pod-spec
    field the parser reads must survive. Found missing: shareProcessNamespace (then planned as unset)."""
    from podgrace.controller.work_queue import slim
    from podgrace.core.workload_parser import from_object

    hook = {"exec": {"command": ["/bin/sh", "-c", "sleep 5"]}}
    body: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "web",
            "namespace": "shop",
            "uid": "u1",
            "resourceVersion": "7",
            "generation": 3,
            "labels": {"app": "web"},
            "annotations": {"podgrace.dev/profile": "web", "podgrace.dev/drain-seconds": "20"},
            "managedFields": [
                {
                    "manager": "gitops",
                    "operation": "Apply",
                    "apiVersion": "apps/v1",
                    "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:spec": {"f:template": {"f:spec": {"f:shareProcessNamespace": {}}}}},
                },
            ],
        },
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "shareProcessNamespace": True,
                    "terminationGracePeriodSeconds": 45,
                    "os": {"name": "linux"},
                    "volumes": [{"name": "v", "emptyDir": {}}],
                    "containers": [
                        {
                            "name": "app",
                            "image": "example/app:1",
                            "ports": [{"containerPort": 8080}],
                            "lifecycle": {"preStop": hook, "stopSignal": "SIGQUIT"},
                        }
                    ],
                },
            },
        },
        "status": {"observedGeneration": 3},
    }
    for ownership in (False, True):
        assert from_object(slim(body), with_ownership=ownership) == from_object(
            body, with_ownership=ownership
        )
