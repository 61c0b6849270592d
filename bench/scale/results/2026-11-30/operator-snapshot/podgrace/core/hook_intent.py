"""podgrace's own preStop hooks as typed values: what the planner decides, and the one place that turns
them into Kubernetes handlers and shell text (`render`) or reads a live handler back as one (`read`).

`read` recognises exactly the forms `render` writes (rendering what it read gives the handler back), and
runs once, where a Deployment is read: everywhere else podgrace compares these values, never its shell.
"""

from __future__ import annotations

import re
import shlex
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from podgrace.core.constants import HOOK_MARKER
from podgrace.core.signals import Signal

SHELL = ("/bin/sh", "-c")


@dataclass(frozen=True)
class NativeSleep:
    """Kubernetes' own `sleep` handler (API servers 1.30 and newer)."""

    seconds: int


@dataclass(frozen=True)
class ExecSleep:
    """A shell `sleep`, where the API server has no native one."""

    seconds: int


@dataclass(frozen=True)
class SignalAndWait:
    """Sleep, deliver the graceful signal to PID 1, then wait (bounded) until PID 1 has exited.

    Waiting matters: the kubelet sends the stop signal (SIGTERM, a fast stop for nginx/php-fpm) as soon as
    the hook returns, so a hook that only signals (`nginx -s quit`) changes nothing. When PID 1 exits, the
    kernel ends this hook too; kubelets report that as FailedPreStopHook, which is expected here.
    """

    delay_seconds: int
    signal: Signal
    wait_limit_seconds: int


HookIntent = NativeSleep | ExecSleep | SignalAndWait

_EXEC_SLEEP = "\n".join([HOOK_MARKER, "sleep {seconds}"])
_SIGNAL_AND_WAIT = "\n".join(
    [
        HOOK_MARKER,
        "sleep {delay}",
        "kill -{signal} 1",
        "i=0",
        'while kill -0 1 2>/dev/null && [ "$i" -lt {wait_limit} ]; do sleep 1; i=$((i+1)); done',
    ]
)


def render(hook: HookIntent) -> dict[str, Any]:
    """The preStop handler of a podgrace hook (a fresh object each time)."""
    if isinstance(hook, NativeSleep):
        return {"sleep": {"seconds": hook.seconds}}
    if isinstance(hook, ExecSleep):
        return _shell(_EXEC_SLEEP.format(seconds=hook.seconds))
    script = _SIGNAL_AND_WAIT.format(
        delay=hook.delay_seconds,
        signal=hook.signal.value.removeprefix("SIG"),
        wait_limit=hook.wait_limit_seconds,
    )
    return _shell(script)


def _shell(script: str) -> dict[str, Any]:
    return {"exec": {"command": [*SHELL, script]}}


def script_text(command: Sequence[str]) -> str:
    """The script of an exec command that runs a shell with -c, else the whole command line."""
    shell_with_c = (
        len(command) >= 3 and command[0].endswith("sh") and re.fullmatch(r"-[a-z]*c[a-z]*", command[1])
    )
    if shell_with_c:
        return command[2]
    return shlex.join(command)


def carries_marker(command: Sequence[str]) -> bool:
    """Whether an exec command carries the marker of podgrace's hooks (a manifest without managedFields
    shows by it that podgrace wrote the hook)."""
    return HOOK_MARKER in script_text(command)


def _pattern(template: str) -> re.Pattern[str]:
    """A template as a regular expression: its text literally, each field a named group."""
    parts = []
    for text, field, _, _ in string.Formatter().parse(template):
        parts.append(re.escape(text))
        if field is not None:
            parts.append(rf"(?P<{field}>\w+)")
    return re.compile("".join(parts))


_EXEC_SLEEP_FORM = _pattern(_EXEC_SLEEP)
_SIGNAL_AND_WAIT_FORM = _pattern(_SIGNAL_AND_WAIT)


def read(handler: Mapping[str, Any]) -> HookIntent | None:
    """The preStop handler as the podgrace hook it is exactly, or None when it is not one of podgrace's
    forms (someone else's hook, or one of podgrace's edited by hand)."""
    try:
        hook = _candidate(handler)
    except ValueError:  # a field that is no number or no signal podgrace names
        return None
    return hook if hook is not None and render(hook) == handler else None


def _candidate(handler: Mapping[str, Any]) -> HookIntent | None:
    sleep = handler.get("sleep")
    if isinstance(sleep, Mapping):
        seconds = sleep.get("seconds")
        return NativeSleep(seconds) if type(seconds) is int else None
    exec_ = handler.get("exec")
    command = exec_.get("command") if isinstance(exec_, Mapping) else None
    if not isinstance(command, list) or len(command) != 3 or not isinstance(command[2], str):
        return None
    if found := _EXEC_SLEEP_FORM.fullmatch(command[2]):
        return ExecSleep(int(found["seconds"]))
    if found := _SIGNAL_AND_WAIT_FORM.fullmatch(command[2]):
        return SignalAndWait(int(found["delay"]), Signal("SIG" + found["signal"]), int(found["wait_limit"]))
    return None
