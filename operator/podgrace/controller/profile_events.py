"""ShutdownProfile events (from Kopf): what a new spec or a deletion changes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from podgrace.controller.profile_index import ProfileIndex
from podgrace.controller.reconciler import Reconciler
from podgrace.controller.status_flusher import StatusFlusher


class ProfileEvents:
    def __init__(
        self,
        reconciler: Reconciler,
        index: ProfileIndex,
        flusher: StatusFlusher,
        listed: Callable[[], Awaitable[Any]],
    ) -> None:
        self._reconciler = reconciler
        self._index = index
        self._flusher = flusher
        self._listed = listed  # until every workload is known
        # The reconciler's own: the profiles it plans with, the record of what it settled on.
        self._store = reconciler.store
        self._record = reconciler.record

    async def on_event(self, event_type: str, body: Mapping[str, Any]) -> None:
        name = str(body["metadata"]["name"])
        generation = None if event_type == "DELETED" else body["metadata"].get("generation")
        known = self._store.entry(name)
        if generation is None or known is None or known.generation != generation:
            # A new spec (generation) or a deletion changes what workloads plan.
            self._record.profiles_changed()
        if event_type == "DELETED":
            self._flusher.forget(name)
            await self._listed()
            # Its workloads are told (UnknownProfile), keep what they have, and stop counting as managed.
            await self._reconciler.profile_deleted(name, self._index.users_of(name))
            return
        self._flusher.track(body)
        await self._listed()  # its status counts, and its fan-out reaches, every workload naming it
        await self._reconciler.reconcile_profile(body, self._index.users_of(name))
