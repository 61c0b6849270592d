"""Deployment events, from the informer to the reconciler: index the profile a Deployment names at once,
skip what is settled, queue the rest, and record what each reconcile settled on."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from podgrace.controller.deployment_key import Key, key_of
from podgrace.controller.profile_index import ProfileIndex, profile_annotation
from podgrace.controller.reconciler import Reconciler, Result
from podgrace.controller.skip_record import SkipRecord
from podgrace.controller.work_queue import DeploymentQueue, Item, signature, slim
from podgrace.controller.workload_gauges import WorkloadGauges

SETTLED = frozenset({Result.APPLIED, Result.REVERTED, Result.UNCHANGED})


class DeploymentEvents:
    def __init__(
        self,
        index: ProfileIndex,
        record: SkipRecord,
        gauges: WorkloadGauges,
        queue: DeploymentQueue,
        reconciler: Reconciler,
    ) -> None:
        self._index = index
        self._record = record
        self._gauges = gauges
        self._queue = queue
        self._reconciler = reconciler

    async def on_event(self, event_type: str, body: Mapping[str, Any]) -> None:
        """A Deployment event from the informer (every watch event: keep it cheap). The index follows at
        once; the reconcile, or forgetting a deleted Deployment, goes through the queue."""
        metadata = body.get("metadata") or {}
        key = key_of(metadata)
        deleted = event_type == "DELETED"
        profile = None if deleted else profile_annotation(metadata.get("annotations"))
        if self._index.profile_of(key) != profile:
            self._gauges.profile_changed(key)
            self._index.set_profile(key, profile)
        sig = b"" if deleted else signature(body)
        if sig and self._record.is_settled(key, sig):
            return  # e.g. the controller-manager's status updates after a rollout
        self._queue.put(key, Item(event_type, slim(body), sig))

    async def handle(self, key: Key, item: Item) -> None:
        """The queue's handler: one Deployment's newest event, never two of one Deployment at once."""
        if item.event_type == "DELETED":
            self.forget(key)
            return
        version = self._record.profiles_version
        if item.signature and self._record.is_settled(key, item.signature):
            return  # settled while it waited: the echo of podgrace's own write, queued during that write
        outcome = await self._reconciler.reconcile_deployment(item.body)
        quiet = outcome.plan is None or not outcome.plan.decisions
        if item.signature and quiet and outcome.result in SETTLED:
            # After a write, the object is what the apply returned: its watch event (podgrace's own write
            # coming back) is then recognised and not planned again.
            written = outcome.written
            self._record.settle(key, signature(written) if written is not None else item.signature, version)
        else:
            self._record.unsettle(key)

    def forget(self, key: Key) -> None:
        """A deleted Deployment: nothing is kept about it any more."""
        self._record.forget(key)
        self._gauges.forget(key)
        self._reconciler.memory.forget(key)
