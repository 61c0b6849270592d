"""Real-server checks of the lab itself (marked `lab`): a scenario cleans up every process it started, also
when it fails half-way, the endpoint removal lets in-flight requests finish, and a shared-PID pod behaves as
one with pause as PID 1. Needs root and the servers from bench/termination/install.sh; skipped otherwise.
About 30 s.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from bench.termination import scenario, servers
from bench.termination.kubelet import (
    Container,
    ContainerRecord,
    LabError,
    _run_exec_hook,
    port_open,
    start_container,
    start_sandbox,
    wait_port,
)
from bench.termination.plan import plan_from_text
from bench.termination.ports import LOCK_DIR, Ports, claim
from bench.termination.procs import REGISTRY, ns_pid

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.lab,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="namespaces need root"),
    pytest.mark.skipif(
        not all(
            shutil.which(b) or Path(f"/usr/sbin/{b}").exists() for b in ("nginx", "haproxy", "unshare", "gcc")
        ),
        reason="run bench/termination/install.sh",
    ),
]

MANIFESTS = ROOT / "bench" / "termination" / "manifests"
SHARED_PID = MANIFESTS / "nginx-php-fpm-shared-pid.yaml"

NATIVE_NGINX = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: n, annotations: {podgrace.dev/prestop-sleep-seconds: "2", podgrace.dev/drain-seconds: "8"}}
spec:
  template:
    spec:
      os: {name: linux}
      terminationGracePeriodSeconds: 15
      containers:
      - name: nginx
        image: nginx:1.22
        lifecycle: {preStop: {sleep: {seconds: 2}}, stopSignal: SIGQUIT}
"""


