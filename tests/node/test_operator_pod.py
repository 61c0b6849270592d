"""podgrace as a pod on the real node: the image built from the Dockerfile by buildah (tests/image/build.py)
imported into the node's containerd, then `helm install charts/podgrace` with it.

- The kubelet runs both probes (its own probe metrics count successes for this pod) and the pod is Ready.
- The security context is enforced by the runtime: PID 1 runs as 65532:65532 with no capabilities,
  no_new_privs and seccomp; a write to / fails (read-only root), /tmp (the emptyDir) is writable.
- podgrace reconciles an opted-in Deployment with the chart's RBAC, through its in-cluster login
  (https://kubernetes.default.svc, the projected token, the CA from kube-root-ca.crt).
- /metrics is scraped from the pod IP.
- Token rotation (serviceAccount.tokenExpirationSeconds=600, the API server's minimum): the kubelet writes
  a new token at ~80% of its lifetime (seen: 484 s after the first was issued); once the API server rejects
  the first token (60 s after its exp: go-jose's leeway), podgrace must still reconcile a new Deployment,
  without a restart or a reconcile error. The rotation alone takes ~11.5 minutes from the install
  (marked `slow`; it runs in CI: it once failed with 401s, see image/README.md).

The release is the session's (tests/node/conftest.py, podgrace_in_cluster; the real-node lab uses it too).
tests/conftest.py runs this file's other tests first in the node unit and the rotation test last, so that
the labs and the other node tests run during the token's lifetime instead of before it. The API server is
reached through tests/node/api_relay.py (see there why).
"""

from __future__ import annotations

import base64
import json
import re
import ssl
import time
import urllib.request
from typing import Any

import pytest
from tests.support.operator_release import NAMESPACE, RELEASE, Release, wait_until
from tests.support.realnode_env import OPERATOR_POD_NS, SA_DIR, TOKEN_SECONDS, InClusterPodgrace

ALLOWED_GET = "/apis/apps/v1/deployments?limit=1"  # the chart's RBAC lets podgrace list Deployments


@pytest.fixture
def release(podgrace_in_cluster: InClusterPodgrace) -> Release:
    return podgrace_in_cluster.release


def _jwt_claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return claims


def _kubelet_metrics(release: Release, path: str) -> str:
    node = release.cluster.kubectl_json("get", "node", release.node.name)
    port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the kubelet's self-signed serving certificate
    with urllib.request.urlopen(f"https://{release.node.node_ip}:{port}{path}", context=ctx, timeout=10) as r:
        return str(r.read().decode())


def _probe_successes(release: Release, probe_type: str) -> int:
    text = _kubelet_metrics(release, "/metrics/probes")
    total = 0
    for line in text.splitlines():
        if (
            line.startswith("prober_probe_total{")
            and f'pod="{release.pod}"' in line
            and f'probe_type="{probe_type}"' in line
            and 'result="successful"' in line
        ):
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def _deployment(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": OPERATOR_POD_NS,
            "annotations": {"podgrace.dev/profile": "nginx"},
        },
        "spec": {
            "replicas": 0,  # only the template matters to podgrace; no pod needs an nginx image here
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "nginx", "image": "nginx:1.27"}]},
            },
        },
    }


def _reconciled(release: Release, name: str, timeout: float) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        obj: dict[str, Any] = release.cluster.kubectl_json("get", "deployment", name, "-n", OPERATOR_POD_NS)
        container = obj["spec"]["template"]["spec"]["containers"][0]
        return container if "preStop" in (container.get("lifecycle") or {}) else None

    return wait_until(f"podgrace to reconcile deployment {name}", done, timeout=timeout)


# ---------------------------------------------------------------------------------------------------


def test_pod_ready_with_probes_run_by_the_kubelet(release: Release) -> None:
    pod = release.pod_obj()
    container = pod["spec"]["containers"][0]
    assert container["image"] == release.image.ref
    assert container["imagePullPolicy"] == "Never"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    status = pod["status"]["containerStatuses"][0]
    assert status["ready"] and status["restartCount"] == 0
    assert status["imageID"], status  # containerd reports the image it ran
    # The kubelet's own counters: it ran both probes against the pod, and they succeeded.
    wait_until("a successful readiness probe", lambda: _probe_successes(release, "Readiness") > 0, 30)
    wait_until("a successful liveness probe", lambda: _probe_successes(release, "Liveness") > 0, 60)


