"""One scenario: N pods of a Deployment behind HAProxy, open-loop load, pod0 deleted at t=0.

Timeline (t = seconds after the pod's deletion):
  t=-warmup   load starts against the load balancer (all pods in rotation)
  t=0         the kubelet starts terminating pod0 (kubelet.terminate_container, one thread per container)
  t=delay     the load balancer stops sending NEW requests to pod0 (HAProxy runtime API `state maint`:
              no new requests, requests in flight run to their end, like an endpoint removal)
  t=duration  load stops; the scenario waits for every response and for pod0's containers to exit
Only pod0 is terminated; the other pods stay up, so every failure is attributable (checked per request from
HAProxy's log: which server it went to and how the exchange ended).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.termination import servers
from bench.termination.kubelet import (
    Container,
    ContainerRecord,
    LabError,
    port_open,
    start_container,
    start_sandbox,
    terminate_container,
    wait_port,
)
from bench.termination.load import LoadGenerator
from bench.termination.plan import (
    OK,
    PodPlan,
    check_assumptions,
    logged_stop_signals,
    plan_from_text,
    workers_needed,
)
from bench.termination.ports import MAX_PODS, Ports, PortsExhausted, claim
from bench.termination.procs import REGISTRY, install_handlers
from bench.termination.servers import ContainerSpec


@dataclass
class Params:
    endpoint_delay: float = 2.0
    request_ms: int = 300
    rate: float = 40.0
    duration: float | None = None  # seconds of load after the deletion; None: endpoint_delay + 1.5 (>= 3)
    warmup: float = 1.0
    replicas: int = 2
    process_control_timeout: int = 0  # php-fpm; 0 = unset
    image_stop_signals: dict[str, str] = field(default_factory=dict)
    lb_action: str = "maint"  # HAProxy server state for an endpoint removal: maint | drain

    @property
    def request_s(self) -> float:
        return self.request_ms / 1000.0

    def load_duration(self) -> float:
        return self.duration if self.duration is not None else max(3.0, self.endpoint_delay + 1.5)


# ------------------------------------------------------------------------------------------------ haproxy


def haproxy_command(workdir: Path, command: str) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(3)
        s.connect(str(workdir / "haproxy.sock"))
        s.sendall(command.encode() + b"\n")
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    return out.decode(errors="replace").strip()


# ------------------------------------------------------------------------------------------------ pods


def build_pod_specs(
    plan: PodPlan, index: int, workdir: Path, params: Params, ports: Ports
) -> list[ContainerSpec]:
    pod = f"pod{index}"
    runtimes = [c.runtime for c in plan.containers]
    if len(set(runtimes)) != len(runtimes):
        raise LabError(f"two containers of one runtime in a pod are not modelled: {runtimes}")
    workers = workers_needed(params.rate, params.request_s, params.replicas)
    specs: list[ContainerSpec] = []
    for c in plan.containers:
        if c.runtime == "nginx":
            upstream = "fastcgi" if "php-fpm" in runtimes else "proxy"
            specs.append(servers.nginx_container(pod, c.name, index, workdir, upstream, ports))
        elif c.runtime == "php-fpm":
            specs.append(
                servers.php_fpm_container(
                    pod, c.name, index, workdir, workers, params.process_control_timeout, ports
                )
            )
        elif c.runtime == "apache":
            specs.append(servers.apache_container(pod, c.name, index, workdir, workers, ports))
        else:
            specs.append(servers.generic_container(pod, c.name, index, workdir, ports))
        if c.init:  # the server runs as the init's child, the init is PID 1
            specs[-1].argv = [*c.init, *specs[-1].argv]
    return specs


def wait_ports_free(ports: list[int], timeout: float) -> list[int]:
    """Ports still accepting connections after `timeout` (a killed server's sockets close asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        busy = [p for p in ports if port_open(p)]
        if not busy or time.monotonic() > deadline:
            return busy
        time.sleep(0.05)


def needs_upstream(plan: PodPlan) -> bool:
    runtimes = [c.runtime for c in plan.containers]
    return "nginx" in runtimes and "php-fpm" not in runtimes


def all_ports(plan: PodPlan, params: Params, block: Ports) -> list[int]:
    ports = [block.lb]
    if needs_upstream(plan):
        ports.append(block.upstream)
    for i in range(params.replicas):
        ports += [block.server(c.runtime, i) for c in plan.containers]
    return ports


# ------------------------------------------------------------------------------------------------ run


def _r(x: float) -> float:
    return round(x, 3)


def run_scenario(
    manifest_text: str,
    params: Params,
    label: str = "scenario",
    keep_workdir: bool = False,
    workdir_parent: Path | None = None,
    log: Any = None,
) -> dict[str, Any]:
    """Run one scenario; returns the JSON-able result. Every process started is killed before returning."""
    install_handlers()
    say = log or (lambda _msg: None)
    wall_start = time.monotonic()
    plan = plan_from_text(manifest_text, params.image_stop_signals)
    if not 2 <= params.replicas <= MAX_PODS:
        raise LabError(f"2..{MAX_PODS} replicas: one terminates, the others keep serving")
    if params.rate * (params.warmup + params.load_duration()) > 20000:
        raise LabError("too many requests for one scenario (rate x duration > 20000)")
    try:
        with claim(lambda block: all_ports(plan, params, block), port_open) as ports:
            return _run(plan, params, label, keep_workdir, workdir_parent, say, wall_start, ports)
    except PortsExhausted as exc:
        raise LabError(str(exc)) from exc


def _run(
    plan: PodPlan,
    params: Params,
    label: str,
    keep_workdir: bool,
    workdir_parent: Path | None,
    say: Any,
    wall_start: float,
    ports: Ports,
) -> dict[str, Any]:
    if workdir_parent is not None:
        workdir_parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="podgrace-lab-", dir=workdir_parent))
    os.chmod(workdir, 0o755)
    abort = threading.Event()
    pods: list[list[Container]] = []
    records: list[ContainerRecord] = []
    endpoint: dict[str, Any] = {}
    grace = plan.grace_seconds
    timeout_s = min(120.0, grace + params.request_s + 10.0)
    # hard bound for the whole scenario, whatever hangs
    max_wall = 40 + params.warmup + max(params.load_duration(), grace + 3) + timeout_s
    watchdog = threading.Timer(max_wall, lambda: (abort.set(), REGISTRY.kill_all()))
    watchdog.daemon = True
    watchdog.start()
    result: dict[str, Any] = {}
    try:
        # ---- start: shared upstream (nginx-only pods), pods, load balancer
        if needs_upstream(plan):
            with open(workdir / "upstream.out", "wb") as out:
                up = REGISTRY.spawn(servers.upstream_argv(ports.upstream), "upstream", stdout=out, stderr=out)
            wait_port(ports.upstream, 10, "upstream", lambda: up.poll() is None)
        pause = servers.build_pause(workdir) if plan.share_process_namespace else None
        for i in range(params.replicas):
            specs = build_pod_specs(plan, i, workdir, params, ports)
            # shareProcessNamespace: the pod's pause process first, the containers join its PID namespace
            sandbox = start_sandbox(f"pod{i}", pause) if pause else 0
            pods.append(
                [start_container(s, c, workdir, sandbox) for s, c in zip(specs, plan.containers, strict=True)]
            )
        for pod in pods:
            for c in pod:
                wait_port(c.spec.port, 20, f"{c.spec.pod}/{c.spec.name}", lambda c=c: not c.exited.is_set())
        front = servers.front_runtime([c.runtime for c in plan.containers])
        lb_servers = [(f"pod{i}", ports.server(front, i)) for i in range(params.replicas)]
        (workdir / "haproxy.cfg").write_text(
            servers.haproxy_conf(workdir, lb_servers, fastcgi=front == "php-fpm", lb_port=ports.lb)
        )
        with open(workdir / "haproxy.log", "wb") as out:
            lb = REGISTRY.spawn(
                [servers.HAPROXY_BIN, "-db", "-f", str(workdir / "haproxy.cfg")],
                "haproxy",
                stdout=out,
                stderr=out,
            )
        wait_port(ports.lb, 10, "haproxy", lambda: lb.poll() is None)
        _warm_up(params.replicas, ports.lb)
        up_s = time.monotonic() - wall_start
        say(f"  {label}: {params.replicas} pods up ({up_s:.1f}s), load {params.rate:g}/s")

        # ---- load, then delete pod0 at t0
        load = LoadGenerator("127.0.0.1", ports.lb, params.rate, params.request_ms, timeout_s)
        start_at = time.monotonic() + 0.05
        t0 = start_at + params.warmup
        load.start(start_at, t0 + params.load_duration())
        time.sleep(max(0.0, t0 - time.monotonic()))

        def remove_endpoint() -> None:
            if abort.wait(max(0.0, t0 + params.endpoint_delay - time.monotonic())):
                return
            try:
                reply = haproxy_command(workdir, f"set server pods/pod0 state {params.lb_action}")
                endpoint["t"] = _r(time.monotonic() - t0)
                endpoint["reply"] = reply
            except OSError as exc:
                endpoint["error"] = repr(exc)

        threads: list[threading.Thread] = [
            threading.Thread(target=remove_endpoint, name="endpoint", daemon=True)
        ]
        out_records: dict[str, ContainerRecord] = {}

        def kill_one(c: Container) -> None:
            out_records[c.spec.name] = terminate_container(c, grace, t0, workdir, abort)

        for c in pods[0]:
            threads.append(
                threading.Thread(target=kill_one, args=(c,), name=f"kubelet-{c.spec.name}", daemon=True)
            )
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=grace + 2 * max(0, grace) + 15)
        records = [out_records[c.spec.name] for c in pods[0] if c.spec.name in out_records]
        for c in pods[0]:
            if c.spec.name in out_records and c.spec.log is not None and c.spec.log.is_file():
                log_text = c.spec.log.read_text(errors="replace")
                out_records[c.spec.name].server_signals = logged_stop_signals(log_text)
        load.join(timeout=params.load_duration() + timeout_s + 15)
        # the other pods must still be up: otherwise failures would not be attributable
        survivors_ok = all(not c.exited.is_set() for pod in pods[1:] for c in pod)
        with contextlib.suppress(Exception):
            haproxy_command(workdir, "show servers state pods")
        time.sleep(0.2)
        REGISTRY.kill(lb)
        lb_log = servers.parse_haproxy_log((workdir / "haproxy.log").read_text(errors="replace"))
        result = _summarize(plan, params, label, load, t0, records, endpoint, lb_log, survivors_ok)
        result["aborted"] = abort.is_set()
        result["workdir"] = str(workdir) if keep_workdir else None
        result["wall_s"] = _r(time.monotonic() - wall_start)
        result["port_block"] = ports.base
        result["logs"] = _tail_logs(workdir)
        return result
    finally:
        watchdog.cancel()
        abort.set()
        REGISTRY.kill_all()
        wait_ports_free(all_ports(plan, params, ports), 10.0)
        if not keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)


