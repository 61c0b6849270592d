"""Detecting what the API server supports, for real, once per operator process.

`lifecycle.stopSignal` is dropped silently by an API server whose ContainerStopSignals gate is off, so
the only honest test is to send it: a server-side dry-run apply on a workload (Deployment, StatefulSet or
DaemonSet) podgrace is reconciling (a verb it already has; nothing is persisted) and a look at whether the
field came back.

Only a definitive answer is cached: the dry run succeeded, and the field was kept or dropped. Any failure
(a 404 or 409 on that workload, a 5xx or 429, a timeout, a lost connection, an admission webhook or
policy denying the request) says nothing about the API server's features: the reconcile that needed the
answer fails (and is retried), and the next one probes again, at most once per `retry_delays` step, so
that thousands of waiting workloads do not each send a probe into an outage.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import aiohttp

from podgrace.controller.kube_api import Api, ApiError, retry_after
from podgrace.controller.workload_key import key_of
from podgrace.core.capabilities import NATIVE_SLEEP_SINCE, STOP_SIGNAL_SINCE, Capabilities

log = logging.getLogger(__name__)
# Seconds before the next probe after the n-th consecutive failed one (then the last, until one answers).
PROBE_RETRY_DELAYS = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 60.0)


class ProbeFailed(Exception):
    """What the API server supports is not known yet: the probe failed (the cause is the message)."""


class CapabilityCache:
    """The API server's version and capabilities, each asked for once and then known (a failed probe is
    not an answer: it is asked again later)."""

    def __init__(
        self,
        api: Api,
        *,
        stop_signal_override: bool | None = None,
        retry_delays: tuple[float, ...] = PROBE_RETRY_DELAYS,
    ) -> None:
        self._api = api
        self._override = stop_signal_override
        self._lock = asyncio.Lock()
        self._version: tuple[int, int] | None = None
        self._known: Capabilities | None = None
        self._retry_delays = retry_delays
        self._failures = 0
        self._next_probe = 0.0  # loop time before which a failed probe is not repeated
        self._last_failure = ""

    async def server_version(self) -> tuple[int, int]:
        if self._version is None:
            self._version = await self._api.server_version()
        return self._version

    async def get(self, workload: Mapping[str, Any]) -> Capabilities:
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
                    stop_signal = await self._probe_or_raise(workload)
                self._known = Capabilities(native_sleep=native_sleep, stop_signal=stop_signal)
                log.info("API server %s.%s: %s", *version, self._known.describe())
            return self._known

    async def _probe_or_raise(self, workload: Mapping[str, Any]) -> bool:
        now = asyncio.get_running_loop().time()
        if now < self._next_probe:
            raise ProbeFailed(
                f"lifecycle.stopSignal support is not known yet: {self._last_failure}; "
                f"probing again in {self._next_probe - now:.0f} s"
            )
        where = str(key_of(workload))
        try:
            answer = await self._probe_stop_signal(workload)
        except (ApiError, aiohttp.ClientError, TimeoutError, KeyError, IndexError, TypeError) as error:
            delay = self._retry_delays[min(self._failures, len(self._retry_delays) - 1)]
            delay = max(delay, retry_after(error) or 0.0)  # no sooner than the API server asked
            self._failures += 1
            self._next_probe = now + delay
            cause = _describe(error)
            self._last_failure = f"the dry-run probe on {where} failed ({cause})"
            log.warning(
                "lifecycle.stopSignal probe on %s failed (%s): not cached, probing again on a "
                "reconcile after %.0f s",
                where,
                cause,
                delay,
            )
            raise ProbeFailed(f"lifecycle.stopSignal support not known yet: {self._last_failure}") from error
        self._failures = 0
        return answer

    async def _probe_stop_signal(self, workload: Mapping[str, Any]) -> bool:
        metadata = workload["metadata"]
        container = workload["spec"]["template"]["spec"]["containers"][0]["name"]
        key = key_of(workload)
        probe = {
            "apiVersion": "apps/v1",
            "kind": key.kind,
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
        result = await self._api.apply_workload(key, probe, force=True, dry_run=True)
        containers = result.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])
        kept = any((c.get("lifecycle") or {}).get("stopSignal") == "SIGTERM" for c in containers)
        return kept


def _describe(error: BaseException) -> str:
    if isinstance(error, ApiError):
        text = str(error)
    elif isinstance(error, TimeoutError):
        text = "timed out"
    elif isinstance(error, aiohttp.ClientError):
        text = f"{type(error).__name__}: {error}"
    else:
        text = f"the workload has no container to probe with ({type(error).__name__}: {error})"
    return text if len(text) <= 500 else text[:500] + "..."
