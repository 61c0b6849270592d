"""Session fixtures for the e2e tests: real local control planes from tests/cluster/localcluster.py.

- ``cluster``: etcd + kube-apiserver + controller-manager + scheduler + kwok, default feature gates.
- ``cluster_stopsignals``: the same with ``--feature-gates=ContainerStopSignals=true``.

Every test under tests/e2e gets the ``e2e`` marker. ``PODGRACE_SKIP_E2E=1`` skips them all.
The binaries are built by tests/cluster/build.sh on first use (cold ~20 min, then cached).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.cluster.localcluster import (
    STOP_SIGNALS_GATES,
    ClusterError,
    LocalCluster,
    ensure_binaries,
)
from tests.support.capture import uncaptured

E2E_DIR = Path(__file__).resolve().parent


def _skip_e2e() -> bool:
    return os.environ.get("PODGRACE_SKIP_E2E", "") not in ("", "0")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(reason="PODGRACE_SKIP_E2E is set: the local control plane is not started")
    for item in items:
        if E2E_DIR in item.path.resolve().parents:
            item.add_marker(pytest.mark.e2e)
            if _skip_e2e():
                item.add_marker(skip)


@pytest.fixture(scope="session")
def cluster_bin_dir(pytestconfig: pytest.Config) -> Path:
    """The directory with the built binaries (builds them with tests/cluster/build.sh if missing)."""
    if _skip_e2e():
        pytest.skip("PODGRACE_SKIP_E2E is set")
    with uncaptured(pytestconfig):
        try:
            return ensure_binaries(log=lambda msg: print(f"\n[e2e] {msg}", flush=True))
        except ClusterError as err:
            pytest.fail(f"cannot build the local control plane: {err}", pytrace=False)


def _session_cluster(
    request: pytest.FixtureRequest, bin_dir: Path, name: str, gates: dict[str, bool] | None
) -> Iterator[LocalCluster]:
    config = request.config
    cluster = LocalCluster(binaries=bin_dir, feature_gates=gates, name=name)
    with uncaptured(config):
        cluster.start()
        print(
            f"\n[e2e] cluster {name!r} up in {cluster.start_seconds:.1f}s at {cluster.server} "
            f"(workdir {cluster.workdir})",
            flush=True,
        )
    try:
        yield cluster
    finally:
        if request.session.testsfailed:
            cluster.keep_logs = True
            with uncaptured(config):
                print(f"\n[e2e] tests failed: cluster {name!r} logs kept in {cluster.log_dir}", flush=True)
        cluster.stop()


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest, cluster_bin_dir: Path) -> Iterator[LocalCluster]:
    """A running LocalCluster with default feature gates (ContainerStopSignals off)."""
    yield from _session_cluster(request, cluster_bin_dir, "plain", None)


@pytest.fixture(scope="session")
def cluster_stopsignals(request: pytest.FixtureRequest, cluster_bin_dir: Path) -> Iterator[LocalCluster]:
    """A running LocalCluster whose apiserver has ContainerStopSignals=true."""
    yield from _session_cluster(request, cluster_bin_dir, "stopsignals", dict(STOP_SIGNALS_GATES))
