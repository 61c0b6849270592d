"""Shared by the real-node tests (and the real-node lab): what a node-cluster fixture yields."""

from __future__ import annotations

import dataclasses

from images import Image
from localcluster import LocalCluster

from node import RealNode


@dataclasses.dataclass
class NodeCluster:
    cluster: LocalCluster
    node: RealNode
    nginx: Image
