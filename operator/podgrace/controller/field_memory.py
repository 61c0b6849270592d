"""The take-once memory: per Deployment and contested field, what podgrace wrote and whether it backed off.

The one owner of this state (the decision is core/take_once.py). It lives in the operator's memory: after a
restart podgrace may take a field it had backed off from once more (then backs off again: at most one
extra rollout per restart), which is the price of writing nothing but the Deployment's spec.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from podgrace.core.take_once import Taken, Verdict, decide


class FieldMemory:
    def __init__(self) -> None:
        self._taken: dict[str, dict[str, Taken]] = {}

    def verdicts(self, uid: str, live: Mapping[str, Any], owned: set[str], inputs: str) -> dict[str, Verdict]:
        """The fields an owner holds against podgrace (RECLAIMED or BACKED_OFF); RECLAIMED is returned once,
        then the field is remembered as backed off with the owner's value."""
        fields = self._taken.get(uid, {})
        found: dict[str, Verdict] = {}
        for key, taken in list(fields.items()):
            verdict = decide(taken, live.get(key), key in owned, inputs)
            if verdict is Verdict.FREE:
                if taken.inputs != inputs or taken.backed_off:
                    del fields[key]  # inputs or the owner's value changed: podgrace may take it once more
                continue
            if verdict is Verdict.RECLAIMED:
                fields[key] = Taken(taken.value, taken.inputs, owner_value=live.get(key))
            found[key] = verdict
        return found

    def wrote(self, uid: str, written: Mapping[str, Any], inputs: str) -> None:
        """podgrace's apply wrote these contested fields."""
        fields = self._taken.setdefault(uid, {})
        for key, value in written.items():
            fields[key] = Taken(value, inputs)

    def forget(self, uid: str) -> None:
        self._taken.pop(uid, None)
