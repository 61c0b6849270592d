"""Workload objects (from a file or the API) -> the typed `Workload` the planner reads."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from podgrace.core import managed_fields, manifest_checks, overrides
from podgrace.core.models import ContainerView, Ownership, PreStop, Workload

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


class ManifestError(ValueError):
    pass


# Workload kinds whose pod template (spec.template) podgrace reads; the operator reconciles Deployments.
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet")


def is_deployment(obj: Any) -> bool:
    return isinstance(obj, Mapping) and obj.get("kind") == "Deployment" and obj.get("apiVersion") == "apps/v1"


def is_workload(obj: Any) -> bool:
    """An apps/v1 Deployment, StatefulSet or DaemonSet: the same pod template at spec.template."""
    return (
        isinstance(obj, Mapping) and obj.get("kind") in WORKLOAD_KINDS and obj.get("apiVersion") == "apps/v1"
    )


def from_object(obj: Mapping[str, Any], *, with_ownership: bool) -> Workload:
    """Read a workload. `with_ownership` reads managedFields (objects from the API server)."""
    kind = str(obj.get("kind") or "Deployment")
    metadata = obj.get("metadata")
    if not isinstance(metadata, Mapping) or not isinstance(metadata.get("name"), str):
        raise ManifestError(f"{kind} has no metadata.name")
    where = f"{kind} {metadata.get('namespace') or 'default'}/{metadata['name']}"
    problem = manifest_checks.first_problem(obj)
    if problem is not None:
        raise ManifestError(f"{where}: {problem}")
    pod_spec = _mapping(obj, ("spec", "template", "spec"), where)
    raw_containers = pod_spec.get("containers")
    if not isinstance(raw_containers, list) or not raw_containers:
        raise ManifestError(f"{where}: spec.template.spec.containers must be a non-empty list")
    containers = []
    for index, raw in enumerate(raw_containers):
        if not isinstance(raw, Mapping) or not isinstance(raw.get("name"), str):
            raise ManifestError(f"{where}: spec.template.spec.containers[{index}] has no name")
        lifecycle = raw.get("lifecycle")
        if lifecycle is not None and not isinstance(lifecycle, Mapping):
            raise ManifestError(f"{where}: container {raw['name']!r} lifecycle must be a mapping")
        try:
            containers.append(
                ContainerView(
                    name=raw["name"],
                    image=str(raw.get("image") or ""),
                    pre_stop=PreStop.from_api(dict(lifecycle or {})),
                    stop_signal=(lifecycle or {}).get("stopSignal"),
                )
            )
        except (ValidationError, TypeError, ValueError, AttributeError) as error:
            raise ManifestError(
                f"{where}: container {raw['name']!r} has an invalid lifecycle: {error}"
            ) from error
    annotations = metadata.get("annotations") or {}
    if not isinstance(annotations, Mapping):
        raise ManifestError(f"{where}: metadata.annotations must be a mapping")
    grace = pod_spec.get("terminationGracePeriodSeconds")
    os_spec = pod_spec.get("os")
    try:
        return Workload(
            namespace=str(metadata.get("namespace") or "default"),
            name=metadata["name"],
            overrides=overrides.parse({str(k): "" if v is None else str(v) for k, v in annotations.items()}),
            containers=tuple(containers),
            termination_grace_period_seconds=int(grace) if grace is not None else None,
            os_name=os_spec.get("name") if isinstance(os_spec, Mapping) else None,
            share_process_namespace=pod_spec.get("shareProcessNamespace") is True,
            ownership=(
                managed_fields.ownership(
                    metadata.get("managedFields") or [],
                    grace_value=int(grace) if grace is not None else None,
                    last_applied=annotations.get(LAST_APPLIED),
                )
                if with_ownership
                else Ownership()
            ),
        )
    except (ValidationError, TypeError, ValueError) as error:
        raise ManifestError(f"{where}: {error}") from error


def _mapping(obj: Mapping[str, Any], path: tuple[str, ...], where: str) -> Mapping[str, Any]:
    current: Mapping[str, Any] | Any = obj
    for step in path:
        current = current.get(step) if isinstance(current, Mapping) else None
        if not isinstance(current, Mapping):
            raise ManifestError(f"{where}: {'.'.join(path)} is missing or not a mapping")
    result: Mapping[str, Any] = current
    return result
