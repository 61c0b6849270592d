"""The users' side of the soak: each Deployment as its owner wrote it, the changes the owners make, and
what each change asks of podgrace, computed with podgrace's own planner (the code behind `podgrace
render`) on the owner's manifest.

The minimum number of podgrace's Deployment writes is defined here: one for every Deployment whose
rendered settings differ from what it carries when podgrace starts (the initial opt-ins), plus one for
every user change after which the Deployment's rendered settings differ from before it (an opt-in, an
opt-out, a new sleep annotation; a profile edit counts once per Deployment naming the profile whose
settings it changes). Edits that change nothing podgrace renders (an unrelated annotation) count zero.
An opt-out that gives the grace period back to the API server's default counts two: the revert, then
podgrace's write of managedFields alone that gives up its claim on the re-defaulted value (an Update is
recorded as owning what the server defaulted in it; README "Who owns what", rule 5).
"""

from __future__ import annotations

import copy
import dataclasses
import random
from collections import Counter
from typing import Any

from bench.scale.workload import PROFILE_ANN, SLEEP_ANN, Item, manifest

from podgrace.core import profiles as profiles_mod
from podgrace.core.apply_body import merge_into_manifest
from podgrace.core.capabilities import Capabilities
from podgrace.core.planner import plan
from podgrace.core.workload_parser import from_object

TOUCH_ANN = "soak.podgrace.dev/touch"  # an annotation podgrace does not read: a change it must not write for
DEFAULT_GRACE = 30  # what the API server defaults terminationGracePeriodSeconds to


def settings(obj: dict[str, Any]) -> dict[str, Any]:
    """What podgrace may set on a Deployment, as it is on `obj` (a live object or a rendered manifest)."""
    spec = obj["spec"]["template"]["spec"]
    return {
        "lifecycle": {c["name"]: c.get("lifecycle") for c in spec["containers"]},
        "terminationGracePeriodSeconds": spec.get("terminationGracePeriodSeconds", DEFAULT_GRACE),
        "os": spec.get("os"),
    }


@dataclasses.dataclass
class Owner:
    """One Deployment as its owner keeps it: its identity, its set, its annotations."""

    item: Item
    set_name: str
    annotations: dict[str, str]
    ever_opted_in: bool = False

    @property
    def key(self) -> tuple[str, str]:
        return self.item.key

    @property
    def opted_in(self) -> bool:
        return PROFILE_ANN in self.annotations

    def manifest(self) -> dict[str, Any]:
        obj = manifest(dataclasses.replace(self.item, profile=None), self.set_name)
        obj["metadata"]["annotations"] = dict(self.annotations)
        return obj


class Model:
    """Every Deployment of the soak as its owner wrote it, and the minimum writes the changes ask for."""

    def __init__(
        self, owners: list[Owner], profile_bodies: dict[str, dict[str, Any]], capabilities: Capabilities
    ) -> None:
        self.owners = {o.key: o for o in owners}
        self.profile_bodies = copy.deepcopy(profile_bodies)  # user profiles, by name (plus the built-ins)
        self.capabilities = capabilities
        self.minimum = 0
        self.minimum_by_cause: Counter[str] = Counter()
        self.events: Counter[str] = Counter()  # user changes made, by kind
        for owner in owners:
            owner.ever_opted_in = owner.opted_in
            if self.rendered(owner) != settings(owner.manifest()):
                self._count("initial opt-in")

    def _profiles(self) -> dict[str, Any]:
        return {**profiles_mod.builtin(), **profiles_mod.from_documents(self.profile_bodies.values())}

    def rendered(self, owner: Owner, profiles: dict[str, Any] | None = None) -> dict[str, Any]:
        obj = owner.manifest()
        result = plan(from_object(obj, with_ownership=False), profiles or self._profiles(), self.capabilities)
        return settings(merge_into_manifest(obj, result))

    def _count(self, cause: str, n: int = 1) -> None:
        self.minimum += n
        self.minimum_by_cause[cause] += n

    def annotate(self, key: tuple[str, str], kind: str, changes: dict[str, str | None]) -> None:
        """The owner's annotation change has been accepted by the API server: count what it asks for."""
        owner = self.owners[key]
        before = self.rendered(owner)
        for name, value in changes.items():
            if value is None:
                owner.annotations.pop(name, None)
            else:
                owner.annotations[name] = value
        owner.ever_opted_in |= owner.opted_in
        self.events[kind] += 1
        after = self.rendered(owner)
        if after != before:
            self._count(kind)
        grace = "terminationGracePeriodSeconds"
        defaulted = grace not in owner.manifest()["spec"]["template"]["spec"]
        if defaulted and not owner.opted_in and before[grace] != after[grace]:
            self._count("release of the re-defaulted grace period")

    def edit_profile(self, name: str, spec: dict[str, Any]) -> None:
        """The profile's new spec has been accepted by the API server."""
        users = [o for o in self.owners.values() if o.annotations.get(PROFILE_ANN) == name]
        before = {o.key: self.rendered(o) for o in users}
        self.profile_bodies[name]["spec"] = copy.deepcopy(spec)
        self.events["profile edit"] += 1
        profiles = self._profiles()
        self._count("profile edit", sum(1 for o in users if self.rendered(o, profiles) != before[o.key]))


class Churn:
    """The owners' next changes: Deployments in a shuffled round robin (each is changed again only after
    every other has been), so that two changes of one Deployment are far apart and podgrace's writes can be
    compared with the minimum without coalescing in between. Opted-in Deployments are opted out, get a new
    sleep annotation or an unrelated one; the others are opted in or get an unrelated one."""

    def __init__(self, keys: list[tuple[str, str]], seed: int = 12) -> None:
        self._random = random.Random(seed)
        self._keys = list(keys)
        self._random.shuffle(self._keys)
        self._next = 0
        self._touches = 0

    def next(self, model: Model, profile: str) -> tuple[tuple[str, str], str, dict[str, str | None]]:
        key = self._keys[self._next % len(self._keys)]
        self._next += 1
        owner = model.owners[key]
        self._touches += 1
        touch: dict[str, str | None] = {TOUCH_ANN: str(self._touches)}
        if owner.opted_in:
            kind = self._random.choices(["opt-out", "sleep edit", "unrelated edit"], [2, 4, 2])[0]
            if kind == "opt-out":
                return key, kind, {PROFILE_ANN: None, SLEEP_ANN: None}
            if kind == "sleep edit":
                current = owner.annotations.get(SLEEP_ANN)
                value = self._random.choice([str(v) for v in range(2, 10) if str(v) != current])
                return key, kind, {SLEEP_ANN: value}
            return key, kind, touch
        kind = self._random.choices(["opt-in", "unrelated edit"], [3, 1])[0]
        return key, kind, ({PROFILE_ANN: profile} if kind == "opt-in" else touch)
