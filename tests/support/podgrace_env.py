"""Helpers for the end-to-end tests: install the chart, run podgrace as a local process with the chart's
ServiceAccount credentials (so the chart's RBAC is exactly what is tested), and wait for conditions."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from tests.cluster.localcluster import die_with_parent

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "podgrace"
NAMESPACE = "podgrace"
RELEASE = "podgrace"
SERVICE_ACCOUNT = "podgrace"
OPERATOR_USER = f"system:serviceaccount:{NAMESPACE}:{SERVICE_ACCOUNT}"

T = TypeVar("T")


def wait_until(what: str, probe: Callable[[], T | None], timeout: float = 60.0, interval: float = 0.25) -> T:
    deadline = time.monotonic() + timeout
    while True:  # at least one probe, even when the time is already up
        last = probe()
        if last:
            return last
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def metric_total(text: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples in a /metrics text that carry `labels`."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def install_chart(cluster: Any, *extra: str) -> None:
    cluster.helm(
        "install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--create-namespace", *extra, timeout=300
    )


class OperatorProcess:
    """`podgrace run` against a LocalCluster, authenticated as the chart's ServiceAccount.

    `server`: another URL for the API server (a FaultProxy's). `token_file`: the kubeconfig names a
    `tokenFile` (as a pod's projected ServiceAccount token) instead of holding the token, so that a test
    can rotate it under the running process (`write_token`)."""

    def __init__(self, cluster: Any, *args: str, server: str | None = None, token_file: bool = False) -> None:
        self.cluster = cluster
        self.args = list(args)
        self.server = server
        self.workdir = Path(tempfile.mkdtemp(prefix="podgrace-operator-"))
        self.log_path = self.workdir / "operator.log"
        self.token_path = self.workdir / "token" if token_file else None
        self.metrics_port = free_port()
        self.liveness_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def kubeconfig(self) -> Path:
        path = self.workdir / "kubeconfig"
        if self.token_path is not None and self.token_path.exists():
            user: dict[str, str] = {"tokenFile": str(self.token_path)}
        else:
            token = self.cluster.create_token(SERVICE_ACCOUNT, NAMESPACE, duration="2h")
            if self.token_path is not None:
                self.write_token(token)
                user = {"tokenFile": str(self.token_path)}
            else:
                user = {"token": token}
        ca = base64.b64encode((Path(self.cluster.pki) / "ca.crt").read_bytes()).decode()
        cluster = {"server": self.server or self.cluster.server, "certificate-authority-data": ca}
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "e2e", "cluster": cluster}],
            "users": [{"name": SERVICE_ACCOUNT, "user": user}],
            "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": SERVICE_ACCOUNT}}],
            "current-context": "e2e",
        }
        path.write_text(json.dumps(config, indent=2) + "\n")
        path.chmod(0o600)
        return path

    def write_token(self, token: str) -> None:
        """Replace the token file at once (a rename, as the kubelet swaps a projected volume's files)."""
        assert self.token_path is not None, "started without token_file=True"
        fresh = self.token_path.with_suffix(".new")
        fresh.write_text(token + "\n")
        fresh.replace(self.token_path)

    def healthz(self) -> int:
        """The liveness endpoint's HTTP status (0: no answer)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=5) as r:
                return int(r.status)
        except urllib.error.HTTPError as error:
            return int(error.code)
        except OSError:
            return 0

    def rss_bytes(self) -> int:
        """The operator process's resident set size (VmRSS in /proc/<pid>/status)."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def start(self) -> OperatorProcess:
        env = dict(os.environ, KUBECONFIG=str(self.kubeconfig()), PYTHONUNBUFFERED="1")
        argv = [
            sys.executable, "-m", "podgrace.cli.main", "run", "--metrics-port", str(self.metrics_port),
            "--liveness-port", str(self.liveness_port), *self.args,
        ]  # fmt: skip
        log = self.log_path.open("ab")
        log.write(f"\n==== start {self.starts} ====\n".encode())
        self.proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            preexec_fn=die_with_parent(),  # no orphan when pytest itself is killed
        )  # fmt: skip
        log.close()
        self.starts += 1
        wait_until("podgrace liveness", self._alive_and_live, timeout=60)
        return self

    def _alive_and_live(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"podgrace exited {self.proc and self.proc.returncode}:\n{self.log_tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            text: str = r.read().decode()
            return text

    def metric(self, name: str, **labels: str) -> float:
        return metric_total(self.metrics(), name, **labels)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_quiet(self, quiet_seconds: float = 3.0, timeout: float = 300.0) -> None:
        """Until podgrace's Deployment reconcile count has not moved for `quiet_seconds` (it must stay
        alive meanwhile)."""
        deadline = time.monotonic() + timeout
        last, since = -1.0, time.monotonic()
        while time.monotonic() < deadline:
            if not self.alive():
                raise AssertionError(f"podgrace exited:\n{self.log_tail()}")
            now = self.metric("podgrace_reconcile_total", controller="deployment")
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet_seconds:
                return
            time.sleep(0.5)
        raise AssertionError("podgrace did not become idle")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def nginx_profile(name: str, pre_stop_sleep: int) -> dict[str, Any]:
    """A ShutdownProfile with one rule: nginx containers (by image) with this preStop sleep."""
    rule = {"name": "nginx", "match": {"images": ["*nginx*"]}, "role": "nginx"}
    return {
        "apiVersion": "podgrace.dev/v1alpha1",
        "kind": "ShutdownProfile",
        "metadata": {"name": name},
        "spec": {"containers": [{**rule, "preStopSleepSeconds": pre_stop_sleep}]},
    }


def generic_profile(name: str, stop_signal: str, match: dict[str, list[str]]) -> dict[str, Any]:
    """A ShutdownProfile with one generic rule `app` whose graceful signal is `stop_signal`: 5 s of preStop
    sleep, 10 s of drain."""
    rule = {"name": "app", "match": match, "role": "generic", "stopSignal": stop_signal}
    return {
        "apiVersion": "podgrace.dev/v1alpha1",
        "kind": "ShutdownProfile",
        "metadata": {"name": name},
        "spec": {"containers": [{**rule, "preStopSleepSeconds": 5, "drainSeconds": 10}]},
    }


def deployment(
    name: str,
    namespace: str,
    annotations: dict[str, str] | None = None,
    containers: list[dict[str, Any]] | None = None,
    **pod: Any,
) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "annotations": annotations or {}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": containers
                    or [
                        {"name": "nginx", "image": "nginx:1.27"},
                        {"name": "php-fpm", "image": "php:8.3-fpm"},
                    ],
                    **pod,
                },
            },
        },
    }


@contextlib.contextmanager
def running_operator(cluster: Any, *args: str, **options: Any) -> Iterator[OperatorProcess]:
    """The chart installed (once per cluster) and podgrace running against it for the duration."""
    with operator_running(
        cluster, OperatorProcess(cluster, *(args or ("--all-namespaces",)), **options)
    ) as op:
        yield op


def ensure_chart(cluster: Any) -> None:
    if cluster.helm("status", RELEASE, "--namespace", NAMESPACE, check=False).returncode != 0:
        install_chart(cluster)


@contextlib.contextmanager
def operator_running(cluster: Any, op: OperatorProcess) -> Iterator[OperatorProcess]:
    """`op` started (the chart installed first, once per cluster) and stopped again afterwards."""
    ensure_chart(cluster)
    op.start()
    try:
        yield op
    finally:
        op.stop()
        print(f"\n[e2e] podgrace log: {op.log_path}\n{op.log_tail(30)}")
