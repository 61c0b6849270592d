"""The work queue: the newest event of each workload (Deployment, StatefulSet, DaemonSet), waiting for a
reconcile slot, kept as a slim body with the signature of what a reconcile of it depends on; and the
retries of failed reconciles, after client-go's rate limits (rate_limit.py)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from podgrace.controller.rate_limit import RateLimiter
from podgrace.controller.tasks import cancel_and_wait
from podgrace.controller.workload_key import Key

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryAfter:
    """A handler's answer: retry, after the rate limiter's delay but no sooner than `seconds` (what the
    API server asked with Retry-After)."""

    seconds: float


# The handler's answer: False asks for a retry after the rate limiter's delay, RetryAfter for one no sooner
# than the API server asked; True or None: done.
Handler = Callable[[Key, "Item"], Awaitable[bool | RetryAfter | None]]
RETRY = "RETRY"  # the event type of a retry: the workload is read afresh


@dataclass(frozen=True)
class Item:
    """A workload event waiting in the queue."""

    event_type: str
    body: Mapping[str, Any]
    signature: bytes = b""


REVISION_ANNOTATION = "deployment.kubernetes.io/revision"  # podgrace never reads it


def signature(body: Mapping[str, Any]) -> bytes:
    """What a reconcile of this workload depends on, hashed: uid, generation (every spec change bumps
    it), annotations but the revision the deployment controller stamps on each rollout, and the
    managedFields of the object itself without their times (not of its status: the controller-manager's
    status updates change only those and resourceVersion)."""
    metadata = body.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    if REVISION_ANNOTATION in annotations:
        annotations = {k: v for k, v in annotations.items() if k != REVISION_ANNOTATION}
    fields = [
        (m.get("manager"), m.get("operation"), m.get("apiVersion"), m.get("fieldsV1"))
        for m in metadata.get("managedFields") or []
        if isinstance(m, Mapping) and not m.get("subresource")
    ]
    data = [metadata.get("uid"), metadata.get("generation"), annotations, fields]
    # Keys unsorted: the API server serialises an object's fields in a fixed order, so the same state
    # gives the same text (and a different order would only cost one more reconcile, never skip one).
    # orjson: this runs on every watch event, and the standard library's encoder was 5 % of the CPU.
    text = orjson.dumps(data, default=str)
    return hashlib.blake2b(text, digest_size=16).digest()


# The pod spec's fields the reconciler reads besides the containers (core/workload_parser.py): a field left
# out here is planned as unset. shareProcessNamespace was (found 2026-11-30): a pod that turned it on after
# podgrace's write was planned as before, and the hook that signals PID 1 (pause there) was kept unsaid.
SLIM_POD_FIELDS = ("terminationGracePeriodSeconds", "os", "shareProcessNamespace")


def slim(body: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a workload the reconciler reads: identity, annotations, the spec managedFields, and
    the pod template's containers (name, image, lifecycle), SLIM_POD_FIELDS, and the selector (which
    pods are its own: stop_signal_check.py). A workload waiting for a
    reconcile slot is kept like this (about a third of the whole object: no status, no status-subresource
    managedFields, no other spec), so a cold start over thousands of them holds no whole objects."""
    metadata = body.get("metadata") or {}
    spec = ((body.get("spec") or {}).get("template") or {}).get("spec") or {}
    pod: dict[str, Any] = {
        "containers": [
            {k: c[k] for k in ("name", "image", "lifecycle") if k in c} if isinstance(c, Mapping) else c
            for c in spec.get("containers") or []
        ]
    }
    for name in SLIM_POD_FIELDS:
        if name in spec:
            pod[name] = spec[name]
    meta = {
        k: metadata[k] for k in ("name", "namespace", "uid", "resourceVersion", "generation") if k in metadata
    }
    if "annotations" in metadata:
        meta["annotations"] = metadata["annotations"]
    if "managedFields" in metadata:
        meta["managedFields"] = [
            m
            for m in metadata["managedFields"] or []
            if not (isinstance(m, Mapping) and m.get("subresource"))
        ]
    slim_spec: dict[str, Any] = {"template": {"spec": pod}}
    selector = (body.get("spec") or {}).get("selector")
    if selector is not None:
        slim_spec["selector"] = selector
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": meta,
        "spec": slim_spec,
    }


