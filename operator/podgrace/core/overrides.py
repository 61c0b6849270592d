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
    ANN_NO_SHELL,
    ANN_PRESTOP_SLEEP,
    ANN_PROFILE,
    ANNOTATION_PREFIX,
    KNOWN_ANNOTATIONS,
    MAX_ANNOTATION_VALUE,
    MAX_DRAIN_SECONDS,
    MAX_GRACE_SECONDS,
    MAX_NAMED_UNKNOWN,
    MAX_QUOTED_VALUE,
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
    """Parse podgrace's annotations. Errors are collected, not raised: the caller reports them all.

    A value longer than MAX_ANNOTATION_VALUE is an error and is not read further; errors quote at most
    MAX_QUOTED_VALUE characters of a value."""
    errors: list[str] = []
    too_long = sorted(
        k
        for k, v in annotations.items()
        if k in KNOWN_ANNOTATIONS and isinstance(v, str) and len(v) > MAX_ANNOTATION_VALUE
    )
    profile = profile_name(annotations)
    if too_long:
        errors.extend(
            f"{k}: the value is {len(annotations[k])} characters long, more than {MAX_ANNOTATION_VALUE}"
            for k in too_long
        )
        annotations = {k: v for k, v in annotations.items() if k not in too_long}
    if profile is not None and ANN_PROFILE in too_long:
        # Still opted in (an invalid opt-in leaves the Deployment as it is; it is not an opt-out).
        profile = profile[:MAX_QUOTED_VALUE]
    elif profile is not None and not _DNS_SUBDOMAIN.match(profile):
        errors.append(f"{ANN_PROFILE}: {quote(profile)} is not a valid ShutdownProfile name")
    mode = _choice(annotations, ANN_MODE, Mode, errors) or Mode.ENFORCE
    existing = _choice(annotations, ANN_EXISTING_PRESTOP, ExistingPreStop, errors)
    raw_containers = annotations.get(ANN_CONTAINERS)
    containers = None if raw_containers is None else _names(ANN_CONTAINERS, raw_containers, errors)
    unknown = sorted(k for k in annotations if k.startswith(ANNOTATION_PREFIX) and k not in KNOWN_ANNOTATIONS)
    errors.extend(f"{k}: unknown podgrace annotation" for k in unknown[:MAX_NAMED_UNKNOWN])
    if len(unknown) > MAX_NAMED_UNKNOWN:
        errors.append(f"{len(unknown) - MAX_NAMED_UNKNOWN} more unknown podgrace annotations")
    return Overrides(
        profile=profile,
        mode=mode,
        pre_stop_sleep_seconds=_seconds(annotations, ANN_PRESTOP_SLEEP, 0, MAX_SLEEP_SECONDS, errors),
        drain_seconds=_seconds(annotations, ANN_DRAIN, 0, MAX_DRAIN_SECONDS, errors),
        termination_grace_period_seconds=_seconds(annotations, ANN_GRACE, 1, MAX_GRACE_SECONDS, errors),
        containers=containers,
        existing_pre_stop=existing,
        no_shell=_no_shell(annotations.get(ANN_NO_SHELL), errors),
        errors=tuple(errors),
    )


def _names(key: str, raw: str, errors: list[str]) -> frozenset[str]:
    """A comma-separated list of container names (DNS labels)."""
    names = [n.strip() for n in raw.split(",") if n.strip()]
    bad = [n for n in names if not _DNS_LABEL.match(n)]
    if not names:
        errors.append(f"{key}: expected a comma-separated list of container names")
    elif bad:
        named = ", ".join(quote(b) for b in bad[:MAX_NAMED_UNKNOWN])
        more = f" and {len(bad) - MAX_NAMED_UNKNOWN} more" if len(bad) > MAX_NAMED_UNKNOWN else ""
        errors.append(f"{key}: {named}{more} not valid container names")
    return frozenset(names)


def _no_shell(raw: str | None, errors: list[str]) -> bool | frozenset[str] | None:
    """`true` / `false` (any case), else container names; `true` and `false` win over containers of those
    names."""
    if raw is None:
        return None
    flag = raw.strip().lower()
    if flag in ("true", "false"):
        return flag == "true"
    names = _names(ANN_NO_SHELL, raw, errors)
    if not names:  # say what the value may also be
        errors[-1] = f"{ANN_NO_SHELL}: expected true, false or a comma-separated list of container names"
    return names


E = TypeVar("E", bound=StrEnum)


def _choice(annotations: Mapping[str, str], key: str, choices: type[E], errors: list[str]) -> E | None:
    raw = annotations.get(key)
    if raw is None:
        return None
    try:
        return choices(raw.strip())
    except ValueError:
        errors.append(f"{key}: {quote(raw)} is not one of {', '.join(c.value for c in choices)}")
        return None


def _seconds(annotations: Mapping[str, str], key: str, low: int, high: int, errors: list[str]) -> int | None:
    raw = annotations.get(key)
    if raw is None:
        return None
    text = raw.strip()
    if not re.fullmatch(r"[0-9]+", text):
        errors.append(f"{key}: {quote(raw)} is not a whole number of seconds")
        return None
    value = int(text)
    if not low <= value <= high:
        shown = str(value) if len(text) <= MAX_QUOTED_VALUE else quote(text)
        errors.append(f"{key}: {shown} is out of range {low}..{high}")
        return None
    return value


def quote(value: str) -> str:
    """A value for an error message: repr'd, and at most MAX_QUOTED_VALUE characters of it."""
    if len(value) <= MAX_QUOTED_VALUE:
        return repr(value)
    return f"{value[:MAX_QUOTED_VALUE]!r}... ({len(value)} characters)"
