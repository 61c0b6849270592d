"""The two xdist groups of the test command (tests/conftest.py): the labs and the real node on one
worker, everything else on the other."""

from __future__ import annotations

import pytest
from tests.conftest import group_of


@pytest.mark.parametrize(
    ("nodeid", "group"),
    [
        ("tests/lab/test_lab_scenarios.py::test_graceful_pod_drops_nothing_and_leaves_nothing", "node"),
        ("tests/node/test_realnode.py::test_node_of_a_killed_process_is_cleaned_up", "node"),
        ("tests/e2e/test_operator.py::test_opt_in", "main"),
        ("tests/unit/test_planner.py::test_plan[nginx]", "main"),
        ("tests/chart/test_chart_rbac.py::test_rbac", "main"),
        ("tests/labels/test_x.py::test_y", "main"),  # a prefix of a name is not the directory
    ],
)
def test_group_of(nodeid: str, group: str) -> None:
    assert group_of(nodeid) == group
