"""podgrace's own list-and-watch of workloads (an informer per kind: Deployments, StatefulSets, DaemonSets),
in place of Kopf's for these resources.

Why not Kopf's: podgrace needs only each workload's newest body, and a cold start over 5,000 Deployments
brings ~15,000 watch events (every listed object, the echo of each of podgrace's writes, the
controller-manager's status updates). Kopf's per-event machinery (cause detection, three loggers, handler
invocation) and its standard-library JSON decoding were ~30 % of the operator's CPU there (py-spy). Here an
event costs one orjson decode and a call. ShutdownProfiles, start-up, login and liveness stay with Kopf.

The protocol is the API server's: list in pages, then watch from the list's resourceVersion with bookmarks;
a watch that ends is resumed from the last resourceVersion seen; 410 Gone (history compacted) relists, and
a relist reports as DELETED every workload that vanished meanwhile. Errors are logged and retried with
backoff; the informer never stops on its own.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from podgrace.controller.kube_api import ApiError, retry_after
from podgrace.controller.tasks import cancel_and_wait
from podgrace.controller.workload_key import API_VERSION, Key, Kind, collection_path

log = logging.getLogger(__name__)

OnEvent = Callable[[str, Mapping[str, Any]], Awaitable[None]]

LISTED = "LISTED"  # the event type a listed workload is delivered with (not a watch's ADDED)
RESYNC = "RESYNC"  # ... and with, when the list is a periodic resync (reconciled even if nothing changed)
RETRY_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0)  # seconds before the n-th consecutive retry (then the last)


class Source(Protocol):
    """The two calls the informer makes (KubeClient implements them)."""

    async def list_page(self, path: str, params: Mapping[str, str]) -> dict[str, Any]: ...

    def watch(self, path: str, params: Mapping[str, str]) -> AsyncIterator[dict[str, Any]]: ...


class Gone(Exception):
    """The watch's resourceVersion is too old (410): relist."""


def scope_paths(kind: Kind, namespaces: Sequence[str]) -> list[str]:
    if not namespaces:
        return [collection_path(kind)]
    return [collection_path(kind, namespace) for namespace in namespaces]


