"""podgrace's writes to workloads that went through, from the API server's audit log.

A patch of podgrace names the resourceVersion it read; when a controller's status update came in between,
the API server refuses it with 409, nothing changes, and podgrace plans again on a fresh read. Those
refusals are checked to be 409s only, at most CONFLICT_RETRIES per write that went through (or per
reconcile that found nothing left to write), and left out of the list."""

from __future__ import annotations

from typing import Any

from tests.support.podgrace_env import OPERATOR_USER

CONFLICT_RETRIES = 3  # controller/reconciler.py: a 409 is planned again at once, up to 3 times
WORKLOADS = ("deployments", "statefulsets", "daemonsets")


def accepted_writes(
    cluster: Any, since: float | None, resources: tuple[str, ...] = WORKLOADS, namespace: str | None = None
) -> list[Any]:
    events = cluster.write_events(user=OPERATOR_USER, since=since, namespace=namespace)
    writes = [w for w in events if w.resource in resources]
    done = [w for w in writes if w.code < 400]
    refused = [(w.verb, w.resource, w.name, w.code) for w in writes if w.code >= 400]
    assert {r[3] for r in refused} <= {409}, refused
    assert len(refused) <= CONFLICT_RETRIES * max(1, len(done)), refused
    return done
