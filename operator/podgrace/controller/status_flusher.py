"""ShutdownProfile statuses recounted when their set of users changes, coalesced once a second."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from podgrace.controller.profile_index import ProfileIndex
from podgrace.controller.reconciler import Reconciler
from podgrace.controller.tasks import cancel_and_wait

log = logging.getLogger(__name__)
FLUSH_INTERVAL = 1.0  # seconds


class StatusFlusher:
    def __init__(
        self, reconciler: Reconciler, index: ProfileIndex, listed: Callable[[], Awaitable[Any]]
    ) -> None:
        self._reconciler = reconciler
        self._index = index
        self._listed = listed  # until every workload is known: counts before that are partial
        self._bodies: dict[str, Mapping[str, Any]] = {}  # the newest body of each profile
        self._task: asyncio.Task[None] | None = None  # the running flusher, once started

    def track(self, body: Mapping[str, Any]) -> None:
        self._bodies[str(body["metadata"]["name"])] = body

    def forget(self, name: str) -> None:
        self._bodies.pop(name, None)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="profile-status-flusher")

    async def stop(self) -> None:
        await cancel_and_wait([self._task])

    async def _run(self) -> None:
        await self._listed()
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            await self.flush()

    async def flush(self) -> None:
        for name in sorted(self._index.take_recount()):
            body = self._bodies.get(name)
            if body is None:
                continue
            try:
                await self._reconciler.update_profile_status(body, self._index.count(name))
            except Exception as error:  # a status is retried at the next flush; never stop the loop
                log.warning("status of ShutdownProfile %s not updated: %s", name, error)
                self._index.mark_recount(name)
