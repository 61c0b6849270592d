"""The benchmark's objects: N opted-in Deployments across many namespaces, a fan-out ShutdownProfile, a pool
of not-yet-opted-in Deployments for the churn, and an identical copy of the N for the floor.

Deployments have `replicas: 0`. podgrace reconciles the Deployment object, never its pods, so its work is
the same either way; but every Deployment still gets a ReplicaSet and a rollout from the real
controller-manager (the watch events podgrace sees after each of its writes are real). With one replica,
5,000 Deployments would be 5,000 pods to schedule and for kwok to "run", plus 5,000 more at the rollout
podgrace causes, all on the same 2 cores as the API server and podgrace: the benchmark would measure the
scheduler and kwok.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import time
from typing import Any

from bench.scale.client import Client, bounded
from tests.support.podgrace_env import deployment

SET_LABEL = "bench.podgrace.dev/set"
FANOUT_PROFILE = "bench-fanout"
DEFAULT_PROFILE = "nginx-php-fpm"
PROFILE_ANN = "podgrace.dev/profile"
SLEEP_ANN = "podgrace.dev/prestop-sleep-seconds"


@dataclasses.dataclass(frozen=True)
class Item:
    namespace: str
    name: str
    profile: str | None

    @property
    def key(self) -> tuple[str, str]:
        return self.namespace, self.name


def layout(count: int, *, prefix: str, per_namespace: int, fanout: int, profile: bool = True) -> list[Item]:
    """`count` Deployments, `per_namespace` to a namespace; `fanout` of them (spread evenly over all
    namespaces) name the fan-out profile, the rest the built-in nginx-php-fpm (or none: the churn pool)."""
    stride = max(1, count // fanout) if fanout else 0
    items = []
    for i in range(count):
        name = None
        if profile:
            name = FANOUT_PROFILE if stride and i % stride == 0 and i // stride < fanout else DEFAULT_PROFILE
        items.append(Item(f"{prefix}-{i // per_namespace:04d}", f"app-{i:05d}", name))
    return items


def manifest(item: Item, set_name: str) -> dict[str, Any]:
    annotations = {PROFILE_ANN: item.profile} if item.profile else {}
    obj = deployment(item.name, item.namespace, annotations)
    obj["metadata"]["labels"] = {SET_LABEL: set_name}
    obj["spec"]["replicas"] = 0
    return obj


async def create_namespaces(client: Client, names: set[str], set_name: str) -> None:
    async def one(ns: str) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": ns, "labels": {SET_LABEL: set_name}},
        }
        status, payload = await client.request("POST", "/api/v1/namespaces", body)
        if status not in (201, 409):
            raise RuntimeError(f"namespace {ns}: {status} {payload}")

    await bounded(32, [lambda ns=ns: one(ns) for ns in sorted(names)])


async def create_deployments(
    client: Client, items: list[Item], set_name: str, concurrency: int = 48
) -> float:
    """Create them (namespaces first) with concurrent POSTs; returns the seconds it took."""
    started = time.monotonic()
    await create_namespaces(client, {i.namespace for i in items}, set_name)

    async def one(item: Item) -> None:
        path = f"/apis/apps/v1/namespaces/{item.namespace}/deployments"
        for attempt in range(5):
            status, payload = await client.request("POST", path, manifest(item, set_name), parse=False)
            if status in (201, 409):
                return
            if status != 429 and status < 500:
                raise RuntimeError(f"creating {item.namespace}/{item.name}: {status} {payload}")
            await asyncio.sleep(0.2 * 2**attempt)
        raise RuntimeError(f"creating {item.namespace}/{item.name}: gave up")

    await bounded(concurrency, [lambda it=it: one(it) for it in items])
    return time.monotonic() - started


async def list_set(client: Client, set_name: str) -> list[dict[str, Any]]:
    return await client.list_all("/apis/apps/v1/deployments", label_selector=f"{SET_LABEL}={set_name}")


def settled(objs: list[dict[str, Any]], count: int, generation: int | None = None) -> bool:
    """Every Deployment is there and the controller-manager has observed its current generation."""
    if len(objs) < count:
        return False
    for obj in objs:
        gen = obj["metadata"].get("generation")
        if (obj.get("status") or {}).get("observedGeneration") != gen:
            return False
        if generation is not None and gen != generation:
            return False
    return True


async def wait_settled(
    client: Client, set_name: str, count: int, *, generation: int | None = None, timeout: float = 900
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        objs = await list_set(client, set_name)
        if settled(objs, count, generation):
            return objs
        if time.monotonic() > deadline:
            done = sum(
                1
                for o in objs
                if (o.get("status") or {}).get("observedGeneration") == o["metadata"]["generation"]
            )
            raise TimeoutError(f"{set_name}: {done}/{count} Deployments settled after {timeout:.0f}s")
        await asyncio.sleep(2.0)


def carries_settings(obj: dict[str, Any]) -> bool:
    containers = obj["spec"]["template"]["spec"]["containers"]
    return all("preStop" in (c.get("lifecycle") or {}) for c in containers)


def fanout_profile(base: dict[str, Any]) -> dict[str, Any]:
    """A copy of a built-in profile under the fan-out name."""
    return {
        "apiVersion": base["apiVersion"],
        "kind": base["kind"],
        "metadata": {"name": FANOUT_PROFILE},
        "spec": copy.deepcopy(base["spec"]),
    }
