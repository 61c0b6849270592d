"""The xdist work units of the test command (tests/conftest.py): the labs and the real node one unit on
one worker, every other test file a unit of its own."""

from __future__ import annotations

import pytest
from tests.conftest import group_of


@pytest.mark.parametrize(
    ("nodeid", "group"),
    [
        ("tests/lab/test_lab_scenarios.py::test_graceful_pod_drops_nothing_and_leaves_nothing", "node"),
        ("tests/node/test_realnode.py::test_node_of_a_killed_process_is_cleaned_up", "node"),
        ("tests/e2e/test_operator.py::test_opt_in", "tests/e2e/test_operator.py"),
        ("tests/unit/test_planner.py::test_plan[a::b]", "tests/unit/test_planner.py"),
        ("tests/chart/test_chart_rbac.py::test_rbac", "tests/chart/test_chart_rbac.py"),
        ("tests/labels/test_x.py::test_y", "tests/labels/test_x.py"),  # a name's prefix is not the directory
    ],
)
def test_group_of(nodeid: str, group: str) -> None:
    assert group_of(nodeid) == group
