"""Calls the real `podgrace render` (never a hand-written "after" manifest).

native   : --server-version 1.35 --feature-gates ContainerStopSignals=true  (lifecycle.stopSignal)
fallback : --server-version 1.35 --feature-gates ContainerStopSignals=false (signal from a preStop exec hook)
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

MODES = {"native": "true", "fallback": "false"}
SERVER_VERSION = "1.35"


class RenderError(RuntimeError):
    pass


def podgrace_argv(podgrace: str | None = None) -> list[str]:
    if podgrace:
        return shlex.split(podgrace)
    exe = shutil.which("podgrace")
    if exe:
        return [exe]
    return [sys.executable, "-c", "import sys; from podgrace.cli.main import main; sys.exit(main())"]


def render_command(manifest: Path, mode: str, podgrace: str | None = None) -> list[str]:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {sorted(MODES)}")
    return [
        *podgrace_argv(podgrace),
        "render",
        "-f",
        str(manifest),
        "--server-version",
        SERVER_VERSION,
        "--feature-gates",
        f"ContainerStopSignals={MODES[mode]}",
    ]


def render_manifest(manifest: Path, mode: str, podgrace: str | None = None) -> str:
    argv = render_command(manifest, mode, podgrace)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RenderError(f"{shlex.join(argv)}: {exc}") from exc
    if done.returncode != 0 or not done.stdout.strip():
        raise RenderError(f"{shlex.join(argv)} exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    return done.stdout