class WorkQueue:
    """The latest event of each workload, reconciled by `workers` tasks, one workload at a time.

    controller-runtime's work queue: the informer only records the event and reads on, so a cold start
    holds one slim body per workload waiting for a reconcile slot, not a whole object and a stack of
    frames. Events of a workload that arrive while it waits are coalesced: only the newest is reconciled.
    A workload is never handled by two tasks at once, so its events keep their order.

    A reconcile that fails (the handler answers False, or raises) is tried again after the rate limiter's
    delay (per workload: 5 ms doubling to 1000 s; overall: 10 per second, bursts of 100) as a RETRY item
    (the handler reads the workload afresh), unless a newer event came first. A success resets the
    workload's backoff. Retries waiting for their time do not count as work for `wait_idle`.

    A retry the API server asked to wait for (Retry-After) holds the workload: events that arrive
    meanwhile are kept (the newest) and reconciled when the time is up, not before; a plain backoff lets
    a new event through at once (client-go's AddRateLimited beside Add).
    """

    def __init__(self, workers: int, limiter: RateLimiter | None = None) -> None:
        self._workers = max(1, workers)
        self._limiter = limiter or RateLimiter()
        self._latest: dict[Key, Item] = {}
        self._ready: asyncio.Queue[Key] = asyncio.Queue()
        self._queued: set[Key] = set()
        self._active: set[Key] = set()
        self._waiting: dict[Key, asyncio.TimerHandle] = {}  # retries waiting for their time
        self._held: set[Key] = set()  # of those, the ones the API server asked to wait (Retry-After)
        self._tasks: list[asyncio.Task[None]] = []
        self._idle = asyncio.Event()  # nothing queued, nothing being reconciled
        self._idle.set()
        self.retries = 0  # retries scheduled, in total (for the metrics)
        self.on_retry: Callable[[Key], None] | None = None  # counts a retry (by the key's kind)

    async def wait_idle(self) -> None:
        await self._idle.wait()

    def start(self, handle: Handler) -> None:
        """Start the workers, each reconciling one workload at a time with `handle`."""
        self._tasks = [
            asyncio.create_task(self._work(handle), name=f"reconcile-{i}") for i in range(self._workers)
        ]

    async def stop(self) -> None:
        for timer in self._waiting.values():
            timer.cancel()
        self._waiting.clear()
        self._held.clear()
        await cancel_and_wait(self._tasks)
        self._tasks = []

    def put(self, key: Key, item: Item) -> None:
        self._latest[key] = item
        if key not in self._held:  # held: reconciled when its Retry-After is over
            self._enqueue(key)

    @contextlib.asynccontextmanager
    async def exclusive(self, key: Key) -> AsyncIterator[bool]:
        """Work on `key` outside the queue (a profile's fan-out) as if a worker had it: True, and the
        queue's workers leave `key` alone until the block ends (an event meanwhile is reconciled after it).
        False when the queue has `key` already (queued or being reconciled): it gets a fresh read once
        more, after that, and the caller leaves it to the queue. Two reconciles of one workload at once
        would both write (seen as double writes after a profile edit)."""
        if key in self._active or key in self._queued:
            self._latest.setdefault(key, Item(RETRY, {}))
            if key not in self._held:
                self._enqueue(key)
            yield False
            return
        self._active.add(key)
        self._idle.clear()
        try:
            yield True
        finally:
            self._active.discard(key)
            if key in self._latest and key not in self._held:
                self._enqueue(key)
            self._mark_idle()

    def held(self, key: Key) -> bool:
        """Whether `key` waits for a Retry-After (nothing else is to reconcile it before)."""
        return key in self._held

    def failures(self, key: Key) -> int:
        """Consecutive failed reconciles of `key` (0 after a success)."""
        return self._limiter.failures(key)

    def forget(self, key: Key) -> None:
        """`key` needs no retry any more (reconciled, or deleted): its backoff starts afresh."""
        self._limiter.forget(key)
        self._held.discard(key)
        timer = self._waiting.pop(key, None)
        if timer is not None:
            timer.cancel()

    def retry(self, key: Key, at_least: float = 0.0) -> None:
        """Reconcile `key` again after the rate limiter's delay, and not before `at_least` seconds (a
        Retry-After). At most one retry waits per key; a longer Retry-After replaces a shorter wait."""
        loop = asyncio.get_running_loop()
        waiting = self._waiting.get(key)
        if waiting is not None:
            if at_least <= 0 or waiting.when() >= loop.time() + at_least:
                return
            waiting.cancel()
        delay = max(self._limiter.when(key), at_least)
        self.retries += 1
        if self.on_retry is not None:
            self.on_retry(key)
        if at_least > 0:
            self._held.add(key)
        self._waiting[key] = loop.call_later(delay, self._retry_now, key)

    def _retry_now(self, key: Key) -> None:
        self._waiting.pop(key, None)
        self._held.discard(key)
        if key not in self._latest:  # a newer event is waiting already: it is reconciled instead
            self._latest[key] = Item(RETRY, {})
        self._enqueue(key)

    def _enqueue(self, key: Key) -> None:
        if key not in self._queued and key not in self._active:
            self._queued.add(key)
            self._idle.clear()
            self._ready.put_nowait(key)

    async def _work(self, handle: Handler) -> None:
        while True:
            key = await self._ready.get()
            self._queued.discard(key)
            item = self._latest.pop(key, None)
            if item is None:
                self._mark_idle()
                continue
            self._active.add(key)
            try:
                done = await handle(key, item)
            except Exception as error:  # logged with its cause; tried again after the backoff
                log.warning(
                    "reconciling %s failed, retrying with backoff: %s: %s",
                    key,
                    type(error).__name__,
                    error,
                    exc_info=log.isEnabledFor(logging.DEBUG),
                )
                done = False
            finally:
                self._active.discard(key)
            if isinstance(done, RetryAfter):
                self.retry(key, done.seconds)
            elif done is False:
                self.retry(key)
            else:
                self.forget(key)
            if key in self._latest and key not in self._held:
                self._enqueue(key)
            self._mark_idle()

    def _mark_idle(self) -> None:
        if not self._queued and not self._active:
            self._idle.set()
