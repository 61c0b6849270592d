"""Kubernetes Events on Deployments, posted once per distinct message.

A resync or an operator restart must not repeat Warnings that are already there, so a Warning is
posted only when neither this process nor the API server has it yet. The Warning's name says which it is:
the Deployment's name and a 16-byte digest of (object uid, type, reason, message as stored: cut to
MAX_MESSAGE characters). A Warning this process has not posted is first read by that name: one GET,
whatever the number of Events (a list of the object's Warnings to compare messages grew with every
distinct message a user caused: O(n^2) over many edits), and no write request at all when it is there
(a restart over unchanged objects makes zero writes, failed ones included). A create that still meets
409 AlreadyExists (another replica posted it meanwhile) is the same answer.

A Normal Event posted with `once=True` (the planner's notices, e.g. SoleRuleApplied: said on every
reconcile of the Deployment, not only alongside a write) is named and checked the same way, so a resync
or a restart does not repeat it either. Other Normal Events (Applied, Reverted) follow a write, are named
with generateName and may go through the background lane.

Memory is bounded whatever users write: the process remembers those digests, at most SEEN_LIMIT of them,
never the message itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from podgrace.controller.kube_api import Api, ApiError
from podgrace.controller.metrics import Metrics
from podgrace.controller.tasks import cancel_and_wait
from podgrace.core.constants import FIELD_MANAGER

log = logging.getLogger(__name__)
NORMAL = "Normal"
WARNING = "Warning"
SEEN_LIMIT = 50_000  # digests remembered (~100 bytes each with the dict's entry: ~5 MB at most)
MAX_MESSAGE = 1024  # characters of a message posted (the rest is cut)
Key = bytes
# The longest a background Normal Event waits for the reconcilers to be idle before it is posted anyway.
IDLE_WAIT_LIMIT = 10.0
# Normal Events waiting for a background poster: (namespace, Event, the key it is remembered under).
PendingEvents = asyncio.Queue[tuple[str, dict[str, Any], Key]]


class EventRecorder:
    def __init__(
        self,
        api: Api,
        metrics: Metrics,
        *,
        instance: str = "podgrace",
        background: int = 0,
        idle: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._api = api
        self._metrics = metrics
        self._instance = instance
        self._seen: OrderedDict[Key, None] = OrderedDict()
        # Normal Events (Applied, Reverted) can go out after the reconcile, from `background` tasks: a
        # Deployment's settings are written first, the informational Event follows (its timestamp is the
        # reconcile's). 0: every Event is posted before post() returns. `idle` (the work queue's) holds
        # them back while Deployments wait for their settings (at most IDLE_WAIT_LIMIT seconds each): in a
        # cold start over 5,000 Deployments they otherwise competed with the applies for the API server.
        self._background = background
        self._idle = idle
        self._pending: PendingEvents | None = None
        self._posters: list[asyncio.Task[None]] = []

    async def post(
        self, obj: Mapping[str, Any], type_: str, reason: str, message: str, *, once: bool = False
    ) -> None:
        """Post an Event once per distinct message in this process; a Warning, or any Event with `once`,
        also only when the API server does not have it yet (see the module's docstring)."""
        once = once or type_ == WARNING
        metadata = obj.get("metadata") or {}
        uid = str(metadata.get("uid") or "")
        namespace = str(metadata.get("namespace") or "default")
        message = cut(message)
        key = digest(uid, type_, reason, message)
        if key in self._seen:
            self._seen.move_to_end(key)
            return
        if not once and self._background:
            self._remember(key)  # forgotten again if the post fails
            self._lane().put_nowait((namespace, self._event(obj, type_, reason, message), key))
            return
        event = self._event(obj, type_, reason, message, key if once else None)
        try:
            if once and await self._api.get_event(namespace, event["metadata"]["name"]):
                self._remember(key)  # posted before (by an earlier process): nothing new to say
                return
            await self._api.create_event(namespace, event)
        except ApiError as error:
            if error.status == 409 and once:
                self._remember(key)  # posted before (by an earlier process): nothing new to say
                return
            # Events are best effort: failing to post one must not fail the reconcile.
            log.warning(
                "could not post %s event %s on %s/%s: %s",
                type_,
                reason,
                namespace,
                metadata.get("name"),
                error,
            )
            return
        self._remember(key)
        self._metrics.writes.labels("event").inc()
        if type_ == WARNING:
            self._metrics.warnings.labels(reason).inc()
            # Once per distinct Warning, as the Event: what users caused (bad input) shows in the log too.
            log.info("Warning %s on %s %s/%s: %s", reason, obj.get("kind"), namespace, metadata.get("name"),
                     message)  # fmt: skip

    def _lane(self) -> PendingEvents:
        if self._pending is None:
            self._pending = asyncio.Queue()
            self._posters = [
                asyncio.create_task(self._post_pending(self._pending)) for _ in range(self._background)
            ]
        return self._pending

    async def _post_pending(self, pending: PendingEvents) -> None:
        while True:
            namespace, event, key = await pending.get()
            if self._idle is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._idle(), IDLE_WAIT_LIMIT)
            try:
                await self._api.create_event(namespace, event)
            except Exception as error:  # best effort, as inline: log it, never stop the lane
                self._seen.pop(key, None)
                involved = event.get("involvedObject") or {}
                log.warning(
                    "could not post %s event %s on %s/%s: %s",
                    event.get("type"),
                    event.get("reason"),
                    namespace,
                    involved.get("name"),
                    error,
                )
                continue
            self._metrics.writes.labels("event").inc()

    async def close(self, drain_timeout: float = 5.0) -> None:
        """Post what is still pending (at most `drain_timeout` seconds), then stop the background tasks."""
        if self._pending is not None and not self._pending.empty():
            deadline = asyncio.get_running_loop().time() + drain_timeout
            while not self._pending.empty() and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.05)
        await cancel_and_wait(self._posters)
        self._posters = []

    def _remember(self, key: Key) -> None:
        self._seen[key] = None
        while len(self._seen) > SEEN_LIMIT:
            self._seen.popitem(last=False)

    def _event(
        self, obj: Mapping[str, Any], type_: str, reason: str, message: str, key: Key | None = None
    ) -> dict[str, Any]:
        metadata = obj.get("metadata") or {}
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        prefix = str(metadata.get("name", "podgrace"))[:200]
        # An Event posted once is named by what it says (see the module's docstring); others afresh.
        name = {"name": f"{prefix}.{key.hex()}"} if key else {"generateName": f"{prefix}."}
        return {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {**name, "namespace": metadata.get("namespace")},
            "involvedObject": {
                "apiVersion": obj.get("apiVersion"),
                "kind": obj.get("kind"),
                "name": metadata.get("name"),
                "namespace": metadata.get("namespace"),
                "uid": metadata.get("uid"),
                "resourceVersion": metadata.get("resourceVersion"),
            },
            "type": type_,
            "reason": reason,
            "message": cut(message),
            "source": {"component": FIELD_MANAGER},
            "reportingComponent": FIELD_MANAGER,
            "reportingInstance": self._instance,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }


def cut(message: str) -> str:
    """The message as it is posted and stored: at most MAX_MESSAGE characters."""
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 3] + "..."


def digest(uid: str, type_: str, reason: str, message: str) -> Key:
    text = "\0".join((uid, type_, reason, message)).encode(errors="replace")
    return hashlib.blake2b(text, digest_size=16).digest()
