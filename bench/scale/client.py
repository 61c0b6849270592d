"""A minimal asyncio client for the benchmark's own API calls (creating thousands of objects, churn, the
floor), on aiohttp like podgrace itself. No retries and no logic: it reports status codes."""

from __future__ import annotations

import asyncio
import json
import ssl
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

T = TypeVar("T")
MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"  # podgrace's own writes (controller/kube_api)


class Client:
    def __init__(
        self, server: str, token: str, cafile: Path, *, limit: int = 64, user_agent: str = "podgrace-bench"
    ) -> None:
        self.server = server.rstrip("/")
        self._ssl = ssl.create_default_context(cafile=str(cafile))
        self._headers = {
            "Authorization": f"Bearer {token}",
            "Accept": "application/json",
            "User-Agent": user_agent,
        }
        self._limit = limit
        self._session: aiohttp.ClientSession | None = None
        self.statuses: dict[int, int] = {}

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=self._limit),
                headers=self._headers,
                timeout=aiohttp.ClientTimeout(total=120),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: dict[str, str] | None = None,
        content_type: str = "application/json",
        parse: bool = True,
    ) -> tuple[int, Any]:
        url = self.server + path
        if params:
            url += "?" + urllib.parse.urlencode(params)
        data = body if body is None or isinstance(body, (bytes, str)) else json.dumps(body)
        headers = {"Content-Type": content_type} if data is not None else None
        async with self.session.request(method, url, data=data, headers=headers) as response:
            raw = await response.read()
            status = response.status
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if not parse:
            return status, None
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")

    async def ok(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
        status, payload = await self.request(method, path, body, **kwargs)
        if status >= 400:
            raise RuntimeError(f"{method} {path}: {status} {str(payload)[:300]}")
        return payload

    async def list_all(
        self, path: str, *, label_selector: str = "", chunk: int = 500
    ) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        params = {"limit": str(chunk)}
        if label_selector:
            params["labelSelector"] = label_selector
        while True:
            page = await self.ok("GET", path, params=params)
            items.extend(page.get("items") or [])
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return items
            params["continue"] = token


async def bounded(concurrency: int, jobs: Iterable[Callable[[], Awaitable[T]]]) -> list[T]:
    """Run the jobs with at most `concurrency` in flight (a fixed pool of workers, like a controller's)."""
    queue: asyncio.Queue[tuple[int, Callable[[], Awaitable[T]]]] = asyncio.Queue()
    for item in enumerate(jobs):
        queue.put_nowait(item)
    results: dict[int, T] = {}

    async def worker() -> None:
        while True:
            try:
                index, job = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            results[index] = await job()

    await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    return [results[i] for i in range(len(results))]
