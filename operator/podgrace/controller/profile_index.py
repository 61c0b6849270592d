"""Which workloads (any kind) name which ShutdownProfile: for a profile's fan-out, its status count and the
managed-workloads gauge.

podgrace keeps it itself rather than as a Kopf index: Kopf holds every handler until all objects are
indexed, and that wait costs O(N^2) wake-ups (200 s of start-up at 5,000 Deployments). It is complete once
the informers have listed every workload (`Informers.wait_listed`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from podgrace.controller.workload_key import Key
from podgrace.core import overrides

# A ShutdownProfile's name is at most 253 characters (a DNS subdomain): a longer value names none, and is
# not kept (the index holds one value per workload, whatever size users write; the reconcile reports it).
MAX_PROFILE_NAME = 253


def profile_annotation(annotations: Mapping[str, Any] | None) -> str | None:
    """The profile a workload names (stripped; empty, or too long to be a name, is none)."""
    name = overrides.profile_name(annotations or {})
    return name if name and len(name) <= MAX_PROFILE_NAME else None


class ProfileIndex:
    def __init__(self) -> None:
        self._profile_of: dict[Key, str] = {}
        self._users: dict[str, set[Key]] = {}
        # Profiles whose set of users changed since their status was last counted.
        self._recount: set[str] = set()

    def profile_of(self, key: Key) -> str | None:
        return self._profile_of.get(key)

    def set_profile(self, key: Key, profile: str | None) -> None:
        """Index `key` under `profile` (None: under nothing); a profile whose users changed is marked for
        its status to be recounted."""
        before = self._profile_of.get(key)
        if before == profile:
            return
        if before is not None:
            users = self._users.get(before)
            if users is not None:
                users.discard(key)
                if not users:
                    del self._users[before]
        if profile is None:
            self._profile_of.pop(key, None)
        else:
            self._profile_of[key] = profile
            self._users.setdefault(profile, set()).add(key)
        self._recount.update(p for p in (before, profile) if p)

    def users_of(self, profile: str) -> list[Key]:
        return sorted(self._users.get(profile, ()))

    def count(self, profile: str) -> int:
        return len(self._users.get(profile, ()))

    def take_recount(self) -> set[str]:
        """The profiles whose users changed since the last call (they are then no longer marked)."""
        names, self._recount = self._recount, set()
        return names

    def mark_recount(self, profile: str) -> None:
        """Count `profile`'s users again at the next `take_recount` (its last count was not reported)."""
        self._recount.add(profile)
