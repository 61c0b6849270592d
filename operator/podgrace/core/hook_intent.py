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
from podgrace.core.signals import Role, Signal

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
    """Sleep, deliver the graceful signal to the server, then wait (bounded) while it drains.

    Waiting matters: the kubelet sends the stop signal (SIGTERM, a fast stop for nginx/php-fpm) as soon as
    the hook returns, so a hook that only signals (`nginx -s quit`) changes nothing.

    A known server (nginx, php-fpm, Apache) is found by its process name under /proc: the process of that
    name whose parent is not of that name (the master), wherever it runs — PID 1, under an init (tini,
    dumb-init) or beside the pause process of a shared PID namespace; PID 1 when none is found. The hook
    signals nginx's and php-fpm's workers, Apache's parent (_SIGNAL_WORKERS, _SIGNAL_MASTER say why) and
    returns once the processes that drain have exited, before the master can exit: the kernel would kill a
    hook still running when PID 1 exits, which kubelets report as FailedPreStopHook. The kubelet's stop
    signal then finds nothing in flight. A generic server has no name to look for: the hook signals PID 1
    and waits until it has exited (so it is still killed with PID 1: FailedPreStopHook remains there).
    """

    delay_seconds: int
    signal: Signal
    wait_limit_seconds: int
    role: Role = Role.GENERIC


HookIntent = NativeSleep | ExecSleep | SignalAndWait

_EXEC_SLEEP = "\n".join([HOOK_MARKER, "sleep {seconds}"])
_EXEC_SLEEP_HEAD = f"{HOOK_MARKER}\nsleep {{delay}}"  # how every exec form starts
_SIGNAL_AND_WAIT = "\n".join(
    [
        HOOK_MARKER,
        "sleep {delay}",
        "kill -{signal} 1",
        "i=0",
        'while kill -0 1 2>/dev/null && [ "$i" -lt {wait_limit} ]; do sleep 1; i=$((i+1)); done',
    ]
)

# The process names (/proc/PID/comm, as `case` patterns) of each known server's processes.
PROCESS_NAMES: dict[Role, str] = {
    Role.NGINX: "nginx",
    Role.PHP_FPM: "php-fpm*",
    Role.APACHE: "apache2|httpd",
}

# POSIX sh with only `sleep` and `kill` from the image: /proc is read with the `read` builtin. Field 4 of
# /proc/PID/stat is the parent PID (after the command name in parentheses, which may hold spaces), field 3
# the state (Z: exited, not yet reaped by its parent).
_FIND_MASTER = [
    HOOK_MARKER,
    "sleep {delay}",
    "m=1",
    "for d in /proc/[0-9]*; do",
    '  read -r c <"$d/comm" || continue',
    "  case $c in {names}) ;; *) continue ;; esac",
    '  read -r s <"$d/stat" || continue',
    "  set -- ${{s##*) }}",
    '  c=; read -r c <"/proc/$2/comm"',
    "  case $c in {names}) ;; *) m=${{d#/proc/}}; break ;; esac",
    "done 2>/dev/null",
]

# The end of a wait loop over processes: go on while one of them is the master's child and has not exited.
_UNTIL_EXITED = [
    "    set -- ${{s##*) }}",
    '    [ "$1" != Z ] && [ "$2" = "$m" ] && k=1 && break',
    "  done 2>/dev/null",
    '  [ -n "$k" ] || break',
    "  sleep 1; i=$((i+1))",
    "done",
]

# nginx, php-fpm: the graceful signal goes to the master's workers, not to the master. Each worker
# finishes its requests (nginx also closes its idle keep-alive connections) and exits; the master, not
# quitting itself, starts fresh workers in their place. The hook returns once the workers it signalled
# are gone. Signalled the master, the hook could not return in time: it exits microseconds after its last
# worker, and the kernel kills a hook still running when PID 1 exits (exit 137: FailedPreStopHook); no
# state a polling hook can see comes between "nothing in flight" and that exit. This way the master only
# exits on the kubelet's stop signal, when the workers that held requests are gone (php-fpm's
# process_control_timeout plays no part: the master never runs its own graceful stop).
_SIGNAL_WORKERS = "\n".join(
    [
        *_FIND_MASTER,
        "w=",
        "for d in /proc/[0-9]*; do",
        '  read -r s <"$d/stat" || continue',
        "  set -- ${{s##*) }}",
        '  [ "$2" = "$m" ] && w="$w ${{d#/proc/}}"',
        "done 2>/dev/null",
        '[ -n "$w" ] || exit 0',
        "kill -{signal} $w",
        "i=0",
        'while [ "$i" -lt {wait_limit} ]; do',
        "  k=",
        "  for p in $w; do",
        '    kill -0 "$p" 2>/dev/null || continue',
        '    read -r s <"/proc/$p/stat" || continue',
        *_UNTIL_EXITED,
    ]
)

