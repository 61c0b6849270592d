"""The e2e fault proxy itself (tests/support/fault_proxy.py), against a small TLS server: requests pass
unchanged, rules inject statuses and resets for exactly the requests they match, streams flow."""

from __future__ import annotations

import asyncio
import http.client
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from tests.cluster.localcluster import _write_pki
from tests.support.fault_proxy import FaultProxy, Rule


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    _write_pki(d)
    return d


@pytest.fixture(scope="module")
def upstream(pki: Path) -> Iterator[str]:
    async def echo(request: web.Request) -> web.StreamResponse:
        if request.query.get("watch") == "true":
            response = web.StreamResponse()
            await response.prepare(request)
            for i in range(3):
                await response.write(b'{"n": %d}\n' % i)
                await asyncio.sleep(0.05)
            return response
        body = await request.read()
        auth = request.headers.get("Authorization", "")
        return web.Response(text=f"{request.method} {request.path_qs} {auth} {body.decode()}")

    ready = threading.Event()
    holder: dict[str, object] = {}

    def serve() -> None:
        loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", echo)
        runner = web.AppRunner(app)
        loop.run_until_complete(runner.setup())
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(pki / "apiserver.crt"), str(pki / "apiserver.key"))
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
        loop.run_until_complete(site.start())
        holder["port"] = runner.addresses[0][1]
        holder["loop"] = loop
        ready.set()
        loop.run_forever()

    threading.Thread(target=serve, daemon=True).start()
    ready.wait(10)
    yield f"https://127.0.0.1:{holder['port']}"
    loop = holder["loop"]
    assert isinstance(loop, asyncio.AbstractEventLoop)
    loop.call_soon_threadsafe(loop.stop)


@pytest.fixture
def proxy(pki: Path, upstream: str) -> Iterator[FaultProxy]:
    with FaultProxy(upstream, ca=pki / "ca.crt", cert=pki / "apiserver.crt", key=pki / "apiserver.key") as p:
        yield p


def call(
    proxy: FaultProxy, pki: Path, method: str, path: str, body: bytes | None = None
) -> tuple[int, bytes]:
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    connection = http.client.HTTPSConnection("127.0.0.1", proxy.port, context=context, timeout=10)
    try:
        connection.request(method, path, body=body, headers={"Authorization": "Bearer t0ken"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_requests_pass_unchanged(proxy: FaultProxy, pki: Path) -> None:
    status, body = call(proxy, pki, "PATCH", "/apis/x?fieldManager=podgrace", b'{"a": 1}')
    assert status == 200
    assert body.decode() == 'PATCH /apis/x?fieldManager=podgrace Bearer t0ken {"a": 1}'


def test_a_rule_answers_only_the_requests_it_matches_and_only_as_often_as_told(
    proxy: FaultProxy, pki: Path
) -> None:
    rule = proxy.add(Rule(method="PATCH", path="/deployments/web$", query="dryRun", status=503, times=2))
    assert call(proxy, pki, "PATCH", "/apis/deployments/web")[0] == 200  # no dryRun: passes
    assert call(proxy, pki, "GET", "/apis/deployments/web?dryRun=All")[0] == 200  # a GET: passes
    status, body = call(proxy, pki, "PATCH", "/apis/deployments/web?dryRun=All")
    assert status == 503 and b'"reason":"ServiceUnavailable"' in body
    assert call(proxy, pki, "PATCH", "/apis/deployments/web?dryRun=All")[0] == 503
    assert call(proxy, pki, "PATCH", "/apis/deployments/web?dryRun=All")[0] == 200  # times=2 used up
    assert rule.hits == 2
    assert [s.status for s in proxy.requests("PATCH", "/deployments/web", "dryRun")] == [503, 503, 200]


def test_a_reset_closes_the_connection_without_an_answer(proxy: FaultProxy, pki: Path) -> None:
    proxy.add(Rule(path="/broken", reset=True))
    with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
        call(proxy, pki, "GET", "/broken")


def test_streams_are_forwarded(proxy: FaultProxy, pki: Path) -> None:
    status, body = call(proxy, pki, "GET", "/apis/apps/v1/deployments?watch=true")
    assert status == 200
    assert body.splitlines() == [b'{"n": 0}', b'{"n": 1}', b'{"n": 2}']


def test_a_reset_after_serves_the_request_but_drops_the_answer(
    proxy: FaultProxy, pki: Path, upstream: str
) -> None:
    rule = proxy.add(Rule(method="PATCH", path="/written", reset_after=True, times=1))
    with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
        call(proxy, pki, "PATCH", "/written", b"x")
    assert rule.hits == 1
    # The upstream answered (the write happened): the proxy saw its 200, marked as injected.
    assert [(s.status, s.injected) for s in proxy.requests("PATCH", "/written")] == [(200, True)]
    assert call(proxy, pki, "PATCH", "/written", b"x")[0] == 200


def test_a_share_fires_for_about_that_fraction_of_matching_requests(proxy: FaultProxy, pki: Path) -> None:
    rule = proxy.add(Rule(path="/sometimes", status=429, retry_after=2, share=0.3))
    statuses = [call(proxy, pki, "GET", "/sometimes")[0] for _ in range(200)]
    assert set(statuses) == {200, 429}
    assert statuses.count(429) == rule.hits
    assert 30 <= rule.hits <= 90  # 60 expected; seeded, so the count is the same on every run
