"""The timing formula: when each container may get its graceful stop, and the grace period that fits.

- A container gets its stop signal after its preStop sleep, which covers endpoint and load-balancer
  propagation: until then new requests may still arrive.
- php-fpm's graceful QUIT is not a drain when `process_control_timeout = 0` (its default): busy workers
  are terminated at once. So php-fpm is signalled only when no request can be in flight: after its own
  propagation plus the longest request.
- `stopAfter` orders containers: php-fpm behind nginx is signalled only once nginx has stopped taking
  requests (nginx's signal) and finished the longest one (nginx's drain).
- The grace period covers the latest container's signal plus its drain, plus a margin, and never goes
  below Kubernetes' default of 30 s.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from podgrace.core.constants import KUBERNETES_DEFAULT_GRACE
from podgrace.core.signals import Role, Signal


@dataclass(frozen=True)
class Expectation:
    """What a container of a known role needs, from a profile rule (and the Deployment's overrides)."""

    container: str
    rule: str
    role: Role
    propagation_seconds: int
    drain_seconds: int
    signal: Signal | None
    after: tuple[str, ...] = ()  # containers (by name) that must have drained first


def signal_delays(expectations: Iterable[Expectation]) -> dict[str, int]:
    """Seconds from pod deletion until each container may receive its graceful stop."""
    by_name = {e.container: e for e in expectations}
    delays: dict[str, int] = {}

    def delay(name: str) -> int:
        if name not in delays:
            e = by_name[name]
            own = e.propagation_seconds + (e.drain_seconds if e.role is Role.PHP_FPM else 0)
            upstream = [delay(a) + by_name[a].drain_seconds for a in e.after if a in by_name]
            delays[name] = max([own, *upstream])
        return delays[name]

    for name in by_name:
        delay(name)
    return delays


def required_grace(expectations: Iterable[Expectation], delays: Mapping[str, int]) -> int:
    """Seconds the pod needs from deletion to the end of the last drain (no margin)."""
    return max((delays[e.container] + e.drain_seconds for e in expectations), default=0)


def grace_with_margin(required: int, margin: int) -> int:
    return max(required + margin, KUBERNETES_DEFAULT_GRACE)
