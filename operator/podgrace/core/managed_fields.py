"""Reading `metadata.managedFields`: who owns the fields podgrace injects (what podgrace's write changes,
and whether it is a no-op, is core/write_patch.py)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from podgrace.core.constants import FIELD_MANAGER, KUBERNETES_DEFAULT_GRACE
from podgrace.core.models import GRACE_FIELD, OS_FIELD, Ownership, pre_stop_field, stop_signal_field

Path = tuple[str, ...]
_TEMPLATE_SPEC: Path = ("f:spec", "f:template", "f:spec")


def _leaves(fields: Mapping[str, Any], prefix: Path = ()) -> set[Path]:
    found: set[Path] = set()
    for key, sub in fields.items():
        if key == ".":
            continue
        path = (*prefix, key)
        if isinstance(sub, Mapping) and any(k != "." for k in sub):
            found |= _leaves(sub, path)
        else:
            found.add(path)
    return found


def container_key(name: str) -> str:
    return "k:" + json.dumps({"name": name}, separators=(",", ":"))


def desired_leaves(value: Any, prefix: Path = ()) -> dict[Path, Any]:
    """Leaf paths (fieldsV1 notation) of an applied configuration, with their values."""
    found: dict[Path, Any] = {}
    if isinstance(value, Mapping) and value:
        for key, sub in value.items():
            if key == "containers" and isinstance(sub, list):
                for item in sub:
                    found.update(desired_leaves(item, (*prefix, "f:containers", container_key(item["name"]))))
            else:
                found.update(desired_leaves(sub, (*prefix, f"f:{key}")))
    else:
        found[prefix] = value
    return found


def manager_leaves(
    managed_fields: Iterable[Mapping[str, Any]], *, podgrace: bool, operation: str | None = None
) -> set[Path]:
    """Leaves owned by podgrace (podgrace=True) or by every other manager together (podgrace=False),
    optionally only through one operation (`Apply` or `Update`)."""
    found: set[Path] = set()
    for entry in managed_fields:
        if (entry.get("manager") == FIELD_MANAGER) is not podgrace or entry.get("fieldsType") != "FieldsV1":
            continue
        if operation is None or entry.get("operation") == operation:
            found |= _leaves(entry.get("fieldsV1") or {})
    return found


def _containers_with(leaves: set[Path], *suffix: str) -> frozenset[str]:
    names = set()
    depth = len(_TEMPLATE_SPEC) + 2
    for path in leaves:
        in_containers = path[: len(_TEMPLATE_SPEC) + 1] == (*_TEMPLATE_SPEC, "f:containers")
        if in_containers and len(path) > depth and path[depth : depth + len(suffix)] == suffix:
            names.add(json.loads(path[len(_TEMPLATE_SPEC) + 1][2:])["name"])
    return frozenset(names)


def ownership(
    managed_fields: Iterable[Mapping[str, Any]],
    *,
    grace_value: int | None = None,
    last_applied: str | None = None,
) -> Ownership:
    """Who owns podgrace's fields. An Update (create, edit, client-side apply) records the fields the API
    server defaulted as well, so a grace period of exactly the default that the user's last-applied
    configuration does not mention counts as defaulted, not as the user's choice."""
    entries = list(managed_fields)
    ours = manager_leaves(entries, podgrace=True)
    theirs = manager_leaves(entries, podgrace=False)
    grace = (*_TEMPLATE_SPEC, "f:terminationGracePeriodSeconds")
    applied_by_them = grace in manager_leaves(entries, podgrace=False, operation="Apply")
    mentioned = last_applied is not None and '"terminationGracePeriodSeconds"' in last_applied
    defaulted = (
        grace in theirs and not applied_by_them and grace_value == KUBERNETES_DEFAULT_GRACE and not mentioned
    )
    owners: dict[str, str] = {}
    applied: set[str] = set()
    latest: tuple[str, str] = ("", "")
    for entry in entries:
        manager = str(entry.get("manager") or "")
        if manager == FIELD_MANAGER or entry.get("fieldsType") != "FieldsV1":
            continue
        latest = max(latest, (str(entry.get("time") or ""), manager))
        leaves = _leaves(entry.get("fieldsV1") or {})
        keys = {pre_stop_field(c) for c in _containers_with(leaves, "f:lifecycle", "f:preStop")}
        keys |= {stop_signal_field(c) for c in _containers_with(leaves, "f:lifecycle", "f:stopSignal")}
        if grace in leaves:
            keys.add(GRACE_FIELD)
        if (*_TEMPLATE_SPEC, "f:os", "f:name") in leaves:
            keys.add(OS_FIELD)
        for key in keys:
            owners.setdefault(key, manager)
            if entry.get("operation") == "Apply":
                applied.add(key)
    return Ownership(
        known=True,
        owners=tuple(sorted(owners.items())),
        applied=frozenset(applied),
        last_writer=latest[1],
        podgrace_pre_stop=_containers_with(ours, "f:lifecycle", "f:preStop"),
        podgrace_stop_signal=_containers_with(ours, "f:lifecycle", "f:stopSignal"),
        foreign_pre_stop=_containers_with(theirs, "f:lifecycle", "f:preStop"),
        foreign_stop_signal=_containers_with(theirs, "f:lifecycle", "f:stopSignal"),
        foreign_grace=grace in theirs and not defaulted,
        grace_defaulted=defaulted,
    )


def _value_at(obj: Any, path: Path) -> Any:
    current = obj
    for step in path:
        if step.startswith("f:") and isinstance(current, Mapping):
            current = current.get(step[2:])
        elif step.startswith("k:") and isinstance(current, list):
            key = json.loads(step[2:])
            current = next((i for i in current if all(i.get(k) == v for k, v in key.items())), None)
        else:
            return None
        if current is None:
            return None
    return current
