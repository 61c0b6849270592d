"""What podgrace last settled on and last wrote for each workload: the record that decides which
workload events need no reconcile.

Two facts a workload, one entry:
- settled: the signature (`work_queue.signature`) of the state whose reconcile had nothing to report (no
  Warning, nothing failed), with the profiles' version then. An event with the same signature under the
  same profiles (a status update, the echo of podgrace's own write) would plan the same and find the same
  no-op.
- written: the uid and the newest generation podgrace's own requests have shown it: what its last apply
  returned, or a fresh read (a retry's GET). A watch event of an older generation is from before that and
  must not trigger an apply again: a lagging watch can deliver a user's edit after a retry has read, and
  found already done, the write that followed it (an apply whose answer was lost).

Whether an apply would change anything is not decided here: that is `core.write_patch.write_patch`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from podgrace.controller.workload_key import Key


class _Entry:
    __slots__ = ("settled", "settled_version", "written_generation", "written_uid")

    def __init__(self) -> None:
        self.settled: bytes | None = None
        self.settled_version = 0
        self.written_uid: str | None = None
        self.written_generation = 0

    def empty(self) -> bool:
        return self.settled is None and self.written_uid is None


class SkipRecord:
    def __init__(self) -> None:
        self._entries: dict[Key, _Entry] = {}
        # Bumped when a ShutdownProfile's spec changes or it is deleted: what workloads settled on
        # before may then plan differently.
        self._profiles_version = 0

    @property
    def profiles_version(self) -> int:
        return self._profiles_version

    def profiles_changed(self) -> None:
        self._profiles_version += 1

    def is_settled(self, key: Key, signature: bytes) -> bool:
        """Whether a reconcile of the state with this signature would find nothing to do. Runs on every
        watch event: one lookup, no allocation."""
        entry = self._entries.get(key)
        return (
            entry is not None
            and entry.settled == signature
            and entry.settled_version == self._profiles_version
        )

    def settle(self, key: Key, signature: bytes, profiles_version: int) -> None:
        """The reconcile of the state with this signature, under the profiles of `profiles_version` (as
        they were when it started), had nothing to report."""
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry()
        entry.settled = signature
        entry.settled_version = profiles_version

    def unsettle(self, key: Key) -> None:
        entry = self._entries.get(key)
        if entry is not None:
            entry.settled = None
            if entry.empty():
                del self._entries[key]

    def wrote(self, key: Key, written: Mapping[str, Any]) -> None:
        """podgrace's apply returned `written` (its metadata at least)."""
        metadata = written.get("metadata") or {}
        generation = metadata.get("generation")
        if not isinstance(generation, int):
            return
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry()
        entry.written_uid = str(metadata.get("uid"))
        entry.written_generation = generation

    def read(self, key: Key, fresh: Mapping[str, Any]) -> None:
        """podgrace read `fresh` from the API server (not from the watch): events older are stale."""
        metadata = fresh.get("metadata") or {}
        generation = metadata.get("generation")
        if self.is_stale(key, metadata) or (
            isinstance(generation, int) and self._known_generation(key, metadata) == generation
        ):
            return  # an answer older than (or as new as) what is known: the mark never goes down
        self.wrote(key, fresh)

    def _known_generation(self, key: Key, metadata: Mapping[str, Any]) -> int | None:
        entry = self._entries.get(key)
        if entry is None or entry.written_uid != str(metadata.get("uid")):
            return None
        return entry.written_generation

    def is_stale(self, key: Key, metadata: Mapping[str, Any]) -> bool:
        """Whether a workload with this metadata is older than podgrace's last write of it."""
        entry = self._entries.get(key)
        generation = metadata.get("generation")
        if entry is None or entry.written_uid != str(metadata.get("uid")) or not isinstance(generation, int):
            return False
        return generation < entry.written_generation

    def forget(self, key: Key) -> None:
        self._entries.pop(key, None)
