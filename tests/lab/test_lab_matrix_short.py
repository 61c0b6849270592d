"""CI's short form of the termination lab: one original/podgrace pair per built-in profile and pod shape
(nginx under tini; nginx + php-fpm beside pause in a shared PID namespace, and that pod with hooks that signal
PID 1), podgrace in both capability modes, with real nginx, php-fpm, Apache and HAProxy. Fails if podgrace's
output drops a request, if an original drops none (then the lab would prove nothing), or if a shared-PID
server is stopped by another signal than expected. About 4 minutes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from bench.termination.matrix import SILENT_WORKERS
from tests.cluster.localcluster import die_with_parent

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.lab,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="namespaces need root"),
    pytest.mark.skipif(
        not all(
            shutil.which(b) or Path(f"/usr/sbin/{b}").exists()
            for b in ("nginx", "haproxy", "php-fpm8.2", "gcc")
        ),
        reason="run bench/termination/install.sh",
    ),
]


def test_short_matrix(tmp_path: Path) -> None:
    # the lab stops its servers on SIGTERM; PDEATHSIG sends it when pytest dies (seen orphaned after a
    # SIGINT to the worker: the subprocess and its HAProxy lived on)
    result = subprocess.run(
        [sys.executable, "-m", "bench.termination", "matrix", "--short", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=900, preexec_fn=die_with_parent(signal.SIGTERM),
    )  # fmt: skip
    print(result.stdout[-4000:])
    summary = json.loads((tmp_path / "short" / "matrix.json").read_text())
    scenarios = summary["scenarios"]
    profiles = {s["profile"] for s in scenarios}
    assert profiles == {
        "nginx", "php-fpm", "nginx-php-fpm", "apache", "web", "nginx-tini",
        "nginx-php-fpm-shared-pid", "nginx-php-fpm-shared-pid-hook-pid1",
    }  # fmt: skip
    pid1_hooks = [s for s in scenarios if s["profile"].endswith("-hook-pid1")]
    originals = [s for s in scenarios if s["mode"] == "original" and s not in pid1_hooks]
    rendered = [s for s in scenarios if s["mode"] != "original"]
    assert {s["mode"] for s in rendered} == {"native", "fallback"}
    assert all(s["failed"] > 0 for s in originals), [(s["id"], s["failed"]) for s in originals]
    # a hook's QUIT to PID 1 of a shared-PID pod reaches pause: the servers' first stop is the kubelet's TERM
    (pid1_hook,) = pid1_hooks
    assert [c["server_signals"][:1] for c in pid1_hook["containers"]] == [["SIGTERM"], ["SIGTERM"]]
    # podgrace's output: the servers beside pause got their graceful QUIT first (in the fallback, nginx's
    # workers log the hook's QUIT; php-fpm's workers are silent, their proof is zero dropped requests below)
    shared = [s for s in rendered if s["profile"] == "nginx-php-fpm-shared-pid"]
    assert len(shared) == 2
    assert all(
        c["server_signals"][:1] == ["SIGQUIT"]
        for s in shared
        for c in s["containers"]
        if not (s["mode"] == "fallback" and c["container"] in SILENT_WORKERS)
    )
    assert [(s["id"], s["verdict"]) for s in scenarios if not s["passed"]] == []
    assert all(s["failed"] == 0 for s in rendered), [(s["id"], s["failed"], s["counts"]) for s in rendered]
    assert all(s["total"] > 0 for s in scenarios)
    assert result.returncode == 0, result.stderr[-2000:]
