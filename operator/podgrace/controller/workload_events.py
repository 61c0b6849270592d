"""Workload events (Deployments, StatefulSets, DaemonSets), from the informers to the reconciler: index the
profile a workload names at once, skip what is settled, queue the rest, record what each reconcile settled
on, and have what failed tried again (the work queue's backoff), with one Warning Event when the failures
persist."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from podgrace.controller.event_recorder import WARNING
from podgrace.controller.informer import LISTED, RESYNC
from podgrace.controller.profile_index import ProfileIndex, profile_annotation
from podgrace.controller.reconciler import RETRY_RESULTS, ReconcileOutcome, Reconciler, Result
from podgrace.controller.work_queue import RETRY, Item, RetryAfter, WorkQueue, signature, slim
from podgrace.controller.workload_key import DEPLOYMENT, Key, key_of
from podgrace.core.findings import Code

log = logging.getLogger(__name__)

SETTLED = frozenset({Result.APPLIED, Result.UNCHANGED})
# Seconds of consecutive failures of a workload after which one Warning Event says so (an API server
# restart, a few seconds of 503s, is retried quietly).
PERSISTING_SECONDS = 15.0


class _Failing:
    __slots__ = ("since", "subject", "warned")

    def __init__(self, since: float, subject: dict[str, Any]) -> None:
        self.since = since
        self.subject = subject  # what an Event about the workload needs: kind, name, namespace, uid
        self.warned = False


class WorkloadEvents:
    def __init__(
        self,
        reconciler: Reconciler,
        index: ProfileIndex,
        queue: WorkQueue,
        *,
        clock: Callable[[], float] = time.monotonic,
        persisting_seconds: float = PERSISTING_SECONDS,
    ) -> None:
        self._reconciler = reconciler
        self._index = index
        self._queue = queue
        # The reconciler's own: what is skipped here is what it settled, and one gauge set counts both.
        self._record = reconciler.record
        self._gauges = reconciler.gauges
        self._clock = clock
        self._persisting = persisting_seconds
        self._failing: dict[Key, _Failing] = {}

    async def on_event(self, event_type: str, body: Mapping[str, Any]) -> None:
        """A workload event from an informer (every watch event: keep it cheap). The index follows at
        once; the reconcile, or forgetting a deleted workload, goes through the queue."""
        metadata = body.get("metadata") or {}
        key = key_of(body)
        deleted = event_type == "DELETED"
        profile = None if deleted else profile_annotation(metadata.get("annotations"))
        if self._index.profile_of(key) != profile:
            self._gauges.profile_changed(key)
            self._index.set_profile(key, profile)
        sig = b"" if deleted else signature(body)
        if sig and event_type != RESYNC and self._record.is_settled(key, sig):
            return  # e.g. the controller-manager's status updates after a rollout
        self._queue.put(key, Item(event_type, slim(body), sig))

    async def handle(self, key: Key, item: Item) -> bool | RetryAfter:
        """The queue's handler: one workload's newest event, never two of one workload at once.
        False: the reconcile failed, and is to be tried again after the queue's backoff; RetryAfter: the
        same, no sooner than the API server asked."""
        if item.event_type == "DELETED":
            self.forget(key)
            return True
        version = self._record.profiles_version
        if item.event_type == RETRY:
            fresh = await self._reconciler.reconcile_fresh(key)
            if fresh is None:  # deleted meanwhile: its DELETED event follows
                self._failing.pop(key, None)
                return True
            outcome = fresh
        else:
            if item.signature and item.event_type != RESYNC and self._record.is_settled(key, item.signature):
                return True  # settled while it waited: the echo of podgrace's own write, queued during it
            listed = item.event_type in (LISTED, RESYNC)
            outcome = await self._reconciler.reconcile_workload(item.body, listed=listed)
        quiet = outcome.plan is None or not outcome.plan.decisions
        if item.signature and quiet and outcome.result in SETTLED:
            # After a write, the object is what the apply returned: its watch event (podgrace's own write
            # coming back) is then recognised and not planned again.
            written = outcome.written
            self._record.settle(key, signature(written) if written is not None else item.signature, version)
        else:
            # Not after a revert either: the echo of the revert is assessed for the at-risk gauge, as the
            # workload now is (not as it was with podgrace's settings).
            self._record.unsettle(key)
        if outcome.result in RETRY_RESULTS:
            await self._failed(key, outcome, item.body)
            return RetryAfter(outcome.retry_after) if outcome.retry_after else False
        self._failing.pop(key, None)
        return True

    async def _failed(self, key: Key, outcome: ReconcileOutcome, body: Mapping[str, Any]) -> None:
        """One more failure of `key`: after PERSISTING_SECONDS of them, one Warning Event (per streak)."""
        now = self._clock()
        failing = self._failing.get(key)
        subject = outcome.body or body
        if failing is None:
            failing = self._failing[key] = _Failing(now, _subject(subject))
        elif (subject.get("metadata") or {}).get("uid"):
            failing.subject = _subject(subject)
        if failing.warned or now - failing.since < self._persisting or not failing.subject["metadata"]["uid"]:
            return
        failing.warned = True
        attempts = self._queue.failures(key) + 1
        log.warning(
            "%s has failed to reconcile for %.0f s (%d attempts), still retrying: %s",
            key,
            now - failing.since,
            attempts,
            outcome.cause,
        )
        message = (
            f"podgrace has been failing to reconcile this {key.kind} for over {self._persisting:.0f} s "
            f"and keeps retrying with backoff; last error: {outcome.cause}"
        )
        await self._reconciler.events.post(failing.subject, WARNING, Code.APPLY_FAILED.value, message)

    def forget(self, key: Key) -> None:
        """A deleted workload: nothing is kept about it any more."""
        self._record.forget(key)
        self._gauges.forget(key)
        self._reconciler.memory.forget(key)
        self._queue.forget(key)
        self._failing.pop(key, None)


def _subject(body: Mapping[str, Any]) -> dict[str, Any]:
    metadata = body.get("metadata") or {}
    return {
        "apiVersion": body.get("apiVersion") or "apps/v1",
        "kind": body.get("kind") or DEPLOYMENT.name,
        "metadata": {k: metadata.get(k) for k in ("name", "namespace", "uid")},
    }
