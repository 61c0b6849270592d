"""Real-node termination lab: the emulated lab's workloads (bench/termination/realnode/workloads.py) as
2-replica Deployments on a real kubelet + containerd node, behind HAProxy whose servers follow the
Service's EndpointSlices (a watch on the API server, applied through HAProxy's runtime API after a
configurable extra delay standing in for a cloud load balancer, as an ingress controller does), under
open-loop load from the host. One cell = one workload x one event x one manifest (original / podgrace) in
one capability mode; podgrace runs in the cluster, installed by `helm install` (tests/support/
operator_release.py), and a "podgrace" cell starts only once podgrace has written the Deployment.

Everything is real except the ingress controller (this module's watch loop): the apiserver, the
EndpointSlice, ReplicaSet, Deployment and disruption controllers, the kubelet running hooks and sending
signals, containerd/runc, Debian's nginx / php-fpm / Apache / python. Traffic: load generator -> HAProxy
on 127.0.0.1 -> pod IPs on the node's own bridge; nginx-only pods proxy to the lab's slow upstream
(bench/termination/app/generic_server.py) on the node's bridge address. Nothing else is addressed.
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.termination import servers
from bench.termination.load import LoadGenerator
from bench.termination.realnode import workloads
from bench.termination.realnode.workloads import MANIFEST_KINDS, REPLICAS, Workload
from bench.termination.scenario import haproxy_command
from tests.cluster.images import build_image
from tests.cluster.localcluster import STOP_SIGNALS_GATES, LocalCluster
from tests.cluster.node import APISERVER_ARGS, RealNode

SLOTS = 8  # HAProxy server slots (server-template) the watch fills with pod IPs
EVENTS = ("scale-down", "rolling-update", "drain")
MODES = ("default", "stopsignals")  # ContainerStopSignals off (podgrace's fallback hooks) / on
Log = Callable[[str], None]


@dataclass
class Params:
    rate: float = 40.0
    request_ms: int = 300
    lb_delay: float = 1.0  # extra seconds before HAProxy applies an EndpointSlice change
    warmup: float = 2.0  # load before the event
    after: float = 7.0  # load after the event (rolling update: + ROLLING_EXTRA)
    pod_timeout: float = 90.0  # how long a terminating pod may take to be gone


ROLLING_EXTRA = 6.0  # a rolling update replaces the pods one after the other


@dataclass
class PodEnd:
    name: str
    deleted_after_s: float  # first seen with a deletionTimestamp, seconds after the event
    gone_s: float | None  # deletion -> gone (DELETED seen); None: not gone within pod_timeout


@dataclass
class Cell:
    workload: str
    event: str
    manifest: str
    mode: str
    sent: int = 0
    failed: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    pods: list[PodEnd] = field(default_factory=list)
    warnings: dict[str, int] = field(default_factory=dict)  # Warning Event reason -> count
    # the kubelet's message per FailedPreStopHook Event (how the hook ended: "exited with 137", ...)
    hook_failures: list[str] = field(default_factory=list)
    lb_changes: list[tuple[float, str]] = field(default_factory=list)
    template: dict[str, Any] = field(default_factory=dict)  # grace period and lifecycle as run
    error: str = ""

    @property
    def key(self) -> str:
        return f"{self.mode}/{self.workload}/{self.event}/{self.manifest}"


# ------------------------------------------------------------------------------------------------ watch


class Watch:
    """A watch on one collection of the API server in a thread: ``on_event(type, object)`` per event."""

    def __init__(self, cluster: LocalCluster, path: str, on_event: Callable[[str, dict[str, Any]], None]):
        self.cluster, self.path, self.on_event = cluster, path, on_event
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"watch {path}", daemon=True)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        # The watch ends every few seconds (timeoutSeconds) and then sees the flag; closing the response
        # from this thread instead would block on the reader's lock until the next event.
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        ctx = ssl.create_default_context(cafile=str(self.cluster.pki / "ca.crt"))
        sep = "&" if "?" in self.path else "?"
        rv = ""
        while not self._stop.is_set():
            url = f"{self.cluster.server}{self.path}{sep}watch=1&timeoutSeconds=3"
            url += f"&resourceVersion={rv}" if rv else ""
            req = urllib.request.Request(url, headers={"Authorization": f"Bearer {self.cluster.admin_token}"})
            try:
                with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:
                    for line in resp:
                        ev = json.loads(line)
                        if ev["type"] == "ERROR":  # e.g. 410 Gone: start over with a fresh list
                            rv = ""
                            break
                        rv = ev["object"]["metadata"].get("resourceVersion", rv)
                        self.on_event(ev["type"], ev["object"])
            except Exception:
                if self._stop.is_set():
                    return
                time.sleep(0.2)


class EndpointSync:
    """HAProxy's slots = the Service's ready addresses, each change applied ``delay`` seconds after the
    watch saw it (the ingress controller's and cloud load balancer's propagation)."""

    def __init__(self, workdir: Path, port: int, delay: float) -> None:
        self.workdir, self.port, self.delay = workdir, port, delay
        self.slots: dict[str, int] = {}  # address -> slot
        self.slices: dict[str, set[str]] = {}
        self.changes: list[tuple[float, str]] = []  # (monotonic, "add ip" / "remove ip")
        self._lock = threading.Lock()
        self._timers: list[threading.Timer] = []

    def on_event(self, kind: str, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        with self._lock:
            if kind == "DELETED":
                self.slices.pop(name, None)
            else:
                self.slices[name] = {
                    a
                    for e in obj.get("endpoints") or []
                    if (e.get("conditions") or {}).get("ready")
                    for a in e.get("addresses", [])
                }
            want = set().union(*self.slices.values()) if self.slices else set()
        timer = threading.Timer(self.delay, self._apply, args=(want,))
        timer.daemon = True
        self._timers.append(timer)
        timer.start()

    def cancel(self) -> None:
        for t in self._timers:
            t.cancel()

    def _apply(self, want: set[str]) -> None:
        with self._lock:
            for addr in [a for a in self.slots if a not in want]:
                slot = self.slots.pop(addr)
                haproxy_command(self.workdir, f"set server pods/pod{slot} state maint")
                self.changes.append((time.monotonic(), f"remove {addr}"))
            for addr in sorted(want - set(self.slots)):
                free = next(i for i in range(1, SLOTS + 1) if i not in self.slots.values())
                haproxy_command(self.workdir, f"set server pods/pod{free} addr {addr} port {self.port}")
                haproxy_command(self.workdir, f"set server pods/pod{free} state ready")
                self.slots[addr] = free
                self.changes.append((time.monotonic(), f"add {addr}"))


class PodTracker:
    """When each pod was first seen with a deletionTimestamp, and when it was gone (both as this watch saw
    them, so the difference does not depend on clocks)."""

    def __init__(self) -> None:
        self.deleted: dict[str, float] = {}
        self.gone: dict[str, float] = {}
        self.ips: dict[str, str] = {}

    def on_event(self, kind: str, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        now = time.monotonic()
        if ip := (obj.get("status") or {}).get("podIP"):
            self.ips[name] = ip
        if obj["metadata"].get("deletionTimestamp") or kind == "DELETED":
            self.deleted.setdefault(name, now)
        if kind == "DELETED":
            self.gone.setdefault(name, now)


# ------------------------------------------------------------------------------------------------ HAProxy


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


@contextlib.contextmanager
def host_processes(workdir: Path, node_ip: str) -> Iterator[tuple[str, int]]:
    """The slow upstream on the node's bridge address (the one host address pods can reach) and HAProxy
    on 127.0.0.1; yields (upstream host:port, HAProxy port). Both stopped by PID."""
    upstream_port, lb_port = _free_port(node_ip), _free_port("127.0.0.1")
    procs: list[subprocess.Popen[bytes]] = []
    logs = {n: (workdir / f"{n}.log").open("wb") for n in ("upstream", "haproxy")}
    upstream = [sys.executable, "-u", str(servers.APP_DIR / "generic_server.py")]
    upstream += ["--host", node_ip, "--port", str(upstream_port), "--pod", "upstream"]
    (workdir / "haproxy.cfg").write_text(haproxy_conf(workdir, lb_port))
    try:
        for name, argv in (
            ("upstream", upstream),
            ("haproxy", [servers.HAPROXY_BIN, "-db", "-f", str(workdir / "haproxy.cfg")]),
        ):
            procs.append(
                subprocess.Popen(argv, stdout=logs[name], stderr=subprocess.STDOUT, start_new_session=True)
            )
        _wait_port(node_ip, upstream_port, 10)
        _wait_port("127.0.0.1", lb_port, 10)
        yield f"{node_ip}:{upstream_port}", lb_port
    finally:
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


def _reset_slots(workdir: Path) -> None:
    for i in range(1, SLOTS + 1):
        haproxy_command(workdir, f"set server pods/pod{i} state maint")


# ------------------------------------------------------------------------------------------------ a cell


@dataclass
class Lab:
    """One cluster + node with podgrace installed, HAProxy and the upstream running."""

    cluster: LocalCluster
    node: RealNode
    mode: str
    images: dict[str, str]  # runtime -> image ref
    workdir: Path
    upstream: str
    lb_port: int
    params: Params
    log: Log = print


def podgrace_wrote(dep: dict[str, Any]) -> bool:
    """podgrace has written the Deployment: every container has a preStop hook (every built-in profile
    gives every matched container one)."""
    return all("preStop" in (c.get("lifecycle") or {}) for c in dep["spec"]["template"]["spec"]["containers"])


def _wait(what: str, fn: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not fn():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.5)


def _deploy(lab: Lab, w: Workload, kind: str, ns: str) -> dict[str, Any]:
    p = lab.params
    docs = workloads.manifests(w, kind, ns, lab.images, lab.upstream, p.rate, p.request_ms)
    k = lab.cluster
    k.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}))
    dep_ref = ("get", "deployment", w.app, "-n", ns)
    if kind == "podgrace":
        _wait("podgrace to write the Deployment", lambda: podgrace_wrote(k.kubectl_json(*dep_ref)), 90)
    k.kubectl("scale", f"deployment/{w.app}", "-n", ns, f"--replicas={REPLICAS}")
    k.kubectl("rollout", "status", f"deployment/{w.app}", "-n", ns, "--timeout=120s", timeout=150)
    template: dict[str, Any] = k.kubectl_json(*dep_ref)["spec"]["template"]["spec"]
    return {
        "terminationGracePeriodSeconds": template.get("terminationGracePeriodSeconds"),
        "containers": {c["name"]: c.get("lifecycle") or {} for c in template["containers"]},
    }


def _start_event(lab: Lab, w: Workload, event: str, ns: str) -> subprocess.Popen[str] | None:
    k = lab.cluster
    if event == "scale-down":
        k.kubectl("scale", f"deployment/{w.app}", "-n", ns, f"--replicas={REPLICAS - 1}")
    elif event == "rolling-update":
        k.kubectl("rollout", "restart", f"deployment/{w.app}", "-n", ns)
    elif event == "drain":
        # Evicts this workload's pods only (not podgrace's): the PodDisruptionBudget lets one go; the
        # second is refused until a replacement is Ready, which on a cordoned single node never happens,
        # so kubectl retries until its --timeout. What is measured is the first pod's eviction.
        argv = [str(k.bin("kubectl")), f"--kubeconfig={k.kubeconfig}", "drain", lab.node.name]
        argv += [f"--pod-selector=app={w.deployment['spec']['selector']['matchLabels']['app']}"]
        argv += ["--ignore-daemonsets", "--delete-emptydir-data", f"--timeout={int(lab.params.after + 4)}s"]
        return subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=k.env()
        )
    else:
        raise ValueError(f"unknown event {event!r}")
    return None


def _stop_drain(lab: Lab, drain: subprocess.Popen[str] | None) -> None:
    if drain is None:
        return
    try:
        drain.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        drain.kill()
        drain.communicate(timeout=10)
    lab.cluster.kubectl("uncordon", lab.node.name, check=False)


def _warnings(lab: Lab, ns: str) -> tuple[dict[str, int], list[str]]:
    """Warning Events by reason (with counts), and each FailedPreStopHook's message (its script elided)."""
    events = lab.cluster.kubectl_json("get", "events", "-n", ns, "--field-selector", "type=Warning")["items"]
    out: Counter[str] = Counter()
    hooks = []
    for e in events:
        out[f"{e['reason']} ({e['involvedObject']['kind']})"] += int(e.get("count") or 1)
        if e["reason"] == "FailedPreStopHook":
            message = " ".join(str(e.get("message", "")).replace("`", "'").split())  # one Markdown line
            hooks.append(f"{e['involvedObject'].get('name')}: {message[:120]} ... {message[-200:]}")
    return dict(sorted(out.items())), hooks