class WorkloadInformer:
    """The list and watch of one workload kind, in every watched namespace."""

    def __init__(
        self,
        source: Source,
        namespaces: Sequence[str],
        on_event: OnEvent,
        *,
        kind: Kind,
        page: int = 500,
        watch_seconds: int = 600,
        retry_delays: Sequence[float] = RETRY_DELAYS,
        resync_seconds: float = 0.0,
    ) -> None:
        self._source = source
        self.kind = kind
        self._paths = scope_paths(kind, namespaces)
        self._on_event = on_event
        self._page = page
        self._watch_seconds = watch_seconds
        self._retry_delays = retry_delays
        # Every resync_seconds (0: never) the watch is ended and every workload listed again and
        # delivered as RESYNC: reconciled whatever podgrace thinks it settled on (no write if nothing
        # changed), so that nothing stays wrong because an event was missed or a failure was given up on.
        self._resync_seconds = resync_seconds
        self._unlisted = set(self._paths)
        # Set once every scope's first list has been delivered: from then on podgrace knows every
        # workload of this kind, so a profile's user count and fan-out are complete.
        self.listed = asyncio.Event()
        if not self._unlisted:
            self.listed.set()
        self.failing: set[str] = set()  # scopes whose last list or watch failed (for the health probe)
        self._resume: dict[str, str] = {}  # per scope: the version of the last watch event delivered
        self._task: asyncio.Task[None] | None = None  # the running informer, once started

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name=f"{self.kind.label}-informer")

    async def stop(self) -> None:
        await cancel_and_wait([self._task])

    def health(self) -> dict[str, Any]:
        """For the liveness probe: fails only if the informer has ended (it never should: a restart then
        helps); list or watch errors are reported but do not fail it (a restart would not help an API
        server that is down or RBAC that is missing)."""
        if self._task is not None and self._task.done():
            raise RuntimeError(f"the {self.kind.name} informer has stopped")
        return {"listed": self.listed.is_set(), "failing": sorted(self.failing)}

    async def run(self) -> None:
        await asyncio.gather(*(self._run_scope(path) for path in self._paths))

    async def _run_scope(self, path: str) -> None:
        known: dict[Key, str] = {}  # every workload in scope -> its uid
        version: str | None = None
        failures = 0
        loop = asyncio.get_running_loop()
        next_resync: float | None = None  # loop time of the next resync (None: none planned)
        while True:
            try:
                if version is None:
                    resync = next_resync is not None and loop.time() >= next_resync
                    if resync:
                        log.info("resync: listing every %s of %s again", self.kind.name, path)
                    version = await self._list(path, known, RESYNC if resync else LISTED)
                    self._mark_listed(path)
                    if self._resync_seconds > 0 and (resync or next_resync is None):
                        next_resync = loop.time() + self._resync_seconds
                self.failing.discard(path)
                seconds = self._watch_seconds
                if next_resync is not None:
                    seconds = max(1, min(seconds, math.ceil(next_resync - loop.time())))
                version = await self._watch(path, version, known, seconds)
                failures = 0
                if next_resync is not None and loop.time() >= next_resync:
                    version = None  # the resync's list
            except asyncio.CancelledError:
                raise
            except Gone:
                log.info("watch of %s expired (410 Gone): listing again", path)
                version = None
            except Exception as error:  # the API server restarting, a network error, RBAC being fixed
                if isinstance(error, ApiError) and error.status == 410:  # a too-old version, refused outright
                    log.info("watch of %s expired (410 Gone): listing again", path)
                    version = None
                    continue
                if version is not None:
                    # Resume after the last event delivered, not from where the broken watch began: a
                    # replay re-delivers events older than what podgrace has since read or written (the
                    # soak found one re-applying a write whose answer had been lost).
                    version = self._resume.get(path, version)
                delay = self._retry_delays[min(failures, len(self._retry_delays) - 1)]
                delay = max(delay, retry_after(error) or 0.0)  # no sooner than the API server asked
                failures += 1
                self.failing.add(path)
                log.warning("watching %s failed (%s); retrying in %.0f s", path, error, delay)
                await asyncio.sleep(delay)

    def _mark_listed(self, path: str) -> None:
        self._unlisted.discard(path)
        if not self._unlisted:
            self.listed.set()

    async def _list(self, path: str, known: dict[Key, str], event_type: str = LISTED) -> str:
        params = {"limit": str(self._page)}
        seen: set[Key] = set()
        while True:
            result = await self._source.list_page(path, params)
            for item in result.get("items") or []:
                # List items carry no kind or apiVersion; the reconciler's bodies do.
                self._stamp(item)
                key = self._remember(item, known)
                if key is not None:
                    seen.add(key)
                    await self._deliver(event_type, item)
            metadata = result.get("metadata") or {}
            token = metadata.get("continue")
            if not token:
                break
            params["continue"] = token
        for key in [k for k in known if k not in seen]:  # deleted while no watch was running
            await self._deliver("DELETED", _stub(self.kind, key, known.pop(key)))
        return str(metadata.get("resourceVersion") or "")

    async def _watch(self, path: str, version: str, known: dict[Key, str], seconds: int | None = None) -> str:
        params = {
            "watch": "true",
            "resourceVersion": version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(seconds or self._watch_seconds),
        }
        self._resume[path] = version
        async for event in self._source.watch(path, params):
            kind, obj = event.get("type"), event.get("object") or {}
            if kind == "ERROR":
                if obj.get("code") == 410:
                    raise Gone()
                raise ApiError(
                    int(obj.get("code") or 500), str(obj.get("reason", "")), str(obj.get("message"))
                )
            version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
            if kind == "BOOKMARK":
                continue
            if kind == "DELETED":
                self._stamp(obj)
                key = self._key(obj)
                if key is not None:
                    known.pop(key, None)
                    await self._deliver("DELETED", obj)
            elif kind in ("ADDED", "MODIFIED"):
                self._stamp(obj)
                if self._remember(obj, known) is not None:
                    await self._deliver(str(kind), obj)
            self._resume[path] = version
        return version

    def _stamp(self, obj: dict[str, Any]) -> None:
        obj.setdefault("apiVersion", API_VERSION)
        obj.setdefault("kind", self.kind.name)

    def _key(self, obj: Mapping[str, Any]) -> Key | None:
        metadata = obj.get("metadata") or {}
        namespace, name = metadata.get("namespace"), metadata.get("name")
        if not isinstance(namespace, str) or not isinstance(name, str):
            return None
        return Key(self.kind.name, namespace, name)

    def _remember(self, obj: Mapping[str, Any], known: dict[Key, str]) -> Key | None:
        key = self._key(obj)
        if key is not None:
            known[key] = str((obj.get("metadata") or {}).get("uid") or "")
        return key

    async def _deliver(self, event_type: str, obj: Mapping[str, Any]) -> None:
        try:
            await self._on_event(event_type, obj)
        except Exception:  # one workload's failure must not stop the watch of all the others
            log.exception("handling a %s event of a %s failed", event_type, self.kind.name)


def _stub(kind: Kind, key: Key, uid: str) -> dict[str, Any]:
    """What a DELETED event of a workload podgrace saw vanish between two lists carries."""
    return {
        "apiVersion": API_VERSION,
        "kind": kind.name,
        "metadata": {"namespace": key.namespace, "name": key.name, "uid": uid},
    }


class Informers:
    """The informers of every workload kind, started, stopped and probed as one."""

    def __init__(self, informers: Sequence[WorkloadInformer]) -> None:
        self.informers = tuple(informers)

    def start(self) -> None:
        for informer in self.informers:
            informer.start()

    async def stop(self) -> None:
        for informer in self.informers:
            await informer.stop()

    async def wait_listed(self) -> None:
        """Until every kind's first list is delivered: then every workload naming a profile is known."""
        for informer in self.informers:
            await informer.listed.wait()

    def health(self) -> dict[str, Any]:
        """The liveness probe's answer: fails when any informer has ended."""
        reports = [informer.health() for informer in self.informers]
        return {
            "listed": all(r["listed"] for r in reports),
            "failing": sorted(path for r in reports for path in r["failing"]),
        }
