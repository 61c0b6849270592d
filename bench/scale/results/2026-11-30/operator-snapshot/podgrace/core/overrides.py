"""Per-Deployment `podgrace.dev/...` annotations, parsed into typed overrides with specific errors."""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import StrEnum
from typing import TypeVar

from podgrace.core.constants import (
    ANN_CONTAINERS,
    ANN_DRAIN,
    ANN_EXISTING_PRESTOP,
    ANN_GRACE,
    ANN_MODE,
    ANN_PRESTOP_SLEEP,
    ANN_PROFILE,
    ANNOTATION_PREFIX,
    KNOWN_ANNOTATIONS,
    MAX_DRAIN_SECONDS,
    MAX_GRACE_SECONDS,
    MAX_SLEEP_SECONDS,
)
from podgrace.core.models import ExistingPreStop, Mode, Overrides

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


def profile_name(annotations: Mapping[str, object]) -> str | None:
    """The ShutdownProfile a Deployment's annotations name, stripped; None: it has not opted in."""
    raw = annotations.get(ANN_PROFILE)
    return None if raw is None else str(raw).strip()


def parse(annotations: Mapping[str, str]) -> Overrides:
    """Parse podgrace's annotations. Errors are collected, not raised: the caller reports them all."""
    errors: list[str] = []
    profile = profile_name(annotations)
    if profile is not None and not _DNS_SUBDOMAIN.match(profile):
        errors.append(f"{ANN_PROFILE}: {profile!r} is not a valid ShutdownProfile name")
    mode = _choice(annotations, ANN_MODE, Mode, errors) or Mode.ENFORCE
    existing = _choice(annotations, ANN_EXISTING_PRESTOP, ExistingPreStop, errors)
    containers = None
    raw_containers = annotations.get(ANN_CONTAINERS)
    if raw_containers is not None:
        names = [n.strip() for n in raw_containers.split(",") if n.strip()]
        bad = [n for n in names if not _DNS_LABEL.match(n)]
        if not names:
            errors.append(f"{ANN_CONTAINERS}: expected a comma-separated list of container names")
        elif bad:
            errors.append(f"{ANN_CONTAINERS}: {', '.join(repr(b) for b in bad)} not valid container names")
        containers = frozenset(names)
    unknown = sorted(k for k in annotations if k.startswith(ANNOTATION_PREFIX) and k not in KNOWN_ANNOTATIONS)
    errors.extend(f"{k}: unknown podgrace annotation" for k in unknown)
    return Overrides(
        profile=profile,
        mode=mode,
        pre_stop_sleep_seconds=_seconds(annotations, ANN_PRESTOP_SLEEP, 0, MAX_SLEEP_SECONDS, errors),
        drain_seconds=_seconds(annotations, ANN_DRAIN, 0, MAX_DRAIN_SECONDS, errors),
        termination_grace_period_seconds=_seconds(annotations, ANN_GRACE, 1, MAX_GRACE_SECONDS, errors),
        containers=containers,
        existing_pre_stop=existing,
        errors=tuple(errors),
    )


E = TypeVar("E", bound=StrEnum)


def _choice(annotations: Mapping[str, str], key: str, choices: type[E], errors: list[str]) -> E | None:
    raw = annotations.get(key)
    if raw is None:
        return None
    try:
        return choices(raw.strip())
    except ValueError:
        errors.append(f"{key}: {raw!r} is not one of {', '.join(c.value for c in choices)}")
        return None


def _seconds(annotations: Mapping[str, str], key: str, low: int, high: int, errors: list[str]) -> int | None:
    raw = annotations.get(key)
    if raw is None:
        return None
    text = raw.strip()
    if not re.fullmatch(r"[0-9]+", text):
        errors.append(f"{key}: {raw!r} is not a whole number of seconds")
        return None
    value = int(text)
    if not low <= value <= high:
        errors.append(f"{key}: {value} is out of range {low}..{high}")
        return None
    return value
