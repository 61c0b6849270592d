"""Every process the lab starts goes through here, so it can be stopped by PID on any exit path.

Each child runs in its own session (process group = its PID). `kill_all` SIGKILLs the group and, for
containers, the container's PID 1 (which makes the kernel kill everything in that PID namespace). It runs
from the scenario's `finally`, from atexit, and from the SIGTERM/SIGHUP handlers (`install_handlers`).
Containers are also started with `unshare --kill-child`, so they die with their unshare parent even if the
lab itself is SIGKILLed.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any


class Registry:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._procs: list[tuple[subprocess.Popen[bytes], str]] = []
        self._extra_pids: list[int] = []

    def spawn(
        self,
        args: Sequence[str],
        label: str,
        stdout: IO[Any] | int | None = subprocess.DEVNULL,
        stderr: IO[Any] | int | None = subprocess.STDOUT,
        env: dict[str, str] | None = None,
        cwd: str | Path | None = None,
    ) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            list(args),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            env=env,
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
        )
        with self._lock:
            self._procs.append((proc, label))
        return proc

    def track_pid(self, pid: int) -> None:
        """A process not started by Popen here (a container's PID 1 as seen from the host)."""
        with self._lock:
            self._extra_pids.append(pid)

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)

    def kill_all(self) -> None:
        with self._lock:
            procs = list(self._procs)
            extra = list(self._extra_pids)
            self._procs.clear()
            self._extra_pids.clear()
        for pid in extra:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        for proc, _label in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        for proc, _label in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.05, deadline - time.monotonic()))
            # the group may outlive its leader (a grandchild); clean it too
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)

    def alive(self) -> list[tuple[int, str]]:
        with self._lock:
            return [(p.pid, label) for p, label in self._procs if p.poll() is None]


REGISTRY = Registry()
atexit.register(REGISTRY.kill_all)

_installed = False


def install_handlers() -> None:
    """SIGTERM/SIGHUP -> KeyboardInterrupt in the main thread, so `finally` blocks run (as on Ctrl-C)."""
    global _installed
    if _installed or threading.current_thread() is not threading.main_thread():
        return

    def handler(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGHUP, handler)
    _installed = True


def children_of(pid: int) -> list[int]:
    out: list[int] = []
    task_dir = Path(f"/proc/{pid}/task")
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for task in task_dir.iterdir():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                out.extend(int(x) for x in (task / "children").read_text().split())
    return out


def ns_pid(pid: int) -> list[int]:
    """NSpid line of /proc/PID/status: the PID in each nested namespace, outermost first."""
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return [int(x) for x in line.split()[1:]]
    return []
