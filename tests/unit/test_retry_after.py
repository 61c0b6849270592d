"""Retry-After: the API server's 429s and 5xx ask podgrace to wait; every retry path waits at least that
long (the work queue's per-Deployment retries, the stop-signal probe, the watch, the status flusher)."""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
from typing import Any

import kopf
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from fake_api import FakeApi
from fake_clock import Clock
from test_reconciler import builtin_bodies, deployment, pipeline, pod_spec

from podgrace.controller.capability_probe import CapabilityCache, ProbeFailed
from podgrace.controller.kube_api import ApiError, KubeClient
from podgrace.controller.rate_limit import MAX_RETRY_AFTER, RateLimiter, retry_after_seconds
from podgrace.controller.reconciler import Result
from podgrace.controller.status_flusher import StatusFlusher
from podgrace.controller.work_queue import Item, RetryAfter, WorkQueue
from podgrace.controller.workload_key import Key

# --- the header -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, None),
        ("", None),
        ("7", 7.0),
        (" 0 ", 0.0),
        ("3600", MAX_RETRY_AFTER),  # capped: beyond it the backoff's own doubling takes over
        ("9" * 400, MAX_RETRY_AFTER),  # no huge integer
        ("-1", None),
        ("1.5", None),  # RFC 9110: delay-seconds is an integer
        ("soon", None),
        ("Mon, 30 Nov 2026 06:00:20 GMT", 20.0),  # an HTTP date, 20 s after "now" below
        ("Mon, 30 Nov 2026 05:59:00 GMT", 0.0),  # in the past: no wait
    ],
)
def test_retry_after_header_is_read_as_seconds_capped(header: str | None, seconds: float | None) -> None:
    now = dt.datetime(2026, 11, 30, 6, 0, 0, tzinfo=dt.UTC).timestamp()
    assert retry_after_seconds(header, now=lambda: now) == seconds


async def test_the_client_reads_retry_after_from_429_and_5xx_only() -> None:
    replies = {
        "throttled": (429, "5"),
        "unavailable": (503, "2"),
        "dated": (503, email.utils.formatdate(usegmt=True)),  # now: no wait
        "missing": (404, "9"),  # not a 429/5xx: the header means nothing
        "plain": (429, None),
    }

    async def handle(request: web.Request) -> web.Response:
        status, header = replies[request.match_info["name"]]
        body = orjson.dumps({"kind": "Status", "reason": "TooManyRequests", "message": "slow down"})
        headers = {"Retry-After": header} if header is not None else {}
        return web.Response(status=status, body=body, headers=headers)

    app = web.Application()
    app.router.add_route("*", "/apis/apps/v1/namespaces/{ns}/deployments/{name}", handle)
    async with TestServer(app) as server:
        client = KubeClient(kopf.ConnectionInfo(server=str(server.make_url("/"))))
        found = {}
        try:
            for name in replies:
                with pytest.raises(ApiError) as error:
                    await client.apply_workload(Key("Deployment", "shop", name), {})
                found[name] = (error.value.status, error.value.retry_after)
        finally:
            await client.close()
    assert found["throttled"] == (429, 5.0)
    assert found["unavailable"] == (503, 2.0)
    assert found["dated"][1] is not None and found["dated"][1] <= 1.0
    assert found["missing"] == (404, None)
    assert found["plain"] == (429, None)


# --- the work queue ---------------------------------------------------------------------------------------


