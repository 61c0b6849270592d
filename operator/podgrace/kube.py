"""A small async Kubernetes API client for the calls Kopf does not make: server-side apply, status, events.

It reuses Kopf's credentials (the login handler's ConnectionInfo) and aiohttp, Kopf's own HTTP client,
so podgrace has one way to authenticate and no second Kubernetes client library.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from typing import Any, Protocol

import aiohttp
import kopf
import orjson

from podgrace.constants import FIELD_MANAGER, GROUP, PROFILE_PLURAL, VERSION

APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"
PARTIAL_METADATA_LIST = "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io,application/json"
PARTIAL_METADATA = "application/json;as=PartialObjectMetadata;v=v1;g=meta.k8s.io,application/json"


class ApiError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class Api(Protocol):
    """What the reconcilers need from the API server (a fake implements it in the unit tests)."""

    async def get_deployment(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def apply_deployment(
        self, namespace: str, name: str, body: dict[str, Any], *, force: bool = False, dry_run: bool = False
    ) -> dict[str, Any]: ...

    async def patch_profile_status(self, name: str, status: dict[str, Any]) -> None: ...

    async def create_event(self, namespace: str, event: dict[str, Any]) -> None: ...

    async def list_events(self, namespace: str, field_selector: str) -> list[dict[str, Any]]: ...


class KubeClient:
    def __init__(self, info: kopf.ConnectionInfo, *, connection_limit: int = 50) -> None:
        self._server = info.server.rstrip("/")
        self._headers = {"Accept": "application/json", **info.as_http_headers()}
        self._ssl = info.as_ssl_context() if self._server.startswith("https") else False
        self._limit = connection_limit
        self._session: aiohttp.ClientSession | None = None
        # Called with the object a (non-dry-run) apply returned: the runtime recognises the watch event of
        # podgrace's own write by it.
        self.applied: Callable[[dict[str, Any]], None] | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=self._ssl, limit=self._limit)
            self._session = aiohttp.ClientSession(
                connector=connector, headers=self._headers, timeout=aiohttp.ClientTimeout(total=30)
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

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
        async with self._client().request(method, url, data=data, headers=headers) as response:
            raw = await response.read()
        try:
            payload = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            payload = None
        if response.status >= 400:
            details = payload if isinstance(payload, dict) else {}
            text = raw.decode(errors="replace")
            raise ApiError(response.status, str(details.get("reason", "")), str(details.get("message", text)))
        if not isinstance(payload, dict):
            raise ApiError(response.status, "BadResponse", f"not a JSON object: {raw[:200]!r}")
        return payload

    async def get_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self._request("GET", f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}")
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    async def apply_deployment(
        self, namespace: str, name: str, body: dict[str, Any], *, force: bool = False, dry_run: bool = False
    ) -> dict[str, Any]:
        """Server-side apply under podgrace's field manager. A dry run returns the whole object (the
        capability probe reads its spec); a real apply returns only the object's metadata, which is all the
        reconciler reads (the API server then neither encodes nor sends the spec and status)."""
        params = {"fieldManager": FIELD_MANAGER}
        if force:
            params["force"] = "true"
        if dry_run:
            params["dryRun"] = "All"
        result = await self._request(
            "PATCH",
            f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}",
            params=params,
            body=body,
            content_type=APPLY,
            accept=None if dry_run else PARTIAL_METADATA,
        )
        if not dry_run and self.applied is not None:
            self.applied(result)
        return result

    async def patch_profile_status(self, name: str, status: dict[str, Any]) -> None:
        await self._request(
            "PATCH",
            f"/apis/{GROUP}/{VERSION}/{PROFILE_PLURAL}/{name}/status",
            params={"fieldManager": FIELD_MANAGER},
            body={"status": status},
            content_type=MERGE,
        )

    async def create_event(self, namespace: str, event: dict[str, Any]) -> None:
        await self._request(
            "POST",
            f"/api/v1/namespaces/{namespace}/events",
            params={"fieldManager": FIELD_MANAGER},
            body=event,
            content_type="application/json",
        )

    async def server_version(self) -> tuple[int, int]:
        info = await self._request("GET", "/version")
        minor = "".join(ch for ch in str(info.get("minor", "0")) if ch.isdigit()) or "0"
        return int(info.get("major", "1")), int(minor)

    async def list_profiles(self) -> list[dict[str, Any]]:
        result = await self._request("GET", f"/apis/{GROUP}/{VERSION}/{PROFILE_PLURAL}")
        items: list[dict[str, Any]] = result.get("items") or []
        return items

    async def list_deployment_annotations(
        self, namespaces: list[str], *, page: int = 500
    ) -> list[tuple[str, str, dict[str, str]]]:
        """(namespace, name, annotations) of every Deployment, cluster-wide or in these namespaces: read as
        metadata only and in pages, so a few hundred kilobytes are in flight rather than whole objects."""
        paths = [f"/apis/apps/v1/namespaces/{ns}/deployments" for ns in namespaces]
        found: list[tuple[str, str, dict[str, str]]] = []
        for path in paths or ["/apis/apps/v1/deployments"]:
            params = {"limit": str(page)}
            while True:
                result = await self._request("GET", path, params=params, accept=PARTIAL_METADATA_LIST)
                for item in result.get("items") or []:
                    meta = item.get("metadata") or {}
                    namespace, name = str(meta.get("namespace")), str(meta.get("name"))
                    found.append((namespace, name, meta.get("annotations") or {}))
                token = (result.get("metadata") or {}).get("continue")
                if not token:
                    break
                params["continue"] = token
        return found

    async def list_events(self, namespace: str, field_selector: str) -> list[dict[str, Any]]:
        result = await self._request(
            "GET", f"/api/v1/namespaces/{namespace}/events", params={"fieldSelector": field_selector}
        )
        items: list[dict[str, Any]] = result.get("items") or []
        return items
