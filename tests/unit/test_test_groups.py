"""The xdist work units of the test command (tests/conftest.py): the labs and the real node one unit on
one worker, every other test file a unit of its own; and the node unit's order."""

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


def test_the_node_unit_starts_with_the_release_and_ends_with_its_rotation() -> None:
    """The collected order (as pytest_collection_modifyitems sorts it), and the node unit's order in it."""
    from tests.conftest import ROTATION_TEST, node_unit_position

    collected = [
        "tests/e2e/test_operator.py::test_opt_in",
        "tests/lab/test_lab_matrix_short.py::test_matrix",
        "tests/node/test_effective_stop_signal.py::test_stop_signal_checked",
        "tests/node/test_operator_pod.py::test_pod_ready_with_probes_run_by_the_kubelet",
        ROTATION_TEST,
        "tests/node/test_operator_pod.py::test_security_context_is_enforced",
        "tests/node/test_realnode_lab.py::test_podgrace_drops_none_on_scale_down",
        "tests/unit/test_planner.py::test_plan",
    ]
    ordered = sorted(collected, key=node_unit_position)
    assert [n for n in ordered if group_of(n) == "node"] == [
        "tests/node/test_operator_pod.py::test_pod_ready_with_probes_run_by_the_kubelet",
        "tests/node/test_operator_pod.py::test_security_context_is_enforced",
        "tests/lab/test_lab_matrix_short.py::test_matrix",
        "tests/node/test_effective_stop_signal.py::test_stop_signal_checked",
        "tests/node/test_realnode_lab.py::test_podgrace_drops_none_on_scale_down",
        ROTATION_TEST,
    ]
    assert [n for n in ordered if group_of(n) != "node"] == [
        "tests/e2e/test_operator.py::test_opt_in",
        "tests/unit/test_planner.py::test_plan",
    ]
