"""The take-once memory: per workload and contested field, what podgrace wrote and whether it backed off.

The one owner of this state (the decision is core/take_once.py). It lives in the operator's memory: after a
restart podgrace may take a field it had backed off from once more (then backs off again: at most one
extra rollout per restart), which is the price of writing nothing but the workload's spec.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from podgrace.controller.workload_key import Key
from podgrace.core.take_once import Taken, Verdict, decide


class FieldMemory:
    def __init__(self) -> None:
        self._taken: dict[Key, tuple[str, dict[str, Taken]]] = {}  # workload -> (uid, field -> Taken)

    def verdicts(
        self, key: Key, uid: str, live: Mapping[str, Any], owned: set[str], inputs: str
    ) -> dict[str, Verdict]:
        """The fields an owner holds against podgrace (RECLAIMED or BACKED_OFF); RECLAIMED is returned once,
        then the field is remembered as backed off with the owner's value."""
        known_uid, fields = self._taken.get(key, (uid, {}))
        if known_uid != uid:  # deleted and created again under the same name
            self._taken.pop(key, None)
            return {}
        found: dict[str, Verdict] = {}
        for field, taken in list(fields.items()):
            if field not in live:  # its container is gone (renamed or removed): nothing was taken back
                del fields[field]
                continue
            verdict = decide(taken, live.get(field), field in owned, inputs)
            if verdict is Verdict.FREE:
                if taken.inputs != inputs or taken.backed_off:
                    del fields[field]  # inputs or the owner's value changed: podgrace may take it once more
                continue
            if verdict is Verdict.RECLAIMED:
                fields[field] = Taken(taken.value, taken.inputs, owner_value=live.get(field))
            found[field] = verdict
        return found

    def wrote(self, key: Key, uid: str, written: Mapping[str, Any], inputs: str) -> None:
        """podgrace's apply wrote these contested fields."""
        known_uid, fields = self._taken.get(key, (uid, {}))
        if known_uid != uid:
            fields = {}
        for field, value in written.items():
            fields[field] = Taken(value, inputs)
        self._taken[key] = (uid, fields)

    def forget(self, key: Key) -> None:
        """Opted out, reverted or deleted: nothing is remembered about the workload."""
        self._taken.pop(key, None)
