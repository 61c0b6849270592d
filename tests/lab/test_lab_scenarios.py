"""Real-server checks of the lab itself (marked `lab`): a scenario cleans up every process it started, also
when it fails half-way, and the endpoint removal lets in-flight requests finish. Needs root and the servers
from bench/termination/install.sh; skipped otherwise. About 20 s.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from bench.termination import scenario
from bench.termination.kubelet import LabError
from bench.termination.plan import plan_from_text
from bench.termination.procs import REGISTRY

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.lab,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="namespaces need root"),
    pytest.mark.skipif(
        not all(shutil.which(b) or Path(f"/usr/sbin/{b}").exists() for b in ("nginx", "haproxy", "unshare")),
        reason="run bench/termination/install.sh",
    ),
]

MANIFESTS = ROOT / "bench" / "termination" / "manifests"

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


def _assert_clean(text: str, params: scenario.Params) -> None:
    assert REGISTRY.alive() == []
    plan = plan_from_text(text)
    assert scenario.wait_ports_free(scenario.all_ports(plan, params), 5) == []


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
    _assert_clean(NATIVE_NGINX, params)


def test_original_fails_and_failures_are_attributed() -> None:
    text = (MANIFESTS / "web.yaml").read_text()
    params = scenario.Params(endpoint_delay=1.0, request_ms=200, rate=20, warmup=0.5)
    res = scenario.run_scenario(text, params, label="t")
    assert res["failed"] > 0 and res["unattributed_failures"] == 0 and res["survivors_ok"]
    _assert_clean(text, params)


def test_cleanup_after_a_failure_half_way(monkeypatch: pytest.MonkeyPatch) -> None:
    text = (MANIFESTS / "nginx-php-fpm.yaml").read_text()
    params = scenario.Params(rate=5, warmup=0.2)

    def boom(_replicas: int) -> None:
        raise LabError("injected failure after the pods started")

    monkeypatch.setattr(scenario, "_warm_up", boom)
    with pytest.raises(LabError, match="injected"):
        scenario.run_scenario(text, params, label="t")
    _assert_clean(text, params)
