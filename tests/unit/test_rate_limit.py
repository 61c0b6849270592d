"""client-go's default controller rate limiter: per-item exponential backoff and an overall bucket."""

from __future__ import annotations

import itertools

from podgrace.controller.rate_limit import ItemBackoff, RateLimiter, TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_per_item_backoff_doubles_from_5ms_to_a_1000s_cap_and_resets() -> None:
    backoff = ItemBackoff()
    delays = [backoff.when("a") for _ in range(20)]
    assert delays[:4] == [0.005, 0.01, 0.02, 0.04]
    assert delays[-1] == 1000.0
    assert all(b >= a for a, b in itertools.pairwise(delays))
    assert backoff.when("b") == 0.005  # per item
    backoff.forget("a")
    assert backoff.failures("a") == 0
    assert backoff.when("a") == 0.005
    assert [backoff.when("c") for _ in range(200)][-1] == 1000.0


def test_the_bucket_allows_a_burst_of_100_then_10_per_second() -> None:
    clock = Clock()
    bucket = TokenBucket(clock=clock)
    assert [bucket.when() for _ in range(100)] == [0.0] * 100
    assert round(bucket.when(), 6) == 0.1
    assert round(bucket.when(), 6) == 0.2
    clock.now += 10.0  # refilled (but never above the burst)
    assert bucket.when() == 0.0


def test_the_limiter_takes_the_larger_delay() -> None:
    clock = Clock()
    limiter = RateLimiter(bucket=TokenBucket(clock=clock))
    delays = [limiter.when(("ns", f"d{i}")) for i in range(150)]  # 150 Deployments failing at once
    assert delays[:100] == [0.005] * 100
    assert round(delays[-1], 6) == 5.0  # the 150th waits for its token: 50 beyond the burst at 10/s
    assert limiter.failures(("ns", "d0")) == 1
