"""The API server's audit log, read incrementally and cheaply.

At 5,000 Deployments the log holds tens of thousands of events per phase, so it is tailed: each `poll()`
reads only the bytes appended since the last one, and keeps a compact record per request. The benchmark runs
the API server with a narrower policy than the e2e suite (`POLICY`): only the operator's ServiceAccount
(podgrace, and the floor client, which uses the same credentials) and the benchmark's admin user are logged,
so the log stays small and the API server does not spend its time writing about the controller-manager.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import urllib.parse
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})


def policy(users: Iterable[str]) -> str:
    """Metadata level (one ResponseComplete event per request, request URI and user agent kept) for the
    given users, nothing for everybody else."""
    names = ", ".join(json.dumps(u) for u in users)
    return f"""\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived", "ResponseStarted"]
rules:
- level: Metadata
  users: [{names}]
- level: None
"""


@dataclasses.dataclass(frozen=True, slots=True)
class Request:
    verb: str
    user: str
    user_agent: str
    resource: str
    subresource: str
    namespace: str
    name: str
    code: int
    dry_run: bool
    received: float  # requestReceivedTimestamp, epoch seconds
    completed: float  # stageTimestamp of ResponseComplete, epoch seconds

    @property
    def is_write(self) -> bool:
        return self.verb in WRITE_VERBS and not self.dry_run

    @property
    def full_resource(self) -> str:
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource

    @property
    def key(self) -> tuple[str, str]:
        return self.namespace, self.name


def _ts(value: str) -> float:
    return dt.datetime.fromisoformat(value).timestamp() if value else 0.0


def _record(ev: dict[str, Any]) -> Request:
    ref = ev.get("objectRef") or {}
    uri = ev.get("requestURI", "")
    return Request(
        verb=ev.get("verb", ""),
        user=(ev.get("user") or {}).get("username", ""),
        user_agent=ev.get("userAgent", ""),
        resource=ref.get("resource", ""),
        subresource=ref.get("subresource", ""),
        namespace=ref.get("namespace", ""),
        name=ref.get("name", ""),
        code=int((ev.get("responseStatus") or {}).get("code", 0)),
        dry_run="dryRun" in urllib.parse.parse_qs(urllib.parse.urlsplit(uri).query),
        received=_ts(ev.get("requestReceivedTimestamp", "")),
        completed=_ts(ev.get("stageTimestamp", "")),
    )


class AuditTail:
    """All requests logged so far, oldest first; `poll()` appends what was written since the last call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.requests: list[Request] = []
        self._offset = 0
        self._partial = b""

    def poll(self) -> list[Request]:
        if not self.path.exists():
            return []
        with self.path.open("rb") as fh:
            fh.seek(self._offset)
            data = fh.read()
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()  # an incomplete last line waits for the next poll
        new = []
        for line in lines:
            if not line.strip():
                continue
            ev = json.loads(line)
            if ev.get("stage") != "ResponseComplete":
                continue
            new.append(_record(ev))
        self.requests.extend(new)
        return new

    def mark(self) -> int:
        """A position: `since(mark)` returns what was logged after it."""
        self.poll()
        return len(self.requests)

    def since(self, mark: int, where: Callable[[Request], bool] | None = None) -> list[Request]:
        self.poll()
        chunk = self.requests[mark:]
        return [r for r in chunk if where(r)] if where is not None else chunk
