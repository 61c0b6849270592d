"""The floor: what the same server-side applies cost with no operator around them.

A plain aiohttp client with podgrace's credentials (the chart's ServiceAccount token) sends exactly the
requests podgrace sends on the initial sync - bodies built by podgrace's own planner and `apply_body`,
`fieldManager=podgrace`, `force` where podgrace would force - with the same concurrency, against the same API
server, on an identical copy of the Deployments. Bodies are built before the clock starts; responses are
read but not parsed.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterable
from typing import Any

from bench.scale.client import APPLY, Client, bounded

from podgrace.core.apply_body import apply_body
from podgrace.core.capabilities import Capabilities
from podgrace.core.constants import FIELD_MANAGER
from podgrace.core.planner import Outcome, plan
from podgrace.core.profile_store import ProfileStore
from podgrace.core.workload_parser import from_object


@dataclasses.dataclass(frozen=True)
class Apply:
    namespace: str
    name: str
    body: bytes
    force: bool


@dataclasses.dataclass
class FloorResult:
    requests: int
    seconds: float
    statuses: dict[int, int]


def build(
    deployments: Iterable[dict[str, Any]], profiles: Iterable[dict[str, Any]], capabilities: Capabilities
) -> list[Apply]:
    store = ProfileStore()
    for body in profiles:
        store.upsert(body)
    valid = store.valid()
    out = []
    for obj in deployments:
        meta = obj["metadata"]
        result = plan(from_object(obj, with_ownership=True), valid, capabilities)
        if result.outcome is not Outcome.MANAGED:
            raise RuntimeError(f"floor: {meta['namespace']}/{meta['name']} is not managed: {result.errors}")
        body = apply_body(meta["namespace"], meta["name"], result)
        out.append(Apply(meta["namespace"], meta["name"], json.dumps(body).encode(), result.force))
    return out


async def run(client: Client, applies: list[Apply], concurrency: int) -> FloorResult:
    statuses: dict[int, int] = {}

    async def one(a: Apply) -> None:
        params = {"fieldManager": FIELD_MANAGER}
        if a.force:
            params["force"] = "true"
        status, _ = await client.request(
            "PATCH",
            f"/apis/apps/v1/namespaces/{a.namespace}/deployments/{a.name}",
            a.body,
            params=params,
            content_type=APPLY,
            parse=False,
        )
        statuses[status] = statuses.get(status, 0) + 1

    started = time.monotonic()
    await bounded(concurrency, [lambda a=a: one(a) for a in applies])
    return FloorResult(len(applies), time.monotonic() - started, statuses)
