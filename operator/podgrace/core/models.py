"""Typed models of podgrace's inputs: ShutdownProfiles and the parts of a Deployment the planner reads.

External input (YAML files, API objects) is validated into these at the edge; the planner only sees them.
"""

from __future__ import annotations

import fnmatch
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from podgrace.core import hook_intent
from podgrace.core.constants import (
    MAX_DRAIN_SECONDS,
    MAX_MARGIN_SECONDS,
    MAX_SLEEP_SECONDS,
)
from podgrace.core.hook_intent import HookIntent
from podgrace.core.signals import Role, Signal

# The graceful stop of each role; nginx and php-fpm treat SIGTERM as fast shutdown, Apache too (WINCH is
# its graceful-stop). A generic server is assumed to drain on the image's default signal.
GRACEFUL_SIGNAL: dict[Role, Signal | None] = {
    Role.NGINX: Signal.SIGQUIT,
    Role.PHP_FPM: Signal.SIGQUIT,
    Role.APACHE: Signal.SIGWINCH,
    Role.GENERIC: None,
}


class ExistingPreStop(StrEnum):
    KEEP = "keep"
    REPLACE = "replace"


class Mode(StrEnum):
    ENFORCE = "enforce"
    AUDIT = "audit"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


Seconds = Annotated[int, Field(ge=0, le=MAX_SLEEP_SECONDS)]
RuleName = Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")]


ImagePattern = Annotated[str, Field(min_length=1, max_length=255)]


class ContainerMatch(_Strict):
    container_names: tuple[RuleName, ...] = Field(default=(), alias="containerNames", max_length=32)
    images: tuple[ImagePattern, ...] = Field(default=(), max_length=64)
    exclude_images: tuple[ImagePattern, ...] = Field(default=(), alias="excludeImages", max_length=64)

    @model_validator(mode="after")
    def _not_empty(self) -> ContainerMatch:
        if not self.container_names and not self.images:
            raise ValueError("match needs containerNames or images")
        return self

    def matches(self, name: str, image: str) -> bool:
        if self.excludes(image):
            return False
        return name in self.container_names or any(image_matches(image, p) for p in self.images)

    def excludes(self, image: str) -> bool:
        """Whether the image is one this rule never takes, whatever the container's name."""
        return any(image_matches(image, p) for p in self.exclude_images)


@functools.lru_cache(maxsize=65536)
def image_matches(image: str, pattern: str) -> bool:
    """Glob `pattern` against an image reference.

    A pattern with a tag part (a `:` after its last `/`) matches the repository and the tag separately:
    `wordpress:*fpm*` matches `wordpress:6-fpm-alpine` and `docker.io/library/wordpress:6-fpm` is
    matched by `*/wordpress:*fpm*`; an image without a tag has the empty tag. A pattern without one sees
    the whole reference and the repository alone: `*php*fpm*` matches `php:8.3-fpm`, `nginx` matches
    `nginx:1.27`.
    """
    repository, tag = split_image(image)
    colon, slash = pattern.rfind(":"), pattern.rfind("/")
    if colon > slash:
        return fnmatch.fnmatchcase(repository, pattern[:colon]) and fnmatch.fnmatchcase(
            tag, pattern[colon + 1 :]
        )
    return fnmatch.fnmatchcase(image, pattern) or fnmatch.fnmatchcase(repository, pattern)


def split_image(image: str) -> tuple[str, str]:
    """`reg:5000/ns/nginx:1.27@sha256:..` -> (`reg:5000/ns/nginx`, `1.27`); no tag: the empty tag."""
    without_digest = image.split("@", 1)[0]
    last_slash = without_digest.rfind("/")
    last_colon = without_digest.rfind(":")
    if last_colon > last_slash:
        return without_digest[:last_colon], without_digest[last_colon + 1 :]
    return without_digest, ""


def image_repository(image: str) -> str:
    """The image reference without tag or digest: `reg/ns/nginx:1.27@sha256:..` -> `reg/ns/nginx`."""
    return split_image(image)[0]


