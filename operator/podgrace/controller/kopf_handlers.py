"""Kopf handlers: thin adapters from Kopf's callbacks to the reconciler. Parse, delegate, report."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from podgrace.controller.runtime import current
from podgrace.core.constants import GROUP, PROFILE_PLURAL, VERSION

log = logging.getLogger(__name__)


class NoDiffBase(kopf.DiffBaseStorage):
    """podgrace has only event handlers: no Kopf change detection (on.create/update/resume), no daemons.

    Kopf still builds an "essence" of every object on every event for those (a deep copy of the whole
    body, then a diff against the stored one). Nothing reads it, so it is not built.
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
    # Kopf watches the ShutdownProfiles only; Deployments come from podgrace's own informer (informer.py
    # says why), started by the runtime.
    # podgrace posts its own, de-duplicated Events; Kopf's per-handler events would be noise and writes.
    settings.posting.enabled = False
    # The CRD is installed by the chart before the operator; no need to watch CRDs or namespaces.
    settings.scanning.disabled = True
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.watching.connect_timeout = 30
    settings.watching.server_timeout = 600
    settings.networking.request_timeout = 60
    await runtime.start()


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    await current().stop()


@kopf.on.probe(id="deployments")
def deployments_probe(**_: Any) -> dict[str, Any]:
    return current().health()


@kopf.on.login()
def login(**_: Any) -> kopf.ConnectionInfo:
    return current().connection


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
    await runtime.wait_listed()  # its status counts, and its fan-out reaches, every Deployment naming it
    await reconciler.reconcile_profile(body, runtime.users_of(name))
