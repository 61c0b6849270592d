"""The fields of a workload manifest that podgrace reads, checked as the API server checks them.

A value the API server would reject (a grace period given as a string, a float, a negative number or a
boolean; an annotation value that is not a string; a container name that is not a DNS label) is an error
naming the field, never silently converted.
"""

from __future__ import annotations

import re
import reprlib
from collections.abc import Mapping
from typing import Any

INT64_MAX = 2**63 - 1
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_repr = reprlib.Repr()
_repr.maxstring = 60
_repr.maxother = 60

POD_SPEC = "spec.template.spec"


def first_problem(obj: Mapping[str, Any]) -> str | None:
    """`field: what is wrong` for the first field the API server would reject, or None."""
    metadata = obj.get("metadata")
    if not isinstance(metadata, Mapping):
        return "metadata must be a mapping"
    for key in ("name", "namespace"):
        problem = _not_string(metadata.get(key), f"metadata.{key}")
        if problem:
            return problem
    annotations = metadata.get("annotations")
    if annotations is not None:
        if not isinstance(annotations, Mapping):
            return f"metadata.annotations: must be a mapping of strings, not {_kind(annotations)}"
        for key, value in annotations.items():
            if not isinstance(key, str):
                return f"metadata.annotations: key {_show(key)} is {_kind(key)}, not a string"
            if value is not None and not isinstance(value, str):
                return (
                    f"metadata.annotations[{key!r}]: {_show(value)} is {_kind(value)}; annotation values "
                    "are strings (quote it)"
                )
    pod = _at(obj, ("spec", "template", "spec"))
    if not isinstance(pod, Mapping):
        return None  # the parser reports a missing pod template with its own message
    problem = _integer(pod.get("terminationGracePeriodSeconds"), f"{POD_SPEC}.terminationGracePeriodSeconds")
    if problem:
        return problem
    os_spec = pod.get("os")
    if os_spec is not None and not (isinstance(os_spec, Mapping) and isinstance(os_spec.get("name"), str)):
        return f"{POD_SPEC}.os: must be a mapping with a string name"
    containers = pod.get("containers")
    if not isinstance(containers, list):
        return None
    for index, container in enumerate(containers):
        problem = _container(container, f"{POD_SPEC}.containers[{index}]")
        if problem:
            return problem
    return None


def _container(container: Any, where: str) -> str | None:
    if not isinstance(container, Mapping):
        return f"{where}: must be a mapping, not {_kind(container)}"
    name = container.get("name")
    if not isinstance(name, str):
        return f"{where}.name: {_show(name)} is {_kind(name)}, not a string"
    if len(name) > 63 or not _DNS_LABEL.match(name):
        return (
            f"{where}.name: {_show(name)} is not a DNS label (lower-case letters, digits and '-', "
            "at most 63, starting and ending with a letter or digit)"
        )
    lifecycle, at = container.get("lifecycle"), f"{where}.lifecycle"
    problem = _not_string(container.get("image"), f"{where}.image") or _not_mapping(lifecycle, at)
    if problem or lifecycle is None:
        return problem
    pre_stop = lifecycle.get("preStop")
    bad_signal = _not_string(lifecycle.get("stopSignal"), f"{at}.stopSignal", "a signal name")
    problem = bad_signal or _not_mapping(pre_stop, f"{at}.preStop")
    if problem or pre_stop is None:
        return problem
    return _pre_stop(pre_stop, f"{at}.preStop")


def _pre_stop(pre_stop: Mapping[str, Any], where: str) -> str | None:
    sleep = pre_stop.get("sleep")
    if sleep is not None:
        problem = _not_mapping(sleep, f"{where}.sleep")
        if problem:
            return problem
        seconds = sleep.get("seconds")
        if seconds is None:
            return f"{where}.sleep.seconds: required"
        return _integer(seconds, f"{where}.sleep.seconds")
    exec_ = pre_stop.get("exec")
    problem = _not_mapping(exec_, f"{where}.exec")
    if problem or exec_ is None:
        return problem
    command = exec_.get("command")
    if command is not None and not (isinstance(command, list) and all(isinstance(c, str) for c in command)):
        return f"{where}.exec.command: must be a list of strings"
    return None


# The checks of an optional field (None: absent, nothing to check).


def _not_mapping(value: Any, where: str) -> str | None:
    if value is None or isinstance(value, Mapping):
        return None
    return f"{where}: must be a mapping, not {_kind(value)}"


def _not_string(value: Any, where: str, expected: str = "a string") -> str | None:
    if value is None or isinstance(value, str):
        return None
    return f"{where}: {_show(value)} is {_kind(value)}, not {expected}"


def _integer(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        return f"{where}: {_show(value)} is {_kind(value)}, not an integer"
    if not 0 <= value <= INT64_MAX:
        return f"{where}: {value} is out of range 0..{INT64_MAX}"
    return None


def _at(obj: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    current: Any = obj
    for step in path:
        current = current.get(step) if isinstance(current, Mapping) else None
    return current


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    return f"a {type(value).__name__}"


def _show(value: Any) -> str:
    return _repr.repr(value)
