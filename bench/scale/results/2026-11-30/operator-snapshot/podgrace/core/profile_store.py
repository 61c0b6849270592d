"""The ShutdownProfiles podgrace knows, valid or not, and the status each one should report."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from podgrace.core import profiles
from podgrace.core.models import ShutdownProfile


@dataclass(frozen=True)
class Entry:
    generation: int | None
    profile: ShutdownProfile | None  # None: invalid
    error: str | None = None


class ProfileStore:
    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}

    def upsert(self, body: Mapping[str, Any]) -> tuple[Entry, bool]:
        """Store a profile from the API; returns the entry and whether its spec changed."""
        name = str(body["metadata"]["name"])
        generation = body["metadata"].get("generation")
        try:
            entry = Entry(generation, profiles.parse(body))
        except profiles.ProfileError as error:
            entry = Entry(generation, None, str(error))
        previous = self._entries.get(name)
        self._entries[name] = entry
        changed = previous is None or previous.profile != entry.profile or previous.error != entry.error
        return entry, changed

    def remove(self, name: str) -> None:
        self._entries.pop(name, None)

    def valid(self) -> dict[str, ShutdownProfile]:
        return {n: e.profile for n, e in self._entries.items() if e.profile is not None}

    def error(self, name: str) -> str | None:
        entry = self._entries.get(name)
        return entry.error if entry is not None else None

    def entry(self, name: str) -> Entry | None:
        return self._entries.get(name)

    def names(self) -> list[str]:
        return sorted(self._entries)


def desired_status(body: Mapping[str, Any], entry: Entry, workloads: int) -> dict[str, Any]:
    """The status podgrace reports; lastTransitionTime moves only when Ready's status changes."""
    generation = body["metadata"].get("generation")
    ready = entry.profile is not None
    current = next(
        (c for c in (body.get("status") or {}).get("conditions") or [] if c.get("type") == "Ready"), None
    )
    status_text = "True" if ready else "False"
    if current is not None and current.get("status") == status_text and current.get("lastTransitionTime"):
        transition = current["lastTransitionTime"]
    else:
        transition = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    condition = {
        "type": "Ready",
        "status": status_text,
        "reason": "Valid" if ready else "InvalidSpec",
        "message": (
            f"{len(entry.profile.spec.containers)} container rules, used by {workloads} Deployments"
            if entry.profile is not None
            else entry.error or "invalid"
        ),
        "observedGeneration": generation,
        "lastTransitionTime": transition,
    }
    return {
        "observedGeneration": generation,
        "workloads": workloads,
        "rules": len(entry.profile.spec.containers) if entry.profile is not None else 0,
        "conditions": [condition],
    }


def status_differs(body: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    return dict(body.get("status") or {}) != dict(desired)