class ContainerRule(_Strict):
    name: RuleName
    match: ContainerMatch
    role: Role
    pre_stop_sleep_seconds: Seconds = Field(default=5, alias="preStopSleepSeconds")
    drain_seconds: Annotated[int, Field(ge=0, le=MAX_DRAIN_SECONDS)] = Field(default=30, alias="drainSeconds")
    stop_signal: Signal | None = Field(default=None, alias="stopSignal")
    stop_after: tuple[RuleName, ...] = Field(default=(), alias="stopAfter", max_length=16)

    @model_validator(mode="after")
    def _coherent(self) -> ContainerRule:
        graceful = GRACEFUL_SIGNAL[self.role]
        if graceful is not None and self.stop_signal is not None and self.stop_signal != graceful:
            raise ValueError(
                f"rule {self.name!r}: role {self.role.value} stops gracefully only on {graceful.value}, "
                f"not {self.stop_signal.value}"
            )
        if self.name in self.stop_after:
            raise ValueError(f"rule {self.name!r} cannot stop after itself")
        return self

    @property
    def effective_signal(self) -> Signal | None:
        return self.stop_signal or GRACEFUL_SIGNAL[self.role]


class ShutdownProfileSpec(_Strict):
    description: str = Field(default="", max_length=1024)
    existing_pre_stop: ExistingPreStop = Field(default=ExistingPreStop.KEEP, alias="existingPreStop")
    grace_period_margin_seconds: Annotated[int, Field(ge=0, le=MAX_MARGIN_SECONDS)] = Field(
        default=5, alias="gracePeriodMarginSeconds"
    )
    containers: tuple[ContainerRule, ...] = Field(min_length=1, max_length=16)

    @model_validator(mode="after")
    def _references(self) -> ShutdownProfileSpec:
        names = [rule.name for rule in self.containers]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"container rule names must be unique, repeated: {', '.join(duplicates)}")
        for rule in self.containers:
            unknown = [n for n in rule.stop_after if n not in names]
            if unknown:
                raise ValueError(f"rule {rule.name!r}: stopAfter names unknown rules: {', '.join(unknown)}")
        _check_acyclic({rule.name: rule.stop_after for rule in self.containers})
        return self

    def rule(self, name: str) -> ContainerRule:
        return next(rule for rule in self.containers if rule.name == name)

    def match(self, container_name: str, image: str) -> ContainerRule | None:
        """First rule that matches a container, in profile order."""
        return next((r for r in self.containers if r.match.matches(container_name, image)), None)


def _check_acyclic(edges: dict[str, tuple[str, ...]]) -> None:
    visiting: set[str] = set()
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        if node in done:
            return
        if node in visiting:
            cycle = " -> ".join([*path[path.index(node) :], node])
            raise ValueError(f"stopAfter forms a cycle: {cycle}")
        visiting.add(node)
        for nxt in edges.get(node, ()):
            visit(nxt, [*path, node])
        visiting.discard(node)
        done.add(node)

    for node in edges:
        visit(node, [])


ProfileName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
    ),
]


