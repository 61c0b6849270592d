"""Output of long session set-up (cold builds, a cluster or node starting) shown as it happens."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import pytest


def uncaptured(config: pytest.Config) -> AbstractContextManager[object]:
    """pytest's capture suspended for the block (nothing to suspend without its capture plugin)."""
    capman = config.pluginmanager.getplugin("capturemanager")
    if capman is None:
        return nullcontext()
    cm: AbstractContextManager[object] = capman.global_and_fixture_disabled()
    return cm