def _warm_up(replicas: int, lb_port: int) -> None:
    """Sequential requests through the LB until every pod has answered one with a complete body."""
    from bench.termination.plan import classify

    for k in range(2 * replicas + 2):
        last = ""
        for _attempt in range(20):
            try:
                with socket.create_connection(("127.0.0.1", lb_port), timeout=5) as s:
                    request = f"GET /app.php?ms=1&warm={k} HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n"
                    s.sendall(request.encode())
                    raw = b""
                    while chunk := s.recv(65536):
                        raw += chunk
                last = classify(raw)
            except OSError as exc:
                last = repr(exc)
            if last == OK:
                break
            time.sleep(0.1)
        else:
            raise LabError(f"warm-up request {k} through the load balancer failed: {last}")


def _tail_logs(workdir: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for p in sorted(workdir.glob("pod0-*")):
        if p.suffix in (".log", ".out") and p.is_file():
            text = p.read_text(errors="replace").strip()
            if text:
                out[p.name] = "\n".join(text.splitlines()[-12:])
    return out


def _summarize(
    plan: PodPlan,
    params: Params,
    label: str,
    load: LoadGenerator,
    t0: float,
    records: list[ContainerRecord],
    endpoint: dict[str, Any],
    lb_log: dict[str, servers.LbRecord],
    survivors_ok: bool,
) -> dict[str, Any]:
    reqs = sorted(load.results, key=lambda r: r.id)
    counts = Counter(r.outcome for r in reqs)
    rows = []
    failed_by_server: Counter[str] = Counter()
    for r in reqs:
        lb = lb_log.get(str(r.id))
        server = lb.server if lb else "?"
        if r.outcome != OK:
            failed_by_server[server] += 1
        rows.append(
            [
                r.id,
                _r(r.t_send - t0),
                _r(r.t_end - t0),
                r.outcome,
                server,
                lb.status if lb else None,
                lb.term if lb else None,
            ]
        )
    failures = [
        dict(zip(("id", "t_send", "t_end", "outcome", "server", "lb_status", "lb_term"), row, strict=True))
        for row in rows
        if row[3] != OK
    ]
    late = [r.t_send - r.t_sched for r in reqs]
    failed = sum(v for k, v in counts.items() if k != OK)
    assumptions = check_assumptions(plan.annotations, params.endpoint_delay, params.request_s)
    return {
        "label": label,
        "deployment": plan.deployment,
        "profile": plan.profile,
        "params": {**asdict(params), "load_duration": params.load_duration()},
        "plan": plan.to_dict(),
        "assumptions": {
            "prestop_sleep": assumptions.prestop_sleep,
            "drain": assumptions.drain,
            "hold": assumptions.hold,
            "broken": list(assumptions.broken),
        },
        "total": len(reqs),
        "failed": failed,
        "counts": dict(sorted(counts.items())),
        "failed_by_server": dict(sorted(failed_by_server.items())),
        "to_terminating_pod": sum(1 for row in rows if row[4] == "pod0"),
        "survivors_ok": survivors_ok,
        "unattributed_failures": sum(v for k, v in failed_by_server.items() if k != "pod0"),
        "endpoint_removed": endpoint,
        # requests the LB still sent to pod0 after the endpoint removal (must be 0: checks the LB model)
        "routed_after_removal": sum(
            1 for row in rows if row[4] == "pod0" and "t" in endpoint and row[1] > endpoint["t"] + 0.01
        ),
        "containers": [r.to_dict() for r in records],
        "max_send_lateness_ms": _r(1000 * max(late, default=0.0)),
        "failures": failures,
        "requests": rows,
        "requests_columns": ["id", "t_send", "t_end", "outcome", "server", "lb_status", "lb_term"],
    }


def write_json(result: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, sort_keys=False) + "\n")
