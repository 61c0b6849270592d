"""tests/cluster/gomod_drift.py: which dependency moves the build scripts accept when they raise a binary's
k8s.io libraries to another build's versions (to share the Go build cache), and which stop the build."""

from __future__ import annotations

import pytest
from tests.cluster.gomod_drift import Change, changes, refused, requirements

GRAPH = """\
podgrace.local/clusterbuild sigs.k8s.io/kwok@v0.8.0
sigs.k8s.io/kwok@v0.8.0 k8s.io/api@v0.36.1
sigs.k8s.io/kwok@v0.8.0 golang.org/x/net@v0.51.0
sigs.k8s.io/kwok@v0.8.0 go@1.26
k8s.io/api@v0.36.1 k8s.io/apimachinery@v0.36.1
sigs.k8s.io/kwok@v0.7.0 k8s.io/api@v0.35.0
"""


def test_requirements_are_the_owners_edges_only() -> None:
    assert requirements(GRAPH, "sigs.k8s.io/kwok@v0.8.0") == {
        "k8s.io/api": "v0.36.1",
        "golang.org/x/net": "v0.51.0",
        "go": "1.26",
    }


def test_changes_list_what_moved_and_skip_what_is_not_compiled_in() -> None:
    required = {
        "k8s.io/api": "v0.36.1",
        "golang.org/x/net": "v0.51.0",
        "go": "1.26",
        "k8s.io/utils": "v0.0.0",
    }
    resolved = {"k8s.io/api": "v0.36.3", "golang.org/x/net": "v0.51.0", "k8s.io/streaming": "v0.36.3"}
    assert changes(required, resolved) == [Change("k8s.io/api", "v0.36.1", "v0.36.3")]


@pytest.mark.parametrize(
    ("change", "is_refused"),
    [
        (Change("k8s.io/api", "v0.36.1", "v0.36.3"), False),  # patch upgrade: the point of the pinning
        (Change("k8s.io/client-go", "v0.37.0", "v0.37.1"), False),
        (Change("k8s.io/api", "v0.36.3", "v0.37.0"), True),  # another minor: other APIs
        (Change("k8s.io/api", "v0.36.3", "v0.36.1"), True),  # downwards, even within the minor
        (Change("k8s.io/api", "v0.36.3", "v1.36.3"), True),
        (Change("k8s.io/api", "v0.36.1", "master"), True),  # not a version it can compare
        (Change("k8s.io/utils", "v0.0.0-20260210185600-b8788abfbbc2", "v0.0.0-20260626114624-be9331"), False),
        (Change("golang.org/x/net", "v0.57.0", "v0.60.0"), False),  # listed, not refused: not k8s.io
        (Change("github.com/fatih/color", "v1.13.0", "v1.19.0"), False),
        (Change("sigs.k8s.io/structured-merge-diff/v6", "v6.3.2", "v6.4.0"), False),  # only k8s.io/ is strict
    ],
)
def test_refused_only_k8s_io_beyond_a_patch(change: Change, is_refused: bool) -> None:
    assert refused(change) is is_refused
