"""The faults the soak injects between podgrace and the API server, as fault-proxy rules, and what they
did (from the proxy's own record of every request).

Shares are of podgrace's requests (Kopf's too: it uses the same kubeconfig); rules are tried in order and
each fires for its share of the requests that reach it, so the effective shares are slightly lower than
listed for the later ones. Watches are exempt from latency and lost answers (a delayed or unanswered
stream is a cut stream, which `drop_streams` and the restarts already cause), not from resets and errors.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from tests.support.fault_proxy import FaultProxy, Rule

RETRY_AFTER = 2  # seconds, in every injected 429
NOT_WATCH = r"^(?!.*watch=(true|1))"
OBJECT_PATH = re.compile(r"^/apis/apps/v1/namespaces/([^/]+)/deployments/([^/]+)$")


def rules(scale: float = 1.0) -> dict[str, Rule]:
    """The soak's rules by fault type; `scale` multiplies every share."""
    return {
        "latency 0.2 s": Rule(query=NOT_WATCH, delay=0.2, share=0.08 * scale),
        "latency 1.5 s": Rule(query=NOT_WATCH, delay=1.5, share=0.02 * scale),
        "reset": Rule(reset=True, share=0.02 * scale),
        "lost answer": Rule(method="PATCH", query=NOT_WATCH, reset_after=True, share=0.02 * scale),
        "429 Retry-After": Rule(status=429, retry_after=RETRY_AFTER, share=0.03 * scale),
        "503": Rule(status=503, share=0.03 * scale),
    }


def install(proxy: FaultProxy, by_type: dict[str, Rule]) -> None:
    for rule in by_type.values():
        proxy.add(rule)


def injected(by_type: dict[str, Rule]) -> dict[str, int]:
    return {name: rule.hits for name, rule in by_type.items()}


def retry_after_gaps(
    proxy: FaultProxy, requests: list[Any], exempt: set[tuple[str, str]]
) -> tuple[list[float], list[tuple[str, str, float]]]:
    """For every 429 the proxy answered on one Deployment's URL: the time until podgrace's next request to
    that Deployment reached the API server (audit log `requests`, oldest first). Returns all gaps and those
    shorter than RETRY_AFTER. `exempt`: Deployments a profile's fan-out may reconcile at the same time as
    the work queue (the fan-out runs outside the queue), whose next request may be the other one's."""
    by_key: dict[tuple[str, str], list[float]] = {}
    for r in requests:
        by_key.setdefault((r.namespace, r.name), []).append(r.received)
    gaps: list[float] = []
    short: list[tuple[str, str, float]] = []
    for seen in proxy.requests(path=OBJECT_PATH.pattern):
        if not (seen.injected and seen.status == 429):
            continue
        match = OBJECT_PATH.match(seen.path)
        assert match is not None
        key = (match.group(1), match.group(2))
        if key in exempt:
            continue
        later = [t for t in by_key.get(key, []) if t > seen.at]
        if not later:
            continue  # no request since (e.g. the 429 met the last retry of a change already settled)
        gap = min(later) - seen.at
        gaps.append(gap)
        if gap < RETRY_AFTER:
            short.append((*key, gap))
    return gaps, short


def answered(proxy: FaultProxy) -> Counter[str]:
    """The proxy's requests by outcome: passed (by status class), injected, connection failed."""
    out: Counter[str] = Counter()
    for seen in proxy.requests():
        if seen.injected:
            out["injected"] += 1
        elif seen.status == 0:
            out["upstream unreachable"] += 1
        else:
            out[f"{seen.status // 100}xx"] += 1
    return out
