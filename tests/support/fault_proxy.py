"""A fault-injecting HTTPS reverse proxy in front of a LocalCluster's kube-apiserver, for the e2e tests.

podgrace is pointed at the proxy (its kubeconfig's server) instead of the API server; every request is
passed through unchanged (the bearer token too, so authentication and RBAC stay the API server's) unless a
rule matches it. Rules choose requests by method, path and query (regular expressions) and answer them
with an HTTP status (503, 429: a Kubernetes Status body, as the API server's own, with Retry-After if
asked), a reset connection (before the request reaches the API server, or after it was served: the write
happened, the client never hears of it), or pass them on after a delay; `share` makes a rule fire for that
fraction of the requests it matches (a seeded random choice, so a soak is repeatable in kind). Streams
(watches) are forwarded chunk by chunk; `drop_streams()` cuts them all, as an API server restart or a
load balancer does.

Why not Toxiproxy: it works on TCP (latency, resets, bandwidth), not on HTTP, so it cannot answer "503 for
the PATCHes of this one Deployment" while everything else works, nor a 429 with Retry-After (the traffic
is TLS: a TCP proxy sees no requests); and it would be another Go build. This
one terminates TLS with the API server's own certificate (valid for 127.0.0.1, signed by the cluster CA
podgrace already trusts) and runs on a thread of the test process.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "content-encoding",
        "host",
        "te",
        "trailer",
    }
)
REASONS = {429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable", 504: "Timeout"}


@dataclass
class Rule:
    """Requests matching method (exact, None: any), path and query (re.search; None: any) get `status`
    (an HTTP error with a Status body), `reset` (the connection is closed without an answer),
    `reset_after` (passed on, then the connection is closed without the answer) or, with none of these,
    are passed on after `delay` seconds. `times`: how many requests it applies to (None: all); `share`:
    the fraction of matching requests it fires for (the others go on to the next rule)."""

    path: str = ""
    method: str | None = None
    query: str | None = None
    status: int | None = None
    reset: bool = False
    reset_after: bool = False
    delay: float = 0.0
    share: float = 1.0
    times: int | None = None
    retry_after: int | None = None
    hits: int = 0
    hit_times: list[float] = field(default_factory=list)

    def matches(self, method: str, path: str, query: str) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        if self.method is not None and method != self.method:
            return False
        if self.path and not re.search(self.path, path):
            return False
        return self.query is None or re.search(self.query, query) is not None


@dataclass(frozen=True)
class Seen:
    """One request the proxy handled: what it was and what answered it (`injected`: a rule did)."""

    at: float
    method: str
    path: str
    query: str
    status: int
    injected: bool


class FaultProxy:
    def __init__(self, upstream: str, *, ca: Path, cert: Path, key: Path, seed: int = 12) -> None:
        self.upstream = upstream.rstrip("/")
        self._random = random.Random(seed)
        self._ca, self._cert, self._key = ca, cert, key
        self._rules: list[Rule] = []
        self._lock = threading.Lock()
        self.seen: list[Seen] = []
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        # The open streams: the client's connection and the API server's response of each.
        self._streams: dict[asyncio.BaseTransport, aiohttp.ClientResponse] = {}
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @classmethod
    def for_cluster(cls, cluster: Any) -> FaultProxy:
        pki = Path(cluster.pki)
        return cls(cluster.server, ca=pki / "ca.crt", cert=pki / "apiserver.crt", key=pki / "apiserver.key")

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    # --- rules (called from the test's thread) -----------------------------------------------------------

    def add(self, rule: Rule) -> Rule:
        with self._lock:
            self._rules.append(rule)
        return rule

    def remove(self, rule: Rule) -> None:
        with self._lock:
            if rule in self._rules:
                self._rules.remove(rule)

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    @contextlib.contextmanager
    def fault(self, rule: Rule) -> Iterator[Rule]:
        self.add(rule)
        try:
            yield rule
        finally:
            self.remove(rule)

    def requests(self, method: str | None = None, path: str = "", query: str | None = None) -> list[Seen]:
        with self._lock:
            seen = list(self.seen)
        return [
            s
            for s in seen
            if (method is None or s.method == method)
            and re.search(path, s.path)
            and (query is None or re.search(query, s.query))
        ]

    def drop_streams(self) -> None:
        """Cut every open streaming response (watches) at once."""
        loop = self._loop
        assert loop is not None

        def cut() -> None:
            for transport, upstream in list(self._streams.items()):
                transport.abort()  # type: ignore[attr-defined]
                upstream.close()

        loop.call_soon_threadsafe(cut)

    # --- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._serve, name="fault-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(30) or self._error is not None:
            raise RuntimeError(f"fault proxy did not start: {self._error!r}")
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._loop = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._startup())
        except BaseException as error:
            self._error = error
            self._ready.set()
            return
        self._ready.set()
        loop.run_forever()
        loop.close()

    async def _startup(self) -> None:
        upstream_ssl = ssl.create_default_context(cafile=str(self._ca))
        # No limit and no total timeout: watches hold their connection for minutes.
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=upstream_ssl, limit=0),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            auto_decompress=True,
        )
        server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_ssl.load_cert_chain(str(self._cert), str(self._key))
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=server_ssl)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def _shutdown(self) -> None:
        for transport, upstream in list(self._streams.items()):
            transport.abort()  # type: ignore[attr-defined]
            upstream.close()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    # --- the proxy ------------------------------------------------------------------------------------

    def _match(self, method: str, path: str, query: str) -> Rule | None:
        with self._lock:
            for rule in self._rules:
                if rule.matches(method, path, query) and (
                    rule.share >= 1.0 or self._random.random() < rule.share
                ):
                    rule.hits += 1
                    rule.hit_times.append(time.time())
                    return rule
        return None

    def _record(self, request: web.Request, status: int, injected: bool) -> None:
        with self._lock:
            self.seen.append(
                Seen(time.time(), request.method, request.path, request.query_string, status, injected)
            )

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        rule = self._match(request.method, request.path, request.query_string)
        if rule is not None and rule.delay:
            await asyncio.sleep(rule.delay)
        if rule is not None and rule.reset:
            self._record(request, 0, True)
            assert request.transport is not None
            request.transport.abort()
            return web.Response(status=502)  # never sent: the connection is gone
        if rule is not None and rule.reset_after:
            return await self._forward(request, drop_answer=True)
        if rule is not None and rule.status is not None:
            self._record(request, rule.status, True)
            reason = REASONS.get(rule.status, "InternalError")
            body = {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": f"injected by the fault proxy: {rule.status} for {request.method} {request.path}",
                "reason": reason,
                "code": rule.status,
            }
            headers = {"Content-Type": "application/json"}
            if rule.retry_after is not None:
                headers["Retry-After"] = str(rule.retry_after)
            return web.Response(status=rule.status, body=orjson.dumps(body), headers=headers)
        return await self._forward(request)

    async def _forward(self, request: web.Request, *, drop_answer: bool = False) -> web.StreamResponse:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        headers.pop("Accept-Encoding", None)
        data = await request.read() if request.can_read_body else None
        url = self.upstream + request.rel_url.raw_path_qs
        try:
            upstream = await self._session.request(request.method, url, headers=headers, data=data)
        except aiohttp.ClientError:
            self._record(request, 0, False)
            assert request.transport is not None
            request.transport.abort()
            return web.Response(status=502)
        async with upstream:
            response = web.StreamResponse(status=upstream.status)
            for key, value in upstream.headers.items():
                if key.lower() not in HOP_BY_HOP:
                    response.headers.add(key, value)
            streaming = "watch=true" in request.query_string or "watch=1" in request.query_string
            if drop_answer or (not streaming and upstream.content_length is not None):
                body = await upstream.read()
                self._record(request, upstream.status, drop_answer)
                if drop_answer:  # served by the API server; the client never gets the answer
                    assert request.transport is not None
                    request.transport.abort()
                out = web.Response(status=upstream.status, body=body)
                for key, value in response.headers.items():
                    out.headers.add(key, value)
                return out
            response.enable_chunked_encoding()
            transport = request.transport
            assert transport is not None
            self._streams[transport] = upstream
            self._record(request, upstream.status, False)
            try:
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
            except (ConnectionError, aiohttp.ClientError, RuntimeError):
                pass  # the client went away, or drop_streams() cut it (a closed response: RuntimeError)
            finally:
                self._streams.pop(transport, None)
            return response
