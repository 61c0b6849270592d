"""The scale benchmark (bench/scale) at N = 100, as a smoke test: it runs the real phases on its own local
control plane and asserts what must hold at any size - write counts from the API server's audit log:
exactly one write per Deployment on the first sync, none on a restart, exactly the profile's users on a
profile edit, and every user change answered by one patch; the floor client's patches (the writes
podgrace sends, without the operator) are all accepted, one per Deployment. No timing is asserted (CI
machines vary); the numbers are printed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench.scale.report import table
from bench.scale.scenario import Bench, Params

ROOT = Path(__file__).resolve().parents[2]

SIZE = 100


@pytest.mark.slow
def test_scale_smoke(cluster_bin_dir: Path, tmp_path: Path) -> None:
    params = Params(
        size=SIZE,
        churn_rate=20.0,
        churn_seconds=5.0,
        phases=("sync", "restart", "churn", "fanout", "floor"),
        binaries=cluster_bin_dir,
        snapshot=False,  # the code under test, as installed
    )
    result = Bench(params, tmp_path).run()
    print("\n" + table([result]) + "\n" + json.dumps(result, indent=1, default=str))

    sync = result["sync"]
    assert sync["missing_settings"] == 0
    assert sync["writes_per_deployment"] == {1: SIZE}  # exactly one write per Deployment
    assert sync["deployment_writes"] == SIZE
    assert sync["http_429"] == 0 and sync["errors"] == 0

    restart = result["restart"]
    assert restart["writes"] == 0, restart["writes_by_resource"]

    churn = result["churn"]
    assert churn["missed"] == 0 and churn["matched"] == churn["changes"]
    assert churn["podgrace_writes"] == churn["changes"]  # one patch per user change, nothing else
    refused = churn["podgrace_refused"]  # 409s only (changed nothing), at most 3 per change
    assert set(refused) <= {409} and sum(refused.values()) <= 3 * churn["changes"], refused

    fanout = result["fanout"]
    assert fanout["users"] == SIZE
    assert fanout["deployment_writes"] == SIZE and fanout["outside_users"] == 0

    floor = result["floor"]  # podgrace's own kind of write (a strategic merge patch), every one accepted
    assert floor["statuses"] == {200: SIZE}
    assert floor["audit_writes"] == SIZE
