"""Every manifest the chart renders is valid for the target Kubernetes version and for the CRDs it uses.

No schema downloads (kubeconform's schemas live on GitHub): the real kube-apiserver of the local cluster
(tests/cluster) validates instead. The ServiceMonitor/PrometheusRule CRDs come from the prometheus-operator
Go module (hack/chart/fetch-monitoring-crds.sh), the ShutdownProfile CRD from the chart's crds/. Then
`kubectl apply --dry-run=server --validate=strict` (client-side and server-side apply) must accept the
rendered chart for each values set without an error or a warning, in namespaces that enforce the
`restricted` Pod Security Standard.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from localcluster import KubectlError, LocalCluster

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "hack" / "chart"))
import helmchart

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

FETCH_CRDS = helmchart.ROOT / "hack" / "chart" / "fetch-monitoring-crds.sh"
MONITORING_CRDS = ("servicemonitors.monitoring.coreos.com", "prometheusrules.monitoring.coreos.com")
OUR_CRDS = ("shutdownprofiles.podgrace.dev",)
# The release namespace and every namespace a values set puts objects in.
NAMESPACES = (helmchart.NAMESPACE, "monitoring", "shop", "blog")
VALUE_SETS = {
    "default": [],
    **{f.name.removesuffix("-values.yaml"): [f] for f in helmchart.CI_VALUES},
}


@pytest.fixture(scope="module")
def helm(cluster: LocalCluster) -> str:
    found = helmchart.find_helm()
    return found or str(cluster.bin("helm"))


@pytest.fixture(scope="module")
def server_version(cluster: LocalCluster) -> str:
    version: str = cluster.kubectl_json("version")["serverVersion"]["gitVersion"]
    return version


def _apply_crds(cluster: LocalCluster, path: Path, names: tuple[str, ...]) -> None:
    cluster.kubectl(
        *("apply", "--server-side", "--force-conflicts", "--field-manager=podgrace-chart-tests"),
        *("-f", str(path)),
    )
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", *(f"crd/{n}" for n in names))


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
    prepared: LocalCluster, helm: str, server_version: str, tmp_path: Path, values: list[Path]
) -> None:
    rendered = helmchart.render_text(helm, values, extra=["--kube-version", server_version])
    docs = helmchart.parse_stream(rendered)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "ServiceAccount", "ShutdownProfile", "Pod"} <= kinds
    manifest = tmp_path / "rendered.yaml"
    manifest.write_text(rendered)

    for mode in ((), ("--server-side", "--field-manager=helm")):
        proc = _dry_run(prepared, manifest, *mode)
        label = "server-side apply" if mode else "client-side apply"
        assert proc.returncode == 0, f"{label} --dry-run=server rejected the chart:\n{proc.stderr}"
        warnings = [line for line in proc.stderr.splitlines() if line.strip()]
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
