"""podgrace run's garbage-collector settings (operator/podgrace/controller/gctune.py)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from podgrace.controller import gctune


@pytest.fixture
def restored_gc() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


@pytest.mark.usefixtures("restored_gc")
def test_tune_sets_the_thresholds_and_freezes_what_is_alive() -> None:
    gc.unfreeze()
    gctune.tune()
    assert gc.get_threshold() == gctune.THRESHOLDS
    assert gc.get_freeze_count() > 0


def test_generation_zero_threshold_is_raised_from_the_default() -> None:
    # The point of the module: collect generation 0 far less often than CPython's 700.
    assert gctune.THRESHOLDS[0] >= 10 * 700
