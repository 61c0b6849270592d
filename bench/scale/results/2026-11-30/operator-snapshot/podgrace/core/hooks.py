"""What a preStop hook does on termination: podgrace's own from their typed values, any other by reading
its command."""

from __future__ import annotations

import re
from dataclasses import dataclass

from podgrace.core.hook_intent import ExecSleep, NativeSleep, SignalAndWait, script_text
from podgrace.core.models import PreStop, PreStopKind


@dataclass(frozen=True)
class HookEffect:
    """What a preStop hook does before the kubelet sends the stop signal."""

    delay_seconds: int
    signal: str | None  # a signal the hook delivers to the server itself, e.g. "SIGQUIT"
    waits_for_exit: bool  # the hook holds the kubelet's stop signal back until the server has exited
    known_bad: bool  # `nginx -s quit` and the like: signals and returns at once


_SLEEP = re.compile(r"(?:^|[\s;&|(])(?:/usr)?(?:/bin/)?sleep\s+(\d+)(?:\.\d+)?s?\b")
_KILL_PID1 = re.compile(r"\bkill\s+(?:-s\s+)?-?(?:SIG)?([A-Z]+[12]?)\s+1\b")
_WAIT_PID1 = re.compile(r"\bkill\s+-0\s+1\b")
_SERVER_SIGNAL = (
    (re.compile(r"\bnginx\s+-s\s+quit\b"), "SIGQUIT"),
    (re.compile(r"\b(?:apache2?ctl|httpd)\s+-k\s+graceful-stop\b"), "SIGWINCH"),
)


def effect(pre_stop: PreStop) -> HookEffect:
    """What a container's current hook does: podgrace's own forms from their typed values."""
    hook = pre_stop.podgrace_hook
    if isinstance(hook, NativeSleep | ExecSleep):
        return HookEffect(hook.seconds, None, False, False)
    if isinstance(hook, SignalAndWait):
        return HookEffect(hook.delay_seconds, hook.signal.value, True, False)
    return analyze(pre_stop)


def analyze(pre_stop: PreStop) -> HookEffect:
    """Read a hook that is not one of podgrace's forms: its sleeps before the signal, the signal it delivers
    to the server itself, and whether it then waits for the server to exit."""
    if pre_stop.kind is PreStopKind.SLEEP:
        return HookEffect(pre_stop.sleep_seconds or 0, None, False, False)
    if pre_stop.kind is not PreStopKind.EXEC:
        return HookEffect(0, None, False, False)
    script = script_text(pre_stop.command)
    killed = _KILL_PID1.search(script)
    head = script[: killed.start()] if killed else script
    delay = sum(int(m.group(1)) for m in _SLEEP.finditer(head))
    if killed is not None and killed.group(1) != "0":
        waits = _WAIT_PID1.search(script[killed.end() :]) is not None
        return HookEffect(delay, "SIG" + killed.group(1), waits, not waits)
    for pattern, signal in _SERVER_SIGNAL:
        found = pattern.search(script)
        if found:
            before = sum(int(m.group(1)) for m in _SLEEP.finditer(script[: found.start()]))
            return HookEffect(before, signal, False, True)
    return HookEffect(delay, None, False, False)
