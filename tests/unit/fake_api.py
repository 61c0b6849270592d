"""An in-memory stand-in for the API server's side of podgrace's calls, with a small server-side apply and
a small strategic merge patch.

The apply model covers the shapes podgrace's dry-run probe sends: the applier owns exactly the leaves it
sends, fields it owned before and no longer sends are removed unless another manager owns them, and a
differing value on a field another manager owns is a 409 conflict unless forced. The patch model covers
podgrace's writes (core/write_patch.py): an Update operation, whose manager gets the leaves whose values it
changed (taken from the others), null deletes, `$patch: replace` replaces a map, containers merge by name,
and a resourceVersion in the patch is a precondition (409 when the object changed since).
"""

from __future__ import annotations

import copy
import json
from typing import Any

from podgrace.controller.kube_api import ApiError
from podgrace.controller.workload_key import Key, kind_named
from podgrace.core.constants import FIELD_MANAGER
from podgrace.core.managed_fields import Path, _value_at, desired_leaves, manager_leaves


def _nest(paths: set[Path]) -> dict[str, Any]:
    root: dict[str, Any] = {}
    for path in paths:
        node = root
        for step in path:
            node = node.setdefault(step, {})
    return root


def _set(obj: dict[str, Any], path: Path, value: Any) -> None:
    node: Any = obj
    for i, step in enumerate(path):
        last = i == len(path) - 1
        if step.startswith("f:"):
            key = step[2:]
            if last:
                node[key] = copy.deepcopy(value)
            else:
                nxt = path[i + 1]
                node = node.setdefault(key, [] if nxt.startswith("k:") else {})
        else:
            wanted = json.loads(step[2:])
            item = next((x for x in node if all(x.get(k) == v for k, v in wanted.items())), None)
            if item is None:
                item = dict(wanted)
                node.append(item)
            node = item


def _delete(obj: dict[str, Any], path: Path) -> None:
    parents: list[tuple[Any, str | int]] = []
    node: Any = obj
    for step in path:
        if step.startswith("f:"):
            if not isinstance(node, dict) or step[2:] not in node:
                return
            parents.append((node, step[2:]))
            node = node[step[2:]]
        else:
            wanted = json.loads(step[2:])
            index = next(
                (i for i, x in enumerate(node) if all(x.get(k) == v for k, v in wanted.items())), None
            )
            if index is None:
                return
            parents.append((node, index))
            node = node[index]
    container, key = parents[-1]
    del container[key]  # type: ignore[arg-type]
    # Prune maps left empty (lifecycle: {} after preStop went).
    for container, key in reversed(parents[:-1]):
        value = container[key]  # type: ignore[index]
        if value in ({}, []):
            del container[key]  # type: ignore[arg-type]


_MISSING = object()


def _object_leaves(obj: dict[str, Any]) -> dict[Path, Any]:
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    leaves = desired_leaves(obj.get("spec") or {}, ("f:spec",))
    leaves.update({("f:metadata", "f:annotations", f"f:{k}"): v for k, v in annotations.items()})
    return leaves


def _merge(target: dict[str, Any], patch: dict[str, Any], *, keep_stop_signal: bool = True) -> None:
    """A strategic merge patch of the shapes podgrace sends, into `target`."""
    for key, value in patch.items():
        if value is None or (key == "stopSignal" and not keep_stop_signal):
            target.pop(key, None)  # (an API server without ContainerStopSignals drops the field)
        elif key == "containers":
            items = target.setdefault(key, [])
            for item in value:
                found = next((c for c in items if c.get("name") == item["name"]), None)
                if found is None:
                    found = {"name": item["name"]}
                    items.append(found)
                _merge(found, item, keep_stop_signal=keep_stop_signal)
        elif isinstance(value, dict) and value.get("$patch") == "replace":
            target[key] = {k: copy.deepcopy(v) for k, v in value.items() if k != "$patch"}
        elif isinstance(value, dict):
            if not isinstance(target.get(key), dict):
                target[key] = {}
            _merge(target[key], value, keep_stop_signal=keep_stop_signal)
        else:
            target[key] = copy.deepcopy(value)