# Apache: its graceful stop (WINCH) goes to the parent, which closes the listening sockets and lets its
# children finish (a child ignores WINCH, so it cannot be signalled as nginx's workers are). The hook
# returns as soon as every child has exited (a zombie counts as exited). Still open: the parent reaps its
# last child on its next once-a-second round, then signals its process group (the hook's too) and exits,
# so the hook, polling once a second, returns in time only about half the time (FailedPreStopHook on a
# real kubelet; the drain is complete either way).
_SIGNAL_MASTER = "\n".join(
    [
        *_FIND_MASTER,
        'kill -{signal} "$m"',
        "i=0",
        'while kill -0 "$m" 2>/dev/null && [ "$i" -lt {wait_limit} ]; do',
        "  k=",
        "  for d in /proc/[0-9]*; do",
        '    read -r s <"$d/stat" || continue',
        *_UNTIL_EXITED,
    ]
)
_SIGNAL_TARGET = {Role.NGINX: _SIGNAL_WORKERS, Role.PHP_FPM: _SIGNAL_WORKERS, Role.APACHE: _SIGNAL_MASTER}


def _template(role: Role) -> str:
    names = PROCESS_NAMES.get(role)
    if names is None:
        return _SIGNAL_AND_WAIT
    return _SIGNAL_TARGET[role].replace("{names}", names)


def render(hook: HookIntent) -> dict[str, Any]:
    """The preStop handler of a podgrace hook (a fresh object each time)."""
    if isinstance(hook, NativeSleep):
        return {"sleep": {"seconds": hook.seconds}}
    if isinstance(hook, ExecSleep):
        return _shell(_EXEC_SLEEP.format(seconds=hook.seconds))
    script = _template(hook.role).format(
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
_SIGNAL_AND_WAIT_FORMS = {role: _pattern(_template(role)) for role in Role}


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
    for role, form in _SIGNAL_AND_WAIT_FORMS.items():
        if found := form.fullmatch(command[2]):
            signal = Signal("SIG" + found["signal"])
            return SignalAndWait(int(found["delay"]), signal, int(found["wait_limit"]), role)
    return None


def admission_pattern() -> str:
    """An RE2 pattern (anchored, for the chart's admission policy) that matches exactly the scripts of
    ExecSleep and SignalAndWait, any number in a number's place and any Signal in the signal's. The chart
    holds a copy (tests/chart/test_chart_admission.py checks it is this one)."""
    signals = "(" + "|".join(s.value.removeprefix("SIG") for s in Signal) + ")"
    fields = {"delay": "[0-9]+", "wait_limit": "[0-9]+", "signal": signals}

    def tail(template: str) -> str:
        parts = []
        for text, field, _, _ in string.Formatter().parse(template.removeprefix(_EXEC_SLEEP_HEAD)):
            parts.append(_re2_literal(text))
            if field is not None:
                parts.append(fields[field])
        return "".join(parts)

    forms = dict.fromkeys(tail(_template(role)) for role in Role)  # one per distinct script, in Role order
    head = _re2_literal(_EXEC_SLEEP_HEAD).replace("\\{delay\\}", "[0-9]+")
    return f"^{head}({'|'.join(forms)})?$"


def _re2_literal(text: str) -> str:
    """Text as an RE2 pattern on one line: metacharacters escaped, a newline as \\n."""
    return re.sub(r"[\\.+*?()|\[\]{}^$]", lambda m: "\\" + m.group(), text).replace("\n", "\\n")