def cell_namespace(workload: str, event: str, kind: str) -> str:
    """The namespace of one cell's Deployment, Service and pods."""
    return f"lab-{workload}-{event}-{kind}"[:63]


def run_cell(lab: Lab, w: Workload, event: str, kind: str) -> Cell:
    cell = Cell(w.name, event, kind, lab.mode)
    ns = cell_namespace(w.name, event, kind)
    p = lab.params
    sync = EndpointSync(lab.workdir, w.port, p.lb_delay)
    pods = PodTracker()
    drain: subprocess.Popen[str] | None = None
    try:
        cell.template = _deploy(lab, w, kind, ns)
        _reset_slots(lab.workdir)
        slices = f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices?labelSelector="
        slices += f"kubernetes.io/service-name={w.app}"
        with (
            Watch(lab.cluster, slices, sync.on_event),
            Watch(lab.cluster, f"/api/v1/namespaces/{ns}/pods", pods.on_event),
        ):
            _wait(f"HAProxy to get {REPLICAS} endpoints", lambda: len(sync.slots) >= REPLICAS, 30)
            before = set(pods.ips)
            after = p.after + (ROLLING_EXTRA if event == "rolling-update" else 0.0)
            load = LoadGenerator("127.0.0.1", lab.lb_port, p.rate, p.request_ms, timeout_s=15.0)
            t0 = time.monotonic() + 0.2
            load.start(t0, t0 + p.warmup + after)
            time.sleep(max(0.0, t0 + p.warmup - time.monotonic()))
            t_event = time.monotonic()
            drain = _start_event(lab, w, event, ns)
            load.join(p.warmup + after + 30)
            ending = [n for n in before if n in pods.deleted]
            _wait(
                "the terminating pods to be gone", lambda: all(n in pods.gone for n in ending), p.pod_timeout
            )
            results = load.results
            counts = Counter(r.outcome for r in results)
            cell.sent = len(results)
            cell.failed = sum(v for o, v in counts.items() if o != "ok")
            cell.outcomes = dict(sorted(counts.items()))
            cell.pods = [
                PodEnd(
                    n,
                    round(pods.deleted[n] - t_event, 2),
                    round(pods.gone[n] - pods.deleted[n], 2) if n in pods.gone else None,
                )
                for n in sorted(ending, key=lambda n: pods.deleted[n])
            ]
            cell.lb_changes = [(round(t - t_event, 2), what) for t, what in sync.changes if t >= t_event]
        cell.warnings, cell.hook_failures = _warnings(lab, ns)
    except Exception as exc:  # one broken cell is reported, the matrix goes on
        cell.error = f"{type(exc).__name__}: {exc}"
        lab.log(f"  ERROR {cell.key}: {cell.error}")
    finally:
        sync.cancel()
        _stop_drain(lab, drain)
        # the next cell must not share the machine with this one's slow terminations
        lab.cluster.kubectl("delete", "pods", "--all", "-n", ns, "--grace-period=0", "--force", check=False)
        lab.cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
    return cell


