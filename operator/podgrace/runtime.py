"""The operator's process-wide objects, built once by `podgrace run` and used by the Kopf handlers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf

from podgrace.detect import CapabilityCache
from podgrace.events import EventRecorder
from podgrace.kube import KubeClient
from podgrace.metrics import Metrics
from podgrace.profile_store import ProfileStore
from podgrace.reconciler import Reconciler

log = logging.getLogger(__name__)


@dataclass
class Options:
    namespaces: list[str]
    workers: int
    stop_signals: bool | None  # None: detect


@dataclass
class Runtime:
    options: Options
    connection: kopf.ConnectionInfo
    metrics: Metrics
    client: KubeClient | None = None
    reconciler: Reconciler | None = None
    index: Mapping[str, Any] | None = None  # Kopf's live index: profile name -> Deployments naming it
    profile_bodies: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    dirty_profiles: set[str] = field(default_factory=set)
    _flusher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.client = KubeClient(self.connection, connection_limit=max(10, self.options.workers * 2))
        version = await self.client.server_version()
        store = ProfileStore()
        for body in await self.client.list_profiles():
            store.upsert(body)
        capabilities = CapabilityCache(self.client, version, stop_signal_override=self.options.stop_signals)
        events = EventRecorder(self.client, self.metrics)
        self.reconciler = Reconciler(
            self.client, store, capabilities, events, self.metrics, concurrency=self.options.workers
        )
        self._flusher = asyncio.create_task(self._flush_statuses())
        log.info("podgrace started: API server %s.%s, %d ShutdownProfiles", *version, len(store.names()))

    async def stop(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        if self.client is not None:
            await self.client.close()

    def users_of(self, profile: str) -> list[tuple[str, str]]:
        if self.index is None or profile not in self.index:
            return []
        return list(self.index[profile])

    async def _flush_statuses(self) -> None:
        """Profiles whose set of users changed get their status recounted, coalesced once a second."""
        while True:
            await asyncio.sleep(1.0)
            dirty, self.dirty_profiles = self.dirty_profiles, set()
            for name in sorted(dirty):
                body = self.profile_bodies.get(name)
                if body is None or self.reconciler is None:
                    continue
                try:
                    await self.reconciler.update_profile_status(body, len(set(self.users_of(name))))
                except Exception as error:  # a status is retried at the next change; never stop the loop
                    log.warning("status of ShutdownProfile %s not updated: %s", name, error)
                    self.dirty_profiles.add(name)


_current: Runtime | None = None


def install(runtime: Runtime) -> None:
    global _current
    _current = runtime


def current() -> Runtime:
    if _current is None:
        raise RuntimeError("podgrace runtime is not installed; start the operator with `podgrace run`")
    return _current
