"""Test groups for `python -m pytest -n 2 --dist loadgroup` (README's test command, CI's).

The real node's tests (tests/node) spend most of their time waiting on a kubelet: a projected token's
rotation alone is a ten-minute wait. They run as one group on one worker, after the emulated termination
lab (tests/lab: its scenarios are CPU-bound and timed, so they do not run beside the real node's);
everything else is the other group on the other worker, in the order it always ran. So: two local
control planes at most at any time (one per worker), one lab at a time, and each group's session
fixtures (clusters, the node, the images) started once.

The groups are made by the scheduler below, from each test's path. xdist's own `xdist_group` marker
does not work with pytest 9: xdist 3.8 appends the group to `item._nodeid`, which pytest 9 no longer
reads (found 2026-11-30: both workers ran e2e, lab and node tests and started their own clusters)."""

from __future__ import annotations

from typing import Any

import pytest

# The worker of the real node and the labs (tests/lab runs first: it sorts before tests/node).
NODE_GROUP = ("tests/lab/", "tests/node/")


def group_of(nodeid: str) -> str:
    """The work unit of a test: "node" for tests/lab and tests/node, "main" for the rest."""
    return "node" if nodeid.startswith(NODE_GROUP) else "main"


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getvalue("dist") != "loadgroup":
        return None  # another --dist: xdist's own scheduler
    from xdist.scheduler import LoadScopeScheduling

    class TwoGroups(LoadScopeScheduling):  # type: ignore[misc]
        """One work unit per group: each worker runs one group, in collection order."""

        def _split_scope(self, nodeid: str) -> str:
            return group_of(nodeid)

    return TwoGroups(config, log)
