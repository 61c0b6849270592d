"""Test groups for `python -m pytest -n 2 --dist loadgroup` (README's test command, CI's).

The real node's tests (tests/node) spend most of their time waiting on a kubelet: a projected token's
rotation alone is a ten-minute wait. They run as one group on one worker, everything else as the other
group on the other, in the order it always ran: two local control planes at most at any time (one per
worker), never two termination labs at once (the labs listen on fixed ports), and each group's session
fixtures (clusters, the node, the images) started once. Without xdist (-p no:xdist, or one file) the
markers change nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

NODE = Path(__file__).parent / "node"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.pluginmanager.hasplugin("xdist"):
        return  # not distributing: no groups (the marker is xdist's, unknown without it)
    for item in items:
        group = "node" if NODE in Path(str(item.path)).parents else "main"
        item.add_marker(pytest.mark.xdist_group(group))
