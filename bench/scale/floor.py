"""The floor: what the same writes cost with no operator around them.

A plain aiohttp client with podgrace's credentials (the chart's ServiceAccount token) sends exactly the
writes podgrace sends on the initial sync - the strategic merge patches of podgrace's own planner and
`write_patch` (with the replaced-hook annotation, as the reconciler builds them), `fieldManager=podgrace`, the
listed resourceVersion in each - with the same concurrency, against the same API server, on an identical copy
of the Deployments. Planned on the list it has just made, it needs no read before a write (podgrace reads
each Deployment afresh before writing, planned as it is on a watch event's body: that GET is podgrace's
cost, not the floor's). Patches are built before the clock starts; responses are read but not parsed.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterable
from typing import Any

from bench.scale.client import STRATEGIC, Client, bounded

from podgrace.core import replaced_hooks
from podgrace.core.apply_body import pod_spec_fields
from podgrace.core.capabilities import Capabilities
from podgrace.core.constants import FIELD_MANAGER
from podgrace.core.planner import Outcome, plan
from podgrace.core.profile_store import ProfileStore
from podgrace.core.workload_parser import from_object
from podgrace.core.write_patch import write_patch


@dataclasses.dataclass(frozen=True)
class Write:
    namespace: str
    name: str
    body: bytes


@dataclasses.dataclass
class FloorResult:
    requests: int
    seconds: float
    statuses: dict[int, int]


def build(
    deployments: Iterable[dict[str, Any]], profiles: Iterable[dict[str, Any]], capabilities: Capabilities
) -> list[Write]:
    store = ProfileStore()
    for body in profiles:
        store.upsert(body)
    valid = store.valid()
    out = []
    for obj in deployments:
        meta = obj["metadata"]
        workload = from_object(obj, with_ownership=True)
        result = plan(workload, valid, capabilities)
        if result.outcome is not Outcome.MANAGED:
            raise RuntimeError(f"floor: {meta['namespace']}/{meta['name']} is not managed: {result.errors}")
        desired = pod_spec_fields(result)
        patch = write_patch(obj, desired, replaced_hooks.annotation(obj, result, workload.ownership))
        if patch is None:
            raise RuntimeError(f"floor: {meta['namespace']}/{meta['name']} has nothing to write")
        out.append(Write(meta["namespace"], meta["name"], json.dumps(patch).encode()))
    return out


async def run(client: Client, writes: list[Write], concurrency: int) -> FloorResult:
    statuses: dict[int, int] = {}

    async def one(w: Write) -> None:
        status, _ = await client.request(
            "PATCH",
            f"/apis/apps/v1/namespaces/{w.namespace}/deployments/{w.name}",
            w.body,
            params={"fieldManager": FIELD_MANAGER},
            content_type=STRATEGIC,
            parse=False,
        )
        statuses[status] = statuses.get(status, 0) + 1

    started = time.monotonic()
    await bounded(concurrency, [lambda w=w: one(w) for w in writes])
    return FloorResult(len(writes), time.monotonic() - started, statuses)
