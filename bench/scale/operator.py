"""podgrace as the product runs: `podgrace run` as a local process with the chart's ServiceAccount token
(tests/e2e/podgrace_env.OperatorProcess), plus what the benchmark reads about it: its start time, its peak
RSS and CPU seconds from /proc, whether it is idle, and an optional py-spy profile."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.support.podgrace_env import NAMESPACE, SERVICE_ACCOUNT, OperatorProcess

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def _quiet() -> Any:
    with contextlib.suppress(OSError, ValueError):
        yield


class BenchOperator(OperatorProcess):
    def __init__(self, cluster: Any, *args: str) -> None:
        super().__init__(cluster, *args)
        self._kubeconfig: Path | None = None
        self.started_at = 0.0
        self._spy: subprocess.Popen[bytes] | None = None

    def kubeconfig(self) -> Path:
        # One token for the whole run (OperatorProcess mints a 2 h one per start); the start time is taken
        # here because OperatorProcess.start() spawns the process right after asking for the kubeconfig.
        if self._kubeconfig is None:
            token = self.cluster.create_token(SERVICE_ACCOUNT, NAMESPACE, duration="12h")
            self._kubeconfig = self.cluster.write_kubeconfig(
                self.workdir / "kubeconfig", token=token, user=SERVICE_ACCOUNT
            )
        self.started_at = time.time()
        return self._kubeconfig

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stats(self) -> dict[str, float]:
        """Peak RSS (VmHWM, MiB), current RSS (MiB) and CPU seconds (utime + stime, and each) so far."""
        out = {"peak_rss_mib": 0.0, "rss_mib": 0.0, "cpu_s": 0.0, "user_s": 0.0, "sys_s": 0.0}
        with _quiet():
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    out["peak_rss_mib"] = int(line.split()[1]) / 1024
                elif line.startswith("VmRSS:"):
                    out["rss_mib"] = int(line.split()[1]) / 1024
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
            out["user_s"] = int(fields[11]) / CLOCK_TICKS  # utime, stime: fields 14 and 15 of proc(5)
            out["sys_s"] = int(fields[12]) / CLOCK_TICKS
            out["cpu_s"] = out["user_s"] + out["sys_s"]
        return out

    def reconciles(self) -> float:
        return self.metric("podgrace_reconcile_total", controller="deployment")

    def wait_idle(self, at_least: float, *, quiet: float = 2.0, timeout: float = 1800.0) -> float:
        """Wait until podgrace has reconciled at least `at_least` Deployments and then nothing for `quiet`
        seconds; returns the wall time at which the count last moved."""
        deadline = time.monotonic() + timeout
        last_value, last_change = -1.0, time.time()
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"podgrace exited:\n{self.log_tail()}")
            try:
                value = self.reconciles()
            except OSError:
                value = last_value
            now = time.time()
            if value != last_value:
                last_value, last_change = value, now
            elif value >= at_least and now - last_change >= quiet:
                return last_change
            time.sleep(0.5)  # each scrape costs podgrace CPU (its /metrics runs in the process)
        raise TimeoutError(
            f"podgrace not idle after {timeout:.0f}s ({last_value} reconciles, want {at_least})"
        )

    # ---- profiling

    def start_profile(self, out: Path, rate: int = 100) -> None:
        spy = shutil.which("py-spy")
        if spy is None:
            raise RuntimeError("py-spy is not installed (pip install py-spy)")
        self._spy = subprocess.Popen(
            [spy, "record", "--pid", str(self.pid), "--rate", str(rate), "--format", "raw",
             "--output", str(out), "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip

    def stop_profile(self) -> None:
        if self._spy is not None and self._spy.poll() is None:
            self._spy.send_signal(signal.SIGINT)
            try:
                self._spy.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self._spy.kill()
        self._spy = None

    def stop(self) -> None:
        self.stop_profile()
        super().stop()
