"""When a failed reconcile is tried again: client-go's default controller rate limiter.

The delay before a Deployment's next attempt is the larger of
- its own exponential backoff: 5 ms after the first failure, doubling with each consecutive one, capped at
  1000 s (client-go's `ItemExponentialFailureRateLimiter(5ms, 1000s)`), reset when a reconcile of it
  succeeds or it is deleted, and
- an overall token bucket shared by all retries: 10 per second, bursts of 100 (`BucketRateLimiter`), so
  that thousands of Deployments failing at once (an API server outage) come back at a bounded rate,

and never earlier than a `Retry-After` the API server sent with its 429 or 5xx (`retry_after_seconds`).
"""

from __future__ import annotations

import datetime
import email.utils
import time
from collections.abc import Callable, Hashable

BASE_DELAY = 0.005
MAX_DELAY = 1000.0
QPS = 10.0
BURST = 100
# The longest Retry-After podgrace obeys: the API server's priority and fairness sends 1 s, a load
# balancer or a proxy in front of it may send anything (an HTTP date a day ahead); beyond this the
# backoff's own doubling, which continues, takes over.
MAX_RETRY_AFTER = 60.0


def retry_after_seconds(value: str | None, now: Callable[[], float] = time.time) -> float | None:
    """A Retry-After header (RFC 9110: delay-seconds or an HTTP date) as seconds to wait, capped at
    MAX_RETRY_AFTER; None when absent or unreadable (then only the backoff applies)."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        seconds = float(int(text[:12]))  # twelve digits are far beyond the cap; no huge integers
    else:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # "-0000": RFC 9110 dates are GMT, so taken as such
            when = when.replace(tzinfo=datetime.UTC)
        seconds = max(0.0, when.timestamp() - now())
    return min(seconds, MAX_RETRY_AFTER)


class ItemBackoff:
    def __init__(self, base: float = BASE_DELAY, cap: float = MAX_DELAY) -> None:
        self._base = base
        self._cap = cap
        self._failures: dict[Hashable, int] = {}

    def when(self, key: Hashable) -> float:
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        if failures >= 64:  # 2**64 * 5 ms is far beyond any cap; no huge floats
            return self._cap
        return float(min(self._base * 2**failures, self._cap))

    def failures(self, key: Hashable) -> int:
        return self._failures.get(key, 0)

    def forget(self, key: Hashable) -> None:
        self._failures.pop(key, None)


class TokenBucket:
    """golang.org/x/time/rate's Reserve(): take a token now, or the time until one is there."""

    def __init__(
        self, qps: float = QPS, burst: int = BURST, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._qps = qps
        self._burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()

    def when(self) -> float:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._qps)
        self._last = now
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self._qps


class RateLimiter:
    """client-go's DefaultControllerRateLimiter: the larger of the two delays."""

    def __init__(self, backoff: ItemBackoff | None = None, bucket: TokenBucket | None = None) -> None:
        self.backoff = backoff or ItemBackoff()
        self.bucket = bucket or TokenBucket()

    def when(self, key: Hashable) -> float:
        return max(self.backoff.when(key), self.bucket.when())

    def failures(self, key: Hashable) -> int:
        """Consecutive failed attempts of `key` (0 after a success)."""
        return self.backoff.failures(key)

    def forget(self, key: Hashable) -> None:
        self.backoff.forget(key)
