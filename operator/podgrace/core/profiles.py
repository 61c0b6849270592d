"""Loading ShutdownProfiles: the built-in ones shipped with podgrace, and user-supplied YAML."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from importlib import resources
from typing import Any

import yaml
from pydantic import ValidationError

from podgrace.core.models import ShutdownProfile

BUILTIN_RESOURCE = "builtin/profiles.yaml"


class ProfileError(ValueError):
    pass


def is_profile(obj: Any) -> bool:
    return isinstance(obj, Mapping) and obj.get("kind") == "ShutdownProfile"


def parse(obj: Mapping[str, Any]) -> ShutdownProfile:
    try:
        return ShutdownProfile.model_validate(obj)
    except ValidationError as error:
        name = (
            (obj.get("metadata") or {}).get("name", "?") if isinstance(obj.get("metadata"), Mapping) else "?"
        )
        raise ProfileError(f"ShutdownProfile {name}: {format_validation_error(error)}") from error


def format_validation_error(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        location = ".".join(str(p) for p in item["loc"])
        message = str(item["msg"]).removeprefix("Value error, ")
        parts.append(f"{location}: {message}" if location else message)
    return "; ".join(parts)


def from_documents(documents: Iterable[Any]) -> dict[str, ShutdownProfile]:
    found: dict[str, ShutdownProfile] = {}
    for doc in documents:
        if is_profile(doc):
            profile = parse(doc)
            if profile.name in found:
                raise ProfileError(f"ShutdownProfile {profile.name} is defined twice")
            found[profile.name] = profile
    return found


def builtin_text() -> str:
    return resources.files("podgrace.core").joinpath(BUILTIN_RESOURCE).read_text(encoding="utf-8")


def builtin() -> dict[str, ShutdownProfile]:
    return dict(_builtin())  # a fresh dict: callers add their own profiles to it


@functools.cache
def _builtin() -> dict[str, ShutdownProfile]:  # profiles are frozen models: parsed once per process
    return from_documents(yaml.safe_load_all(builtin_text()))


@functools.cache
def builtin_names() -> frozenset[str]:
    """The names of the built-in profiles (the chart installs them under these names)."""
    return frozenset(builtin())
