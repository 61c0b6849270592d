"""A small async Kubernetes API client for the calls Kopf does not make: server-side apply, status, events.

It reuses Kopf's credentials (the login handler's ConnectionInfo) and aiohttp, Kopf's own HTTP client,
so podgrace has one way to authenticate and no second Kubernetes client library.
"""

from __future__ import annotations

import logging
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Protocol

import aiohttp
import kopf
import orjson

from podgrace.controller.credentials import Credentials
from podgrace.controller.rate_limit import retry_after_seconds
from podgrace.controller.workload_key import Key, object_path
from podgrace.core.constants import FIELD_MANAGER, GROUP, PROFILE_PLURAL, VERSION

log = logging.getLogger(__name__)

APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
PARTIAL_METADATA = "application/json;as=PartialObjectMetadata;v=v1;g=meta.k8s.io,application/json"


class ApiError(Exception):
    def __init__(self, status: int, reason: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        # Seconds the API server asked podgrace to wait before this request again (a 429's or 5xx's
        # Retry-After, capped: rate_limit.retry_after_seconds); None: it said nothing.
        self.retry_after = retry_after


class Api(Protocol):
    """What the reconcilers need from the API server (a fake implements it in the unit tests)."""

    async def get_workload(self, key: Key) -> dict[str, Any] | None: ...

    async def apply_workload(
        self, key: Key, body: dict[str, Any], *, force: bool = False, dry_run: bool = False
    ) -> dict[str, Any]: ...

    async def patch_profile_status(self, name: str, status: dict[str, Any]) -> None: ...

    async def patch_workload_as(
        self, key: Key, patch: dict[str, Any], field_manager: str
    ) -> dict[str, Any]: ...

    async def create_event(self, namespace: str, event: dict[str, Any]) -> None: ...

    async def get_event(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def server_version(self) -> tuple[int, int]: ...

    async def list_running_pods(self, namespace: str, label_selector: str) -> list[dict[str, Any]]: ...


class KubeClient:
    def __init__(
        self,
        info: kopf.ConnectionInfo | Credentials,
        *,
        connection_limit: int = 50,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # The bearer token is sent per request, from the credentials: a rotated token file is picked up.
        self.credentials = info if isinstance(info, Credentials) else Credentials(info)
        info = self.credentials.info
        self._server = info.server.rstrip("/")
        self._headers = {"Accept": "application/json"}
        self._ssl = info.as_ssl_context() if self._server.startswith("https") else False
        self._clock = clock
        # Since when every response has been a 401 (even after reading the token again); None: the last
        # response was not a 401. The liveness probe fails when this lasts (credentials that no longer
        # work do not come back by themselves; a restart reads them afresh).
        self.unauthorized_since: float | None = None
        self.last_response_at: float | None = None
        self._limit = connection_limit
        self._session: aiohttp.ClientSession | None = None
        # Watches hold their connection for minutes, one per watched namespace: they get their own pool,
        # without a limit, so that they can never take the connections the reconcilers' requests need.
        self._watch_session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = self._new_session(self._limit)
        return self._session

    def _watch_client(self) -> aiohttp.ClientSession:
        if self._watch_session is None or self._watch_session.closed:
            self._watch_session = self._new_session(0)  # 0: no limit
        return self._watch_session

    def _new_session(self, limit: int) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(ssl=self._ssl, limit=limit)
        return aiohttp.ClientSession(
            connector=connector, headers=self._headers, timeout=aiohttp.ClientTimeout(total=30)
        )

    async def close(self) -> None:
        for session in (self._session, self._watch_session):
            if session is not None:
                await session.close()

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: Any = None,
        content_type: str | None = None,
        accept: str | None = None,
    ) -> dict[str, Any]:
        url = self._server + path
        if params:
            url += "?" + urllib.parse.urlencode(params)
        headers = {"Content-Type": content_type} if content_type else {}
        if accept:
            headers["Accept"] = accept
        # orjson: every apply sends and receives a Deployment, and the standard library's codec was a
        # tenth of the operator's CPU in a cold start over 5,000 of them.
        data = orjson.dumps(body) if body is not None else None
        for attempt in (1, 2):
            headers.update(self.credentials.headers())
            async with self._client().request(method, url, data=data, headers=headers) as response:
                raw = await response.read()
            if self._authenticated(response.status, method, path, retry=attempt == 1):
                break
        try:
            payload = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            payload = None
        if response.status >= 400:
            raise _error(response.status, raw, response.headers.get("Retry-After"))
        if not isinstance(payload, dict):
            raise ApiError(response.status, "BadResponse", f"not a JSON object: {raw[:200]!r}")
        return payload

    def _authenticated(self, status: int, method: str, path: str, *, retry: bool) -> bool:
        """Track 401s. False: a 401 after which the token file had a new token, so try again with it."""
        self.last_response_at = self._clock()
        if status != 401:
            if self.unauthorized_since is not None:
                log.info("the API server accepts podgrace's credentials again")
            self.unauthorized_since = None
            return True
        if retry and self.credentials.reread():
            return False
        if self.unauthorized_since is None:
            self.unauthorized_since = self._clock()
            source = self.credentials.token_file or "the kubeconfig"
            log.error(
                "the API server rejected podgrace's credentials (401 Unauthorized) for %s %s; the token "
                "from %s did not change when read again",
                method,
                path,
                source,
            )
        return True

    def unauthorized_for(self) -> float:
        """Seconds every response has been a 401 (0: the last one was not)."""
        since = self.unauthorized_since
        return 0.0 if since is None else self._clock() - since

    async def check_credentials(self, idle_seconds: float = 30.0) -> None:
        """When no response came for `idle_seconds`: one cheap authenticated request (GET /version), so
        that credentials revoked while podgrace was idle are noticed. Only its 401 counts."""
        last = self.last_response_at
        if last is not None and self._clock() - last < idle_seconds:
            return
        try:
            await self._request("GET", "/version")
        except ApiError as error:
            if error.status != 401:
                log.debug("credentials check: %s", error)
        except (aiohttp.ClientError, TimeoutError) as error:
            log.debug("credentials check: no answer: %s", error)

    async def get_workload(self, key: Key) -> dict[str, Any] | None:
        return await self._get_or_none(object_path(key))

    async def get_event(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._get_or_none(f"/api/v1/namespaces/{namespace}/events/{name}")

    async def _get_or_none(self, path: str) -> dict[str, Any] | None:
        """The object at `path`, or None when the API server has none (404)."""
        try:
            return await self._request("GET", path)
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    async def apply_workload(
        self, key: Key, body: dict[str, Any], *, force: bool = False, dry_run: bool = False
    ) -> dict[str, Any]:
        """Server-side apply under podgrace's field manager. A dry run returns the whole object (the
        capability probe reads its spec); a real apply returns only the object's metadata, which is all the
        reconciler reads (the API server then neither encodes nor sends the spec and status)."""
        flags = {"force": "true"} if force else {}
        if dry_run:
            flags["dryRun"] = "All"
        accept = None if dry_run else PARTIAL_METADATA
        return await self._write("PATCH", object_path(key), body, APPLY, accept=accept, **flags)

    async def patch_workload_as(self, key: Key, patch: dict[str, Any], field_manager: str) -> dict[str, Any]:
        """A strategic merge patch (an Update operation) under a field manager's name: podgrace's own
        writes (core/write_patch.py), and a hook podgrace replaced given back to the manager that wrote it
        (the opt-out's restore). Returns only the object's metadata, all the reconciler reads."""
        return await self._write(
            "PATCH", object_path(key), patch, STRATEGIC, manager=field_manager, accept=PARTIAL_METADATA
        )

    async def patch_profile_status(self, name: str, status: dict[str, Any]) -> None:
        path = f"/apis/{GROUP}/{VERSION}/{PROFILE_PLURAL}/{name}/status"
        await self._write("PATCH", path, {"status": status}, MERGE)

    async def create_event(self, namespace: str, event: dict[str, Any]) -> None:
        await self._write("POST", f"/api/v1/namespaces/{namespace}/events", event, "application/json")

    async def _write(
        self,
        method: str,
        path: str,
        body: dict[str, Any],
        content_type: str,
        *,
        manager: str = FIELD_MANAGER,
        accept: str | None = None,
        **flags: str,
    ) -> dict[str, Any]:
        """Every write names its field manager: managedFields then say who wrote what."""
        params = {"fieldManager": manager, **flags}
        return await self._request(
            method, path, params=params, body=body, content_type=content_type, accept=accept
        )

    async def server_version(self) -> tuple[int, int]:
        info = await self._request("GET", "/version")
        minor = "".join(ch for ch in str(info.get("minor", "0")) if ch.isdigit()) or "0"
        return int(info.get("major", "1")), int(minor)

    async def list_running_pods(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        """The Running pods a selector selects, from the API server's cache (resourceVersion=0): podgrace
        only reads their status (stop_signal_check.py), so a slightly old view does."""
        params = {"labelSelector": label_selector, "fieldSelector": "status.phase=Running"}
        params["resourceVersion"] = "0"
        result = await self._request("GET", f"/api/v1/namespaces/{namespace}/pods", params=params)
        items: list[dict[str, Any]] = result.get("items") or []
        return items

    async def list_profiles(self) -> list[dict[str, Any]]:
        result = await self._request("GET", f"/apis/{GROUP}/{VERSION}/{PROFILE_PLURAL}")
        items: list[dict[str, Any]] = result.get("items") or []
        return items

    async def list_page(self, path: str, params: Mapping[str, str]) -> dict[str, Any]:
        """One page of a list (`limit`, `continue` in params)."""
        return await self._request("GET", path, params=dict(params))

    async def watch(self, path: str, params: Mapping[str, str]) -> AsyncIterator[dict[str, Any]]:
        """The events of a watch request, decoded, until the API server ends the stream."""
        url = self._server + path + "?" + urllib.parse.urlencode(params)
        seconds = float(params.get("timeoutSeconds", "600"))
        # No total timeout: a watch lasts as long as the server keeps it (timeoutSeconds); a stream silent
        # for longer than that plus a margin is dead.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=seconds + 60)
        session = self._watch_client()
        response = await session.get(url, timeout=timeout, headers=self.credentials.headers())
        if not self._authenticated(response.status, "WATCH", path, retry=True):
            response.release()
            response = await session.get(url, timeout=timeout, headers=self.credentials.headers())
            self._authenticated(response.status, "WATCH", path, retry=False)
        async with response:
            if response.status >= 400:
                raise _error(response.status, await response.read(), response.headers.get("Retry-After"))
            pending = bytearray()
            async for chunk in response.content.iter_any():
                pending += chunk
                start = 0
                while (end := pending.find(b"\n", start)) >= 0:
                    line = bytes(pending[start:end])
                    start = end + 1
                    if line.strip():
                        yield orjson.loads(line)
                del pending[:start]


def retry_after(error: BaseException) -> float | None:
    """The Retry-After an API error carried (None: none, or not an API error)."""
    return error.retry_after if isinstance(error, ApiError) else None


def _error(status: int, raw: bytes, retry_after: str | None = None) -> ApiError:
    """An ApiError from an error response: a Status object's reason and message, else the text; and
    the Retry-After of a 429 or 5xx (what the API server's priority and fairness, or a proxy, asks)."""
    try:
        payload = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        payload = None
    details = payload if isinstance(payload, dict) else {}
    text = raw.decode(errors="replace")
    wait = retry_after_seconds(retry_after) if status == 429 or status >= 500 else None
    return ApiError(status, str(details.get("reason", "")), str(details.get("message", text)), wait)
