"""Containers as PID 1 of their own namespaces, and the kubelet's termination sequence for one pod.

For each container, in parallel (the kubelet kills a pod's containers concurrently):
  1. preStop: `sleep` -> the kubelet sleeps; `exec` -> the command runs inside the container
     (`nsenter --target <PID 1> --pid --mount`), bounded by the grace period (the kubelet then moves on);
  2. the stop signal (lifecycle.stopSignal, else the image's STOPSIGNAL) to the container's PID 1, unless it
     has already exited;
  3. SIGKILL when the remaining grace runs out: remaining = grace - whole seconds the hook took, never less
     than 2 s (the kubelet's minimum after a hook that ate the period).
When PID 1 exits, the kernel kills everything else in its PID namespace, a running exec hook included; the
lab records that as the kubelet would (FailedPreStopHook).

A pod with shareProcessNamespace: true runs a sandbox first (`start_sandbox`: pause as PID 1 of the pod's
PID namespace) and its containers join it; the kubelet's signals go to each container's main process, which
is then not PID 1. When such a main process exits, the runtime kills the container's remaining processes
(containerd's shim does `kill --all` for a container that shares a PID namespace): the lab kills the
container's process group and its exec hooks likewise. When pause exits (SIGTERM/SIGINT), the kernel ends
every container of the pod.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.termination import servers
from bench.termination.plan import ContainerPlan, signal_number, stop_timeout_after_hook
from bench.termination.procs import REGISTRY, children_of, ns_pid
from bench.termination.servers import ContainerSpec


class LabError(RuntimeError):
    pass


@dataclass
class Container:
    spec: ContainerSpec
    plan: ContainerPlan
    proc: subprocess.Popen[bytes]
    pid1: int = 0  # host PID of the container's main process (PID 1 unless the pod shares PIDs)
    shared_pid: bool = False  # joined the pod's pause PID namespace
    execs: list[subprocess.Popen[bytes]] = field(default_factory=list)  # exec hooks run in it
    exited: threading.Event = field(default_factory=threading.Event)
    exit_time: float | None = None  # monotonic
    exit_code: int | None = None

    def watch(self) -> None:
        def wait() -> None:
            code = self.proc.wait()
            self.exit_time = time.monotonic()
            self.exit_code = code
            if self.shared_pid:  # the runtime kills what is left of the container (its cgroup)
                for group in (self.proc.pid, *(e.pid for e in list(self.execs))):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(group, signal.SIGKILL)
            self.exited.set()

        threading.Thread(target=wait, name=f"wait-{self.spec.pod}-{self.spec.name}", daemon=True).start()


def start_sandbox(pod: str, pause_binary: Path) -> int:
    """The pod's pause process as PID 1 of a new PID namespace; returns its host PID."""
    proc = REGISTRY.spawn(servers.sandbox_argv(pause_binary), f"{pod}/pause")
    return _main_process(proc, f"{pod}/pause", lambda pid: ns_pid(pid)[-1:] == [1], Path("(none)"))


def start_container(spec: ContainerSpec, plan: ContainerPlan, log_dir: Path, sandbox: int = 0) -> Container:
    """sandbox: host PID of the pause process whose PID namespace the container joins; 0: its own."""
    log = open(log_dir / f"{spec.pod}-{spec.name}.out", "ab")  # noqa: SIM115 (kept open for the child)
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "POD_NAME": spec.pod}
    env.update(spec.env)
    argv = spec.join_argv(sandbox) if sandbox else spec.unshare_argv()
    try:
        proc = REGISTRY.spawn(argv, f"{spec.pod}/{spec.name}", stdout=log, stderr=log, env=env)
    finally:
        log.close()
    c = Container(spec, plan, proc, shared_pid=bool(sandbox))
    c.watch()

    def started(pid: int) -> bool:
        if not sandbox:
            return ns_pid(pid)[-1:] == [1]
        return len(ns_pid(pid)) >= 2 and _pid_ns(pid) == _pid_ns(sandbox)

    c.pid1 = _main_process(proc, f"{spec.pod}/{spec.name}", started, log_dir / f"{spec.pod}-{spec.name}.out")
    return c


def _pid_ns(pid: int) -> str:
    with contextlib.suppress(OSError):
        return os.readlink(f"/proc/{pid}/ns/pid")
    return ""


