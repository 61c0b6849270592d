"""`podgrace audit --cluster`: the Deployments, StatefulSets and DaemonSets of a live cluster, read through
the user's kubeconfig with the official `kubernetes` client (contexts, KUBECONFIG with several files, exec
credential plugins: the way EKS, GKE and AKS authenticate).

The objects are returned as the API server sent them (the raw JSON, not the client's models, which drop
fields newer than the client, such as `lifecycle.stopSignal`), each with its apiVersion and kind, so that
`audit` plans them exactly as it plans `kubectl get deploy,sts,ds -o yaml`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

KINDS = (  # in kubectl's order for `kubectl get deploy,sts,ds`
    ("Deployment", "deployments"),
    ("StatefulSet", "statefulsets"),
    ("DaemonSet", "daemonsets"),
)
TIMEOUT = (10.0, 60.0)  # connect, read (seconds)


class ClusterError(Exception):
    """A problem reaching or reading the cluster, worded for one line on stderr."""


@dataclass(frozen=True)
class ClusterObjects:
    context: str
    namespace: str | None  # None: all namespaces
    objects: list[dict[str, Any]]


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def read_workloads(context: str | None, namespace: str | None, all_namespaces: bool) -> ClusterObjects:
    """Every apps/v1 Deployment, StatefulSet and DaemonSet of `namespace` (default: the context's
    namespace, else `default`), or of all namespaces."""
    from kubernetes import client, config  # only `audit --cluster` pays for the import
    from kubernetes.config.config_exception import ConfigException

    # Read KUBECONFIG now: the client reads it once, when first imported.
    files = os.environ.get("KUBECONFIG") or "~/.kube/config"
    try:
        contexts, active = config.list_kube_config_contexts(config_file=files)  # type: ignore[no-untyped-call]
    except ConfigException as error:
        raise ClusterError(f"kubeconfig: {_kubeconfig_problem(error)}") from None
    except (OSError, ValueError) as error:  # unreadable or malformed file
        raise ClusterError(f"kubeconfig: {_one_line(error)}") from None
    if context is not None:
        chosen = next((c for c in contexts or [] if c.get("name") == context), None)
        if chosen is None:
            names = ", ".join(sorted(str(c.get("name")) for c in contexts or [])) or "none"
            raise ClusterError(f"kubeconfig: no context named {context!r} (contexts: {names})")
    elif active is None:
        raise ClusterError("kubeconfig: no current-context set; name one with --context")
    else:
        chosen = active
    name = str(chosen.get("name"))
    if all_namespaces:
        namespace = None
    elif namespace is None:
        namespace = str((chosen.get("context") or {}).get("namespace") or "default")

    configuration = client.Configuration()
    try:
        config.load_kube_config(config_file=files, context=name, client_configuration=configuration)  # type: ignore[no-untyped-call]
    except ConfigException as error:
        raise ClusterError(f"context {name!r}: {_one_line(error)}") from None
    except Exception as error:  # an exec plugin that fails, a bad certificate file...
        raise ClusterError(f"context {name!r}: {type(error).__name__}: {_one_line(error)}") from None
    configuration.retries = 1  # an unreachable server fails in seconds, not after urllib3's 3 retries
    api = client.ApiClient(configuration)
    try:
        apps = client.AppsV1Api(api)
        objects: list[dict[str, Any]] = []
        for kind, plural in KINDS:
            objects += _list(apps, kind, plural, namespace, name, configuration.host)
    finally:
        api.close()  # type: ignore[no-untyped-call]
    return ClusterObjects(name, namespace, objects)


def _list(
    apps: Any, kind: str, plural: str, namespace: str | None, context: str, server: str
) -> list[dict[str, Any]]:
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    # list_namespaced_deployment / list_deployment_for_all_namespaces (and the same for the other kinds)
    singular = {"deployments": "deployment", "statefulsets": "stateful_set", "daemonsets": "daemon_set"}[
        plural
    ]
    try:
        if namespace is None:
            response = getattr(apps, f"list_{singular}_for_all_namespaces")(
                _preload_content=False, _request_timeout=TIMEOUT
            )
        else:
            response = getattr(apps, f"list_namespaced_{singular}")(
                namespace, _preload_content=False, _request_timeout=TIMEOUT
            )
        body = json.loads(response.data)
    except ApiException as error:
        where = f"namespace {namespace!r}" if namespace else "all namespaces"
        if error.status == 401:
            raise ClusterError(
                f"context {context!r}: {server} rejected the credentials (401 Unauthorized): "
                "log in again or refresh the kubeconfig's token"
            ) from None
        if error.status == 403:
            raise ClusterError(
                f"context {context!r}: not allowed to list {plural} in {where} (403 Forbidden): "
                f"{_api_message(error)}"
            ) from None
        raise ClusterError(
            f"context {context!r}: listing {plural} in {where} failed: {error.status} {error.reason}: "
            f"{_api_message(error)}"
        ) from None
    except HTTPError as error:
        raise ClusterError(f"context {context!r}: cannot reach {server}: {_reach_problem(error)}") from None
    except OSError as error:
        raise ClusterError(f"context {context!r}: cannot reach {server}: {_one_line(error)}") from None
    except ValueError as error:
        raise ClusterError(f"context {context!r}: {server} answered with no JSON: {error}") from None
    items = body.get("items") if isinstance(body, dict) else None
    if not isinstance(items, list):
        raise ClusterError(f"context {context!r}: {server} answered a {plural} list without items")
    # A typed list's items carry no apiVersion or kind of their own (kubectl adds them the same way).
    return [{"apiVersion": "apps/v1", "kind": kind, **item} for item in items if isinstance(item, dict)]


def _api_message(error: Any) -> str:
    try:
        status = json.loads(error.body)
        return _one_line(status.get("message") or error.reason)
    except (TypeError, ValueError, AttributeError):
        return _one_line(error.reason)


def _reach_problem(error: Exception) -> str:
    reason = getattr(error, "reason", None)  # MaxRetryError wraps the last connection error
    return _one_line(reason if reason is not None else error)


def _kubeconfig_problem(error: Exception) -> str:
    text = _one_line(error)
    if "No configuration found" in text or "does not exist" in text:
        where = os.environ.get("KUBECONFIG") or "~/.kube/config"
        return f"none found at {where} (set KUBECONFIG or pass a context from an existing kubeconfig)"
    return text
