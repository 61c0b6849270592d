"""Real-node termination lab (short form): a 2-replica nginx Deployment on a real kubelet + containerd
node, behind HAProxy whose servers follow the Service's EndpointSlices (a watch on the API server,
applied through HAProxy's runtime API, as an ingress controller does), open-loop load from the host,
then a scale-down to 1 replica. Counts every failed request, with and without a preStop sleep.

Everything is real except the ingress controller (this module's watch loop): the apiserver, the
EndpointSlice controller, the ReplicaSet controller picking the pod, the kubelet running the hook and
sending the signal, containerd/runc, nginx. Traffic: load generator -> HAProxy on 127.0.0.1 -> pod IPs on
the node's own bridge -> each nginx proxies to the lab's slow upstream (bench/termination/app/
generic_server.py) listening on the node's bridge address. Nothing else is addressed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.termination import servers
from bench.termination.load import LoadGenerator
from bench.termination.scenario import haproxy_command
from tests.cluster.images import Image, build_image, nginx_image
from tests.cluster.localcluster import LocalCluster
from tests.cluster.node import APISERVER_ARGS, RealNode

SLOTS = 8  # HAProxy server slots (server-template) the watch fills with pod IPs


@dataclass
class Params:
    prestop_sleep: int = 0  # seconds; 0 = no preStop hook
    rate: float = 40.0
    request_ms: int = 300
    warmup: float = 3.0  # load before the scale-down
    after: float = 8.0  # load after the scale-down
    grace: int = 30


@dataclass
class Outcome:
    name: str
    params: dict[str, Any]
    requests: int
    failed: int
    outcomes: dict[str, int]
    failed_after_scale: int
    terminated_pod: str
    endpoint_removed_after_s: float | None  # HAProxy slot set to maint, seconds after the scale-down
    pod_gone_after_s: float | None
    lb_changes: list[tuple[float, str]] = field(default_factory=list)


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _wait_port(host: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{host}:{port} did not open within {timeout:.0f}s")


def manifests(ns: str, image: str, upstream: str, p: Params) -> list[dict[str, Any]]:
    site = (
        "server {\n  listen 80 default_server;\n"
        "  location = /healthz { access_log off; return 200 'ok'; }\n"
        f"  location / {{ proxy_pass http://{upstream}; proxy_http_version 1.1; "
        'proxy_set_header Connection ""; }\n}\n'
    )
    container: dict[str, Any] = {
        "name": "nginx",
        "image": image,
        "imagePullPolicy": "Never",
        "ports": [{"containerPort": 80, "name": "http"}],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": 80}, "periodSeconds": 1},
        "volumeMounts": [{"name": "site", "mountPath": "/etc/nginx/sites-enabled"}],
    }
    if p.prestop_sleep:
        container["lifecycle"] = {"preStop": {"sleep": {"seconds": p.prestop_sleep}}}
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "site", "namespace": ns},
            "data": {"default": site},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": ns},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {
                        "terminationGracePeriodSeconds": p.grace,
                        "containers": [container],
                        "volumes": [{"name": "site", "configMap": {"name": "site"}}],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "namespace": ns},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]},
        },
    ]


def haproxy_conf(workdir: Path, port: int) -> str:
    return "\n".join(
        [
            "global",
            "    maxconn 8192",
            f"    stats socket {workdir}/haproxy.sock mode 600 level admin",
            "defaults",
            "    mode http",
            "    retries 0",
            "    option http-server-close",
            "    http-reuse never",
            "    timeout connect 3s",
            "    timeout client 60s",
            "    timeout server 60s",
            "    timeout queue 5s",
            "frontend fe",
            f"    bind 127.0.0.1:{port}",
            "    default_backend pods",
            "backend pods",
            "    balance roundrobin",
            # empty slots the EndpointSlice watch fills (no health checks: they would hide failures)
            f"    server-template pod 1-{SLOTS} 127.0.0.1:9 disabled",
            "",
        ]
    )


class EndpointSync:
    """Watch the Service's EndpointSlices; keep HAProxy's slots = the ready addresses."""

    def __init__(self, cluster: LocalCluster, ns: str, service: str, workdir: Path) -> None:
        self.cluster, self.ns, self.service, self.workdir = cluster, ns, service, workdir
        self.slots: dict[str, int] = {}  # address -> slot
        self.slices: dict[str, set[str]] = {}
        self.changes: list[tuple[float, str]] = []  # (monotonic, "add ip" / "remove ip")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="endpointslice-watch", daemon=True)
        self.synced = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        # The watch below ends every few seconds (timeoutSeconds) and then sees the flag; closing the
        # response from this thread instead would block on the reader's lock until the next event.
        self._stop.set()
        self._thread.join(10)

    def ready_addresses(self) -> set[str]:
        return set().union(*self.slices.values()) if self.slices else set()

    def _apply(self) -> None:
        want = self.ready_addresses()
        for addr in [a for a in self.slots if a not in want]:
            slot = self.slots.pop(addr)
            haproxy_command(self.workdir, f"set server pods/pod{slot} state maint")
            self.changes.append((time.monotonic(), f"remove {addr}"))
        for addr in sorted(want - set(self.slots)):
            free = next(i for i in range(1, SLOTS + 1) if i not in self.slots.values())
            haproxy_command(self.workdir, f"set server pods/pod{free} addr {addr} port 80")
            haproxy_command(self.workdir, f"set server pods/pod{free} state ready")
            self.slots[addr] = free
            self.changes.append((time.monotonic(), f"add {addr}"))

    def _run(self) -> None:
        ctx = ssl.create_default_context(cafile=str(self.cluster.pki / "ca.crt"))
        base = (
            f"{self.cluster.server}/apis/discovery.k8s.io/v1/namespaces/{self.ns}/endpointslices"
            f"?watch=1&timeoutSeconds=3&labelSelector=kubernetes.io/service-name={self.service}"
        )
        rv = ""
        while not self._stop.is_set():
            url = base + (f"&resourceVersion={rv}" if rv else "")
            req = urllib.request.Request(url, headers={"Authorization": f"Bearer {self.cluster.admin_token}"})
            try:
                with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:
                    for line in resp:
                        ev = json.loads(line)
                        obj = ev["object"]
                        if ev["type"] == "ERROR":  # e.g. 410 Gone: start over with a fresh list
                            rv = ""
                            break
                        rv = obj["metadata"].get("resourceVersion", rv)
                        name = obj["metadata"]["name"]
                        if ev["type"] == "DELETED":
                            self.slices.pop(name, None)
                        else:
                            self.slices[name] = {
                                a
                                for e in obj.get("endpoints") or []
                                if (e.get("conditions") or {}).get("ready")
                                for a in e.get("addresses", [])
                            }
                        self._apply()
                        self.synced.set()
            except Exception:
                if self._stop.is_set():
                    return
                time.sleep(0.2)


def run_scenario(
    cluster: LocalCluster, node: RealNode, image: Image, name: str, p: Params, workdir: Path, log: Any = print
) -> Outcome:
    ns = f"lab-{name}"
    upstream_port = _free_port(node.node_ip)
    lb_port = _free_port("127.0.0.1")
    procs: list[subprocess.Popen[bytes]] = []
    sync: EndpointSync | None = None
    logs = {n: (workdir / f"{name}-{n}.log").open("wb") for n in ("upstream", "haproxy")}
    try:
        # the slow upstream, on the node's bridge address (the only host address pods can reach)
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-u",
                    str(servers.APP_DIR / "generic_server.py"),
                    "--host",
                    node.node_ip,
                    "--port",
                    str(upstream_port),
                    "--pod",
                    "upstream",
                ],
                stdout=logs["upstream"],
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        (workdir / "haproxy.cfg").write_text(haproxy_conf(workdir, lb_port))
        procs.append(
            subprocess.Popen(
                [servers.HAPROXY_BIN, "-db", "-f", str(workdir / "haproxy.cfg")],
                stdout=logs["haproxy"],
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        _wait_port(node.node_ip, upstream_port, 10)
        _wait_port("127.0.0.1", lb_port, 10)
        docs = manifests(ns, image.ref, f"{node.node_ip}:{upstream_port}", p)
        cluster.kubectl(
            "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs})
        )
        log(f"{name}: waiting for the rollout")
        cluster.kubectl("rollout", "status", "deployment/web", "-n", ns, "--timeout=120s", timeout=150)
        log(f"{name}: rolled out; syncing HAProxy from the EndpointSlices")
        sync = EndpointSync(cluster, ns, "web", workdir)
        sync.start()
        deadline = time.monotonic() + 30
        while len(sync.slots) < 2:
            if time.monotonic() > deadline:
                raise RuntimeError(f"HAProxy did not get 2 endpoints: {sync.slots}")
            time.sleep(0.1)
        pods_before = {
            i["metadata"]["name"]: i["status"].get("podIP")
            for i in cluster.kubectl_json("get", "pods", "-n", ns, "-l", "app=web")["items"]
        }
        log(f"{name}: HAProxy has {sorted(sync.slots)}; load for {p.warmup + p.after:.0f}s")
        load = LoadGenerator("127.0.0.1", lb_port, p.rate, p.request_ms, timeout_s=15.0)
        t0 = time.monotonic() + 0.2
        load.start(t0, t0 + p.warmup + p.after)
        time.sleep(max(0.0, t0 + p.warmup - time.monotonic()))
        t_scale = time.monotonic()
        cluster.kubectl("scale", "deployment/web", "-n", ns, "--replicas=1")
        # which pod goes, and when it is gone
        gone_at: float | None = None
        terminated = ""
        while time.monotonic() < t0 + p.warmup + p.after + 20:
            now = {i["metadata"]["name"] for i in cluster.kubectl_json("get", "pods", "-n", ns)["items"]}
            lost = set(pods_before) - now
            if lost:
                terminated = lost.pop()
                gone_at = time.monotonic()
                break
            time.sleep(0.2)
        load.join(p.warmup + p.after + 30)
        results = load.results
        counts = Counter(r.outcome for r in results)
        removed = [t for t, what in sync.changes if what == f"remove {pods_before.get(terminated)}"]
        return Outcome(
            name=name,
            params=asdict(p),
            requests=len(results),
            failed=sum(v for k, v in counts.items() if k != "ok"),
            outcomes=dict(sorted(counts.items())),
            failed_after_scale=sum(1 for r in results if r.outcome != "ok" and r.t_send >= t_scale - 1.0),
            terminated_pod=terminated,
            endpoint_removed_after_s=round(removed[0] - t_scale, 3) if removed else None,
            pod_gone_after_s=round(gone_at - t_scale, 3) if gone_at else None,
            lb_changes=[(round(t - t_scale, 3), what) for t, what in sync.changes],
        )
    finally:
        # processes first (by PID), so that an interrupt during a later step cannot leave them behind
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for fh in logs.values():
            fh.close()
        if sync is not None:
            sync.stop()
        with contextlib.suppress(Exception):
            cluster.kubectl("delete", "namespace", ns, "--wait=true", timeout=120)


SCENARIOS = {"no-prestop": Params(prestop_sleep=0), "prestop-sleep-3": Params(prestop_sleep=3)}


def run_all(
    names: list[str] | None = None, *, rate: float = 40.0, request_ms: int = 300, log: Any = print
) -> list[Outcome]:
    workdir = Path(tempfile.mkdtemp(prefix="podgrace-realnode-lab-"))
    out: list[Outcome] = []
    try:
        image = build_image(nginx_image())
        with (
            LocalCluster(nodes=0, name="realnode-lab", extra_apiserver_args=APISERVER_ARGS) as cluster,
            RealNode(cluster, name="lab-node") as node,
        ):
            node.import_image(image)
            log(f"cluster {cluster.start_seconds:.1f}s, node {node.start_seconds:.1f}s on {node.bridge}")
            for name in names or list(SCENARIOS):
                base = SCENARIOS[name]
                p = Params(**{**asdict(base), "rate": rate, "request_ms": request_ms})
                res = run_scenario(cluster, node, image, name, p, workdir, log=log)
                log(
                    f"{name}: {res.requests} requests, {res.failed} failed {res.outcomes}; "
                    f"endpoint removed +{res.endpoint_removed_after_s}s, pod gone +{res.pod_gone_after_s}s"
                )
                out.append(res)
    finally:
        if os.environ.get("PODGRACE_KEEP_LAB_DIR", "") in ("", "0"):
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log(f"lab dir kept: {workdir}")
    return out
