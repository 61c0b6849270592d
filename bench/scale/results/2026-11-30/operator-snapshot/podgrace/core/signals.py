"""The stop signals podgrace names: in profiles, in lifecycle.stopSignal and in its own preStop hooks."""

from __future__ import annotations

from enum import StrEnum


class Signal(StrEnum):
    """Stop signals a profile may name (a subset of what Kubernetes' lifecycle.stopSignal accepts)."""

    SIGTERM = "SIGTERM"
    SIGQUIT = "SIGQUIT"
    SIGWINCH = "SIGWINCH"
    SIGINT = "SIGINT"
    SIGHUP = "SIGHUP"
    SIGUSR1 = "SIGUSR1"
    SIGUSR2 = "SIGUSR2"
