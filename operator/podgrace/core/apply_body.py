"""A plan as podgrace's server-side-apply body, and merged into a manifest for `podgrace render`.

The only place a plan's typed hooks become Kubernetes handlers (hook_intent.render)."""

from __future__ import annotations

from typing import Any

from podgrace.core import hook_intent
from podgrace.core.planner import Outcome, Plan


def pod_spec_fields(result: Plan) -> dict[str, Any]:
    """The pod-template fields podgrace owns under this plan (empty: it owns nothing)."""
    if result.outcome is not Outcome.MANAGED:
        return {}
    pod_spec: dict[str, Any] = {}
    if result.termination_grace_period_seconds is not None:
        pod_spec["terminationGracePeriodSeconds"] = result.termination_grace_period_seconds
    if result.os_name is not None:
        pod_spec["os"] = {"name": result.os_name}
    containers = []
    for s in result.containers:
        lifecycle: dict[str, Any] = {}
        if s.pre_stop is not None:
            lifecycle["preStop"] = hook_intent.render(s.pre_stop)
        if s.stop_signal is not None:
            lifecycle["stopSignal"] = s.stop_signal
        if lifecycle:
            containers.append({"name": s.name, "lifecycle": lifecycle})
    if containers:
        pod_spec["containers"] = containers
    return pod_spec


def apply_body(namespace: str, name: str, result: Plan, kind: str = "Deployment") -> dict[str, Any]:
    """The complete applied configuration of an apps/v1 `kind` (Deployment, StatefulSet, DaemonSet): applying
    it with podgrace's field manager makes podgrace own exactly these fields, and gives up any field it
    owned before and does not list now (the revert)."""
    body: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": kind,
        "metadata": {"name": name, "namespace": namespace},
    }
    pod_spec = pod_spec_fields(result)
    if pod_spec:
        body["spec"] = {"template": {"spec": pod_spec}}
    return body


def merge_into_manifest(manifest: dict[str, Any], result: Plan) -> dict[str, Any]:
    """The manifest with podgrace's fields set, for `podgrace render` (no field managers offline). The
    manifest itself is left as it is: the mappings and the list on the way to what changes are copied, the
    rest is shared with it (a deep copy of every manifest was a tenth of render's time)."""
    merged = dict(manifest)
    pod_spec_patch = pod_spec_fields(result)
    hookless = (
        {s.name for s in result.containers if s.pre_stop is None}
        if result.outcome is Outcome.MANAGED
        else set()
    )
    if not pod_spec_patch and not hookless:
        return merged
    spec = merged["spec"] = dict(manifest.get("spec", {}))
    template = spec["template"] = dict(spec.get("template", {}))
    pod_spec = template["spec"] = dict(template.get("spec", {}))
    for key in ("terminationGracePeriodSeconds", "os"):
        if key in pod_spec_patch:
            pod_spec[key] = pod_spec_patch[key]
    by_name = {c["name"]: c for c in pod_spec_patch.get("containers", [])}
    if "containers" in pod_spec:
        pod_spec["containers"] = [
            _with_lifecycle(
                _without_own_hook(c) if c.get("name") in hookless else c, by_name.get(c.get("name"))
            )
            for c in pod_spec["containers"]
        ]
    return merged


def _without_own_hook(container: Any) -> Any:
    """The container without podgrace's own exec hook (found by its marker), where the plan has no hook
    for it: what the operator's apply does by not listing a field it owns (e.g. an exec hook in a container
    without a shell, on a cluster without the native sleep). Users' hooks carry no marker and stay. A copy
    where something goes; the container itself is never changed."""
    lifecycle = container.get("lifecycle") if isinstance(container, dict) else None
    pre_stop = lifecycle.get("preStop") if isinstance(lifecycle, dict) else None
    exec_ = pre_stop.get("exec") if isinstance(pre_stop, dict) else None
    command = exec_.get("command") if isinstance(exec_, dict) else None
    if not (isinstance(command, list) and hook_intent.carries_marker([str(c) for c in command])):
        return container
    assert isinstance(lifecycle, dict)  # narrowed above: a marked command sits in a lifecycle mapping
    rest = {k: v for k, v in lifecycle.items() if k != "preStop"}
    trimmed = {k: v for k, v in container.items() if k != "lifecycle"}
    return {**trimmed, "lifecycle": rest} if rest else trimmed


def _with_lifecycle(container: dict[str, Any], patch: dict[str, Any] | None) -> dict[str, Any]:
    if patch is None:
        return container
    return {**container, "lifecycle": {**(container.get("lifecycle") or {}), **patch["lifecycle"]}}