async def test_a_retry_after_holds_the_deployment_even_against_new_events() -> None:
    """The retry waits at least the Retry-After, and events that arrive meanwhile (the controller-manager's
    status updates, a user's edit) wait with it: the newest is reconciled when the time is up."""
    loop = asyncio.get_running_loop()
    calls: list[tuple[float, str]] = []
    done = asyncio.Event()

    async def handle(key: Key, item: Item) -> bool | RetryAfter:
        calls.append((loop.time(), item.event_type))
        if len(calls) == 1:
            return RetryAfter(0.4)
        done.set()
        return True

    queue = WorkQueue(workers=2, limiter=RateLimiter())
    queue.start(handle)
    try:
        key = Key("Deployment", "shop", "web")
        queue.put(key, Item("ADDED", {}))
        while not calls:
            await asyncio.sleep(0.01)
        for kind in ("MODIFIED", "MODIFIED", "EDITED"):
            queue.put(key, Item(kind, {}))
            await asyncio.sleep(0.02)
        assert len(calls) == 1  # held, not reconciled at once as after a plain backoff
        await asyncio.wait_for(done.wait(), 5)
        await asyncio.sleep(0.05)
    finally:
        await queue.stop()
    assert [kind for _, kind in calls] == ["ADDED", "EDITED"]  # the newest event, once
    assert calls[1][0] - calls[0][0] >= 0.4


async def test_without_retry_after_a_new_event_is_reconciled_at_once() -> None:
    """The difference above is the Retry-After's: a plain failure's backoff lets a new event through."""
    calls: list[str] = []

    async def handle(key: Key, item: Item) -> bool:
        calls.append(item.event_type)
        return len(calls) > 1

    limiter = RateLimiter()
    for _ in range(12):
        limiter.when(Key("Deployment", "shop", "web"))  # a long backoff (20 s) already
    queue = WorkQueue(workers=1, limiter=limiter)
    queue.start(handle)
    try:
        queue.put(Key("Deployment", "shop", "web"), Item("ADDED", {}))
        while not calls:
            await asyncio.sleep(0.01)
        queue.put(Key("Deployment", "shop", "web"), Item("MODIFIED", {}))
        for _ in range(100):
            if len(calls) == 2:
                break
            await asyncio.sleep(0.01)
    finally:
        await queue.stop()
    assert calls == ["ADDED", "MODIFIED"]


async def test_a_failed_apply_carries_the_retry_after_to_the_queue() -> None:
    api = FakeApi()
    async with pipeline(api) as p:
        await p.deliver("ADDED", api.create(deployment("first")))  # the probe answered and cached
        api.fail_next = [ApiError(503, "ServiceUnavailable", "restarting", retry_after=3.0)]
        body = api.create(deployment("other"))
        outcome = await p.reconciler.reconcile_workload(body)
        assert (outcome.result, outcome.retry_after) == (Result.FAILED, 3.0)
        api.fail_next = [ApiError(429, "TooManyRequests", "throttled", retry_after=2.0)]
        other = Key("Deployment", "web", "other")
        assert await p.workloads.handle(other, Item("MODIFIED", body)) == RetryAfter(2.0)
        api.fail_next = [ApiError(503, "ServiceUnavailable", "no header")]
        assert await p.workloads.handle(other, Item("MODIFIED", body)) is False


async def test_the_queue_retry_of_a_throttled_apply_waits_for_retry_after() -> None:
    api = FakeApi()
    loop = asyncio.get_running_loop()
    applied_at: list[float] = []
    write = api.patch_workload_as  # podgrace's writes (strategic merge patches)

    async def timed_write(*args: Any, **kwargs: Any) -> dict[str, Any]:
        applied_at.append(loop.time())
        return await write(*args, **kwargs)

    api.patch_workload_as = timed_write  # type: ignore[method-assign]
    async with pipeline(api) as p:
        await p.deliver("ADDED", api.create(deployment("first")))  # the probe answered and cached
        applied_at.clear()
        api.fail_next = [ApiError(429, "TooManyRequests", "throttled", retry_after=0.5)]
        await p.deliver("ADDED", api.create(deployment("web")))
        assert p.queue.failures(Key("Deployment", "web", "web")) == 1
        for _ in range(300):
            if len(applied_at) == 2:
                break
            await asyncio.sleep(0.01)
        await asyncio.wait_for(p.queue.wait_idle(), 2)
    assert len(applied_at) == 2  # the 429, then one retry, which succeeded
    assert applied_at[1] - applied_at[0] >= 0.5
    assert pod_spec(api.get("web", "web"))["terminationGracePeriodSeconds"] == 70


