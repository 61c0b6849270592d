"""podgrace's write: one strategic merge patch under field manager `podgrace` (an Update operation), or None.

Why not server-side apply: fields an Apply manager owns inside a container keep that list item alive when
the list's owner drops it (structured-merge-diff#335), so a container an Argo CD or Flux owner renames or
removes would stay as a stub without an image and every apply of the owner would be rejected. Fields an
Update wrote are given up with the item (tests/e2e/test_coexistence.py proves both on the real API server).

The patch carries only what changes: a desired value that differs from the live one, and the release
(null) of a field podgrace owns, no longer wants and nobody else owns. None means nothing changes: the
skip that keeps a resync or a restart at zero writes. A container the live object no longer has is never
named (the list merges by name: naming it would add it back). The object's resourceVersion rides along, so
a change made since podgrace read the object fails the patch with a 409 (planned again on a fresh read)
instead of being overwritten.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from podgrace.core.constants import ANN_REPLACED_PRESTOP, FIELD_MANAGER, KUBERNETES_DEFAULT_GRACE
from podgrace.core.managed_fields import Path, container_key, manager_leaves

_POD: Path = ("f:spec", "f:template", "f:spec")
_ANNOTATION: Path = ("f:metadata", "f:annotations", f"f:{ANN_REPLACED_PRESTOP}")
_POD_FIELDS = ("terminationGracePeriodSeconds", "os")
_LIFECYCLE_FIELDS = ("preStop", "stopSignal")

# A field podgrace writes: (None, pod-spec key) or (container name, lifecycle key).
Unit = tuple[str | None, str]


def _unit_path(unit: Unit) -> Path:
    container, key = unit
    if container is None:
        return (*_POD, f"f:{key}")
    return (*_POD, "f:containers", container_key(container), "f:lifecycle", f"f:{key}")


def _live_value(pod: Mapping[str, Any], containers: Mapping[str, Any], unit: Unit) -> Any:
    container, key = unit
    if container is None:
        return pod.get(key)
    return (containers[container].get("lifecycle") or {}).get(key)


def _desired(pod_spec: Mapping[str, Any]) -> dict[Unit, Any]:
    units: dict[Unit, Any] = {(None, k): pod_spec[k] for k in _POD_FIELDS if k in pod_spec}
    for c in pod_spec.get("containers") or []:
        for key in _LIFECYCLE_FIELDS:
            if key in c.get("lifecycle", {}):
                units[(c["name"], key)] = c["lifecycle"][key]
    return units


def _units(leaves: set[Path], containers: Mapping[str, Any]) -> set[Unit]:
    """The units (of containers the live object has) that hold one of these managedFields leaves."""
    candidates: list[Unit] = [(None, k) for k in _POD_FIELDS]
    candidates += [(c, k) for c in containers for k in _LIFECYCLE_FIELDS]
    found = set()
    for unit in candidates:
        path = _unit_path(unit)
        if any(leaf[: len(path)] == path for leaf in leaves):
            found.add(unit)
    return found


def write_patch(
    live: Mapping[str, Any], pod_spec: Mapping[str, Any], annotation: str | None
) -> dict[str, Any] | None:
    """The strategic merge patch that makes the live workload (any kind: the pod template is at
    spec.template in all three) carry podgrace's `pod_spec`
    (apply_body.pod_spec_fields; empty: the revert) and bookkeeping annotation; None: nothing to change."""
    metadata = live.get("metadata") or {}
    pod = ((live.get("spec") or {}).get("template") or {}).get("spec") or {}
    containers = {
        c["name"]: c
        for c in pod.get("containers") or []
        if isinstance(c, Mapping) and isinstance(c.get("name"), str)
    }
    entries = metadata.get("managedFields") or []
    ours, theirs = manager_leaves(entries, podgrace=True), manager_leaves(entries, podgrace=False)
    desired = {u: v for u, v in _desired(pod_spec).items() if u[0] is None or u[0] in containers}
    changes: dict[Unit, Any] = {u: v for u, v in desired.items() if _live_value(pod, containers, u) != v}
    for unit in sorted(_units(ours, containers) - set(desired) - _units(theirs, containers), key=str):
        if _live_value(pod, containers, unit) != _released(unit):
            changes[unit] = None  # released: only podgrace had it
    patch: dict[str, Any] = {}
    pod_patch = _pod_patch(changes, containers)
    if pod_patch:
        patch["spec"] = {"template": {"spec": pod_patch}}
    owned_annotation = any(leaf[: len(_ANNOTATION)] == _ANNOTATION for leaf in ours)
    live_annotation = (
        (metadata.get("annotations") or {}).get(ANN_REPLACED_PRESTOP) if owned_annotation else None
    )
    if annotation != live_annotation and (annotation is not None or owned_annotation):
        patch["metadata"] = {"annotations": {ANN_REPLACED_PRESTOP: annotation}}
    if not patch:
        stray = {leaf for leaf in ours if _in_podgraces_fields(leaf)} - {
            leaf for leaf in ours for u in desired if leaf[: len(_unit_path(u))] == _unit_path(u)
        }
        if not stray:
            return None
        # Nothing left to change, but podgrace still holds fields it does not want: a grace period its
        # release left at the API server's default (an Update owns what the server defaulted in it), a
        # lifecycle or os map it had created, a field another manager holds too. Its claims go, the
        # values stay (a metadata-only write: no rollout).
        patch["metadata"] = {"managedFields": _without(entries, stray)}
    patch.setdefault("metadata", {})["resourceVersion"] = metadata.get("resourceVersion")
    return patch


def _in_podgraces_fields(leaf: Path) -> bool:
    """Whether a managedFields leaf lies where podgrace writes: the grace period, os, a container's
    lifecycle (not a container's name or key, which a server-side apply of an older podgrace recorded)."""
    if leaf[: len(_POD) + 1] in ((*_POD, f"f:{_POD_FIELDS[0]}"), (*_POD, f"f:{_POD_FIELDS[1]}")):
        return True
    return leaf[: len(_POD) + 1] == (*_POD, "f:containers") and leaf[len(_POD) + 2 : len(_POD) + 3] == (
        "f:lifecycle",
    )


def _released(unit: Unit) -> Any:
    """A field's value once podgrace has given it up: the API server defaults the grace period."""
    return KUBERNETES_DEFAULT_GRACE if unit == (None, "terminationGracePeriodSeconds") else None


def _without(entries: list[Mapping[str, Any]], leaves: set[Path]) -> list[dict[str, Any]]:
    """managedFields with these leaves taken out of podgrace's entries (an entry left empty goes)."""
    kept: list[dict[str, Any]] = []
    for entry in entries:
        copied = copy.deepcopy(dict(entry))
        if copied.get("manager") == FIELD_MANAGER and copied.get("fieldsType") == "FieldsV1":
            fields = copied.get("fieldsV1") or {}
            for leaf in leaves:
                _drop(fields, leaf)
            if not fields:
                continue
        kept.append(copied)
    return kept


def _drop(fields: dict[str, Any], path: Path) -> None:
    """Remove `path` from a fieldsV1 tree, and the maps left with nothing (or only `.`) on the way."""
    if not path or path[0] not in fields:
        return
    if len(path) > 1 and isinstance(fields[path[0]], dict):
        _drop(fields[path[0]], path[1:])
        if set(fields[path[0]]) - {"."}:
            return
    del fields[path[0]]


def _pod_patch(changes: Mapping[Unit, Any], containers: Mapping[str, Any]) -> dict[str, Any]:
    pod_patch: dict[str, Any] = {k: v for (c, k), v in changes.items() if c is None}
    by_container: dict[str, dict[str, Any]] = {}
    for (container, key), value in changes.items():
        if container is None:
            continue
        if key == "preStop" and value is not None:
            # a hook is replaced whole: the live hook's other handlers are nulled (merging a sleep into an
            # exec hook would leave both; `$patch: replace` yields no hook at all where there was none)
            live_hook = (containers[container].get("lifecycle") or {}).get("preStop") or {}
            value = {**{k: None for k in live_hook if k not in value}, **value}
        by_container.setdefault(container, {})[key] = value
    items = []
    for name in containers:  # the live order
        if name not in by_container:
            continue
        lifecycle: Any = by_container[name]
        released = {k for k, v in lifecycle.items() if v is None}
        if released == set(lifecycle) and not set(containers[name].get("lifecycle") or {}) - released:
            lifecycle = None  # nothing else was in it: no `lifecycle: {}` left behind (the exact revert)
        items.append({"name": name, "lifecycle": lifecycle})
    if items:
        pod_patch["containers"] = items
    return pod_patch


__all__ = ["write_patch"]
