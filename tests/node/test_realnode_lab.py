"""The real-node termination lab's short form (bench/termination/realnode): nginx + php-fpm from Debian
packages, 2 replicas on the real node behind HAProxy following the Service's EndpointSlices (1 s extra
propagation), open-loop load, `kubectl scale` to 1 replica. Once with the original manifest and once
after podgrace, helm-installed in the cluster (the session's release, tests/node/conftest.py), has
rewritten it (ContainerStopSignals off: the fallback hooks).

The claim: the original drops requests (else the scenario proves nothing) and podgrace's drops none, and
its fallback hooks draw no FailedPreStopHook Event (they return before the servers' PID 1 exits). The other
Warning Events seen are printed, not asserted (Unhealthy: the readiness probe of a stopping server).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bench.termination.realnode import workloads
from bench.termination.realnode.lab import Cell, Lab, Params, host_processes, run_cell
from tests.cluster.images import build_image
from tests.support.realnode_env import LAB_EVENT, LAB_WORKLOAD, InClusterPodgrace, NodeCluster


@pytest.fixture(scope="module")
def lab(node_cluster: NodeCluster, podgrace_in_cluster: InClusterPodgrace) -> Iterator[Lab]:
    cluster, node = node_cluster.cluster, node_cluster.node
    w = workloads.load_workload(LAB_WORKLOAD)
    images = {}
    for runtime in w.runtimes.values():
        image = build_image(workloads.IMAGES[runtime]())
        node.import_image(image)
        images[runtime] = image.ref
    with (
        tempfile.TemporaryDirectory(prefix="podgrace-realnode-lab-") as tmp,
        host_processes(Path(tmp), node.node_ip) as (upstream, lb_port),
    ):
        yield Lab(cluster, node, "default", images, Path(tmp), upstream, lb_port, Params(), print)


def _cell(lab: Lab, kind: str) -> Cell:
    cell = run_cell(lab, workloads.load_workload(LAB_WORKLOAD), LAB_EVENT, kind)
    print(f"\n[lab] {cell.key}: {cell.failed}/{cell.sent} {cell.outcomes} pods {cell.pods}")
    print(f"[lab] Warning Events: {cell.warnings}")
    assert not cell.error, cell.error
    assert cell.sent > 0 and len(cell.pods) == 1, cell  # one pod of two went away, under load
    assert cell.pods[0].gone_s is not None, cell.pods
    return cell


def test_original_drops_requests_on_scale_down(lab: Lab) -> None:
    cell = _cell(lab, "original")
    assert not any("preStop" in lc for lc in cell.template["containers"].values()), cell.template
    assert cell.failed > 0, cell.outcomes


def test_podgrace_drops_none_on_scale_down(lab: Lab) -> None:
    cell = _cell(lab, "podgrace")
    hooks: dict[str, Any] = cell.template["containers"]
    assert all("preStop" in lc for lc in hooks.values()), cell.template  # podgrace wrote it in-cluster
    assert cell.failed == 0, cell.outcomes
    assert not cell.hook_failures, cell.hook_failures
    assert not any(r.startswith("FailedPreStopHook") for r in cell.warnings), cell.warnings
