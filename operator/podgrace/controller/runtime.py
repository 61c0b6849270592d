"""The operator's process-wide objects, built once by `podgrace run`: the Deployment informer and work
queue, the reconciler, the profile index; the Kopf handlers reach them through `current()`."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf
import orjson

from podgrace.controller.capability_probe import CapabilityCache
from podgrace.controller.event_recorder import EventRecorder
from podgrace.controller.informer import DeploymentInformer
from podgrace.controller.kube_api import KubeClient
from podgrace.controller.metrics import Metrics
from podgrace.controller.reconciler import Reconciler, Result
from podgrace.core import overrides
from podgrace.core.profile_store import ProfileStore

log = logging.getLogger(__name__)
Key = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True)
class Item:
    """A Deployment event waiting in the queue."""

    event_type: str
    body: Mapping[str, Any]
    signature: bytes = b""


SETTLED = frozenset({Result.APPLIED, Result.REVERTED, Result.UNCHANGED})
WROTE = frozenset({Result.APPLIED, Result.REVERTED})
REVISION_ANNOTATION = "deployment.kubernetes.io/revision"  # podgrace never reads it
# Tasks posting the Normal Events (Applied, Reverted) after the writes: few, so that during a sync over
# thousands of Deployments the API server spends itself on the settings first.
EVENT_POSTERS = 2


def profile_annotation(annotations: Mapping[str, Any] | None) -> str | None:
    """The profile a Deployment names (stripped; empty is none)."""
    return overrides.profile_name(annotations or {}) or None


def signature(body: Mapping[str, Any]) -> bytes:
    """What a reconcile of this Deployment depends on, hashed: uid, generation (every spec change bumps
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


def slim(body: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a Deployment the reconciler reads: identity, annotations, the spec managedFields, and
    the pod template's containers (name, image, lifecycle), grace period and os. A Deployment waiting for a
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
    for name in ("terminationGracePeriodSeconds", "os"):
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
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": meta,
        "spec": {"template": {"spec": pod}},
    }


class DeploymentQueue:
    """The latest event of each Deployment, reconciled by `workers` tasks, one Deployment at a time.

    controller-runtime's work queue: the informer only records the event and reads on, so a cold start
    holds one slim body per Deployment waiting for a reconcile slot, not a whole object and a stack of
    frames. Events of a Deployment that arrive while it waits are coalesced: only the newest is reconciled.
    A Deployment is never handled by two tasks at once, so its events keep their order.
    """

    def __init__(self, handle: Callable[[Key, Item], Awaitable[None]], workers: int) -> None:
        self._handle = handle
        self._workers = max(1, workers)
        self._latest: dict[Key, Item] = {}
        self._ready: asyncio.Queue[Key] = asyncio.Queue()
        self._queued: set[Key] = set()
        self._active: set[Key] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._idle = asyncio.Event()  # nothing queued, nothing being reconciled
        self._idle.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._work(), name=f"reconcile-{i}") for i in range(self._workers)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    def put(self, key: Key, item: Item) -> None:
        self._latest[key] = item
        self._enqueue(key)

    def _enqueue(self, key: Key) -> None:
        if key not in self._queued and key not in self._active:
            self._queued.add(key)
            self._idle.clear()
            self._ready.put_nowait(key)

    async def _work(self) -> None:
        while True:
            key = await self._ready.get()
            self._queued.discard(key)
            item = self._latest.pop(key, None)
            if item is None:
                self._mark_idle()
                continue
            self._active.add(key)
            try:
                await self._handle(key, item)
            except Exception:  # logged; the Deployment's next event retries
                log.exception("reconciling Deployment %s/%s failed", *key)
            finally:
                self._active.discard(key)
                if key in self._latest:
                    self._enqueue(key)
                self._mark_idle()

    def _mark_idle(self) -> None:
        if not self._queued and not self._active:
            self._idle.set()


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
    profile_bodies: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    dirty_profiles: set[str] = field(default_factory=set)
    # Which Deployments name which profile: for a profile's fan-out and its status count. podgrace keeps it
    # itself rather than as a Kopf index: Kopf holds every handler until all objects are indexed, and that
    # wait costs O(N^2) wake-ups (200 s of start-up at 5,000 Deployments). It is complete once the
    # informer has listed every Deployment (`wait_listed`).
    users: dict[str, set[Key]] = field(default_factory=dict)
    _profile_of: dict[Key, str] = field(default_factory=dict)
    informer: DeploymentInformer | None = None
    queue: DeploymentQueue | None = None  # None until started: events are then handled inline
    # Deployments whose last reconcile had nothing to report (no Warning, nothing failed), with the
    # signature of what it saw and the profiles' version then: an event with the same signature (a
    # status update) would plan the same, find the same no-op, and is not reconciled again.
    _settled: dict[Key, tuple[bytes, int]] = field(default_factory=dict)
    profiles_version: int = 0  # bumped when a ShutdownProfile's spec changes or it is deleted
    # The signature of what podgrace's last apply of a Deployment returned.
    _written: dict[Key, bytes] = field(default_factory=dict)
    _profile_generations: dict[str, Any] = field(default_factory=dict)
    _flusher: asyncio.Task[None] | None = None
    _watcher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.client = KubeClient(self.connection, connection_limit=max(10, self.options.workers * 2))
        self.client.applied = self._applied
        version = await self.client.server_version()
        store = ProfileStore()
        for body in await self.client.list_profiles():
            store.upsert(body)
            self._profile_generations[str(body["metadata"]["name"])] = body["metadata"].get("generation")
        capabilities = CapabilityCache(self.client, version, stop_signal_override=self.options.stop_signals)
        self.queue = DeploymentQueue(self._handle_deployment, self.options.workers)
        events = EventRecorder(self.client, self.metrics, background=EVENT_POSTERS, idle=self.queue.wait_idle)
        self.reconciler = Reconciler(
            self.client, store, capabilities, events, self.metrics, concurrency=self.options.workers
        )
        self.queue.start()
        self.informer = DeploymentInformer(self.client, self.options.namespaces, self.deployment_event)
        self._watcher = asyncio.create_task(self.informer.run(), name="deployment-informer")
        self._flusher = asyncio.create_task(self._flush_statuses())
        log.info("podgrace started: API server %s.%s, %d ShutdownProfiles", *version, len(store.names()))

    def observe_deployment(self, namespace: str, name: str, annotations: Mapping[str, Any] | None) -> None:
        """A Deployment as the informer delivered it (listed, added or modified): index its profile."""
        self._set_profile((namespace, name), profile_annotation(annotations))

    def forget_deployment(self, namespace: str, name: str) -> None:
        self._set_profile((namespace, name), None)

    def health(self) -> dict[str, Any]:
        """For Kopf's liveness endpoint: fails only if the informer task has ended (it never should: a
        restart then helps); list or watch errors are reported but do not fail it (a restart would not
        help an API server that is down or RBAC that is missing)."""
        if self._watcher is not None and self._watcher.done():
            raise RuntimeError("the Deployment informer has stopped")
        informer = self.informer
        return {
            "listed": informer is not None and informer.listed.is_set(),
            "failing": sorted(informer.failing) if informer is not None else [],
        }

    async def wait_listed(self) -> None:
        """Until every Deployment has been listed once: a profile's users are then all known."""
        if self.informer is not None:
            await self.informer.listed.wait()

    def _set_profile(self, key: Key, profile: str | None) -> None:
        """Index `key` under `profile` (None: under nothing); a profile whose users changed is marked for
        its status to be recounted."""
        before = self._profile_of.get(key)
        if before == profile:
            return
        if before is not None:
            users = self.users.get(before)
            if users is not None:
                users.discard(key)
                if not users:
                    del self.users[before]
        if profile is None:
            self._profile_of.pop(key, None)
        else:
            self._profile_of[key] = profile
            self.users.setdefault(profile, set()).add(key)
        self.dirty_profiles.update(p for p in (before, profile) if p)

    async def deployment_event(self, event_type: str, body: Mapping[str, Any]) -> None:
        """A Deployment event from the informer: index it now, then reconcile or forget it via the queue."""
        metadata = body.get("metadata") or {}
        key = (str(metadata.get("namespace")), str(metadata.get("name")))
        if event_type == "DELETED":
            self.forget_deployment(*key)
            self._settled.pop(key, None)
        else:
            self.observe_deployment(*key, metadata.get("annotations"))
        if self.queue is None:
            await self._handle_deployment(key, Item(event_type, body))
            return
        sig = signature(body) if event_type != "DELETED" else b""
        if sig and self._settled.get(key) == (sig, self.profiles_version):
            return  # e.g. the controller-manager's status updates after a rollout
        self.queue.put(key, Item(event_type, slim(body), sig))

    async def _handle_deployment(self, key: Key, item: Item) -> None:
        assert self.reconciler is not None
        if item.event_type == "DELETED":
            self.reconciler.forget_deployment(item.body)
            return
        version = self.profiles_version
        if item.signature and self._settled.get(key) == (item.signature, version):
            return  # settled while it waited: the echo of podgrace's own write, queued during that write
        self._written.pop(key, None)
        outcome = await self.reconciler.reconcile_deployment(item.body)
        written = self._written.pop(key, None)
        quiet = outcome.plan is None or not outcome.plan.decisions
        if item.signature and quiet and outcome.result in SETTLED:
            # After a write, the object is what the apply returned: its watch event (podgrace's own write
            # coming back) is then recognised and not planned again.
            seen = written if written is not None and outcome.result in WROTE else item.signature
            self._settled[key] = (seen, version)
        else:
            self._settled.pop(key, None)

    def _applied(self, obj: dict[str, Any]) -> None:
        metadata = obj.get("metadata") or {}
        self._written[(str(metadata.get("namespace")), str(metadata.get("name")))] = signature(obj)

    def profile_event(self, event_type: str, body: Mapping[str, Any]) -> None:
        """A ShutdownProfile event: a new spec (generation) or a deletion changes what Deployments plan."""
        metadata = body.get("metadata") or {}
        name = str(metadata.get("name"))
        generation = None if event_type == "DELETED" else metadata.get("generation")
        if self._profile_generations.get(name) != generation or generation is None:
            self.profiles_version += 1
        if generation is None:
            self._profile_generations.pop(name, None)
        else:
            self._profile_generations[name] = generation

    async def stop(self) -> None:
        for task in (self._watcher, self._flusher):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.queue is not None:
            await self.queue.stop()
        if self.reconciler is not None:
            await self.reconciler.events.close()
        if self.client is not None:
            await self.client.close()

    def users_of(self, profile: str) -> list[Key]:
        return sorted(self.users.get(profile, ()))

    async def _flush_statuses(self) -> None:
        """Profiles whose set of users changed get their status recounted, coalesced once a second."""
        await self.wait_listed()
        while True:
            await asyncio.sleep(1.0)
            dirty, self.dirty_profiles = self.dirty_profiles, set()
            for name in sorted(dirty):
                body = self.profile_bodies.get(name)
                if body is None or self.reconciler is None:
                    continue
                try:
                    await self.reconciler.update_profile_status(body, len(self.users.get(name, ())))
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