def test_security_context_is_enforced(release: Release) -> None:
    status = release.exec("cat", "/proc/1/status").stdout
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    assert fields["Uid"].split() == ["65532"] * 4
    assert fields["Gid"].split() == ["65532"] * 4
    assert int(fields["CapEff"].strip(), 16) == 0
    assert int(fields["CapPrm"].strip(), 16) == 0
    assert fields["NoNewPrivs"].strip() == "1"
    assert fields["Seccomp"].strip() == "2"  # filter mode: the RuntimeDefault profile
    cmdline = release.exec("cat", "/proc/1/cmdline").stdout.split("\0")
    assert cmdline[0].startswith("/opt/podgrace/bin/python") and cmdline[1:3] == [
        "/opt/podgrace/bin/podgrace",
        "run",
    ]
    denied = release.exec("sh", "-c", "echo x > /podgrace-write-test", check=False)
    assert denied.returncode != 0 and "Read-only file system" in denied.stderr, denied.stderr
    mounts = release.exec("cat", "/proc/1/mounts").stdout.splitlines()
    root = [m.split() for m in mounts if m.split()[1] == "/"][-1]
    assert "ro" in root[3].split(","), root
    assert release.exec("sh", "-c", "echo x > /tmp/w && cat /tmp/w && rm /tmp/w").stdout.strip() == "x"


def test_projected_token_of_the_chart(release: Release) -> None:
    pod = release.pod_obj()
    assert pod["spec"]["automountServiceAccountToken"] is False
    token = release.exec("cat", f"{SA_DIR}/token").stdout.strip()
    claims = _jwt_claims(token)
    assert claims["exp"] - claims["iat"] == TOKEN_SECONDS
    assert claims["sub"] == f"system:serviceaccount:{NAMESPACE}:{RELEASE}"
    assert claims["kubernetes.io"]["pod"]["name"] == release.pod  # bound to this pod
    assert release.exec("cat", f"{SA_DIR}/namespace").stdout.strip() == NAMESPACE
    assert "BEGIN CERTIFICATE" in release.exec("cat", f"{SA_DIR}/ca.crt").stdout


def test_reconciles_an_opted_in_deployment(release: Release) -> None:
    release.cluster.kubectl("apply", "-f", "-", input=json.dumps(_deployment("web")))
    container = _reconciled(release, "web", timeout=90)
    assert container["lifecycle"]["preStop"]
    assert release.relay.connections > 0  # podgrace's in-cluster connections went through the relay


def test_metrics_scraped_from_the_pod_ip(release: Release) -> None:
    text = release.metrics()
    series = {m.group(1) for m in re.finditer(r"^(podgrace_[a-z_]+)", text, re.M)}
    assert {"podgrace_build_info", "podgrace_reconcile_total", "podgrace_writes_total"} <= series, series
    assert re.search(r'^podgrace_build_info\{[^}]*python_version="3\.11\.\d+"[^}]*\} 1\.0$', text, re.M), (
        text[:3000]
    )
    writes = [ln for ln in text.splitlines() if ln.startswith("podgrace_writes_total{")]
    assert any(float(ln.rsplit(" ", 1)[1]) >= 1 for ln in writes), writes


@pytest.mark.slow
def test_keeps_working_across_a_token_rotation(podgrace_in_cluster: InClusterPodgrace) -> None:
    release, first = podgrace_in_cluster.release, podgrace_in_cluster.first_token
    first_claims = _jwt_claims(first)
    # The kubelet refreshes a projected token once 80% of its lifetime has passed (plus up to 10 s jitter)
    # and rewrites the volume on its next pod sync (about once a minute). The clock started at the install:
    # this test runs last in the node unit, so most of the wait is already behind it.
    deadline = max(60.0, first_claims["exp"] - time.time() + 60)
    print(
        f"\n[operator-pod] rotation test starts {time.time() - first_claims['iat']:.0f} s after the install"
    )

    def rotated() -> str | None:
        token = str(release.exec("cat", f"{SA_DIR}/token").stdout.strip())
        return token if token != first else None

    second = wait_until("the kubelet to rotate the projected token", rotated, timeout=deadline, interval=10)
    second_claims = _jwt_claims(second)
    rotated_after = second_claims["iat"] - first_claims["iat"]
    print(f"[operator-pod] token rotated {rotated_after} s after the first was issued")
    assert rotated_after >= 0.8 * TOKEN_SECONDS - 15
    assert second_claims["exp"] - second_claims["iat"] == TOKEN_SECONDS

    # Let the first token expire: wait until the API server rejects it (401). It accepts a token up to 60 s
    # past its exp (go-jose's default leeway; seen here: 403, i.e. authenticated, 5 s after exp).
    def first_rejected() -> bool:
        return release.cluster.request("GET", ALLOWED_GET, token=first)[0] == 401

    time.sleep(max(0.0, first_claims["exp"] - time.time()))
    wait_until("the API server to reject the first token", first_rejected, timeout=90, interval=5)
    print(f"[operator-pod] first token rejected {time.time() - first_claims['exp']:.0f} s after its exp")
    assert release.cluster.request("GET", ALLOWED_GET, token=second)[0] == 200
    # podgrace must use the new token: a new Deployment is reconciled, with no restart and no reconcile
    # error in the release's whole life (the real-node lab's reconciles included).
    release.cluster.kubectl("apply", "-f", "-", input=json.dumps(_deployment("after-rotation")))
    _reconciled(release, "after-rotation", timeout=120)
    assert release.pod_obj()["status"]["containerStatuses"][0]["restartCount"] == 0
    assert release.metric("podgrace_reconcile_errors_total") == podgrace_in_cluster.reconcile_errors
