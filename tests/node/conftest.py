"""Fixtures for the real-node tests: a LocalCluster without kwok nodes plus a RealNode (kubelet +
containerd v2 + runc + CNI bridge, tests/cluster/node.py), and the nginx test image.

- ``node_cluster``: plain API server and kubelet (ContainerStopSignals off).
- ``node_cluster_stopsignals``: ContainerStopSignals=true on the API server and on the kubelet.
- ``podgrace_in_cluster``: podgrace helm-installed on ``node_cluster``'s node, one release for the whole
  session. Its projected token's ten-minute lifetime is the rotation test's clock, so tests/conftest.py
  puts the release's first tests at the head of the node unit and the rotation test at its end: the labs
  and the other node tests run during most of that wait instead of before it.

The clusters have no kwok nodes (``nodes=0``): every pod lands on the real node.
Every test under tests/node gets the ``node`` marker (and ``e2e``). ``PODGRACE_SKIP_NODE=1`` or
``PODGRACE_SKIP_E2E=1`` skips them all. Missing prerequisites (root, runc, CNI plugins, mmdebstrap)
fail the tests rather than skipping them: ``tests/cluster/build-node.sh --apt`` installs them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from bench.termination.realnode.lab import cell_namespace
from tests.cluster.images import Image, build_image, nginx_image
from tests.cluster.localcluster import STOP_SIGNALS_GATES, ClusterError, LocalCluster, ensure_binaries
from tests.cluster.node import (
    APISERVER_ARGS,
    NodeError,
    RealNode,
    cleanup_stale,
    ensure_node_binaries,
    missing_prerequisites,
)
from tests.image.build import BuildError, BuiltImage, build_operator_image
from tests.support.capture import uncaptured
from tests.support.operator_release import podgrace_release
from tests.support.realnode_env import (
    LAB_EVENT,
    LAB_WORKLOAD,
    OPERATOR_POD_NS,
    SA_DIR,
    TOKEN_SECONDS,
    InClusterPodgrace,
    NodeCluster,
)

NODE_DIR = Path(__file__).resolve().parent


def _skip() -> bool:
    return any(os.environ.get(v, "") not in ("", "0") for v in ("PODGRACE_SKIP_NODE", "PODGRACE_SKIP_E2E"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(reason="PODGRACE_SKIP_NODE / PODGRACE_SKIP_E2E is set")
    for item in items:
        if NODE_DIR in item.path.resolve().parents:
            item.add_marker(pytest.mark.node)
            item.add_marker(pytest.mark.e2e)
            if _skip():
                item.add_marker(skip)


def _say(msg: str) -> None:
    print(f"\n[node] {msg}", flush=True)


@pytest.fixture(scope="session")
def node_binaries(pytestconfig: pytest.Config) -> tuple[Path, Path]:
    missing = missing_prerequisites()
    if missing:
        pytest.fail(f"a real node needs {missing} (tests/cluster/build-node.sh --apt)", pytrace=False)
    with uncaptured(pytestconfig):
        cleanup_stale(log=_say)  # nodes left by a test process that was killed
        try:
            return ensure_binaries(log=_say), ensure_node_binaries(log=_say)
        except (ClusterError, NodeError) as err:
            pytest.fail(f"cannot build the cluster/node binaries: {err}", pytrace=False)


@pytest.fixture(scope="session")
def nginx(pytestconfig: pytest.Config, node_binaries: tuple[Path, Path]) -> Image:
    with uncaptured(pytestconfig):
        image = build_image(nginx_image(), log=_say)
        _say(f"image {image.ref}: {'cached' if image.cached else f'built in {image.built_seconds:.0f}s'}")
    return image


def _session_node_cluster(
    request: pytest.FixtureRequest,
    bins: tuple[Path, Path],
    image: Image,
    name: str,
    gates: dict[str, bool] | None,
) -> Iterator[NodeCluster]:
    config = request.config
    cluster = LocalCluster(
        binaries=bins[0], feature_gates=gates, name=name, nodes=0, extra_apiserver_args=APISERVER_ARGS
    )
    node = RealNode(cluster, binaries=bins[1], name=f"{name}-node")
    with uncaptured(config):
        cluster.start()
        try:
            node.start()
            seconds = node.import_image(image)
        except BaseException:
            cluster.keep_logs = True
            cluster.stop()
            raise
        _say(
            f"cluster {name!r} up in {cluster.start_seconds:.1f}s, node {node.name} Ready in "
            f"{node.start_seconds:.1f}s {node.timings} on {node.bridge} {node.subnet}, "
            f"nginx imported in {seconds:.1f}s"
        )
    try:
        yield NodeCluster(cluster, node, image)
    finally:
        failed = request.session.testsfailed
        if failed:
            node.print_logs_hint(sys.stderr)
        node.stop()
        if failed:
            cluster.keep_logs = True
            with uncaptured(config):
                _say(f"tests failed: logs of {name!r} (cluster and node) kept in {cluster.log_dir}")
        cluster.stop()


@pytest.fixture(scope="session")
def node_cluster(
    request: pytest.FixtureRequest, node_binaries: tuple[Path, Path], nginx: Image
) -> Iterator[NodeCluster]:
    yield from _session_node_cluster(request, node_binaries, nginx, "realnode", None)


@pytest.fixture(scope="session")
def node_cluster_stopsignals(
    request: pytest.FixtureRequest, node_binaries: tuple[Path, Path], nginx: Image
) -> Iterator[NodeCluster]:
    yield from _session_node_cluster(request, node_binaries, nginx, "realnode-ss", dict(STOP_SIGNALS_GATES))


@pytest.fixture(scope="session")
def operator_image() -> BuiltImage:
    """podgrace's image (tests/image/build.py), for helm-installing podgrace as a pod on the node."""
    try:
        return build_operator_image()
    except BuildError as err:
        pytest.fail(f"the image build failed: {err}", pytrace=False)


@pytest.fixture(scope="session")
def podgrace_in_cluster(node_cluster: NodeCluster, operator_image: BuiltImage) -> Iterator[InClusterPodgrace]:
    watched = [OPERATOR_POD_NS, cell_namespace(LAB_WORKLOAD, LAB_EVENT, "podgrace")]
    values = [
        f"serviceAccount.tokenExpirationSeconds={TOKEN_SECONDS}",
        "livenessProbe.initialDelaySeconds=5",
        "livenessProbe.periodSeconds=5",
        "readinessProbe.periodSeconds=2",
        "operator.workers=4",
        "watchNamespaces={" + ",".join(watched) + "}",
    ]
    with podgrace_release(
        node_cluster.cluster, node_cluster.node, operator_image, values, log=lambda m: print(f"\n{m}")
    ) as release:
        first = str(release.exec("cat", f"{SA_DIR}/token").stdout.strip())
        release.cluster.kubectl("create", "namespace", OPERATOR_POD_NS)
        yield InClusterPodgrace(release, first, release.metric("podgrace_reconcile_errors_total"))