class FakeApi:
    def __init__(self) -> None:
        self.workloads: dict[Key, dict[str, Any]] = {}  # Deployments, StatefulSets, DaemonSets
        self.events: list[dict[str, Any]] = []
        self.event_reads = 0
        self.workload_reads = 0  # get_workload calls
        self.statuses: dict[str, dict[str, Any]] = {}
        self.applies: list[tuple[str, str, dict[str, Any], bool, bool]] = []
        self.written_kinds: list[str] = []  # the kind each write (not a dry run) was sent to, in order
        self.keep_stop_signal = True  # False models an API server without ContainerStopSignals
        self.fail_next: list[ApiError] = []
        self.version = (1, 35)  # what server_version() answers
        self.fail_next_status: ApiError | None = None
        self.pods: dict[str, list[dict[str, Any]]] = {}  # namespace -> its pods (labels are not matched)
        self.pod_lists: list[tuple[str, str]] = []
        self.fail_pod_list: ApiError | None = None

    # --- test set-up ----------------------------------------------------------------------------------

    def create(self, obj: dict[str, Any], manager: str = "kubectl-client-side-apply") -> dict[str, Any]:
        obj = copy.deepcopy(obj)
        metadata = obj.setdefault("metadata", {})
        metadata.setdefault("namespace", "default")
        metadata["uid"] = f"uid-{metadata['name']}"
        metadata["generation"] = 1
        metadata["resourceVersion"] = "1"
        leaves = set(desired_leaves(obj.get("spec") or {}, ("f:spec",)))
        metadata["managedFields"] = [
            {"manager": manager, "operation": "Update", "fieldsType": "FieldsV1", "fieldsV1": _nest(leaves)}
        ]
        obj.setdefault("apiVersion", "apps/v1")
        kind = obj.setdefault("kind", "Deployment")
        self.workloads[Key(kind, metadata["namespace"], metadata["name"])] = obj
        return copy.deepcopy(obj)

    def get(self, namespace: str, name: str, kind: str = "Deployment") -> dict[str, Any]:
        return copy.deepcopy(self.workloads[Key(kind, namespace, name)])

    # --- the Api protocol ------------------------------------------------------------------------------

    async def get_workload(self, key: Key) -> dict[str, Any] | None:
        self.workload_reads += 1
        obj = self.workloads.get(key)
        return copy.deepcopy(obj) if obj is not None else None

    async def apply_workload(
        self, key: Key, body: dict[str, Any], *, force: bool = False, dry_run: bool = False
    ) -> dict[str, Any]:
        if self.fail_next:
            raise self.fail_next.pop(0)
        namespace, name = key.namespace, key.name
        assert body.get("kind") == key.kind, (body.get("kind"), key)  # the body names the kind it is sent to
        self.applies.append((namespace, name, copy.deepcopy(body), force, dry_run))
        if not dry_run:
            self.written_kinds.append(key.kind)
        live = self.workloads.get(key)
        if live is None:
            raise ApiError(404, "NotFound", f"{kind_named(key.kind).plural}.apps {name} not found")
        obj = copy.deepcopy(live)
        entries = obj["metadata"]["managedFields"]
        want = {p: v for p, v in desired_leaves(body.get("spec") or {}, ("f:spec",)).items() if len(p) > 1}
        if not self.keep_stop_signal:
            want = {p: v for p, v in want.items() if p[-1] != "f:stopSignal"}
        theirs = manager_leaves(entries, podgrace=False)
        conflicts = [p for p, v in want.items() if p in theirs and _value_at(obj, p) != v]
        if conflicts and not force:
            raise ApiError(409, "Conflict", f"conflicts with another field manager: {conflicts}")
        ours_before = manager_leaves(entries, podgrace=True)
        for path in ours_before - set(want) - theirs:
            _delete(obj, path)
        for path, value in want.items():
            _set(obj, path, value)
        if force:
            for entry in entries:
                if entry.get("manager") != FIELD_MANAGER:
                    kept = manager_leaves([entry], podgrace=False) - set(conflicts)
                    entry["fieldsV1"] = _nest(kept)
        entries[:] = [e for e in entries if e.get("manager") != FIELD_MANAGER]
        if want:
            entries.append(
                {
                    "manager": FIELD_MANAGER,
                    "operation": "Apply",
                    "fieldsType": "FieldsV1",
                    "fieldsV1": _nest(set(want)),
                }
            )
        if obj.get("spec") != live.get("spec"):
            obj["metadata"]["generation"] += 1
        if obj != live:
            obj["metadata"]["resourceVersion"] = str(int(live["metadata"].get("resourceVersion", "1")) + 1)
        if not dry_run:
            self.workloads[key] = obj
        return copy.deepcopy(obj)

    async def patch_workload_as(self, key: Key, patch: dict[str, Any], field_manager: str) -> dict[str, Any]:
        if self.fail_next:
            raise self.fail_next.pop(0)
        namespace, name = key.namespace, key.name
        live = self.workloads.get(key)
        if live is None:
            raise ApiError(404, "NotFound", f"{kind_named(key.kind).plural}.apps {name} not found")
        self.applies.append((namespace, name, copy.deepcopy(patch), False, False))
        self.written_kinds.append(key.kind)
        precondition = (patch.get("metadata") or {}).get("resourceVersion")
        if precondition is not None and precondition != live["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict", "the object has been modified; please apply your changes")
        obj = copy.deepcopy(live)
        _merge(
            obj["metadata"], {k: v for k, v in (patch.get("metadata") or {}).items() if k == "annotations"}
        )
        _merge(obj.setdefault("spec", {}), patch.get("spec") or {}, keep_stop_signal=self.keep_stop_signal)
        before, after = _object_leaves(live), _object_leaves(obj)
        changed = {p for p, v in after.items() if before.get(p, _MISSING) != v}
        touched = changed | (set(before) - set(after))
        entries = obj["metadata"]["managedFields"]
        for entry in entries:
            kept = {
                p
                for p in manager_leaves([entry], podgrace=entry.get("manager") == FIELD_MANAGER)
                if not any(p[: len(q)] == q or q[: len(p)] == p for q in touched)
            }
            entry["fieldsV1"] = _nest(kept)
        mine = next(
            (e for e in entries if e.get("manager") == field_manager and e.get("operation") == "Update"), None
        )
        if mine is None and changed:
            mine = {"manager": field_manager, "operation": "Update", "fieldsType": "FieldsV1", "fieldsV1": {}}
            entries.append(mine)
        if mine is not None:
            own = manager_leaves([mine], podgrace=field_manager == FIELD_MANAGER)
            mine["fieldsV1"] = _nest(own | changed)
        entries[:] = [e for e in entries if e.get("fieldsV1")]
        if "managedFields" in (patch.get("metadata") or {}):  # a reset: the request's list, as it is
            obj["metadata"]["managedFields"] = copy.deepcopy(patch["metadata"]["managedFields"])
        if obj.get("spec") != live.get("spec"):
            obj["metadata"]["generation"] += 1
        if obj != live:
            obj["metadata"]["resourceVersion"] = str(int(live["metadata"]["resourceVersion"]) + 1)
        self.workloads[key] = obj
        return {"metadata": copy.deepcopy(obj["metadata"])}

    async def server_version(self) -> tuple[int, int]:
        return self.version

    async def list_running_pods(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        self.pod_lists.append((namespace, label_selector))
        if self.fail_pod_list is not None:
            raise self.fail_pod_list
        return copy.deepcopy(self.pods.get(namespace, []))

    async def patch_profile_status(self, name: str, status: dict[str, Any]) -> None:
        if self.fail_next_status is not None:
            error, self.fail_next_status = self.fail_next_status, None
            raise error
        self.statuses[name] = copy.deepcopy(status)

    async def create_event(self, namespace: str, event: dict[str, Any]) -> None:
        name = event["metadata"].get("name")
        if name and any(e["metadata"].get("name") == name for e in self.events):
            raise ApiError(409, "AlreadyExists", f'events "{name}" already exists')
        self.events.append(copy.deepcopy(event))

    async def get_event(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.event_reads += 1
        found = [e for e in self.events if e["metadata"].get("name") == name]
        return copy.deepcopy(found[0]) if found else None

    def writes(self) -> list[tuple[str, str, dict[str, Any], bool, bool]]:
        return [a for a in self.applies if not a[4]]
