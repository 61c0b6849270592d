"""Test groups for `python -m pytest -n 2 --dist loadgroup` (README's test command, CI's).

The real node's tests (tests/node) spend most of their time waiting on a kubelet: a projected token's
rotation alone is a ten-minute wait. They run as one work unit on one worker, after the emulated
termination lab (tests/lab: its scenarios are CPU-bound and timed, so never two labs at once), and that
unit is handed out first. Every other test file is a work unit of its own, taken by whichever worker is
free: the other worker runs them while the node's tests wait on the kubelet, and both share what is left.

Inside the node unit, the in-cluster release's tests (tests/node/test_operator_pod.py) come first and its
token-rotation test last: the rotation is a wait of ~11.5 minutes from the release's install, and the labs
and the other node tests run during it instead of before it (see pytest_collection_modifyitems).

The groups are made by the scheduler below, from each test's path. xdist's own `xdist_group` marker
does not work with pytest 9: xdist 3.8 appends the group to `item._nodeid`, which pytest 9 no longer
reads (found 2026-11-30: both workers ran e2e, lab and node tests and started their own clusters)."""

from __future__ import annotations

from typing import Any

import pytest

# The worker of the real node and the labs (tests/lab runs first: it sorts before tests/node).
NODE_GROUP = ("tests/lab/", "tests/node/")


# The node unit's head and tail: the shared release's install starts the token's clock, and its rotation
# test waits for the rest of the token's lifetime.
RELEASE_FILE = "tests/node/test_operator_pod.py"
ROTATION_TEST = RELEASE_FILE + "::test_keeps_working_across_a_token_rotation"


def node_unit_position(nodeid: str) -> int:
    """0 for the release's tests, 2 for the rotation test, 1 for everything else (order kept)."""
    if nodeid == ROTATION_TEST:
        return 2
    return 0 if nodeid.startswith(RELEASE_FILE + "::") else 1


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: node_unit_position(item.nodeid))  # stable: every other order is kept


def group_of(nodeid: str) -> str:
    """The work unit of a test: "node" for tests/lab and tests/node, else its file."""
    return "node" if nodeid.startswith(NODE_GROUP) else nodeid.split("::", 1)[0]


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getvalue("dist") != "loadgroup":
        return None  # another --dist: xdist's own scheduler
    from xdist.scheduler import LoadScopeScheduling

    class NodeFirst(LoadScopeScheduling):  # type: ignore[misc]
        """Work units by group_of; the node's unit goes to the first worker that asks."""

        def _split_scope(self, nodeid: str) -> str:
            return group_of(nodeid)

        def _assign_work_unit(self, node: Any) -> None:
            if "node" in self.workqueue:
                self.workqueue.move_to_end("node", last=False)
            super()._assign_work_unit(node)

    return NodeFirst(config, log)
