"""Test groups for `python -m pytest -n 2 --dist loadgroup` (README's test command, CI's).

The real node's tests (tests/node) spend most of their time waiting on a kubelet: a projected token's
rotation alone is a ten-minute wait. They run as one group on one worker, after the emulated termination
lab (tests/lab: its scenarios are CPU-bound and timed, so they do not run beside the real node's);
everything else is the other group on the other worker, in the order it always ran. So: two local
control planes at most at any time (one per worker), one lab at a time, and each group's session
fixtures (clusters, the node, the images) started once. Without xdist (-p no:xdist, or one file) the
markers change nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

# The worker of the real node and the labs (tests/lab runs first: it sorts before tests/node).
NODE_GROUP = (Path(__file__).parent / "lab", Path(__file__).parent / "node")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.pluginmanager.hasplugin("xdist"):
        return  # not distributing: no groups (the marker is xdist's, unknown without it)
    for item in items:
        parents = Path(str(item.path)).parents
        group = "node" if any(d in parents for d in NODE_GROUP) else "main"
        item.add_marker(pytest.mark.xdist_group(group))
