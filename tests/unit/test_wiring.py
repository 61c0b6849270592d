"""The operator's objects as `podgrace run` builds them (controller.wiring), started and stopped against a
small aiohttp API server, and reached by the Kopf handlers through a copy of the memo, as Kopf passes it."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from typing import Any

import kopf
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry

from podgrace.controller import kopf_handlers
from podgrace.controller.metrics import Metrics
from podgrace.controller.wiring import Operator, Options, build
from podgrace.core.constants import GROUP, PROFILE_PLURAL, VERSION


@pytest.fixture
async def server() -> AsyncIterator[TestServer]:
    async def version(request: web.Request) -> web.Response:
        return web.json_response({"major": "1", "minor": "35"})

    async def profiles(request: web.Request) -> web.Response:
        return web.json_response({"items": [{"metadata": {"name": "nginx", "generation": 1}, "spec": {}}]})

    async def deployments(request: web.Request) -> web.StreamResponse:
        if request.query.get("watch") != "true":
            return web.json_response({"metadata": {"resourceVersion": "7"}, "items": []})
        response = web.StreamResponse()
        await response.prepare(request)
        await asyncio.sleep(60)  # a watch with nothing to report
        return response

    app = web.Application()
    app.router.add_get("/version", version)
    app.router.add_get(f"/apis/{GROUP}/{VERSION}/{PROFILE_PLURAL}", profiles)
    for plural in ("deployments", "statefulsets", "daemonsets"):  # one informer per kind
        app.router.add_get(f"/apis/apps/v1/{plural}", deployments)
    async with TestServer(app) as test_server:
        yield test_server


def operator_for(test_server: TestServer) -> Operator:
    connection = kopf.ConnectionInfo(server=str(test_server.make_url("/")))
    return build(Options([], workers=2, stop_signals=None), connection, Metrics(CollectorRegistry()))


async def test_the_handlers_start_and_stop_the_operator_through_a_copy_of_the_memo(server: Any) -> None:
    operator = operator_for(server)
    memo = copy.copy(operator)  # Kopf hands each handler a shallow copy of the memo
    assert kopf_handlers.login(memo=memo) == operator.credentials.info
    await kopf_handlers.startup(settings=kopf.OperatorSettings(), memo=memo)
    try:
        await asyncio.wait_for(operator.informers.wait_listed(), 5)
        assert await kopf_handlers.deployments_probe(memo=memo) == {"listed": True, "failing": []}
        assert operator.store.names() == ["nginx"]
        assert await operator.capabilities.server_version() == (1, 35)
    finally:
        await kopf_handlers.cleanup(memo=memo)
    with pytest.raises(RuntimeError, match="informer has stopped"):
        operator.health()


async def test_liveness_fails_once_the_credentials_have_been_refused_for_long(server: Any) -> None:
    operator = operator_for(server)
    assert operator.health() == {"listed": False, "failing": []}
    operator.client.unauthorized_since = operator.client._clock() - 31  # every answer a 401 for 31 s
    with pytest.raises(RuntimeError, match="refused podgrace's credentials"):
        operator.health()
    operator.client.unauthorized_since = operator.client._clock() - 5  # a moment: not yet
    assert operator.health() == {"listed": False, "failing": []}
    await operator.client.close()
