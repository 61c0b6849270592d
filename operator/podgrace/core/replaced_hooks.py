"""The hooks podgrace replaced (`existingPreStop: replace`), remembered on the Deployment so that opting out
gives each back to the field manager that wrote it, even after an operator restart.

Pure. The memory is podgrace's own annotation `podgrace.dev/replaced-prestop` (JSON
{container: {"manager": ..., "preStop": {...}}}), written in the same apply that replaces the hook (metadata
does not change the generation) and dropped by the revert apply. The restore is a strategic merge patch
under the original manager's name: an Update operation, which takes the field back from podgrace without
conflict, so the user's hook is both there again and owned by its manager again.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from podgrace.core.constants import ANN_REPLACED_PRESTOP, FIELD_MANAGER
from podgrace.core.models import Ownership, pre_stop_field
from podgrace.core.planner import Plan
from podgrace.core.take_once import contested_values, podgrace_owned


def recorded(deployment: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    annotations = (deployment.get("metadata") or {}).get("annotations") or {}
    try:
        found = json.loads(annotations.get(ANN_REPLACED_PRESTOP) or "{}")
    except ValueError:
        return {}
    if not isinstance(found, dict):
        return {}
    return {
        str(c): e
        for c, e in found.items()
        if isinstance(e, dict) and isinstance(e.get("manager"), str) and isinstance(e.get("preStop"), dict)
    }


def annotation(deployment: Mapping[str, Any], result: Plan, ownership: Ownership) -> str | None:
    """The annotation podgrace's apply carries under this plan (None: none): the hooks it replaces now,
    with their managers, plus those it replaced before and still holds."""
    before = recorded(deployment)
    live = contested_values(deployment)
    entries: dict[str, Any] = {}
    for s in result.containers:
        if s.pre_stop is None:
            continue
        key = pre_stop_field(s.name)
        if s.replaces_users_hook and isinstance(live.get(key), dict):
            entries[s.name] = {"manager": ownership.owner_of(key), "preStop": live[key]}
        elif s.name in before:
            entries[s.name] = before[s.name]
    return json.dumps(entries, sort_keys=True, separators=(",", ":")) if entries else None


def owned_annotation(deployment: Mapping[str, Any]) -> bool:
    """Whether podgrace owns the annotation (so its apply keeps or drops it)."""
    for entry in (deployment.get("metadata") or {}).get("managedFields") or []:
        if entry.get("manager") != FIELD_MANAGER:
            continue
        annotations = ((entry.get("fieldsV1") or {}).get("f:metadata") or {}).get("f:annotations") or {}
        if f"f:{ANN_REPLACED_PRESTOP}" in annotations:
            return True
    return False


def restore_patches(deployment: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(field manager, strategic merge patch) per replaced hook podgrace still holds: the user's hook back."""
    owned = podgrace_owned(deployment)
    patches = []
    for container, entry in sorted(recorded(deployment).items()):
        if pre_stop_field(container) not in owned or not entry["manager"]:
            continue
        hook = {"$patch": "replace", **entry["preStop"]}
        patch = {
            "spec": {
                "template": {"spec": {"containers": [{"name": container, "lifecycle": {"preStop": hook}}]}}
            }
        }
        patches.append((entry["manager"], patch))
    return patches
