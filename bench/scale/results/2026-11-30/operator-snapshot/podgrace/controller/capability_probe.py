"""Detecting what the API server supports, for real, once per operator process.

`lifecycle.stopSignal` is dropped silently by an API server whose ContainerStopSignals gate is off, so
the only honest test is to send it: a server-side dry-run apply on a Deployment podgrace is reconciling
(a verb it already has; nothing is persisted) and a look at whether the field came back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from podgrace.controller.kube_api import Api, ApiError
from podgrace.core.capabilities import NATIVE_SLEEP_SINCE, STOP_SIGNAL_SINCE, Capabilities

log = logging.getLogger(__name__)


class CapabilityCache:
    """The API server's version and capabilities, each asked for once and then known."""

    def __init__(self, api: Api, *, stop_signal_override: bool | None = None) -> None:
        self._api = api
        self._override = stop_signal_override
        self._lock = asyncio.Lock()
        self._version: tuple[int, int] | None = None
        self._known: Capabilities | None = None

    async def server_version(self) -> tuple[int, int]:
        if self._version is None:
            self._version = await self._api.server_version()
        return self._version

    async def get(self, deployment: Mapping[str, Any]) -> Capabilities:
        if self._known is not None:
            return self._known
        async with self._lock:
            if self._known is None:
                version = await self.server_version()
                native_sleep = version >= NATIVE_SLEEP_SINCE
                if self._override is not None:
                    stop_signal = self._override
                elif version < STOP_SIGNAL_SINCE:
                    stop_signal = False
                else:
                    stop_signal = await self._probe_stop_signal(deployment)
                self._known = Capabilities(native_sleep=native_sleep, stop_signal=stop_signal)
                log.info("API server %s.%s: %s", *version, self._known.describe())
            return self._known

    async def _probe_stop_signal(self, deployment: Mapping[str, Any]) -> bool:
        metadata = deployment["metadata"]
        container = deployment["spec"]["template"]["spec"]["containers"][0]["name"]
        probe = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": metadata["name"], "namespace": metadata["namespace"]},
            "spec": {
                "template": {
                    "spec": {
                        "os": {"name": "linux"},
                        "containers": [{"name": container, "lifecycle": {"stopSignal": "SIGTERM"}}],
                    }
                }
            },
        }
        try:
            result = await self._api.apply_deployment(
                metadata["namespace"], metadata["name"], probe, force=True, dry_run=True
            )
        except ApiError as error:
            if error.status >= 500 or error.status == 429:
                raise  # transient: decide on a later reconcile, do not cache a guess
            # Rejected (e.g. a Windows pod): the safe answer is the fallback hook.
            log.warning("stopSignal probe on %s/%s failed, using the preStop fallback: %s",
                        metadata["namespace"], metadata["name"], error)  # fmt: skip
            return False
        containers = result.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])
        kept = any((c.get("lifecycle") or {}).get("stopSignal") == "SIGTERM" for c in containers)
        return kept
