"""Shared by the real-node tests (and the real-node lab): what a node-cluster fixture yields."""

from __future__ import annotations

import dataclasses

from tests.cluster.images import Image
from tests.cluster.localcluster import LocalCluster
from tests.cluster.node import RealNode
from tests.support.operator_release import Release

# The shared in-cluster release (tests/node/conftest.py, podgrace_in_cluster) watches only the namespaces of
# the tests that use it: nothing else on the node is its to change.
OPERATOR_POD_NS = "shop"  # test_operator_pod.py's Deployments
TOKEN_SECONDS = 600  # the API server's minimum expirationSeconds for a projected token
LAB_WORKLOAD, LAB_EVENT = "nginx-php-fpm", "scale-down"  # test_realnode_lab.py's cells
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"  # the projected ServiceAccount volume in a pod


@dataclasses.dataclass
class NodeCluster:
    cluster: LocalCluster
    node: RealNode
    nginx: Image


@dataclasses.dataclass(frozen=True)
class InClusterPodgrace:
    """podgrace helm-installed on the real node, shared by the node tests that need it in-cluster."""

    release: Release
    first_token: str  # the projected token the pod started with: the rotation test's clock starts here
    reconcile_errors: float  # podgrace_reconcile_errors_total at the install
