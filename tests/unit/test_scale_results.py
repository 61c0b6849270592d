"""The scale tables in README.md and bench/scale/README.md are the committed benchmark results rendered by
the benchmark's own `table()`, not figures typed by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench.scale.report import table

ROOT = Path(__file__).resolve().parents[2]

RESULTS = ROOT / "bench" / "scale" / "results"


def rendered(day: str) -> str:
    files = list((RESULTS / day).glob("result-*.json"))
    assert files, f"no results for {day}"
    return table(json.loads(f.read_text()) for f in files)  # table() orders the rows by size


@pytest.mark.parametrize(
    ("document", "day"),
    [
        ("README.md", "2026-11-26"),
        ("bench/scale/README.md", "2026-11-26"),
        ("bench/scale/README.md", "2026-11-22"),
        ("bench/scale/README.md", "2026-11-30"),
        ("bench/scale/README.md", "2026-11-30/no-admission-policy"),
        ("bench/scale/README.md", "2026-11-30/patch-writes"),
        ("bench/scale/README.md", "2026-11-30/listed-writes"),
    ],
)
def test_documented_table_is_the_committed_results(document: str, day: str) -> None:
    assert rendered(day) in (ROOT / document).read_text(), (
        f"{document}'s table for {day} differs from python -m bench.scale --table on results/{day}"
    )
