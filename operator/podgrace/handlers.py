"""Kopf handlers: thin adapters from Kopf's callbacks to the reconciler. Parse, delegate, report."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from podgrace.constants import GROUP, PROFILE_PLURAL, VERSION
from podgrace.runtime import current

log = logging.getLogger(__name__)


class NoDiffBase(kopf.DiffBaseStorage):
    """podgrace has only event handlers: no Kopf change detection (on.create/update/resume), no daemons.

    Kopf still builds an "essence" of every object on every event for those (a deep copy of the whole
    body, then a diff against the stored one): 16 % of the operator's CPU in a cold start over 5,000
    Deployments. Nothing reads it, so it is not built.
    """

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        pass


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    runtime = current()
    # podgrace posts its own, de-duplicated Events; Kopf's per-handler events would be noise and writes.
    settings.posting.enabled = False
    # The CRD is installed by the chart before the operator; no need to watch CRDs or namespaces.
    settings.scanning.disabled = True
    settings.persistence.diffbase_storage = NoDiffBase()
    # No limit on Kopf's per-object workers: a worker is a small task; what must be bounded is the API
    # traffic, and the reconciler bounds that (`--workers` concurrent reconciles). (With a Kopf index a
    # limit below the number of objects also deadlocks the start, kopf#1243; podgrace indexes itself.)
    settings.queueing.worker_limit = None
    # An object's Kopf worker waits this long for the object's next event before it exits. podgrace's
    # handler only queues the event, so an idle worker holds nothing useful, but at the default 5 s a
    # listing of 5,000 Deployments kept 5,000 of them (a task, a wait_for task and timer, a queue) alive
    # at once: ~90 MiB of peak RSS. A new event simply starts a new worker.
    settings.queueing.idle_timeout = 1.0
    # List Deployments in pages: the whole list of 5,000 is ~25 MB of JSON and ~100 MB parsed, at once.
    settings.watching.chunk_size = 500
    settings.watching.connect_timeout = 30
    settings.watching.server_timeout = 600
    settings.networking.request_timeout = 60
    await runtime.start()


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    await current().stop()


@kopf.on.login()
def login(**_: Any) -> kopf.ConnectionInfo:
    return current().connection


@kopf.on.event("apps", "v1", "deployments")
async def deployment_event(type: str, body: kopf.Body, **_: Any) -> None:
    await current().deployment_event(type, body)


@kopf.on.event(GROUP, VERSION, PROFILE_PLURAL)
async def profile_event(type: str, body: kopf.Body, **_: Any) -> None:
    runtime = current()
    reconciler = runtime.reconciler
    assert reconciler is not None
    name = str(body.metadata.name)
    runtime.profile_event(type, body)
    if type == "DELETED":
        runtime.profile_bodies.pop(name, None)
        reconciler.forget_profile(name)
        return
    runtime.profile_bodies[name] = body
    await reconciler.reconcile_profile(body, runtime.users_of(name))
