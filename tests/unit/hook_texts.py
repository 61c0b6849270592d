"""The fallback hooks' expected shell text, written out independently of hook_intent's templates (shared
by test_hooks and test_planner)."""

from __future__ import annotations

from typing import Any

from podgrace.core.constants import HOOK_MARKER


def _find_master(names: str) -> str:
    return (
        "m=1\n"
        "for d in /proc/[0-9]*; do\n"
        '  read -r c <"$d/comm" || continue\n'
        f"  case $c in {names}) ;; *) continue ;; esac\n"
        '  read -r s <"$d/stat" || continue\n'
        "  set -- ${s##*) }\n"
        '  c=; read -r c <"/proc/$2/comm"\n'
        f"  case $c in {names}) ;; *) m=${{d#/proc/}}; break ;; esac\n"
        "done 2>/dev/null\n"
    )


UNTIL_EXITED = (
    "    set -- ${s##*) }\n"
    '    [ "$1" != Z ] && [ "$2" = "$m" ] && k=1 && break\n'
    "  done 2>/dev/null\n"
    '  [ -n "$k" ] || break\n'
    "  sleep 1; i=$((i+1))\n"
    "done"
)


def _signal_master(signal: str, wait: int) -> str:
    """Apache: the signal to the parent, then wait while it has a child that has not exited."""
    return (
        f'kill -{signal} "$m"\n'
        "i=0\n"
        f'while kill -0 "$m" 2>/dev/null && [ "$i" -lt {wait} ]; do\n'
        "  k=\n"
        "  for d in /proc/[0-9]*; do\n"
        '    read -r s <"$d/stat" || continue\n'
    ) + UNTIL_EXITED


def _signal_workers(signal: str, wait: int) -> str:
    """nginx, php-fpm: the signal to the master's workers, then wait until those have exited."""
    return (
        "w=\n"
        "for d in /proc/[0-9]*; do\n"
        '  read -r s <"$d/stat" || continue\n'
        "  set -- ${s##*) }\n"
        '  [ "$2" = "$m" ] && w="$w ${d#/proc/}"\n'
        "done 2>/dev/null\n"
        '[ -n "$w" ] || exit 0\n'
        f"kill -{signal} $w\n"
        "i=0\n"
        f'while [ "$i" -lt {wait} ]; do\n'
        "  k=\n"
        "  for p in $w; do\n"
        '    kill -0 "$p" 2>/dev/null || continue\n'
        '    read -r s <"/proc/$p/stat" || continue\n'
    ) + UNTIL_EXITED


def signal_wait_script(delay: int, signal: str, wait: int, names: str | None) -> str:
    """podgrace's fallback hook's script. `names`: the server's process names (a `case` pattern); None: the
    form for a generic server (and of earlier podgrace versions): signal PID 1, wait until it exits."""
    if names is None:
        return (
            f"{HOOK_MARKER}\n"
            f"sleep {delay}\n"
            f"kill -{signal} 1\n"
            "i=0\n"
            f'while kill -0 1 2>/dev/null && [ "$i" -lt {wait} ]; do sleep 1; i=$((i+1)); done'
        )
    tail = _signal_master if names == "apache2|httpd" else _signal_workers
    return f"{HOOK_MARKER}\nsleep {delay}\n" + _find_master(names) + tail(signal, wait)


def signal_wait(delay: int, signal: str, wait: int, names: str | None) -> dict[str, Any]:
    """The fallback hook as a preStop handler; `wait` = max(drain, grace - delay - 2): it holds the kubelet's
    own stop signal back until 2 s before the grace period ends."""
    return {"exec": {"command": ["/bin/sh", "-c", signal_wait_script(delay, signal, wait, names)]}}
