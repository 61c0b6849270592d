"""The preStop hooks podgrace writes, and a reading of what an existing hook does on termination."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Any

from podgrace.core.constants import HOOK_MARKER
from podgrace.core.models import PreStop, PreStopKind, Signal


def native_sleep(seconds: int) -> dict[str, Any]:
    return {"sleep": {"seconds": seconds}}


def exec_sleep(seconds: int) -> dict[str, Any]:
    return {"exec": {"command": ["/bin/sh", "-c", f"{HOOK_MARKER}\nsleep {seconds}"]}}


def signal_and_wait(delay_seconds: int, signal: Signal, wait_seconds: int) -> dict[str, Any]:
    """Sleep, deliver the graceful signal to PID 1, then wait (bounded) until PID 1 has exited.

    Waiting matters: the kubelet sends the stop signal (SIGTERM, a fast stop for nginx/php-fpm) as soon as
    the hook returns, so a hook that only signals (`nginx -s quit`) changes nothing. When PID 1 exits, the
    kernel ends this hook too; kubelets report that as FailedPreStopHook, which is expected here.
    """
    name = signal.value.removeprefix("SIG")
    script = "\n".join(
        [
            HOOK_MARKER,
            f"sleep {delay_seconds}",
            f"kill -{name} 1",
            "i=0",
            f'while kill -0 1 2>/dev/null && [ "$i" -lt {wait_seconds} ]; do sleep 1; i=$((i+1)); done',
        ]
    )
    return {"exec": {"command": ["/bin/sh", "-c", script]}}


@dataclass(frozen=True)
class HookEffect:
    """What a preStop hook does before the kubelet sends the stop signal."""

    delay_seconds: int
    signal: str | None  # a signal the hook delivers to the server itself, e.g. "SIGQUIT"
    waits_for_exit: bool  # the hook holds the kubelet's stop signal back until the server has exited
    known_bad: bool  # `nginx -s quit` and the like: signals and returns at once
    podgrace_form: bool  # carries podgrace's marker
    wait_limit: int | None = None  # how long a signalling hook waits for PID 1 at most


_SLEEP = re.compile(r"(?:^|[\s;&|(])(?:/usr)?(?:/bin/)?sleep\s+(\d+)(?:\.\d+)?s?\b")
_KILL_PID1 = re.compile(r"\bkill\s+(?:-s\s+)?-?(?:SIG)?([A-Z]+[12]?)\s+1\b")
_WAIT_PID1 = re.compile(r"\bkill\s+-0\s+1\b")
_WAIT_LIMIT = re.compile(r'"\$i"\s+-lt\s+(\d+)')
_SERVER_SIGNAL = (
    (re.compile(r"\bnginx\s+-s\s+quit\b"), "SIGQUIT"),
    (re.compile(r"\b(?:apache2?ctl|httpd)\s+-k\s+graceful-stop\b"), "SIGWINCH"),
)


def analyze(pre_stop: PreStop) -> HookEffect:
    if pre_stop.kind is PreStopKind.SLEEP:
        return HookEffect(pre_stop.sleep_seconds or 0, None, False, False, False)
    if pre_stop.kind is not PreStopKind.EXEC:
        return HookEffect(0, None, False, False, False)
    script = _script_text(pre_stop.command)
    killed = _KILL_PID1.search(script)
    head = script[: killed.start()] if killed else script
    delay = sum(int(m.group(1)) for m in _SLEEP.finditer(head))
    if killed is not None and killed.group(1) != "0":
        waits = _WAIT_PID1.search(script[killed.end() :]) is not None
        limit = _WAIT_LIMIT.search(script[killed.end() :])
        return HookEffect(
            delay,
            "SIG" + killed.group(1),
            waits,
            not waits,
            HOOK_MARKER in script,
            int(limit.group(1)) if limit else None,
        )
    for pattern, signal in _SERVER_SIGNAL:
        found = pattern.search(script)
        if found:
            before = sum(int(m.group(1)) for m in _SLEEP.finditer(script[: found.start()]))
            return HookEffect(before, signal, False, True, False)
    return HookEffect(delay, None, False, False, HOOK_MARKER in script)


def _script_text(command: tuple[str, ...]) -> str:
    shell_with_c = (
        len(command) >= 3 and command[0].endswith("sh") and re.fullmatch(r"-[a-z]*c[a-z]*", command[1])
    )
    if shell_with_c:
        return command[2]
    return shlex.join(command)
