"""What a preStop hook does on termination: podgrace's own from their typed values, any other by reading
its command."""

from __future__ import annotations

import re
from dataclasses import dataclass

from podgrace.core.hook_intent import ExecSleep, NativeSleep, SignalAndWait, script_text
from podgrace.core.models import PreStop, PreStopKind
from podgrace.core.signals import Role


@dataclass(frozen=True)
class HookEffect:
    """What a preStop hook does before the kubelet sends the stop signal."""

    delay_seconds: int
    signal: str | None  # a signal the hook delivers to the server itself, e.g. "SIGQUIT"
    waits_for_exit: bool  # the hook holds the kubelet's stop signal back until the server has exited
    known_bad: bool  # `nginx -s quit` and the like: signals and returns at once
    signals_pid1: bool = False  # the signal goes to PID 1 (the pause process when the pod shares PIDs)


_SLEEP = re.compile(r"(?:^|[\s;&|(])(?:/usr)?(?:/bin/)?sleep\s+(\d+)(?:\.\d+)?s?\b")
# PID 1, or a PID the script found (podgrace's hook finds the server's master process under /proc)
_TARGET = r"""(?:1\b|"\$\w+"|\$\w+\b)"""
_KILL_PID1 = re.compile(rf"\bkill\s+(?:-s\s+)?-?(?:SIG)?([A-Z]+[12]?)\s+({_TARGET})")
_WAIT_PID1 = re.compile(rf"\bkill\s+-0\s+{_TARGET}")
_SERVER_SIGNAL = (
    (re.compile(r"\bnginx\s+-s\s+quit\b"), "SIGQUIT"),
    (re.compile(r"\b(?:apache2?ctl|httpd)\s+-k\s+graceful-stop\b"), "SIGWINCH"),
)


# Programs an exec hook may start that shell-less images (distroless, Chainguard, chiselled) do not have:
# the shells and the coreutils/busybox tools preStop scripts use.
_SHELL_TOOLS = frozenset({"sh", "bash", "ash", "dash", "ksh", "zsh", "busybox", "sleep", "kill", "env"})
NO_EFFECT = HookEffect(0, None, False, False)


def needs_shell(pre_stop: PreStop) -> bool:
    """Whether an exec hook starts a shell or a shell tool (`/bin/sh -c ...`, `sleep 5`): it fails at once
    in an image without them. A hook that starts the server's own binary (`/nginx -s quit`) may not."""
    if pre_stop.kind is not PreStopKind.EXEC or not pre_stop.command:
        return False
    return pre_stop.command[0].rsplit("/", 1)[-1] in _SHELL_TOOLS


def effect(pre_stop: PreStop) -> HookEffect:
    """What a container's current hook does: podgrace's own forms from their typed values."""
    hook = pre_stop.podgrace_hook
    if isinstance(hook, NativeSleep | ExecSleep):
        return HookEffect(hook.seconds, None, False, False)
    if isinstance(hook, SignalAndWait):
        return HookEffect(hook.delay_seconds, hook.signal.value, True, False, hook.role is Role.GENERIC)
    return analyze(pre_stop)


def analyze(pre_stop: PreStop) -> HookEffect:
    """Read a hook that is not one of podgrace's forms: its sleeps before the signal, the signal it delivers
    to the server itself, and whether it then waits for the server to exit."""
    if pre_stop.kind is PreStopKind.SLEEP:
        return HookEffect(pre_stop.sleep_seconds or 0, None, False, False)
    if pre_stop.kind is not PreStopKind.EXEC:
        return NO_EFFECT
    script = script_text(pre_stop.command)
    killed = _KILL_PID1.search(script)
    head = script[: killed.start()] if killed else script
    delay = sum(int(m.group(1)) for m in _SLEEP.finditer(head))
    if killed is not None and killed.group(1) != "0":
        waits = _WAIT_PID1.search(script[killed.end() :]) is not None
        return HookEffect(delay, "SIG" + killed.group(1), waits, not waits, killed.group(2) == "1")
    for pattern, signal in _SERVER_SIGNAL:
        found = pattern.search(script)
        if found:
            before = sum(int(m.group(1)) for m in _SLEEP.finditer(script[: found.start()]))
            return HookEffect(before, signal, False, True)
    return HookEffect(delay, None, False, False)