def _assert_clean(text: str, params: scenario.Params, block: int) -> None:
    assert REGISTRY.alive() == []
    plan = plan_from_text(text)
    assert scenario.wait_ports_free(scenario.all_ports(plan, params, Ports(block)), 5) == []
    # the block's lock is released: the next run may take it again
    fd = os.open(LOCK_DIR / f"{block}.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)


@pytest.fixture(autouse=True)
def _kill_what_a_test_left() -> Iterator[None]:
    """A test that fails half-way leaves none of its processes to the next."""
    yield
    REGISTRY.kill_all()


@pytest.fixture
def block() -> Iterator[Ports]:
    """A claimed port block for the tests that start a pod themselves."""
    plan = plan_from_text(SHARED_PID.read_text())
    with claim(lambda b: scenario.all_ports(plan, scenario.Params(), b), port_open) as ports:
        yield ports


def test_graceful_pod_drops_nothing_and_leaves_nothing() -> None:
    params = scenario.Params(endpoint_delay=1.0, request_ms=1500, rate=10, warmup=0.5)
    res = scenario.run_scenario(NATIVE_NGINX, params, label="t")
    assert res["failed"] == 0, res["failures"]
    assert res["to_terminating_pod"] > 0 and res["routed_after_removal"] == 0
    # requests in flight at the endpoint removal ran to completion (HAProxy `maint` keeps them)
    t = res["endpoint_removed"]["t"]
    inflight = [r for r in res["requests"] if r[4] == "pod0" and r[1] < t < r[2]]
    assert inflight and all(r[3] == "ok" for r in inflight)
    (nginx,) = res["containers"]
    assert nginx["hook_result"] == "completed" and 1.9 < nginx["signal_time"] < 2.5
    assert nginx["stop_timeout"] == 13  # 15 - 2 whole seconds of hook
    _assert_clean(NATIVE_NGINX, params, res["port_block"])


def test_original_fails_and_failures_are_attributed() -> None:
    text = (MANIFESTS / "web.yaml").read_text()
    params = scenario.Params(endpoint_delay=1.0, request_ms=200, rate=20, warmup=0.5)
    res = scenario.run_scenario(text, params, label="t")
    assert res["failed"] > 0 and res["unattributed_failures"] == 0 and res["survivors_ok"]
    _assert_clean(text, params, res["port_block"])


def test_cleanup_after_a_failure_half_way(monkeypatch: pytest.MonkeyPatch) -> None:
    text = (MANIFESTS / "nginx-php-fpm.yaml").read_text()
    params = scenario.Params(rate=5, warmup=0.2)

    used: list[int] = []

    def boom(_replicas: int, lb_port: int) -> None:
        used.append(lb_port)  # the load balancer listens on the block's base
        raise LabError("injected failure after the pods started")

    monkeypatch.setattr(scenario, "_warm_up", boom)
    with pytest.raises(LabError, match="injected"):
        scenario.run_scenario(text, params, label="t")
    _assert_clean(text, params, used[0])


def _exited(pid: int, timeout: float) -> bool:
    """The process is gone or a zombie (its parent, unshare, has not reaped it yet)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


def _shared_pid_pod(tmp_path: Path, block: Ports) -> tuple[Container, Container, int]:
    """pod0 of the shared-PID manifest, serving: (nginx, php-fpm, pause's host PID)."""
    plan = plan_from_text(SHARED_PID.read_text())
    sandbox = start_sandbox("pod0", servers.build_pause(tmp_path))
    specs = scenario.build_pod_specs(plan, 0, tmp_path, scenario.Params(rate=5), block)
    pairs = zip(specs, plan.containers, strict=True)
    nginx, php = (start_container(spec, c, tmp_path, sandbox) for spec, c in pairs)
    for c in (nginx, php):
        wait_port(c.spec.port, 20, c.spec.name, lambda c=c: not c.exited.is_set())
    return nginx, php, sandbox


def _inside(c: Container, script: str, check: bool = True) -> list[str]:
    """A shell in the container, as an exec hook runs."""
    argv = ["nsenter", "--target", str(c.pid1), "--pid", "--mount", "--", "/bin/sh", "-c", script]
    return subprocess.run(argv, capture_output=True, text=True, timeout=10, check=check).stdout.split()


def _assert_shared_pid_pod_clean(block: Ports) -> None:
    REGISTRY.kill_all()
    assert REGISTRY.alive() == []
    own = [block.server("nginx", 0), block.server("php-fpm", 0)]  # pod0's: the only pod these tests start
    assert scenario.wait_ports_free(own, 10) == []


def test_shared_pid_pod_pause_is_pid1_ignores_quit_and_ends_the_pod_on_term(
    tmp_path: Path, block: Ports
) -> None:
    """The lab's model of shareProcessNamespace: true, checked from inside a container."""
    try:
        nginx, php, sandbox = _shared_pid_pod(tmp_path, block)
        nginx_pid, php_pid = ns_pid(nginx.pid1)[-1], ns_pid(php.pid1)[-1]
        assert _inside(nginx, "read -r c </proc/1/comm; echo $c") == ["pause"]
        # both masters beside pause in one namespace, their parent outside it (PPID 0), as under runc
        ppids = f"cut -d' ' -f4 /proc/{nginx_pid}/stat /proc/{php_pid}/stat"
        assert _inside(nginx, f"cat /proc/{php_pid}/comm; {ppids}") == ["php-fpm8.2", "0", "0"]
        _inside(nginx, "kill -QUIT 1; kill -WINCH 1")  # no handler in pause: as PID 1 it ignores them
        time.sleep(0.5)
        assert not nginx.exited.is_set() and not php.exited.is_set()
        os.kill(sandbox, 0)  # pause still there
        # pause exits and the kernel ends every process of the pod: this shell too, maybe before it exits
        _inside(nginx, "kill -TERM 1", check=False)
        assert nginx.exited.wait(5) and php.exited.wait(5)
        assert _exited(sandbox, 5)  # pause itself exited (on TERM: exit 0)
    finally:
        _assert_shared_pid_pod_clean(block)


def test_shared_pid_container_exit_kills_its_processes_and_hook_not_the_pod(
    tmp_path: Path, block: Ports
) -> None:
    """As containerd's kill --all: when nginx's master dies, its workers and running exec hook die with it;
    php-fpm and pause, in the same PID namespace, go on."""
    try:
        nginx, php, sandbox = _shared_pid_pod(tmp_path, block)
        rec = ContainerRecord("pod0", "nginx", "nginx", "SIGTERM", "image", "exec sleep 60")
        hook: list[str] = []

        def run_hook() -> None:
            hook.append(_run_exec_hook(nginx, ("/bin/sh", "-c", "sleep 60"), 30, tmp_path, rec))

        runner = threading.Thread(target=run_hook)
        runner.start()
        deadline = time.monotonic() + 10
        while "sleep" not in _inside(php, "cat /proc/[0-9]*/comm") and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(nginx.pid1, signal.SIGKILL)
        runner.join(15)
        assert hook == ["killed: the main process exited, the runtime killed the hook (FailedPreStopHook)"]
        names = _inside(php, "cat /proc/[0-9]*/comm 2>/dev/null || true")
        assert "nginx" not in names and "sleep" not in names and "php-fpm8.2" in names
        assert not php.exited.is_set() and port_open(php.spec.port)
        os.kill(sandbox, 0)
    finally:
        _assert_shared_pid_pod_clean(block)
