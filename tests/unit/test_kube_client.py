"""KubeClient's request handling against a small aiohttp server: bodies out, JSON in, errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import kopf
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from podgrace.controller.kube_api import APPLY, PARTIAL_METADATA, ApiError, KubeClient
from podgrace.controller.workload_key import Key

DEPLOYMENT = "/apis/apps/v1/namespaces/shop/deployments/web"


@pytest.fixture
async def server() -> AsyncIterator[tuple[TestServer, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []
    replies: dict[str, tuple[int, bytes]] = {
        "web": (200, orjson.dumps({"metadata": {"name": "web", "generation": 2}})),
        "taken": (409, orjson.dumps({"kind": "Status", "reason": "Conflict", "message": "owned by kubectl"})),
        "broken": (500, b"upstream connect error"),
        "garbled": (200, b"<html>not json</html>"),
        "listed": (200, b"[1, 2]"),
    }

    async def deployment(request: web.Request) -> web.Response:
        seen.append(
            {
                "method": request.method,
                "path": request.path,
                "query": dict(request.query),
                "content_type": request.headers.get("Content-Type"),
                "accept": request.headers.get("Accept"),
                "body": orjson.loads(await request.read()) if request.can_read_body else None,
            }
        )
        status, body = replies.get(
            request.match_info["name"], (404, orjson.dumps({"kind": "Status", "reason": "NotFound"}))
        )
        return web.Response(status=status, body=body)

    app = web.Application()
    app.router.add_route("*", "/apis/apps/v1/namespaces/{ns}/{plural}/{name}", deployment)
    async with TestServer(app) as test_server:
        yield test_server, seen


def client_for(test_server: TestServer) -> KubeClient:
    return KubeClient(kopf.ConnectionInfo(server=str(test_server.make_url("/"))))


async def test_apply_sends_json_with_the_field_manager_and_returns_the_object(server: Any) -> None:
    test_server, seen = server
    client = client_for(test_server)
    try:
        key = Key("Deployment", "shop", "web")
        result = await client.apply_workload(key, {"spec": {"x": "ü"}}, force=True)
    finally:
        await client.close()
    assert result == {"metadata": {"name": "web", "generation": 2}}
    assert seen == [
        {
            "method": "PATCH",
            "path": DEPLOYMENT,
            "query": {"fieldManager": "podgrace", "force": "true"},
            "content_type": APPLY,
            "accept": PARTIAL_METADATA,  # the reconciler reads only the metadata of what it wrote
            "body": {"spec": {"x": "ü"}},
        }
    ]


async def test_a_dry_run_apply_asks_for_the_whole_object(server: Any) -> None:
    test_server, seen = server
    client = client_for(test_server)
    try:
        await client.apply_workload(Key("Deployment", "shop", "web"), {"spec": {}}, dry_run=True)
    finally:
        await client.close()
    assert seen[0]["query"] == {"fieldManager": "podgrace", "dryRun": "All"}
    assert seen[0]["accept"] == "application/json"


@pytest.mark.parametrize(
    ("name", "status", "reason", "message"),
    [
        ("taken", 409, "Conflict", "owned by kubectl"),  # a Status object: its reason and message
        ("broken", 500, "", "upstream connect error"),  # not JSON: the text is the message
        ("garbled", 200, "BadResponse", "not a JSON object"),  # success but not an object: an error
        ("listed", 200, "BadResponse", "not a JSON object"),
    ],
)
async def test_errors_carry_status_reason_and_message(
    server: Any, name: str, status: int, reason: str, message: str
) -> None:
    test_server, _ = server
    client = client_for(test_server)
    try:
        with pytest.raises(ApiError) as raised:
            await client.get_workload(Key("Deployment", "shop", name))
    finally:
        await client.close()
    assert (raised.value.status, raised.value.reason) == (status, reason)
    assert message in raised.value.message


async def test_a_missing_deployment_is_none(server: Any) -> None:
    test_server, _ = server
    client = client_for(test_server)
    try:
        assert await client.get_workload(Key("Deployment", "shop", "gone")) is None
    finally:
        await client.close()


async def test_watch_decodes_one_event_per_line_across_chunk_boundaries() -> None:
    events = [
        {"type": "ADDED", "object": {"metadata": {"name": f"web-{i}", "pad": "x" * 3000}}} for i in range(5)
    ]
    stream = b"".join(orjson.dumps(e) + b"\n" for e in events) + b"\n"  # a blank line is skipped
    seen_params: list[dict[str, str]] = []

    async def watch(request: web.Request) -> web.StreamResponse:
        seen_params.append(dict(request.query))
        response = web.StreamResponse()
        await response.prepare(request)
        for i in range(0, len(stream), 1000):  # chunks that cut events in the middle
            await response.write(stream[i : i + 1000])
        await response.write_eof()
        return response

    async def forbidden(request: web.Request) -> web.Response:
        return web.Response(status=403, body=orjson.dumps({"reason": "Forbidden", "message": "no watch"}))

    app = web.Application()
    app.router.add_get("/apis/apps/v1/deployments", watch)
    app.router.add_get("/apis/apps/v1/namespaces/locked/deployments", forbidden)
    async with TestServer(app) as test_server:
        client = client_for(test_server)
        try:
            params = {"watch": "true", "resourceVersion": "7", "timeoutSeconds": "5"}
            got = [e async for e in client.watch("/apis/apps/v1/deployments", params)]
            with pytest.raises(ApiError) as raised:
                async for _ in client.watch("/apis/apps/v1/namespaces/locked/deployments", params):
                    pass
        finally:
            await client.close()
    assert got == events
    assert seen_params == [params]
    assert (raised.value.status, raised.value.reason, raised.value.message) == (403, "Forbidden", "no watch")


async def test_open_watches_never_take_the_connections_requests_need() -> None:
    # One watch per watched namespace stays open for minutes; with a pool of one connection, a request
    # must still get through while two watches are open.
    opened = asyncio.Event()
    watching = 0

    async def watch(request: web.Request) -> web.StreamResponse:
        nonlocal watching
        response = web.StreamResponse()
        await response.prepare(request)
        watching += 1
        if watching == 2:
            opened.set()
        await asyncio.sleep(30)  # a watch with nothing to say
        return response

    async def get(request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps({"metadata": {"name": request.match_info["name"]}}))

    app = web.Application()
    app.router.add_get("/apis/apps/v1/namespaces/{ns}/deployments", watch)
    app.router.add_get("/apis/apps/v1/namespaces/{ns}/deployments/{name}", get)
    async with TestServer(app) as test_server:
        client = KubeClient(kopf.ConnectionInfo(server=str(test_server.make_url("/"))), connection_limit=1)

        async def drain(namespace: str) -> None:
            async for _ in client.watch(f"/apis/apps/v1/namespaces/{namespace}/deployments", {"watch": "1"}):
                pass

        watches = [asyncio.create_task(drain(ns)) for ns in ("shop", "blog")]
        try:
            await asyncio.wait_for(opened.wait(), 5)
            got = await asyncio.wait_for(client.get_workload(Key("Deployment", "shop", "web")), 5)
        finally:
            for task in watches:
                task.cancel()
            await asyncio.gather(*watches, return_exceptions=True)
            await client.close()
    assert got == {"metadata": {"name": "web"}}


@pytest.mark.parametrize("kind", ["Deployment", "StatefulSet", "DaemonSet"])
async def test_every_workload_call_goes_to_its_kinds_resource(server: Any, kind: str) -> None:
    test_server, seen = server
    client = client_for(test_server)
    plural = f"/apis/apps/v1/namespaces/shop/{kind.lower()}s/web"
    try:
        await client.get_workload(Key(kind, "shop", "web"))
        await client.apply_workload(Key(kind, "shop", "web"), {"kind": kind, "spec": {}})
        await client.patch_workload_as(Key(kind, "shop", "web"), {"spec": {}}, "helm")
    finally:
        await client.close()
    assert [(r["method"], r["path"]) for r in seen] == [("GET", plural), ("PATCH", plural), ("PATCH", plural)]
    assert seen[2]["query"] == {"fieldManager": "helm"}
