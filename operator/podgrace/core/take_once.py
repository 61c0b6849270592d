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
from podgrace.core.models import GRACE_FIELD, pre_stop_field

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


def contested_values(deployment: Mapping[str, Any]) -> dict[str, Any]:
    """The fields podgrace may take from an owner, by `models` field key: the grace period and each
    container's preStop (absent: None)."""
    pod = ((deployment.get("spec") or {}).get("template") or {}).get("spec") or {}
    values: dict[str, Any] = {GRACE_FIELD: pod.get(GRACE_FIELD)}
    for c in pod.get("containers") or []:
        if isinstance(c, Mapping) and isinstance(c.get("name"), str):
            values[pre_stop_field(c["name"])] = (c.get("lifecycle") or {}).get("preStop")
    return values


def podgrace_owned(deployment: Mapping[str, Any]) -> set[str]:
    """The contested fields podgrace owns now (from managedFields)."""
    leaves = manager_leaves((deployment.get("metadata") or {}).get("managedFields") or [], podgrace=True)
    pod = ("f:spec", "f:template", "f:spec")
    owned = set()
    for key in contested_values(deployment):
        if key == GRACE_FIELD:
            path: tuple[str, ...] = (*pod, "f:terminationGracePeriodSeconds")
        else:
            name = key.removeprefix("containers[").removesuffix("].lifecycle.preStop")
            path = (*pod, "f:containers", container_key(name), "f:lifecycle", "f:preStop")
        if any(leaf[: len(path)] == path for leaf in leaves):
            owned.add(key)
    return owned


__all__ = ["Taken", "Verdict", "contested_values", "decide", "inputs_key", "podgrace_owned"]
