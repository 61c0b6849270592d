"""Objects that carry podgrace's annotations but that podgrace does not handle: worth a warning."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from podgrace.core.constants import ANNOTATION_PREFIX
from podgrace.core.workload_parser import WORKLOAD_KINDS, is_workload

_HANDLED = "apps/v1 Deployments, StatefulSets and DaemonSets"


def _podgrace_keys(metadata: Any) -> list[str]:
    annotations = metadata.get("annotations") if isinstance(metadata, Mapping) else None
    if not isinstance(annotations, Mapping):
        return []
    return sorted(k for k in annotations if isinstance(k, str) and k.startswith(ANNOTATION_PREFIX))


def unhandled_warning(obj: Mapping[str, Any]) -> str | None:
    """Why the podgrace annotations on this object have no effect, or None (handled, or none there)."""
    kind, api_version = obj.get("kind"), obj.get("apiVersion")
    if is_workload(obj):
        template = obj.get("spec", {}).get("template") if isinstance(obj.get("spec"), Mapping) else None
        on_template = _podgrace_keys(template.get("metadata") if isinstance(template, Mapping) else None)
        if on_template and not _podgrace_keys(obj.get("metadata")):
            return (
                f"{', '.join(on_template)} is on the pod template (spec.template.metadata.annotations); "
                f"podgrace reads the {kind}'s own metadata.annotations, so it is ignored"
            )
        return None
    keys = _podgrace_keys(obj.get("metadata"))
    if not keys:
        return None
    if kind in WORKLOAD_KINDS:
        why = f"{kind} {api_version} is not handled (podgrace handles {_HANDLED}; use apiVersion apps/v1)"
    else:
        why = f"podgrace handles {_HANDLED}, not {kind} {api_version}"
    return f"{', '.join(keys)} has no effect: {why}"


def describe(obj: Mapping[str, Any]) -> str:
    metadata = obj.get("metadata")
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    namespace = metadata.get("namespace") if isinstance(metadata, Mapping) else None
    return f"{obj.get('kind')} {namespace or 'default'}/{name}"
