"""Every manifest the chart renders is valid for the target Kubernetes version and for the CRDs it uses.

No schema downloads (kubeconform's schemas live on GitHub): the real kube-apiserver of the local cluster
(tests/cluster) validates instead. The ServiceMonitor/PrometheusRule CRDs come from the prometheus-operator
Go module (hack/chart/fetch-monitoring-crds.sh), the ShutdownProfile CRD from the chart's crds/. Then
`kubectl apply --dry-run=server --validate=strict` (client-side and server-side apply) must accept the
rendered chart for each values set without an error or a warning, in namespaces that enforce the
`restricted` Pod Security Standard.

Last, a real `helm install` / `upgrade` / `uninstall` on a fresh cluster of its own: the CRD from crds/ is
registered before the ShutdownProfiles of templates/, the RBAC grants what the operator needs (checked
with `kubectl auth can-i`), and uninstalling keeps the CRD.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hack.chart import helmchart
from tests.cluster.localcluster import KubectlError, LocalCluster
from tests.support.podgrace_env import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

FETCH_CRDS = helmchart.ROOT / "hack" / "chart" / "fetch-monitoring-crds.sh"
MONITORING_CRDS = ("servicemonitors.monitoring.coreos.com", "prometheusrules.monitoring.coreos.com")
OUR_CRDS = ("shutdownprofiles.podgrace.dev",)
BUILTIN_FILE = helmchart.CHART / "files" / "builtin-profiles.yaml"
# The release namespace and every namespace a values set puts objects in.
NAMESPACES = (helmchart.NAMESPACE, "monitoring", "shop", "blog")
VALUE_SETS = {
    "default": [],
    **{f.name.removesuffix("-values.yaml"): [f] for f in helmchart.CI_VALUES},
}

LAST_APPLIED_NOTE = "is missing the kubectl.kubernetes.io/last-applied-configuration annotation"


@pytest.fixture(scope="module")
def helm(cluster: LocalCluster) -> str:
    found = helmchart.find_helm()
    return found or str(cluster.bin("helm"))


@pytest.fixture(scope="module")
def server_version(cluster: LocalCluster) -> str:
    version: str = cluster.kubectl_json("version")["serverVersion"]["gitVersion"]
    return version


@pytest.fixture(scope="module")
def api_versions(cluster: LocalCluster) -> list[str]:
    """What `helm install` would learn from discovery about the kinds the chart gates on (helm template
    knows only group/versions): the admission policy is rendered and validated where it is served."""
    status, group = cluster.request("GET", "/apis/admissionregistration.k8s.io/v1")
    assert status == 200, group
    kinds = {r["kind"] for r in group["resources"]}
    assert "ValidatingAdmissionPolicy" in kinds  # GA since 1.30: the test's API server must serve it
    return list(helmchart.WITH_VAP)


def _apply_crds(cluster: LocalCluster, path: Path, names: tuple[str, ...]) -> None:
    cluster.kubectl(
        *("apply", "--server-side", "--force-conflicts", "--field-manager=podgrace-chart-tests"),
        *("-f", str(path)),
    )
    # Polled, not `kubectl wait --for=condition=Established`: that fails at once ("accessor error: <nil>")
    # when it reads a CRD before the API server has written any status condition.
    for name in names:
        wait_until(f"CRD {name} Established", lambda name=name: _established(cluster, name))


def _established(cluster: LocalCluster, name: str) -> bool:
    crd = cluster.kubectl_json("get", f"crd/{name}")
    conditions = (crd.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)


@pytest.fixture(scope="module")
def prepared(cluster: LocalCluster) -> LocalCluster:
    """The cluster with the monitoring CRDs, our CRD and restricted namespaces."""
    proc = subprocess.run(["bash", str(FETCH_CRDS)], capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        pytest.fail(f"{FETCH_CRDS} failed:\n{proc.stderr}", pytrace=False)
    crd_dir = Path(proc.stdout.strip().splitlines()[-1])
    _apply_crds(cluster, crd_dir, MONITORING_CRDS)
    _apply_crds(cluster, helmchart.CHART / "crds", OUR_CRDS)
    for ns in NAMESPACES:
        manifest = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": ns,
                "labels": {
                    f"pod-security.kubernetes.io/{mode}": "restricted"
                    for mode in ("enforce", "warn", "audit")
                },
            },
        }
        cluster.kubectl(
            "apply",
            "--server-side",
            "--field-manager=podgrace-chart-tests",
            "-f",
            "-",
            input=json.dumps(manifest),
        )
    # A Pod (the helm test's) passes admission only once its namespace has the `default` ServiceAccount.
    deadline = time.monotonic() + 60
    for ns in NAMESPACES:
        while cluster.kubectl("get", "serviceaccount", "default", "-n", ns, check=False).returncode != 0:
            if time.monotonic() > deadline:
                pytest.fail(f"namespace {ns} got no default ServiceAccount", pytrace=False)
            time.sleep(0.5)
    return cluster


def _dry_run(cluster: LocalCluster, manifest: Path, *mode: str) -> subprocess.CompletedProcess[str]:
    """kubectl apply --dry-run=server --validate=strict; retries while the new kinds reach discovery."""
    args = ("apply", *mode, "--dry-run=server", "--validate=strict", "-f", str(manifest))
    deadline = time.monotonic() + 30
    while True:
        proc = cluster.kubectl(*args, check=False)
        if proc.returncode == 0 or "no matches for kind" not in proc.stderr or time.monotonic() > deadline:
            return proc
        time.sleep(1)


@pytest.mark.parametrize("values", list(VALUE_SETS.values()), ids=list(VALUE_SETS))
def test_rendered_chart_passes_server_side_validation(
    prepared: LocalCluster,
    helm: str,
    server_version: str,
    api_versions: list[str],
    tmp_path: Path,
    values: list[Path],
) -> None:
    rendered = helmchart.render_text(helm, values, extra=["--kube-version", server_version, *api_versions])
    docs = helmchart.parse_stream(rendered)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "ServiceAccount", "ShutdownProfile", "Pod"} <= kinds
    assert {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"} <= kinds
    if values == [helmchart.ALL_ON_VALUES]:
        assert "NetworkPolicy" in kinds
    manifest = tmp_path / "rendered.yaml"
    manifest.write_text(rendered)

    for mode in ((), ("--server-side", "--field-manager=helm")):
        proc = _dry_run(prepared, manifest, *mode)
        label = "server-side apply" if mode else "client-side apply"
        assert proc.returncode == 0, f"{label} --dry-run=server rejected the chart:\n{proc.stderr}"
        # kubectl's note that a live object (the chart installed by another e2e file in the shared cluster)
        # was not created by kubectl apply says nothing about the manifest: only the rest counts
        warnings = [
            line for line in proc.stderr.splitlines() if line.strip() and LAST_APPLIED_NOTE not in line
        ]
        assert not warnings, f"{label} --dry-run=server warned:\n{proc.stderr}"
        # One line per object: everything was checked (nothing skipped as unchanged or unknown).
        assert len([line for line in proc.stdout.splitlines() if "(server dry run)" in line]) == len(docs), (
            proc.stdout
        )


def test_bad_profile_override_is_rejected_by_the_crd_not_the_chart(
    prepared: LocalCluster, helm: str, tmp_path: Path
) -> None:
    # Validation of ShutdownProfile contents lives in the CRD (schema + CEL): the chart renders the override,
    # the API server refuses it with the CRD's message.
    rendered = helmchart.render_text(
        helm,
        set_values=[  # `containers` replaces the file's list as a whole
            "builtinProfiles.nginx.spec.containers[0].name=nginx",
            "builtinProfiles.nginx.spec.containers[0].match.containerNames={nginx}",
            "builtinProfiles.nginx.spec.containers[0].role=nginx",
            "builtinProfiles.nginx.spec.containers[0].stopSignal=SIGTERM",
        ],
        show_only=["templates/shutdownprofiles.yaml"],
    )
    manifest = tmp_path / "profiles.yaml"
    manifest.write_text(rendered)
    proc = _dry_run(prepared, manifest)
    assert proc.returncode != 0
    assert "nginx and php-fpm stop gracefully only on SIGQUIT" in proc.stderr


def test_crd_in_the_chart_is_the_one_helm_show_crds_prints(prepared: LocalCluster, helm: str) -> None:
    shown = helmchart.run_helm(helm, "show", "crds", str(helmchart.CHART)).stdout
    try:
        prepared.kubectl(
            *("apply", "--server-side", "--force-conflicts", "--field-manager=podgrace-crds"),
            *("--dry-run=server", "--validate=strict", "-f", "-"),
            input=shown,
        )
    except KubectlError as err:
        pytest.fail(f"the documented CRD upgrade command fails: {err}", pytrace=False)


# --- a real install on a fresh cluster of its own (the shared one may already have the CRD)


@pytest.fixture(scope="module")
def fresh_cluster(cluster_bin_dir: Path) -> Iterator[LocalCluster]:
    fresh = LocalCluster(binaries=cluster_bin_dir, name="chart-install", nodes=1)
    fresh.start()
    try:
        yield fresh
    finally:
        fresh.stop()


def _can(
    cluster: LocalCluster, verb: str, resource: str, namespace: str | None = None, subresource: str = ""
) -> bool:
    """`kubectl auth can-i` as the operator's ServiceAccount (no namespace: across all namespaces)."""
    sa = f"system:serviceaccount:{helmchart.NAMESPACE}:{helmchart.RELEASE}"
    scope = ["-n", namespace] if namespace else ["--all-namespaces"]
    if subresource:
        scope.append(f"--subresource={subresource}")
    proc = cluster.kubectl("auth", "can-i", verb, resource, f"--as={sa}", *scope, check=False)
    return proc.stdout.strip() == "yes"


