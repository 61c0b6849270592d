"""Whether the container runtime under a Deployment's pods honours lifecycle.stopSignal.

The API server keeping the field (capability_probe.py) says nothing about the runtime: containerd 1.x, or a
kubelet without the ContainerStopSignals gate, silently sends SIGTERM instead. With the gate, the kubelet
reports the signal the runtime will really send in each running container's status.stopSignal; a runtime
that knows nothing of stop signals leaves it empty. So, for the containers podgrace would give a
stopSignal, the Deployment's running pods are read (one LIST by its selector, from the API server's
cache) and:

- a container whose spec has a stopSignal must report that signal, one without must report some signal;
- any that does not: IGNORED, and podgrace gives the Deployment the fallback hook instead (a Warning
  StopSignalIgnored, the gauge podgrace_stop_signal_ignored_workloads);
- some that do and none that does not: HONOURED; no running pod to tell: UNKNOWN.

Cost, bounded for thousands of Deployments: only Deployments podgrace would give a stopSignal, on a
cluster whose API server keeps it, are looked at; an answer is kept for `answer_seconds` (an hour), an
UNKNOWN for `unknown_seconds` (a minute), so steady state is about one LIST per such Deployment per hour.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import aiohttp

from podgrace.controller.kube_api import Api, ApiError

log = logging.getLogger(__name__)

ANSWER_SECONDS = 3600.0
UNKNOWN_SECONDS = 60.0


class Evidence(StrEnum):
    HONOURED = "honoured"
    IGNORED = "ignored"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Finding:
    evidence: Evidence
    containers: tuple[str, ...] = ()  # IGNORED: the containers whose runtime ignored their stop signal
    pod: str = ""  # IGNORED: a pod that shows it

    def describe(self) -> str:
        return (
            f"pod {self.pod}: the container runtime ignores lifecycle.stopSignal (status.containerStatuses[]"
            f".stopSignal of {', '.join(self.containers)} is not the signal asked for): the graceful signal "
            "is delivered by podgrace's preStop hook instead"
        )


def evidence(pods: Collection[Mapping[str, Any]], containers: Collection[str]) -> Finding:
    """What the running pods say about the stop signal of `containers` (see the module docstring)."""
    honoured = False
    for pod in pods:
        metadata = pod.get("metadata") or {}
        if metadata.get("deletionTimestamp"):
            continue
        asked = {
            c.get("name"): (c.get("lifecycle") or {}).get("stopSignal")
            for c in (pod.get("spec") or {}).get("containers") or []
        }
        ignored = []
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            name = status.get("name")
            if name not in containers or "running" not in (status.get("state") or {}):
                continue
            reported = status.get("stopSignal")
            if reported and (asked.get(name) in (None, reported)):
                honoured = True
            else:
                ignored.append(str(name))
        if ignored:
            return Finding(Evidence.IGNORED, tuple(ignored), str(metadata.get("name")))
    return Finding(Evidence.HONOURED if honoured else Evidence.UNKNOWN)


def label_selector(selector: Mapping[str, Any]) -> str | None:
    """A Deployment's spec.selector as a labelSelector query (None: it selects nothing podgrace can use)."""
    terms = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression.get("key"), expression.get("operator"), expression.get("values")
        if operator == "In":
            terms.append(f"{key} in ({','.join(values or [])})")
        elif operator == "NotIn":
            terms.append(f"{key} notin ({','.join(values or [])})")
        elif operator == "Exists":
            terms.append(str(key))
        elif operator == "DoesNotExist":
            terms.append(f"!{key}")
        else:
            return None
    return ",".join(terms) or None


class StopSignalCheck:
    """The runtime's answer per Deployment (by uid), kept for a while; the Deployments found IGNORED."""

    def __init__(
        self,
        api: Api,
        *,
        clock: Callable[[], float] = time.monotonic,
        answer_seconds: float = ANSWER_SECONDS,
        unknown_seconds: float = UNKNOWN_SECONDS,
        on_change: Callable[[int], None] | None = None,
    ) -> None:
        self._api = api
        self._clock = clock
        self._answer_seconds = answer_seconds
        self._unknown_seconds = unknown_seconds
        self._on_change = on_change  # called with the number of Deployments found IGNORED
        self._known: dict[str, tuple[float, Finding]] = {}  # uid -> (until, finding)
        self._ignored: set[str] = set()

    async def check(self, deployment: Mapping[str, Any], containers: Collection[str]) -> Finding:
        metadata = deployment.get("metadata") or {}
        uid = str(metadata.get("uid") or "")
        now = self._clock()
        kept = self._known.get(uid)
        if kept is not None and now < kept[0]:
            return kept[1]
        finding = await self._ask(deployment, containers)
        keep = self._unknown_seconds if finding.evidence is Evidence.UNKNOWN else self._answer_seconds
        self._known[uid] = (now + keep, finding)
        self._count(uid, finding.evidence is Evidence.IGNORED)
        return finding

    def forget(self, uid: str) -> None:
        """A Deployment podgrace no longer manages (or that is gone)."""
        self._known.pop(uid, None)
        self._count(uid, False)

    def _count(self, uid: str, ignored: bool) -> None:
        before = len(self._ignored)
        if ignored:
            self._ignored.add(uid)
        else:
            self._ignored.discard(uid)
        if self._on_change is not None and len(self._ignored) != before:
            self._on_change(len(self._ignored))

    async def _ask(self, deployment: Mapping[str, Any], containers: Collection[str]) -> Finding:
        metadata = deployment.get("metadata") or {}
        selector = label_selector((deployment.get("spec") or {}).get("selector") or {})
        if selector is None:
            return Finding(Evidence.UNKNOWN)
        namespace = str(metadata.get("namespace"))
        try:
            pods = await self._api.list_running_pods(namespace, selector)
        except (ApiError, aiohttp.ClientError, TimeoutError) as error:
            # Not knowing is no reason to change anything: asked again after `unknown_seconds`.
            name = metadata.get("name")
            log.warning("cannot list the pods of Deployment %s/%s: %s", namespace, name, error)
            return Finding(Evidence.UNKNOWN)
        return evidence(pods, containers)