# ------------------------------------------------------------------------------------------------ the matrix


@dataclass(frozen=True)
class Selection:
    workloads: tuple[str, ...] = tuple(workloads.WORKLOADS)
    events: tuple[str, ...] = EVENTS
    manifests: tuple[str, ...] = MANIFEST_KINDS
    modes: tuple[str, ...] = MODES


def run_mode(
    mode: str,
    sel: Selection,
    params: Params,
    workdir: Path,
    operator_image: Any,
    log: Log = print,
    on_cell: Callable[[Cell], None] = lambda _c: None,
) -> list[Cell]:
    """One cluster + real node in ``mode``, podgrace helm-installed, every selected cell in it."""
    from tests.support.operator_release import podgrace_release  # needs buildah's image only here

    ws = [workloads.load_workload(n) for n in sel.workloads]
    specs = {s.name: s for w in ws for s in w.image_specs()}
    built = {name: build_image(spec) for name, spec in specs.items()}
    gates = dict(STOP_SIGNALS_GATES) if mode == "stopsignals" else None
    cells: list[Cell] = []
    with (
        LocalCluster(
            nodes=0, name=f"lab-{mode}", feature_gates=gates, extra_apiserver_args=APISERVER_ARGS
        ) as cluster,
        RealNode(cluster, name=f"lab-{mode}-node") as node,
    ):
        for image in built.values():
            node.import_image(image)
        log(f"[{mode}] cluster {cluster.start_seconds:.1f}s, node {node.start_seconds:.1f}s on {node.bridge}")
        runtime_images = {r: built[workloads.IMAGES[r]().name].ref for w in ws for r in w.runtimes.values()}
        with (
            podgrace_release(cluster, node, operator_image, ["operator.workers=4"], log=log),
            host_processes(workdir, node.node_ip) as (upstream, lb_port),
        ):
            lab = Lab(cluster, node, mode, runtime_images, workdir, upstream, lb_port, params, log)
            for w in ws:
                for event in sel.events:
                    for kind in sel.manifests:
                        t0 = time.monotonic()
                        cell = run_cell(lab, w, event, kind)
                        log(
                            f"[{mode}] {w.name} {event} {kind}: {cell.failed}/{cell.sent} failed "
                            f"{cell.outcomes}, pods {[(e.deleted_after_s, e.gone_s) for e in cell.pods]}, "
                            f"warnings {cell.warnings} ({time.monotonic() - t0:.0f}s)"
                        )
                        cells.append(cell)
                        on_cell(cell)
    return cells


def run_matrix(
    sel: Selection, params: Params, log: Log = print, on_cell: Callable[[Cell], None] = lambda _c: None
) -> list[Cell]:
    from tests.image.build import build_operator_image

    workdir = Path(tempfile.mkdtemp(prefix="podgrace-realnode-lab-"))
    cells: list[Cell] = []
    try:
        operator_image = build_operator_image()
        for mode in sel.modes:
            cells += run_mode(mode, sel, params, workdir, operator_image, log, on_cell)
    finally:
        if os.environ.get("PODGRACE_KEEP_LAB_DIR", "") in ("", "0"):
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log(f"lab dir kept: {workdir}")
    return cells