def _main_process(proc: subprocess.Popen[bytes], what: str, started: Callable[[int], bool], log: Path) -> int:
    """The host PID of the child that unshare/nsenter forked into the namespace, once it is there."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        kids = children_of(proc.pid)
        if kids and len(ns_pid(kids[0])) >= 2 and started(kids[0]):
            REGISTRY.track_pid(kids[0])
            return kids[0]
        if proc.poll() is not None:
            break
        time.sleep(0.01)
    raise LabError(f"{what} did not start (see {log})")


def port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_port(port: int, timeout: float, what: str, alive: Any = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(port):
            return
        if alive is not None and not alive():
            raise LabError(f"{what} exited before listening on 127.0.0.1:{port}")
        time.sleep(0.02)
    raise LabError(f"{what} not listening on 127.0.0.1:{port} after {timeout:g}s")


# ------------------------------------------------------------------------------------------------ kubelet


@dataclass
class ContainerRecord:
    pod: str
    container: str
    runtime: str
    stop_signal: str
    stop_signal_source: str
    pre_stop: str | None
    hook_start: float | None = None
    hook_end: float | None = None
    hook_result: str | None = None
    hook_output: str | None = None
    stop_timeout: int | None = None
    signal_time: float | None = None
    signal_note: str | None = None
    sigkill_time: float | None = None
    exit_time: float | None = None
    exit_code: int | None = None
    events: list[str] = field(default_factory=list)
    server_signals: list[str] = field(default_factory=list)  # stop signals the server logged, in order

    def to_dict(self) -> dict[str, Any]:
        def r(x: float | None) -> float | None:
            return None if x is None else round(x, 3)

        return {
            "pod": self.pod,
            "container": self.container,
            "runtime": self.runtime,
            "stop_signal": self.stop_signal,
            "stop_signal_source": self.stop_signal_source,
            "pre_stop": self.pre_stop,
            "hook_start": r(self.hook_start),
            "hook_end": r(self.hook_end),
            "hook_result": self.hook_result,
            "hook_output": self.hook_output,
            "stop_timeout": self.stop_timeout,
            "signal_time": r(self.signal_time),
            "signal_note": self.signal_note,
            "sigkill_time": r(self.sigkill_time),
            "exit_time": r(self.exit_time),
            "exit_code": self.exit_code,
            "events": self.events,
            "server_signals": self.server_signals,
        }


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "running"
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit {code}"


def terminate_container(
    c: Container, grace: int, t0: float, log_dir: Path, abort: threading.Event
) -> ContainerRecord:
    """One container's termination, as killContainer does it. Times are seconds after deletion (t0)."""
    plan = c.plan
    rec = ContainerRecord(
        c.spec.pod,
        plan.name,
        plan.runtime,
        plan.stop_signal,
        plan.stop_signal_source,
        plan.pre_stop.describe() if plan.pre_stop else None,
    )

    def now() -> float:
        return time.monotonic() - t0

    hook_elapsed: float | None = None
    hook = plan.pre_stop
    if hook is not None and grace > 0:
        start = time.monotonic()
        rec.hook_start = now()
        rec.events.append(f"{rec.hook_start:.2f}s preStop {hook.kind} starts")
        if hook.kind == "sleep":
            seconds = min(float(hook.seconds or 0), float(grace))
            abort.wait(seconds)
            rec.hook_result = "completed" if seconds >= (hook.seconds or 0) else f"cut at grace {grace}s"
        else:
            rec.hook_result = _run_exec_hook(c, hook.command, grace, log_dir, rec)
        hook_elapsed = time.monotonic() - start
        rec.hook_end = now()
        rec.events.append(f"{rec.hook_end:.2f}s preStop {hook.kind}: {rec.hook_result}")
    rec.stop_timeout = stop_timeout_after_hook(grace, hook_elapsed)
    if c.exited.is_set():
        rec.signal_note = "not sent: container already exited"
        rec.events.append(f"{now():.2f}s {plan.stop_signal} not sent: container already exited")
    elif abort.is_set():
        rec.signal_note = "not sent: scenario aborted"
    else:
        with contextlib.suppress(ProcessLookupError):
            os.kill(c.pid1, signal_number(plan.stop_signal))
        rec.signal_time = now()
        rec.events.append(f"{rec.signal_time:.2f}s {plan.stop_signal} -> PID 1 (timeout {rec.stop_timeout}s)")
    if not c.exited.wait(rec.stop_timeout) and not abort.is_set():
        with contextlib.suppress(ProcessLookupError):
            os.kill(c.pid1, signal.SIGKILL)
        rec.sigkill_time = now()
        rec.events.append(f"{rec.sigkill_time:.2f}s SIGKILL (grace period over)")
    c.exited.wait(10)
    if c.exit_time is not None:
        rec.exit_time = c.exit_time - t0
        rec.exit_code = c.exit_code
        rec.events.append(f"{rec.exit_time:.2f}s exited: {_describe_exit(c.exit_code)}")
    return rec


def _run_exec_hook(
    c: Container, command: tuple[str, ...], grace: int, log_dir: Path, rec: ContainerRecord
) -> str:
    if c.exited.is_set():
        return "failed: container not running (FailedPreStopHook)"
    out_path = log_dir / f"{c.spec.pod}-{c.spec.name}-prestop.out"
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "POD_NAME": c.spec.pod}
    env.update(c.spec.env)
    with open(out_path, "wb") as out:
        proc = REGISTRY.spawn(
            ["nsenter", "--target", str(c.pid1), "--pid", "--mount", "--", *command],
            f"{c.spec.pod}/{c.spec.name}/preStop",
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    c.execs.append(proc)
    try:
        code = proc.wait(timeout=float(grace))
    except subprocess.TimeoutExpired:
        # the kubelet stops waiting and goes on with the stop; the exec keeps running until the container dies
        return f"timed out after the grace period ({grace}s); kubelet proceeds"
    finally:
        with contextlib.suppress(OSError):
            text = out_path.read_text(errors="replace").strip()
            rec.hook_output = text[-500:] if text else None
    if code == 0:
        return "completed"
    # nsenter re-raises its child's fatal signal on itself: -9 = the hook was SIGKILLed
    died_with_pid1 = c.exited.wait(0.5)
    if code in (-9, 137) and died_with_pid1 and c.shared_pid:
        return "killed: the main process exited, the runtime killed the hook (FailedPreStopHook)"
    if code in (-9, 137) and died_with_pid1:
        return "killed: PID 1 exited, the kernel killed the hook (FailedPreStopHook)"
    return f"failed: {_describe_exit(code)} (FailedPreStopHook)"
