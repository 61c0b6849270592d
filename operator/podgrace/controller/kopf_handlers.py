"""Kopf handlers: thin adapters from Kopf's callbacks to the operator's objects (`wiring.Operator`, Kopf's
`memo`). Parse, delegate, report."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from podgrace.controller.wiring import Operator
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
async def startup(settings: kopf.OperatorSettings, memo: Operator, **_: Any) -> None:
    # Kopf watches the ShutdownProfiles only; Deployments come from podgrace's own informer (informer.py
    # says why), started with the operator.
    # podgrace posts its own, de-duplicated Events; Kopf's per-handler events would be noise and writes.
    settings.posting.enabled = False
    # The CRD is installed by the chart before the operator; no need to watch CRDs or namespaces.
    settings.scanning.disabled = True
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.watching.connect_timeout = 30
    settings.watching.server_timeout = 600
    settings.networking.request_timeout = 60
    await memo.start()


@kopf.on.cleanup()
async def cleanup(memo: Operator, **_: Any) -> None:
    await memo.stop()


# PERMANENT: a failed probe fails /healthz at once (Kopf's default retries the handler after 60 s, and the
# endpoint hangs meanwhile).
@kopf.on.probe(id="deployments", errors=kopf.ErrorsMode.PERMANENT)
async def deployments_probe(memo: Operator, **_: Any) -> dict[str, Any]:
    # A podgrace with nothing to do sends no request for long: ask once, so that revoked credentials are
    # noticed (and fail the probe) also while idle.
    await memo.client.check_credentials()
    return memo.health()


@kopf.on.login()
def login(memo: Operator, **_: Any) -> kopf.ConnectionInfo:
    # Kopf calls it at start and again after a 401 on its own requests: read the token file again.
    return memo.connection()


@kopf.on.event(GROUP, VERSION, PROFILE_PLURAL)
async def profile_event(type: str, body: kopf.Body, memo: Operator, **_: Any) -> None:
    await memo.profiles.on_event(type, body)