class ProfileMetadata(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    name: ProfileName
    generation: int | None = None


class ShutdownProfile(BaseModel):
    """A whole ShutdownProfile object (from a file or the API)."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    api_version: Literal["podgrace.dev/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["ShutdownProfile"] = "ShutdownProfile"
    metadata: ProfileMetadata
    spec: ShutdownProfileSpec

    @property
    def name(self) -> str:
        return self.metadata.name


# --- The parts of a Deployment the planner reads -------------------------------------------------------


class PreStopKind(StrEnum):
    NONE = "none"
    SLEEP = "sleep"
    EXEC = "exec"
    HTTP_GET = "httpGet"
    TCP_SOCKET = "tcpSocket"


class PreStop(_Strict):
    kind: PreStopKind
    sleep_seconds: int | None = None
    command: tuple[str, ...] = ()
    marked: bool = False  # an exec hook with podgrace's marker (hook_intent.carries_marker)
    # The handler as one of podgrace's hooks, when it is exactly one of their forms (any native sleep is):
    # podgrace compares its hooks by this value.
    podgrace_hook: HookIntent | None = None

    @classmethod
    def from_api(cls, lifecycle: Mapping[str, Any] | None) -> PreStop:
        handler = (lifecycle or {}).get("preStop")
        if not isinstance(handler, dict) or not handler:
            return cls(kind=PreStopKind.NONE)
        return cls._of_handler(handler, hook_intent.read(handler))

    @classmethod
    def of_podgrace_hook(cls, hook: HookIntent) -> PreStop:
        """The preStop a container has once podgrace's hook is applied."""
        return _pre_stop_of_hook(hook)

    @classmethod
    def _of_handler(cls, handler: dict[str, Any], podgrace_hook: HookIntent | None) -> PreStop:
        if isinstance(handler.get("sleep"), dict):
            seconds = handler["sleep"].get("seconds")
            return cls(kind=PreStopKind.SLEEP, sleep_seconds=int(seconds or 0), podgrace_hook=podgrace_hook)
        if isinstance(handler.get("exec"), dict):
            command = tuple(str(c) for c in handler["exec"].get("command") or [])
            return cls(
                kind=PreStopKind.EXEC,
                command=command,
                marked=hook_intent.carries_marker(command),
                podgrace_hook=podgrace_hook,
            )
        if "httpGet" in handler:
            return cls(kind=PreStopKind.HTTP_GET)
        return cls(kind=PreStopKind.TCP_SOCKET)


# Memoised: a hook and its PreStop are immutable, and thousands of Deployments share a handful of hooks
# (rendering each anew was a tenth of planning).
@functools.lru_cache(maxsize=4096)
def _pre_stop_of_hook(hook: HookIntent) -> PreStop:
    return PreStop._of_handler(hook_intent.render(hook), hook)


class ContainerView(_Strict):
    name: str
    image: str = ""
    pre_stop: PreStop = PreStop(kind=PreStopKind.NONE)
    stop_signal: str | None = None


class Ownership(_Strict):
    """Which injected fields podgrace owns and which another field manager has set (from managedFields).

    `known` is False for a manifest read from a file: then a field counts as podgrace's only when it is
    recognisably podgrace's own form.
    """

    known: bool = False
    podgrace_pre_stop: frozenset[str] = frozenset()
    podgrace_stop_signal: frozenset[str] = frozenset()
    foreign_pre_stop: frozenset[str] = frozenset()
    foreign_stop_signal: frozenset[str] = frozenset()
    foreign_grace: bool = False
    # Another manager owns terminationGracePeriodSeconds only because the API server defaulted it (30 s)
    # on that manager's create or update: not a value the user chose; taking it needs a forced apply.
    grace_defaulted: bool = False
    # The other field manager that owns each contested field (`field_key`), and those of them that wrote it
    # by server-side apply (they re-assert it with force, or would conflict: podgrace never takes those).
    owners: tuple[tuple[str, str], ...] = ()
    applied: frozenset[str] = frozenset()
    last_writer: str = ""  # the other manager that wrote the Deployment last (names who dropped a field)
    # Fields an owner took back after podgrace had taken them (the controller's take-once memory): kept.
    reclaimed: tuple[tuple[str, str], ...] = ()

    def owner_of(self, key: str) -> str:
        return dict(self.owners).get(key, "")

    def reclaimed_by(self, key: str) -> str | None:
        return dict(self.reclaimed).get(key)


GRACE_FIELD = "terminationGracePeriodSeconds"


OS_FIELD = "os.name"


def pre_stop_field(container: str) -> str:
    """The key of a container's preStop hook in Ownership.owners / reclaimed and in Warnings."""
    return f"containers[{container}].lifecycle.preStop"


def stop_signal_field(container: str) -> str:
    """The key of a container's lifecycle.stopSignal, like pre_stop_field."""
    return f"containers[{container}].lifecycle.stopSignal"


@dataclass(frozen=True)
class Overrides:
    """A Deployment's `podgrace.dev/...` annotations, parsed (overrides.parse) where it is read."""

    profile: str | None = None  # None: not opted in
    mode: Mode = Mode.ENFORCE
    pre_stop_sleep_seconds: int | None = None
    drain_seconds: int | None = None
    termination_grace_period_seconds: int | None = None
    containers: frozenset[str] | None = None
    existing_pre_stop: ExistingPreStop | None = None
    # podgrace.dev/no-shell: True (every container), False (none: built-in image knowledge is overridden),
    # the names of the containers without /bin/sh, or None (the built-in image knowledge decides)
    no_shell: bool | frozenset[str] | None = None
    errors: tuple[str, ...] = ()


class Workload(_Strict):
    namespace: str = "default"
    name: str
    overrides: Overrides = Overrides()
    containers: tuple[ContainerView, ...]
    termination_grace_period_seconds: int | None = None
    os_name: str | None = None
    ownership: Ownership = Ownership()
    # spec.template.spec.shareProcessNamespace: PID 1 is the pause process, not a container's server
    share_process_namespace: bool = False

    @field_validator("containers")
    @classmethod
    def _unique(cls, value: tuple[ContainerView, ...]) -> tuple[ContainerView, ...]:
        names = [c.name for c in value]
        if len(set(names)) != len(names):
            raise ValueError("container names must be unique")
        return value

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"
