"""Recovering from faults (issue 12), with a fake API: every failure is retried by the work queue with
backoff, persisting ones get one Warning, a deleted profile's Deployments are told, and the at-risk gauge
follows what the Deployments are after an opt-out."""

from __future__ import annotations

import asyncio
import copy
import itertools
from typing import Any

import aiohttp
from fake_api import FakeApi
from test_reconciler import builtin_bodies, deployment, deps, dkey, pipeline, profile_events, reasons

from podgrace.controller.kube_api import ApiError
from podgrace.controller.rate_limit import ItemBackoff, RateLimiter
from podgrace.controller.status_flusher import StatusFlusher
from podgrace.controller.work_queue import RETRY, Item, WorkQueue
from podgrace.controller.workload_events import WorkloadEvents
from podgrace.controller.workload_key import Key
from podgrace.core import profiles
from podgrace.core.capabilities import Capabilities
from podgrace.core.findings import RISKS
from podgrace.core.planner import plan
from podgrace.core.workload_parser import from_object


async def eventually(condition: Any, seconds: float = 3.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met")


# --- the work queue -------------------------------------------------------------------------------------


async def test_a_failing_reconcile_is_retried_with_growing_backoff_until_it_succeeds() -> None:
    attempts: list[tuple[float, str]] = []
    loop = asyncio.get_running_loop()

    async def handle(key: Any, item: Item) -> bool:
        attempts.append((loop.time(), item.event_type))
        if len(attempts) < 5:
            raise ConnectionResetError("reset by peer")  # or a False answer: the same
        return True

    queue = WorkQueue(1, RateLimiter(ItemBackoff(base=0.02)))
    queue.start(handle)
    try:
        queue.put(("shop", "web"), Item("ADDED", {}))
        await eventually(lambda: len(attempts) == 5)
        gaps = [b[0] - a[0] for a, b in itertools.pairwise(attempts)]
        assert all(later > earlier for earlier, later in itertools.pairwise(gaps))  # 20, 40, 80 ms...
        assert [kind for _, kind in attempts] == ["ADDED", RETRY, RETRY, RETRY, RETRY]
        assert queue.retries == 4
        assert queue.failures(("shop", "web")) == 0  # reset by the success
    finally:
        await queue.stop()


async def test_retries_waiting_for_their_time_leave_the_queue_idle_and_a_new_event_comes_first() -> None:
    handled: list[str] = []

    async def handle(key: Any, item: Item) -> bool:
        handled.append(item.event_type)
        return item.event_type != "ADDED"  # the first fails

    queue = WorkQueue(1, RateLimiter(ItemBackoff(base=60.0)))
    queue.start(handle)
    try:
        queue.put(("shop", "web"), Item("ADDED", {}))
        await asyncio.wait_for(queue.wait_idle(), 1)  # a retry a minute away is not work now
        assert queue.failures(("shop", "web")) == 1
        queue.put(("shop", "web"), Item("MODIFIED", {}))  # the user fixes it: no waiting for the backoff
        await asyncio.wait_for(queue.wait_idle(), 1)
        assert handled == ["ADDED", "MODIFIED"]
        assert queue.failures(("shop", "web")) == 0
    finally:
        await queue.stop()


# --- failures, as the reconciler and the events see them -----------------------------------------------


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_a_persisting_failure_gets_one_warning_and_a_passing_one_none() -> None:
    api = FakeApi()
    clock = Clock()
    async with pipeline(api) as p:
        api.version = (1, 29)
        p.workloads = WorkloadEvents(p.reconciler, p.index, p.queue, clock=clock)
        await p.queue.stop()
        p.queue.start(p.workloads.handle)
        outage = ApiError(503, "ServiceUnavailable", "etcd leader changed")
        body = api.create(deployment())
        api.fail_next = [outage] * 1000
        await p.deliver("ADDED", body)
        await eventually(lambda: p.queue.failures(dkey("shop")) >= 3)
        assert "ApplyFailed" not in reasons(api)  # seconds of 503s: retried quietly
        clock.now += 20  # ... for longer than PERSISTING_SECONDS
        await eventually(lambda: "ApplyFailed" in reasons(api))
        await eventually(lambda: p.queue.failures(dkey("shop")) >= 6)
        warnings = [e for e in api.events if e["reason"] == "ApplyFailed"]
        assert len(warnings) == 1
        assert "etcd leader changed" in warnings[0]["message"]
        assert warnings[0]["involvedObject"]["uid"] == body["metadata"]["uid"]
        api.fail_next = []  # the outage ends: the next retry applies (backoff is short here)
        await eventually(lambda: len(api.writes()) == 1, seconds=5)


async def test_a_rejected_apply_is_said_at_once_and_still_retried() -> None:
    api = FakeApi()
    async with pipeline(api) as p:
        api.version = (1, 29)
        denied = ApiError(422, "Invalid", "ValidatingAdmissionPolicy 'x' denied request: no hooks today")
        api.fail_next = [denied] * 2
        await p.deliver("ADDED", api.create(deployment()))
        assert reasons(api).count("ApplyFailed") == 1  # the same message once (de-duplicated)
        await eventually(lambda: len(api.writes()) == 1)  # the policy is gone: the retry applies


async def test_a_failed_fan_out_reconcile_is_retried_by_the_queue() -> None:
    api = FakeApi()
    async with pipeline(api) as p:
        events = profile_events(p, StatusFlusher(p.reconciler, p.index, p.queue.wait_idle))
        api.version = (1, 29)
        await p.deliver("ADDED", api.create(deployment()))
        body = next(b for b in builtin_bodies() if b["metadata"]["name"] == "nginx-php-fpm")
        body["metadata"]["generation"] = 2
        body["spec"]["containers"][0]["preStopSleepSeconds"] = 9
        api.fail_next = [ApiError(503, "ServiceUnavailable", "busy")] * 3
        await events.on_event("MODIFIED", body)  # the fan-out's apply fails, and the first retries too
        await eventually(lambda: len(api.writes()) == 2)  # a later retry of the queue applies it


# --- a deleted profile ------------------------------------------------------------------------------------


async def test_a_deleted_profile_tells_its_deployments_and_the_metrics_show_it() -> None:
    api = FakeApi()
    async with pipeline(api) as p:
        events = profile_events(p, StatusFlusher(p.reconciler, p.index, p.queue.wait_idle))
        registry = p.reconciler.metrics.registry
        for name in ("a", "b"):
            await p.deliver("ADDED", api.create(deployment(name)))
        managed = deps(profile="nginx-php-fpm")
        assert registry.get_sample_value("podgrace_managed_workloads", managed) == 2
        writes = len(api.writes())
        body = next(b for b in builtin_bodies() if b["metadata"]["name"] == "nginx-php-fpm")
        await events.on_event("DELETED", body)
        unknown = [e for e in api.events if e["reason"] == "UnknownProfile"]
        assert sorted(e["involvedObject"]["name"] for e in unknown) == ["a", "b"]
        assert registry.get_sample_value("podgrace_warnings_total", {"reason": "UnknownProfile"}) == 2
        assert registry.get_sample_value("podgrace_managed_workloads", managed) is None  # series removed
        assert len(api.writes()) == writes  # the settings stay as they were
        assert "lifecycle" in api.get("web", "a")["spec"]["template"]["spec"]["containers"][0]


# --- the at-risk gauge ------------------------------------------------------------------------------------


def audit_risks(api: FakeApi) -> dict[str, int]:
    """What `podgrace audit` finds in the fake API's live Deployments, per risk."""
    counts: dict[str, int] = {}
    known = profiles.builtin()
    for obj in api.workloads.values():
        result = plan(from_object(obj, with_ownership=False), known, Capabilities(True, True))
        for code in {f.code for f in (*result.errors, *result.findings_before) if f.code in RISKS}:
            counts[code.value] = counts.get(code.value, 0) + 1
    return counts


def gauge_risks(p: Any) -> dict[str, int]:
    registry = p.reconciler.metrics.registry
    values = {code.value: registry.get_sample_value("podgrace_workloads_at_risk", deps(finding=code.value))
              for code in RISKS}  # fmt: skip
    return {code: int(v) for code, v in values.items() if v}


async def test_the_at_risk_gauge_equals_audit_right_after_an_opt_out() -> None:
    api = FakeApi()
    async with pipeline(api) as p:
        await p.deliver("ADDED", api.create(deployment("kept")))
        await p.deliver("ADDED", api.create(deployment("leaving")))
        for name in ("kept", "leaving"):
            await p.deliver("MODIFIED", api.get("web", name))  # the echoes of podgrace's applies
        assert gauge_risks(p) == audit_risks(api) == {}
        api.workloads[dkey("leaving")]["metadata"]["annotations"] = {}  # kubectl annotate ...-
        await p.deliver("MODIFIED", api.get("web", "leaving"))
        assert "Reverted" in reasons(api)
        await p.deliver("MODIFIED", api.get("web", "leaving"))  # the echo of the revert
        await asyncio.wait_for(p.queue.wait_idle(), 2)
        assert audit_risks(api)  # without podgrace's settings the nginx and php-fpm pod is at risk again
        assert gauge_risks(p) == audit_risks(api)


# --- the periodic resync ----------------------------------------------------------------------------------


async def test_a_resync_reconciles_settled_deployments_again_without_writing() -> None:
    api = FakeApi()
    async with pipeline(api) as p:
        registry = p.reconciler.metrics.registry

        def reconciles() -> float | None:
            labels = {"controller": "deployment", "result": "success"}
            return registry.get_sample_value("podgrace_reconcile_total", labels)

        await p.deliver("ADDED", api.create(deployment()))
        await p.deliver("MODIFIED", api.get("web", "shop"))  # the echo: settled, not planned
        assert reconciles() == 1
        writes, events = len(api.writes()), len(api.events)
        await p.deliver("RESYNC", api.get("web", "shop"))
        assert reconciles() == 2  # planned again, although settled
        assert (len(api.writes()), len(api.events)) == (writes, events)  # and nothing to write or say


def test_the_profile_index_keeps_no_value_too_long_to_be_a_profile_name() -> None:
    from podgrace.controller.profile_index import profile_annotation

    assert profile_annotation({"podgrace.dev/profile": " nginx "}) == "nginx"
    assert profile_annotation({"podgrace.dev/profile": "a" * 253}) == "a" * 253
    assert profile_annotation({"podgrace.dev/profile": "a" * 254}) is None
    assert profile_annotation({"podgrace.dev/profile": "a" * 250_000}) is None


async def test_a_write_whose_answer_was_lost_is_not_repeated_for_a_lagging_event() -> None:
    """The soak's finding (bench/soak, 2026-11-30): podgrace's write is served but its answer lost; the
    retry reads the Deployment, finds the write done; then the watch, lagging, delivers the user's edit
    that came before the write. Before, that event was planned again and applied a second time (9 of 10
    writes above the minimum in the 500-Deployment soak)."""
    api = FakeApi()
    async with pipeline(api) as p:
        await p.deliver("ADDED", api.create(deployment("first")))  # the probe answered and cached
        await p.deliver("ADDED", api.create(deployment("web")))
        edited = api.get("web", "web")
        edited["metadata"]["annotations"]["podgrace.dev/prestop-sleep-seconds"] = "6"
        api.workloads[Key("Deployment", "web", "web")] = copy.deepcopy(edited)
        write = api.patch_workload_as  # podgrace's writes (strategic merge patches)
        lost = [True]

        async def answer_lost(*args: Any, **kwargs: Any) -> dict[str, Any]:
            written = await write(*args, **kwargs)
            if lost:
                lost.pop()
                raise aiohttp.ServerDisconnectedError()
            return written

        api.patch_workload_as = answer_lost  # type: ignore[method-assign]
        writes = len(api.writes())
        await p.deliver("MODIFIED", copy.deepcopy(edited))
        for _ in range(100):  # the retry (a fresh read) after the failure's short backoff
            await asyncio.sleep(0.01)
        await asyncio.wait_for(p.queue.wait_idle(), 2)
        assert len(api.writes()) == writes + 1  # the write that was served
        await p.deliver("MODIFIED", copy.deepcopy(edited))  # the user's edit again, from a lagging watch
        assert len(api.writes()) == writes + 1
        assert api.get("web", "web")["spec"]["template"]["spec"]["containers"][0]["lifecycle"]
