"""Run podgrace from a copy of operator/ taken when the benchmark starts.

The working tree may change during a long run (other work lands), and the restart phase must run the same
code as the cold start. The copy goes first on PYTHONPATH for the operator processes (ahead of the editable
install's path) and first on this process's sys.path (the floor builds its bodies with the same planner).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.scale import ROOT

_taken: dict[str, Any] | None = None


def snapshot_operator(out: Path) -> dict[str, Any]:
    """Take the copy once per process; returns where it is and which commit (and local changes) it is."""
    global _taken
    if _taken is not None:
        return _taken
    dest = out / "operator-snapshot"
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(
        ROOT / "operator" / "podgrace", dest / "podgrace", ignore=shutil.ignore_patterns("__pycache__")
    )
    paths = [str(dest), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    sys.path.insert(0, str(dest))

    def git(*args: str) -> str:
        proc = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return proc.stdout.strip()

    _taken = {
        "path": str(dest),
        "commit": git("rev-parse", "--short", "HEAD"),
        "dirty": git("status", "--short", "operator"),
    }
    return _taken
