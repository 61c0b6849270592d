"""podgrace at scale: initial sync, restart, latency under churn, profile fan-out, memory and CPU, measured
on the real local control plane (tests/cluster) against a plain-client floor. See README.md."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# The local control plane and the e2e helpers (chart install, OperatorProcess) are reused as they are.
for _path in (ROOT / "tests" / "cluster", ROOT / "tests" / "e2e"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
