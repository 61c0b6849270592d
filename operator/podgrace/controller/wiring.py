"""The operator's long-lived objects, built once by `podgrace run` before Kopf starts, and handed to the
Kopf handlers as Kopf's `memo`. Starting and stopping them is all this module does beyond building them."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import kopf

from podgrace.controller.capability_probe import CapabilityCache
from podgrace.controller.credentials import Credentials
from podgrace.controller.event_recorder import EventRecorder
from podgrace.controller.informer import Informers, WorkloadInformer
from podgrace.controller.kube_api import KubeClient
from podgrace.controller.metrics import Metrics
from podgrace.controller.profile_events import ProfileEvents
from podgrace.controller.profile_index import ProfileIndex
from podgrace.controller.reconciler import Reconciler
from podgrace.controller.skip_record import SkipRecord
from podgrace.controller.status_flusher import StatusFlusher
from podgrace.controller.work_queue import WorkQueue
from podgrace.controller.workload_events import WorkloadEvents
from podgrace.controller.workload_gauges import WorkloadGauges
from podgrace.controller.workload_key import KINDS, Key, kind_named
from podgrace.core.profile_store import ProfileStore

log = logging.getLogger(__name__)

# Tasks posting the Normal Events (Applied, Reverted) after the writes: few, so that during a sync over
# thousands of workloads the API server spends itself on the settings first.
EVENT_POSTERS = 2
# The liveness probe fails once every API response has been a 401 for this long (the token read again in
# between): credentials that stopped working do not come back by themselves, a restart reads them afresh.
UNAUTHORIZED_LIMIT = 30.0


@dataclass(frozen=True)
class Options:
    namespaces: list[str]
    workers: int
    stop_signals: bool | None  # None: detect
    resync_seconds: float = 600.0  # 0: no periodic resync


# Frozen, and holding no state of its own: Kopf hands each ShutdownProfile's handlers a shallow copy of
# the memo, which then refers to the same objects.
@dataclass(frozen=True)
class Operator:
    credentials: Credentials
    client: KubeClient
    store: ProfileStore
    capabilities: CapabilityCache
    queue: WorkQueue
    events: EventRecorder
    workloads: WorkloadEvents
    informers: Informers  # one per workload kind
    flusher: StatusFlusher
    profiles: ProfileEvents
    metrics: Metrics | None = None

    async def start(self) -> None:
        """Learn the API server's version and the ShutdownProfiles, then start reconciling."""
        version = await self.capabilities.server_version()
        if self.metrics is not None:
            self.metrics.count_tasks(asyncio.get_running_loop())
        for body in await self.client.list_profiles():
            self.store.upsert(body)
        self.queue.start(self.workloads.handle)
        self.informers.start()
        self.flusher.start()
        log.info("podgrace started: API server %s.%s, %d ShutdownProfiles", *version, len(self.store.names()))

    async def stop(self) -> None:
        await self.informers.stop()
        await self.flusher.stop()
        await self.queue.stop()
        await self.events.close()
        await self.client.close()

    def health(self) -> dict[str, Any]:
        """For the liveness probe: raises (fails it) when an informer has stopped or the API server has
        refused podgrace's credentials for UNAUTHORIZED_LIMIT seconds."""
        unauthorized = self.client.unauthorized_for()
        if unauthorized >= UNAUTHORIZED_LIMIT:
            raise RuntimeError(
                f"the API server has refused podgrace's credentials (401) for {unauthorized:.0f} s"
            )
        return self.informers.health()

    def connection(self) -> kopf.ConnectionInfo:
        """For Kopf's login handler: the credentials as they are now (a rotated token read again)."""
        return self.credentials.connection()


def build(options: Options, connection: kopf.ConnectionInfo | Credentials, metrics: Metrics) -> Operator:
    credentials = connection if isinstance(connection, Credentials) else Credentials(connection)
    client = KubeClient(credentials, connection_limit=max(10, options.workers * 2))
    store = ProfileStore()
    index = ProfileIndex()
    record = SkipRecord()
    gauges = WorkloadGauges(metrics, index)
    capabilities = CapabilityCache(client, stop_signal_override=options.stop_signals)
    queue = WorkQueue(options.workers)
    events = EventRecorder(client, metrics, background=EVENT_POSTERS, idle=queue.wait_idle)
    reconciler = Reconciler(
        client, store, capabilities, events, metrics, gauges, record, concurrency=options.workers
    )
    workloads = WorkloadEvents(reconciler, index, queue)
    reconciler.retry = queue.retry  # the fan-out's failures are retried by the queue, with its backoff
    reconciler.held = queue.held  # and it leaves alone a workload the API server asked to wait for
    reconciler.exclusive = queue.exclusive  # and never reconciles a workload the queue has at the same time

    def count_retry(key: Key) -> None:
        metrics.retries.labels(kind_named(key.kind).label).inc()

    queue.on_retry = count_retry
    # One informer per kind, into the same queue: one reconcile path for every kind.
    informers = Informers(
        [
            WorkloadInformer(
                client,
                options.namespaces,
                workloads.on_event,
                kind=kind,
                resync_seconds=options.resync_seconds,
            )
            for kind in KINDS
        ]
    )
    flusher = StatusFlusher(reconciler, index, informers.wait_listed)
    profiles = ProfileEvents(reconciler, index, flusher, informers.wait_listed)
    return Operator(
        credentials, client, store, capabilities, queue, events, workloads, informers, flusher, profiles,
        metrics,
    )  # fmt: skip