async def test_a_profile_fan_out_leaves_a_held_deployment_to_the_queue() -> None:
    """A profile edit while a user waits for its Retry-After: the fan-out does not reconcile it (that
    would be a request to it before the time is up); the queue's retry does, with the new profile."""
    api = FakeApi()
    async with pipeline(api) as p:
        await p.deliver("ADDED", api.create(deployment("first")))
        api.fail_next = [ApiError(429, "TooManyRequests", "throttled", retry_after=0.3)]
        await p.deliver("ADDED", api.create(deployment("web")))
        assert p.queue.held(Key("Deployment", "web", "web"))
        reads = len(api.applies)
        await p.reconciler._refresh(Key("Deployment", "web", "web"))
        assert len(api.applies) == reads  # left to the queue
        for _ in range(300):
            if not p.queue.held(Key("Deployment", "web", "web")):
                break
            await asyncio.sleep(0.01)
        await asyncio.wait_for(p.queue.wait_idle(), 2)
        assert pod_spec(api.get("web", "web"))["terminationGracePeriodSeconds"] == 70


# --- the probe and the status flusher ---------------------------------------------------------------------


async def test_a_throttled_probe_is_not_repeated_before_retry_after() -> None:
    api = FakeApi()
    api.fail_next = [ApiError(429, "TooManyRequests", "throttled", retry_after=45.0)]
    cache = CapabilityCache(api)
    body = api.create(deployment())
    with pytest.raises(ProbeFailed):
        await cache.get(body)
    probes = len(api.applies)
    with pytest.raises(ProbeFailed, match=r"probing again in 4[45] s"):  # not the first step's 1 s
        await cache.get(body)
    assert len(api.applies) == probes  # no request


async def test_a_failing_status_backs_off_doubling_and_honours_retry_after() -> None:
    api = FakeApi()
    clock = Clock(100.0)
    async with pipeline(api) as p:
        flusher = StatusFlusher(p.reconciler, p.index, p.queue.wait_idle, clock=clock)
        body = next(b for b in builtin_bodies() if b["metadata"]["name"] == "nginx-php-fpm")
        flusher.track(body)
        await p.deliver("ADDED", api.create(deployment("a")))
        attempts: list[float] = []
        patch = api.patch_profile_status

        async def counted(name: str, status: dict[str, Any]) -> None:
            attempts.append(clock.now)
            await patch(name, status)

        api.patch_profile_status = counted  # type: ignore[method-assign]

        async def flush_every_second_until(end: float, error: ApiError | None = None) -> None:
            while clock.now < end:
                if error is not None and api.fail_next_status is None:
                    api.fail_next_status = error
                await flusher.flush()
                clock.now += 1.0

        unavailable = ApiError(503, "ServiceUnavailable", "down")
        await flush_every_second_until(116, unavailable)
        # one attempt in place each (the flusher does not retry in place), then 1, 2, 4, 8 s apart
        assert attempts == [100, 101, 103, 107, 115]
        attempts.clear()
        throttled = ApiError(429, "TooManyRequests", "slow down", retry_after=40.0)
        api.fail_next_status = throttled  # the next attempt (t = 131) meets a Retry-After of 40 s
        await flush_every_second_until(180)
        assert attempts == [131, 171]  # 171: Retry-After (40 s) beat the backoff's 32 s; then it passed
        assert api.statuses["nginx-php-fpm"]["workloads"] == 1
        attempts.clear()
        await p.deliver("ADDED", api.create(deployment("b")))
        api.fail_next_status = unavailable
        await flush_every_second_until(183)
        assert attempts == [180, 181]  # a success reset the backoff: 1 s again
