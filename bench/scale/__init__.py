"""podgrace at scale: initial sync, restart, latency under churn, profile fan-out, memory and CPU, measured
on the real local control plane (tests/cluster) against a plain-client floor. See README.md."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
