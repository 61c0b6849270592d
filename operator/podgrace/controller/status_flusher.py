"""ShutdownProfile statuses recounted when their set of users changes, coalesced once a second.

A status write that fails is tried again with backoff per profile (1 s doubling to 60 s, and never sooner
than the API server's Retry-After), not at every flush: an API server that is throttling podgrace or down
gets one attempt per profile per backoff step, not one a second.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from podgrace.controller.kube_api import retry_after
from podgrace.controller.profile_index import ProfileIndex
from podgrace.controller.rate_limit import ItemBackoff
from podgrace.controller.reconciler import Reconciler
from podgrace.controller.tasks import cancel_and_wait

log = logging.getLogger(__name__)
FLUSH_INTERVAL = 1.0  # seconds
RETRY_BASE = 1.0  # seconds before the first retry of a failed status write, doubling
RETRY_CAP = 60.0


class StatusFlusher:
    def __init__(
        self,
        reconciler: Reconciler,
        index: ProfileIndex,
        listed: Callable[[], Awaitable[Any]],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._reconciler = reconciler
        self._index = index
        self._listed = listed  # until every workload is known: counts before that are partial
        self._bodies: dict[str, Mapping[str, Any]] = {}  # the newest body of each profile
        self._task: asyncio.Task[None] | None = None  # the running flusher, once started
        self._clock = clock
        self._backoff = ItemBackoff(RETRY_BASE, RETRY_CAP)
        self._not_before: dict[str, float] = {}  # profiles whose status failed: no attempt before then

    def track(self, body: Mapping[str, Any]) -> None:
        self._bodies[str(body["metadata"]["name"])] = body

    def forget(self, name: str) -> None:
        self._bodies.pop(name, None)
        self._backoff.forget(name)
        self._not_before.pop(name, None)

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
        now = self._clock()
        for name in sorted(self._index.take_recount()):
            body = self._bodies.get(name)
            if body is None:
                continue
            if now < self._not_before.get(name, 0.0):
                self._index.mark_recount(name)  # still backing off: kept for a later flush
                continue
            try:
                count = self._index.count(name)
                await self._reconciler.update_profile_status(body, count, retry_in_place=False)
            except Exception as error:  # retried after the backoff; never stop the loop
                delay = max(self._backoff.when(name), retry_after(error) or 0.0)
                self._not_before[name] = self._clock() + delay
                log.warning("status of ShutdownProfile %s not updated, retrying in %.0f s: %s",
                            name, delay, error)  # fmt: skip
                self._index.mark_recount(name)
            else:
                self._backoff.forget(name)
                self._not_before.pop(name, None)
