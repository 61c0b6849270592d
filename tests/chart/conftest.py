"""Shared fixtures of the chart tests (tests/chart/test_chart_*.py): they render charts/podgrace with a
real helm binary (hack/chart/helmchart.find_helm) and skip when there is none.

The chart's e2e test (tests/e2e/test_chart_schema.py, a real kube-apiserver) stays under tests/e2e, where
the cluster fixtures are.
"""

from __future__ import annotations

import pytest
from hack.chart import helmchart


@pytest.fixture(scope="session")
def helm() -> str:
    """The helm binary: $PODGRACE_HELM, else the one tests/cluster/build.sh built, else `helm` on PATH."""
    found = helmchart.find_helm()
    if not found:
        pytest.skip(helmchart.helm_missing_reason())
    return found
