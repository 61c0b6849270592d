"""RBAC of the chart: exactly the API access the operator uses, in both modes, and never a wildcard.

Renders charts/podgrace with `helm template` (cluster-wide and namespaced) and fails on any rule beyond
ALLOWED, on any `*`, and on a grant that lands outside the watched namespaces.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest
from hack.chart import helmchart

# (apiGroup, resource) -> verbs: the operator's whole API usage (see the chart's podgrace.rules.* helpers).
ALLOWED: dict[tuple[str, str], frozenset[str]] = {
    ("apps", "deployments"): frozenset({"get", "list", "watch", "patch"}),
    ("apps", "statefulsets"): frozenset({"get", "list", "watch", "patch"}),
    ("apps", "daemonsets"): frozenset({"get", "list", "watch", "patch"}),
    ("podgrace.dev", "shutdownprofiles"): frozenset({"get", "list", "watch"}),
    ("podgrace.dev", "shutdownprofiles/status"): frozenset({"get", "patch"}),
    ("", "events"): frozenset({"create", "get"}),
    # the Running pods of a Deployment podgrace gives a stopSignal: does the runtime honour it?
    ("", "pods"): frozenset({"list"}),
}
CLUSTER_SCOPED = {("podgrace.dev", "shutdownprofiles"), ("podgrace.dev", "shutdownprofiles/status")}
NAMESPACED = set(ALLOWED) - CLUSTER_SCOPED
RBAC_KINDS = {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
NS = helmchart.NAMESPACE

Grants = dict[tuple[str, str], set[str]]


def _rules_of(obj: dict[str, Any]) -> Grants:
    """(group, resource) -> verbs; asserts the rule shape is one the test understands (no wildcards)."""
    grants: Grants = defaultdict(set)
    where = f"{obj['kind']} {obj['metadata'].get('namespace', '')}/{obj['metadata']['name']}"
    assert "aggregationRule" not in obj, f"{where}: aggregated roles are not allowed"
    for rule in obj.get("rules") or []:
        for key in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
            values = rule.get(key) or []
            assert "*" not in values and not any("*" in str(v) for v in values), (
                f"{where}: wildcard in {rule}"
            )
        assert not rule.get("nonResourceURLs"), f"{where}: nonResourceURLs are not allowed: {rule}"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                key = (group, resource)
                extra = set(rule["verbs"]) - ALLOWED.get(key, frozenset())
                assert not extra, f"{where}: {key} verbs {sorted(extra)} are beyond the allowed list"
                grants[key] |= set(rule["verbs"])
    return grants


def _effective(docs: list[dict[str, Any]], sa: str, sa_namespace: str = NS) -> dict[str, Grants]:
    """Scope ('*' = cluster-wide, else a namespace) -> grants bound to the ServiceAccount."""
    roles = {("ClusterRole", d["metadata"]["name"], ""): d for d in helmchart.of_kind(docs, "ClusterRole")}
    roles |= {
        ("Role", d["metadata"]["name"], d["metadata"]["namespace"]): d
        for d in helmchart.of_kind(docs, "Role")
    }
    scopes: dict[str, Grants] = defaultdict(lambda: defaultdict(set))
    for binding in helmchart.of_kind(docs, "ClusterRoleBinding") + helmchart.of_kind(docs, "RoleBinding"):
        subjects = binding["subjects"]
        assert subjects == [{"kind": "ServiceAccount", "name": sa, "namespace": sa_namespace}], binding
        ref = binding["roleRef"]
        assert ref["apiGroup"] == "rbac.authorization.k8s.io"
        namespace = binding["metadata"].get("namespace", "")
        role = roles.get((ref["kind"], ref["name"], namespace if ref["kind"] == "Role" else ""))
        assert role is not None, f"{binding['kind']} {binding['metadata']['name']} refers to a missing {ref}"
        scope = "*" if binding["kind"] == "ClusterRoleBinding" else namespace
        for key, verbs in _rules_of(role).items():
            scopes[scope][key] |= verbs
    return scopes


def _as_frozen(grants: Grants) -> dict[tuple[str, str], frozenset[str]]:
    return {k: frozenset(v) for k, v in grants.items() if v}


def test_every_rendered_rule_is_allowed_and_has_no_wildcard(helm: str) -> None:
    for values in [[], *[[f] for f in helmchart.CI_VALUES]]:
        docs = helmchart.render(helm, values)
        rbac = [d for d in docs if d["kind"] in RBAC_KINDS]
        assert rbac, f"no RBAC rendered with {values}"
        for obj in rbac:
            _rules_of(obj)


def test_cluster_wide_mode_grants_exactly_the_allowed_list_cluster_wide(helm: str) -> None:
    docs = helmchart.render(helm)
    assert {d["kind"] for d in docs} & RBAC_KINDS == {"ClusterRole", "ClusterRoleBinding"}
    scopes = _effective(docs, sa=helmchart.RELEASE)
    assert set(scopes) == {"*"}
    assert _as_frozen(scopes["*"]) == ALLOWED
    args = helmchart.one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--all-namespaces" in args
    assert not [a for a in args if a.startswith("--namespace")]


def test_cluster_wide_mode_with_watch_namespaces_narrows_only_the_watch(helm: str) -> None:
    docs = helmchart.render(helm, set_values=["watchNamespaces={shop,blog}"])
    scopes = _effective(docs, sa=helmchart.RELEASE)
    assert set(scopes) == {"*"}
    assert _as_frozen(scopes["*"]) == ALLOWED
    args = helmchart.one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert [a for a in args if a.startswith("--namespace")] == ["--namespace=shop", "--namespace=blog"]
    assert "--all-namespaces" not in args


def test_namespaced_mode_grants_workloads_only_in_the_watched_namespaces(helm: str) -> None:
    docs = helmchart.render(helm, set_values=["rbac.clusterWide=false", "watchNamespaces={shop,blog}"])
    scopes = _effective(docs, sa=helmchart.RELEASE)
    assert set(scopes) == {"*", "shop", "blog"}
    # Cluster-wide: only the cluster-scoped ShutdownProfiles (and their status).
    assert _as_frozen(scopes["*"]) == {k: ALLOWED[k] for k in CLUSTER_SCOPED}
    for ns in ("shop", "blog"):
        assert _as_frozen(scopes[ns]) == {k: ALLOWED[k] for k in NAMESPACED}
    assert sorted(d["metadata"]["namespace"] for d in helmchart.of_kind(docs, "Role")) == ["blog", "shop"]
    args = helmchart.one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert [a for a in args if a.startswith("--namespace")] == ["--namespace=shop", "--namespace=blog"]
    assert "--all-namespaces" not in args


def test_namespaced_mode_without_namespaces_fails_with_a_clear_message(helm: str) -> None:
    with pytest.raises(helmchart.HelmError) as err:
        helmchart.render(helm, set_values=["rbac.clusterWide=false"])
    assert "watchNamespaces" in err.value.stderr


def test_existing_service_account_is_bound_and_not_created(helm: str) -> None:
    docs = helmchart.render(helm, set_values=["serviceAccount.create=false", "serviceAccount.name=ops-robot"])
    assert not helmchart.of_kind(docs, "ServiceAccount")
    scopes = _effective(docs, sa="ops-robot")
    assert _as_frozen(scopes["*"]) == ALLOWED
    pod = helmchart.one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "ops-robot"


def test_rbac_create_false_renders_no_rbac(helm: str) -> None:
    docs = helmchart.render(helm, set_values=["rbac.create=false"])
    assert not [d for d in docs if d["kind"] in RBAC_KINDS]
