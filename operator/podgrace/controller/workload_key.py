"""How podgrace names a workload (an apps/v1 Deployment, StatefulSet or DaemonSet) in its queue, index and
records, and where the API server serves each kind."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple


@dataclass(frozen=True)
class Kind:
    """A workload kind podgrace reconciles: all three have the pod template at spec.template."""

    name: str  # the object's `kind`
    plural: str  # its resource (RBAC, URLs)

    @property
    def label(self) -> str:
        """The bounded `kind` / `controller` metric label value."""
        return self.name.lower()


DEPLOYMENT = Kind("Deployment", "deployments")
STATEFULSET = Kind("StatefulSet", "statefulsets")
DAEMONSET = Kind("DaemonSet", "daemonsets")
KINDS = (DEPLOYMENT, STATEFULSET, DAEMONSET)
_BY_NAME = {k.name: k for k in KINDS}
API_VERSION = "apps/v1"


def kind_named(name: str) -> Kind:
    """The Kind of `name` (a workload's `kind`); KeyError for a kind podgrace does not reconcile."""
    return _BY_NAME[name]


class Key(NamedTuple):
    kind: str  # Kind.name
    namespace: str
    name: str

    def __str__(self) -> str:  # for logs: "StatefulSet shop/web"
        return f"{self.kind} {self.namespace}/{self.name}"


def key_of(body: Mapping[str, Any]) -> Key:
    """The key of a workload object (one from the informer or the API server: its kind is set)."""
    metadata = body.get("metadata") or {}
    kind = str(body.get("kind") or DEPLOYMENT.name)
    return Key(kind, str(metadata.get("namespace")), str(metadata.get("name")))


def collection_path(kind: Kind, namespace: str | None = None) -> str:
    """The list/watch URL of `kind`, in one namespace or (None) in all of them."""
    where = f"/namespaces/{namespace}" if namespace is not None else ""
    return f"/apis/{API_VERSION}{where}/{kind.plural}"


def object_path(key: Key) -> str:
    return f"{collection_path(kind_named(key.kind), key.namespace)}/{key.name}"
