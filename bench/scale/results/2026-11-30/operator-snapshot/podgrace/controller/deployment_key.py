"""How podgrace names a Deployment in its queue, index and records."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

Key = tuple[str, str]  # (namespace, name)


def key_of(metadata: Mapping[str, Any]) -> Key:
    return str(metadata.get("namespace")), str(metadata.get("name"))