def test_helm_install_registers_the_crd_before_the_profiles_and_uninstall_keeps_it(
    fresh_cluster: LocalCluster, helm: str
) -> None:
    c = fresh_cluster
    assert c.kubectl("get", "crd", OUR_CRDS[0], check=False).returncode != 0
    ns = helmchart.NAMESPACE
    install = ("install", helmchart.RELEASE, str(helmchart.CHART), "-n", ns, "--create-namespace")
    c.helm(*install, "--wait", "--timeout", "180s")

    crd = c.kubectl_json("get", "crd", OUR_CRDS[0])
    assert crd["metadata"]["annotations"]["platform-as-code/man"] == "podgrace-man"
    expected = {p["metadata"]["name"]: p["spec"] for p in helmchart.load_yaml_stream(BUILTIN_FILE)}
    got = {p["metadata"]["name"]: p["spec"] for p in c.kubectl_json("get", "shutdownprofiles")["items"]}
    assert got == expected  # the API server's defaults add nothing the file does not already say
    # The admission policy came with the install (helm saw the API in discovery) and the API server
    # accepted its CEL: every expression compiled, the type check ran.
    policy = c.kubectl_json("get", "validatingadmissionpolicy", f"{helmchart.RELEASE}-owned-fields")
    binding = c.kubectl_json("get", "validatingadmissionpolicybinding", f"{helmchart.RELEASE}-owned-fields")
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    wait_until(
        "the policy's type check",
        lambda: (c.kubectl_json("get", "validatingadmissionpolicy", policy["metadata"]["name"]).get("status")
                 or {}).get("observedGeneration") == policy["metadata"]["generation"],
    )  # fmt: skip
    man = c.kubectl_json("get", "configmap", "podgrace-man", "-n", ns)
    assert man["data"]["usage"] == (helmchart.CHART / "files" / "man.txt").read_text().rstrip("\n")

    # RBAC for real: what the operator may do, and a few things it may not.
    for verb, resource in (
        ("patch", "deployments.apps"),
        ("watch", "deployments.apps"),
        ("create", "events"),
    ):
        assert _can(c, verb, resource), (verb, resource)
    assert _can(c, "patch", "shutdownprofiles.podgrace.dev", subresource="status")
    assert not _can(c, "patch", "shutdownprofiles.podgrace.dev")
    for verb, resource in (
        ("delete", "deployments.apps"),
        ("get", "secrets"),
        ("update", "deployments.apps"),
        ("create", "pods"),
        ("delete", "shutdownprofiles.podgrace.dev"),
    ):
        assert not _can(c, verb, resource), (verb, resource)

    # Namespaced mode: workloads only in the watched namespace, profiles still cluster-wide.
    c.kubectl("create", "namespace", "shop")
    c.helm(
        "upgrade",
        helmchart.RELEASE,
        str(helmchart.CHART),
        "-n",
        ns,
        "--wait",
        "--timeout",
        "180s",
        "--set",
        "rbac.clusterWide=false",
        "--set",
        "watchNamespaces={shop}",
        "--set",
        "builtinProfiles.web.enabled=false",
    )
    assert _can(c, "patch", "deployments.apps", "shop")
    assert not _can(c, "patch", "deployments.apps", "default")
    assert not _can(c, "patch", "deployments.apps")
    assert _can(c, "list", "shutdownprofiles.podgrace.dev")
    names = {p["metadata"]["name"] for p in c.kubectl_json("get", "shutdownprofiles")["items"]}
    assert names == set(expected) - {"web"}
    args = c.kubectl_json("get", "deployment", helmchart.RELEASE, "-n", ns)["spec"]["template"]["spec"][
        "containers"
    ][0]["args"]
    assert "--namespace=shop" in args and "--all-namespaces" not in args

    # Helm deletes what templates/ made, never the CRD from crds/ (profiles made outside the release stay).
    c.helm("uninstall", helmchart.RELEASE, "-n", ns, "--wait", "--timeout", "120s")
    assert c.kubectl_json("get", "shutdownprofiles")["items"] == []
    assert (
        c.kubectl_json("get", "validatingadmissionpolicies,validatingadmissionpolicybindings")["items"] == []
    )
    assert c.kubectl("get", "crd", OUR_CRDS[0], check=False).returncode == 0
