"""Take once, never fight: when an owner takes back a field podgrace had written, podgrace backs off.

Pure: the controller keeps one `Taken` per (Deployment uid, field) (controller/field_memory.py) and asks
`decide` before planning. A field counts as taken back when podgrace wrote it, no longer owns it, its value
is no longer podgrace's, and podgrace's inputs (its annotations and the profile) are what they were. Backing
off lasts until the owner's value, the annotations or the profile change: then podgrace may take it once
more.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from podgrace.core.constants import ANN_REPLACED_PRESTOP, ANNOTATION_PREFIX
from podgrace.core.managed_fields import container_key, manager_leaves
from podgrace.core.models import GRACE_FIELD, OS_FIELD, pre_stop_field, stop_signal_field

_UNSET: Any = object()


@dataclass(frozen=True)
class Taken:
    value: Any  # what podgrace wrote (None: a field podgrace wrote and later dropped itself)
    inputs: str  # `inputs_key` when podgrace wrote it
    owner_value: Any = _UNSET  # the owner's value when podgrace backed off

    @property
    def backed_off(self) -> bool:
        return self.owner_value is not _UNSET


class Verdict(StrEnum):
    FREE = "free"  # plan as usual (podgrace may take the field, once)
    RECLAIMED = "reclaimed"  # the owner took it back just now: back off, say so once
    BACKED_OFF = "backed-off"  # still the owner's, as when podgrace backed off


def decide(taken: Taken | None, live: Any, podgrace_owns: bool, inputs: str) -> Verdict:
    if taken is None or taken.inputs != inputs or podgrace_owns:
        return Verdict.FREE
    if taken.backed_off:
        return Verdict.BACKED_OFF if live == taken.owner_value else Verdict.FREE
    return Verdict.RECLAIMED if live != taken.value else Verdict.FREE


def inputs_key(annotations: Mapping[str, Any], profile_spec: Any) -> str:
    """podgrace's inputs for a Deployment: its podgrace.dev/ annotations and its profile's spec."""
    ours = {
        str(k): str(v)
        for k, v in annotations.items()
        if str(k).startswith(ANNOTATION_PREFIX) and k != ANN_REPLACED_PRESTOP
    }
    text = json.dumps([sorted(ours.items()), profile_spec], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


_POD = ("f:spec", "f:template", "f:spec")


def _contested(pod: Mapping[str, Any]) -> dict[str, tuple[Any, tuple[str, ...]]]:
    """Each field podgrace may take from an owner: its live value (absent: None) and managedFields path."""
    found: dict[str, tuple[Any, tuple[str, ...]]] = {
        GRACE_FIELD: (pod.get(GRACE_FIELD), (*_POD, f"f:{GRACE_FIELD}")),
        OS_FIELD: ((pod.get("os") or {}).get("name"), (*_POD, "f:os", "f:name")),
    }
    for c in pod.get("containers") or []:
        if isinstance(c, Mapping) and isinstance(c.get("name"), str):
            lifecycle, at = (
                c.get("lifecycle") or {},
                (*_POD, "f:containers", container_key(c["name"]), "f:lifecycle"),
            )
            found[pre_stop_field(c["name"])] = (lifecycle.get("preStop"), (*at, "f:preStop"))
            found[stop_signal_field(c["name"])] = (lifecycle.get("stopSignal"), (*at, "f:stopSignal"))
    return found


def _pod(deployment: Mapping[str, Any]) -> Mapping[str, Any]:
    return ((deployment.get("spec") or {}).get("template") or {}).get("spec") or {}


def contested_values(deployment: Mapping[str, Any]) -> dict[str, Any]:
    """The fields podgrace may take from an owner, by `models` field key: the grace period, os.name and
    each container's preStop and stopSignal (absent: None)."""
    return {key: value for key, (value, _) in _contested(_pod(deployment)).items()}


def podgrace_owned(deployment: Mapping[str, Any]) -> set[str]:
    """The contested fields podgrace owns now (from managedFields)."""
    leaves = manager_leaves((deployment.get("metadata") or {}).get("managedFields") or [], podgrace=True)
    return {
        key
        for key, (_, path) in _contested(_pod(deployment)).items()
        if any(leaf[: len(path)] == path for leaf in leaves)
    }


def metric_label(key: str) -> str:
    """A field key as the `field` label of podgrace_field_reclaimed_total (no container names: bounded)."""
    return key if key in (GRACE_FIELD, OS_FIELD) else key.rsplit(".", 1)[-1]


__all__ = ["Taken", "Verdict", "contested_values", "decide", "inputs_key", "metric_label", "podgrace_owned"]
