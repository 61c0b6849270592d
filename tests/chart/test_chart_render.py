"""What charts/podgrace renders: the operator Deployment, the ShutdownProfiles, monitoring objects, the man
ConfigMap, NOTES and the `helm test` Pod (all with `helm template` / a client-only dry-run install).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hack.chart import helmchart

from podgrace.core import profiles
from podgrace.core.constants import KNOWN_ANNOTATIONS

NS = helmchart.NAMESPACE
CHART = helmchart.CHART
BUILTIN_FILE = CHART / "files" / "builtin-profiles.yaml"
APP_VERSION = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
CLUSTER_KINDS = {"ClusterRole", "ClusterRoleBinding", "ShutdownProfile", "CustomResourceDefinition"}

# Every series the chart's queries may use: the operator's metrics (and histogram series), prometheus-client's
# process collector, and Prometheus' own `up`.
KNOWN_METRICS = {
    "podgrace_reconcile_total",
    "podgrace_reconcile_errors_total",
    "podgrace_reconcile_time_seconds_bucket",
    "podgrace_reconcile_time_seconds_sum",
    "podgrace_reconcile_time_seconds_count",
    "podgrace_writes_total",
    "podgrace_managed_workloads",
    "podgrace_workloads_at_risk",
    "podgrace_profile_ready",
    "podgrace_warnings_total",
    "podgrace_build_info",
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_open_fds",
    "process_start_time_seconds",
    "up",
}
KNOWN_BY_LABELS = {
    "controller",
    "result",
    "kind",
    "profile",
    "finding",
    "reason",
    "le",
    "namespace",
    "pod",
    "version",
    "python_version",
}


@pytest.fixture(scope="module")
def default_docs(helm: str) -> list[dict[str, Any]]:
    return helmchart.render(helm)


@pytest.fixture(scope="module")
def all_on_docs(helm: str) -> list[dict[str, Any]]:
    return helmchart.render(helm, [helmchart.ALL_ON_VALUES])


def _pod_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = helmchart.one(docs, "Deployment")["spec"]["template"]["spec"]
    return spec


def _operator(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = _pod_spec(docs)["containers"]
    return dict(container)


def _test_pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    pods = [
        d
        for d in helmchart.of_kind(docs, "Pod")
        if d["metadata"]["annotations"].get("helm.sh/hook") == "test"
    ]
    assert len(pods) == 1
    return pods[0]


def _assert_restricted(pod_spec: dict[str, Any], where: str) -> None:
    """The Pod Security Standard `restricted` profile, plus a read-only root filesystem with /tmp writable."""
    pod_sc = pod_spec.get("securityContext") or {}
    assert pod_sc.get("runAsNonRoot") is True, where
    assert isinstance(pod_sc.get("runAsUser"), int) and pod_sc["runAsUser"] > 0, where
    assert pod_sc.get("seccompProfile") == {"type": "RuntimeDefault"}, where
    assert not pod_spec.get("hostNetwork") and not pod_spec.get("hostPID") and not pod_spec.get("hostIPC"), (
        where
    )
    for container in pod_spec["containers"] + pod_spec.get("initContainers", []):
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False, where
        assert sc["readOnlyRootFilesystem"] is True, where
        assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add"), where
        assert sc.get("privileged", False) is False, where
        assert sc.get("runAsNonRoot", True) is True, where
        assert sc.get("seccompProfile", {"type": "RuntimeDefault"}) == {"type": "RuntimeDefault"}, where
        assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"], where
    volumes = {v["name"]: v for v in pod_spec["volumes"]}
    assert "emptyDir" in volumes["tmp"], where
    assert all(
        set(v) <= {"name", "emptyDir", "configMap", "secret", "projected"} for v in volumes.values()
    ), where


# --- operator Deployment


def test_operator_deployment_defaults(default_docs: list[dict[str, Any]]) -> None:
    deployment = helmchart.one(default_docs, "Deployment")
    assert deployment["metadata"]["namespace"] == NS
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = _pod_spec(default_docs)
    assert pod["automountServiceAccountToken"] is True  # it talks to the API server
    sa = helmchart.one(default_docs, "ServiceAccount")
    assert sa["automountServiceAccountToken"] is False  # ... and nothing else using the account does
    assert pod["serviceAccountName"] == sa["metadata"]["name"]
    _assert_restricted(pod, "operator")
    assert pod["securityContext"]["runAsUser"] == 65532

    container = _operator(default_docs)
    assert container["image"] == f"ghcr.io/podgrace/podgrace:{APP_VERSION}"
    assert container["command"] == ["podgrace"]
    assert container["args"] == [
        "run",
        "--all-namespaces",
        "--liveness-port=8080",
        "--metrics-port=9090",
        "--workers=20",
        "--resync-seconds=600",
    ]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"healthz": 8080, "metrics": 9090}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    resources = container["resources"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"] and resources["limits"]["memory"]


def test_operator_options_reach_the_pod(all_on_docs: list[dict[str, Any]]) -> None:
    values = yaml.safe_load(helmchart.ALL_ON_VALUES.read_text())
    pod = _pod_spec(all_on_docs)
    template_meta = helmchart.one(all_on_docs, "Deployment")["spec"]["template"]["metadata"]
    assert pod["priorityClassName"] == values["priorityClassName"]
    assert pod["nodeSelector"] == values["nodeSelector"]
    assert pod["tolerations"] == values["tolerations"]
    assert pod["affinity"] == values["affinity"]
    assert pod["imagePullSecrets"] == values["imagePullSecrets"]
    assert values["podAnnotations"].items() <= template_meta["annotations"].items()
    assert values["podLabels"].items() <= template_meta["labels"].items()
    container = _operator(all_on_docs)
    digest = values["image"]["digest"]
    assert container["image"] == f"ghcr.io/podgrace/podgrace:{values['image']['tag']}@{digest}"
    assert container["imagePullPolicy"] == "Always"
    extra = values["extraArgs"]
    assert container["args"][-len(extra) :] == extra  # appended last, so they win over the chart's flags
    assert "--verbose" in container["args"][: -len(extra)]  # operator.verbose
    assert "--workers=10" in container["args"]
    assert "--resync-seconds=120" in container["args"]
    for env in values["extraEnv"]:
        assert env in container["env"]
    _assert_restricted(pod, "operator (all-on)")


def test_ports_follow_the_operator_flags(helm: str) -> None:
    docs = helmchart.render(
        helm, set_values=["operator.livenessPort=8081", "operator.metricsPort=9191", "service.port=80"]
    )
    container = _operator(docs)
    assert "--liveness-port=8081" in container["args"] and "--metrics-port=9191" in container["args"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"healthz": 8081, "metrics": 9191}
    service = helmchart.one(docs, "Service")
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 80, "targetPort": "metrics", "protocol": "TCP"}
    ]
    assert "podgrace.podgrace-system.svc:80/metrics" in json.dumps(_test_pod(docs))


def test_selectors_pick_the_operator_pod_only(all_on_docs: list[dict[str, Any]]) -> None:
    deployment = helmchart.one(all_on_docs, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    test_labels = _test_pod(all_on_docs)["metadata"]["labels"]
    service = helmchart.one(all_on_docs, "Service")

    def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
        return selector.items() <= labels.items()

    for selector in (deployment["spec"]["selector"]["matchLabels"], service["spec"]["selector"]):
        assert matches(selector, pod_labels)
        # a ReplicaSet would adopt (and delete) a matching orphan Pod; the Service would route to it
        assert not matches(selector, test_labels)
    monitor = helmchart.one(all_on_docs, "ServiceMonitor")
    assert matches(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NS]}


def test_namespaced_objects_name_their_namespace_and_carry_the_chart_labels(
    default_docs: list[dict[str, Any]], all_on_docs: list[dict[str, Any]]
) -> None:
    for doc in default_docs + all_on_docs:
        meta = doc["metadata"]
        where = f"{doc['kind']}/{meta['name']}"
        if doc["kind"] in CLUSTER_KINDS:
            assert "namespace" not in meta, where
        else:
            assert meta.get("namespace"), where
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "Helm", where
        assert meta["labels"]["app.kubernetes.io/part-of"] == "podgrace", where


# --- ShutdownProfiles


def _file_profiles() -> list[dict[str, Any]]:
    return helmchart.load_yaml_stream(BUILTIN_FILE)


def test_builtin_profiles_render_exactly_from_the_file(default_docs: list[dict[str, Any]]) -> None:
    rendered = helmchart.of_kind(default_docs, "ShutdownProfile")
    expected = _file_profiles()
    assert [p["metadata"]["name"] for p in rendered] == [p["metadata"]["name"] for p in expected]
    for got, want in zip(rendered, expected, strict=True):
        assert got["apiVersion"] == want["apiVersion"] == "podgrace.dev/v1alpha1"
        assert got["spec"] == want["spec"]
        assert want["metadata"]["labels"].items() <= got["metadata"]["labels"].items()
    # ... and the operator's own model accepts them.
    assert set(profiles.from_documents(rendered)) == {p["metadata"]["name"] for p in expected}


def test_builtin_profiles_can_be_disabled_and_overridden(helm: str) -> None:
    docs = helmchart.render(
        helm,
        set_values=[
            "builtinProfiles.web.enabled=false",
            "builtinProfiles.apache.enabled=false",
            "builtinProfiles.nginx.spec.gracePeriodMarginSeconds=0",
            "builtinProfiles.nginx.spec.existingPreStop=replace",
            "builtinProfiles.php-fpm.spec.containers[0].name=fpm",
            "builtinProfiles.php-fpm.spec.containers[0].match.containerNames={app}",
            "builtinProfiles.php-fpm.spec.containers[0].role=php-fpm",
            "builtinProfiles.php-fpm.spec.containers[0].drainSeconds=300",
        ],
    )
    rendered = {p["metadata"]["name"]: p for p in helmchart.of_kind(docs, "ShutdownProfile")}
    assert set(rendered) == {"nginx", "php-fpm", "nginx-php-fpm"}
    file_specs = {p["metadata"]["name"]: p["spec"] for p in _file_profiles()}
    nginx = rendered["nginx"]["spec"]
    # a zero is an override too (not "unset"), and untouched keys keep the file's values
    assert nginx == {**file_specs["nginx"], "gracePeriodMarginSeconds": 0, "existingPreStop": "replace"}
    # lists replace: the override's containers are the whole list
    assert rendered["php-fpm"]["spec"]["containers"] == [
        {"name": "fpm", "match": {"containerNames": ["app"]}, "role": "php-fpm", "drainSeconds": 300}
    ]
    assert rendered["php-fpm"]["spec"]["description"] == file_specs["php-fpm"]["description"]
    assert rendered["nginx-php-fpm"]["spec"] == file_specs["nginx-php-fpm"]
    assert set(profiles.from_documents(rendered.values())) == set(rendered)


def test_extra_profiles_render_with_their_labels(all_on_docs: list[dict[str, Any]]) -> None:
    values = yaml.safe_load(helmchart.ALL_ON_VALUES.read_text())
    rendered = {p["metadata"]["name"]: p for p in helmchart.of_kind(all_on_docs, "ShutdownProfile")}
    assert "web" not in rendered  # disabled in the all-on values
    assert rendered["nginx"]["spec"]["gracePeriodMarginSeconds"] == 10
    (extra,) = values["extraProfiles"]
    got = rendered[extra["name"]]
    assert got["spec"] == extra["spec"]
    assert extra["labels"].items() <= got["metadata"]["labels"].items()
    assert got["metadata"]["annotations"] == extra["annotations"]
    assert "podgrace.dev/builtin" not in got["metadata"]["labels"]
    assert set(profiles.from_documents(rendered.values())) == set(rendered)


def test_shutdownprofiles_come_from_templates_and_the_crd_from_crds(helm: str) -> None:
    # Helm installs crds/ before templates/: the kind exists when the profiles are created.
    crd_path = CHART / "crds" / "shutdownprofiles.podgrace.dev.yaml"
    assert not any("CustomResourceDefinition" in p.read_text() for p in (CHART / "templates").rglob("*.yaml"))
    shown = helmchart.run_helm(helm, "show", "crds", str(CHART)).stdout
    assert yaml.safe_load(crd_path.read_text()) in [d for d in yaml.safe_load_all(shown) if d]


# --- monitoring


def _promql_metrics(expr: str) -> set[str]:
    return set(re.findall(r"([A-Za-z_:][A-Za-z0-9_:]*)\{", expr))


def _by_labels(expr: str) -> set[str]:
    return {label.strip() for group in re.findall(r"\bby \(([^)]*)\)", expr) for label in group.split(",")}


def test_service_monitor_scrapes_the_named_metrics_port(all_on_docs: list[dict[str, Any]]) -> None:
    monitor = helmchart.one(all_on_docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["namespace"] == "monitoring"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    assert endpoint["relabelings"][0] == {
        "action": "replace",
        "targetLabel": "job",
        "replacement": "podgrace",
    }
    assert len(endpoint["relabelings"]) == 2 and endpoint["metricRelabelings"]


def test_monitoring_objects_are_off_by_default(default_docs: list[dict[str, Any]]) -> None:
    kinds = {d["kind"] for d in default_docs}
    assert not kinds & {"ServiceMonitor", "PrometheusRule"}
    assert all(
        not d["metadata"]["name"].endswith("-dashboard") for d in helmchart.of_kind(default_docs, "ConfigMap")
    )
    service = helmchart.one(default_docs, "Service")
    assert [p["name"] for p in service["spec"]["ports"]] == ["metrics"]


def test_prometheus_rule_queries_use_known_metrics(all_on_docs: list[dict[str, Any]]) -> None:
    rule = helmchart.one(all_on_docs, "PrometheusRule")
    for r in rule["spec"]["groups"][0]["rules"]:
        assert _promql_metrics(r["expr"]) <= KNOWN_METRICS, r["expr"]
        assert _by_labels(r["expr"]) <= KNOWN_BY_LABELS, r["expr"]


def _dashboard_cm(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return helmchart.one(docs, "ConfigMap", "podgrace-dashboard")


def test_dashboard_configmap_is_labelled_for_the_grafana_sidecar(
    helm: str, all_on_docs: list[dict[str, Any]]
) -> None:
    cm = _dashboard_cm(all_on_docs)
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Kubernetes"}
    assert json.loads(cm["data"]["podgrace.json"]) == json.loads(
        (CHART / "files" / "dashboard.json").read_text()
    )
    docs = helmchart.render(
        helm,
        set_values=[
            "dashboard.enabled=true",
            "dashboard.labelKey=grafana.io/dashboard",
            "dashboard.namespace=obs",
        ],
        extra=["--set-string", "dashboard.labelValue=podgrace"],
    )
    cm = _dashboard_cm(docs)
    assert cm["metadata"]["labels"]["grafana.io/dashboard"] == "podgrace"
    assert "grafana_dashboard" not in cm["metadata"]["labels"]
    assert cm["metadata"]["namespace"] == "obs"


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((CHART / "files" / "dashboard.json").read_text())
    return data


def _targets(dashboard: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(p["title"], t) for p in dashboard["panels"] for t in p.get("targets", [])]


def test_dashboard_selects_its_datasource_with_a_template_variable() -> None:
    dashboard = _dashboard()
    assert "__inputs" not in dashboard and "__requires" not in dashboard
    assert "${DS_" not in json.dumps(dashboard)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("job", "namespace"):
        assert variables[name]["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
    for title, target in _targets(dashboard):
        assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, title
        assert 'job=~"$job"' in target["expr"] and 'namespace=~"$namespace"' in target["expr"], title


def test_dashboard_queries_use_known_metrics_and_labels() -> None:
    for title, target in _targets(_dashboard()):
        assert _promql_metrics(target["expr"]) <= KNOWN_METRICS, (title, target["expr"])
        assert _by_labels(target["expr"]) <= KNOWN_BY_LABELS, (title, target["expr"])


def test_dashboard_shows_what_the_operator_of_a_cluster_needs() -> None:
    dashboard = _dashboard()
    exprs = [t["expr"] for _, t in _targets(dashboard)]

    def has(*fragments: str) -> bool:
        return any(all(f in e for f in fragments) for e in exprs)

    assert has("rate(podgrace_reconcile_total", "by (controller, result)")
    assert has("podgrace_reconcile_errors_total", "by (controller)")
    for q in ("0.5", "0.9", "0.99"):
        assert has(f"histogram_quantile({q},", "podgrace_reconcile_time_seconds_bucket", "le")
    assert has("podgrace_managed_workloads", "by (profile, kind)")
    assert has("podgrace_workloads_at_risk", "by (finding)")
    assert has("podgrace_warnings_total", "by (reason)")
    assert has("podgrace_profile_ready")
    assert has("podgrace_writes_total", "by (kind)")
    assert has("process_cpu_seconds_total") and has("process_resident_memory_bytes")
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert rows == ["Overview", "Reconciliation", "Workloads and profiles", "Warnings", "Operator process"]


def test_dashboard_layout_is_consistent() -> None:
    panels = _dashboard()["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"panel {p['title']!r} overlaps another"
        cells |= mine
        refs = [t["refId"] for t in p.get("targets", [])]
        assert len(refs) == len(set(refs)), p["title"]


# --- man page, NOTES, test


def test_man_configmap_documents_the_crd_and_every_annotation(default_docs: list[dict[str, Any]]) -> None:
    cm = helmchart.one(default_docs, "ConfigMap", "podgrace-man")
    assert cm["metadata"]["namespace"] == NS
    text = cm["data"]["usage"]
    assert text == (CHART / "files" / "man.txt").read_text().rstrip("\n")
    for annotation in sorted(KNOWN_ANNOTATIONS):
        assert annotation in text, annotation
    for fragment in ("enforce|audit", "keep|replace", "Comma-separated", "ShutdownProfile", "stopAfter"):
        assert fragment in text, fragment
    crd = yaml.safe_load((CHART / "crds" / "shutdownprofiles.podgrace.dev.yaml").read_text())
    assert crd["metadata"]["annotations"]["platform-as-code/man"] == cm["metadata"]["name"]


def test_notes_give_the_next_step_and_how_to_check_it(helm: str, tmp_path: Path) -> None:
    env = helmchart.helm_env() | {"KUBECONFIG": str(tmp_path / "no-kubeconfig")}
    proc = helmchart.run_helm(
        helm, "install", "podgrace", str(CHART), "--namespace", NS, "--dry-run=client", env=env
    )
    notes = proc.stdout.split("NOTES:", 1)[1]
    assert "kubectl annotate deployment NAME podgrace.dev/profile=nginx-php-fpm" in notes
    assert "kubectl get shutdownprofiles" in notes
    assert "kubectl describe deployment NAME" in notes
    assert "kubectl get deploy NAME -o jsonpath=" in notes
    assert "helm test podgrace" in notes
    assert "--server-side --force-conflicts" in notes


def test_helm_test_pod_fetches_metrics_through_the_service(all_on_docs: list[dict[str, Any]]) -> None:
    pod = _test_pod(all_on_docs)
    spec = pod["spec"]
    assert pod["metadata"]["namespace"] == NS
    assert spec["restartPolicy"] == "Never"
    assert spec["automountServiceAccountToken"] is False
    _assert_restricted(spec, "helm test pod")
    (container,) = spec["containers"]
    assert container["image"] == _operator(all_on_docs)["image"]
    script, url = container["args"]
    service = helmchart.one(all_on_docs, "Service")
    assert (
        url == f"http://{service['metadata']['name']}.{NS}.svc:{service['spec']['ports'][0]['port']}/metrics"
    )
    assert "podgrace_build_info" in script
    compile(script, "helm-test", "exec")  # valid Python for the image's interpreter


def test_helm_test_pod_can_be_left_out(helm: str) -> None:
    docs = helmchart.render(helm, set_values=["tests.enabled=false", "manConfigMap.enabled=false"])
    assert not helmchart.of_kind(docs, "Pod")
    assert not helmchart.of_kind(docs, "ConfigMap")
