"""Shared by the real-node tests (and the real-node lab): what a node-cluster fixture yields."""

from __future__ import annotations

import dataclasses

from tests.cluster.images import Image
from tests.cluster.localcluster import LocalCluster
from tests.cluster.node import RealNode


@dataclasses.dataclass
class NodeCluster:
    cluster: LocalCluster
    node: RealNode
    nginx: Image
