"""A plan as podgrace's server-side-apply body, and merged into a manifest for `podgrace render`.

The only place a plan's typed hooks become Kubernetes handlers (hook_intent.render)."""

from __future__ import annotations

import copy
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
    """The manifest with podgrace's fields set, for `podgrace render` (no field managers offline)."""
    merged = copy.deepcopy(manifest)
    pod_spec_patch = pod_spec_fields(result)
    if result.outcome is Outcome.MANAGED:
        _drop_own_hooks(merged, {s.name for s in result.containers if s.pre_stop is None})
    if not pod_spec_patch:
        return merged
    pod_spec = merged.setdefault("spec", {}).setdefault("template", {}).setdefault("spec", {})
    for key in ("terminationGracePeriodSeconds", "os"):
        if key in pod_spec_patch:
            pod_spec[key] = pod_spec_patch[key]
    by_name = {c["name"]: c for c in pod_spec_patch.get("containers", [])}
    for container in pod_spec.get("containers", []):
        patch = by_name.get(container.get("name"))
        if patch is not None:
            container["lifecycle"] = {**(container.get("lifecycle") or {}), **patch["lifecycle"]}
    return merged


def _drop_own_hooks(manifest: dict[str, Any], names: set[str]) -> None:
    """Remove podgrace's own exec hooks (by their marker) where the plan has no hook for the container:
    what the operator's apply does by not listing a field it owns (e.g. an exec hook in a container
    without a shell, on a cluster without the native sleep). Users' hooks carry no marker and stay."""
    template = (manifest.get("spec") or {}).get("template") or {}
    for container in (template.get("spec") or {}).get("containers") or []:
        if not isinstance(container, dict) or container.get("name") not in names:
            continue
        lifecycle = container.get("lifecycle")
        if not isinstance(lifecycle, dict):
            continue
        pre_stop = lifecycle.get("preStop")
        exec_ = pre_stop.get("exec") if isinstance(pre_stop, dict) else None
        command = exec_.get("command") if isinstance(exec_, dict) else None
        if isinstance(command, list) and hook_intent.carries_marker([str(c) for c in command]):
            del lifecycle["preStop"]
            if not lifecycle:
                del container["lifecycle"]
