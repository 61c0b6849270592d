"""The preStop hooks podgrace writes, and hooks.analyze: what an existing hook does before the stop signal."""

from __future__ import annotations

from typing import Any

import pytest

from podgrace.core import hooks
from podgrace.core.constants import HOOK_MARKER
from podgrace.core.models import PreStop, PreStopKind, Signal


def _pre_stop(handler: dict[str, Any] | None) -> PreStop:
    return PreStop.from_api({"preStop": handler} if handler is not None else None)


def _exec(*command: str) -> dict[str, Any]:
    return {"exec": {"command": list(command)}}


def test_native_sleep() -> None:
    assert hooks.native_sleep(5) == {"sleep": {"seconds": 5}}


def test_exec_sleep() -> None:
    assert hooks.exec_sleep(12) == _exec("/bin/sh", "-c", "# podgrace graceful stop\nsleep 12")


def test_signal_and_wait_script() -> None:
    assert hooks.signal_and_wait(35, Signal.SIGQUIT, 30) == _exec(
        "/bin/sh",
        "-c",
        "# podgrace graceful stop\n"
        "sleep 35\n"
        "kill -QUIT 1\n"
        "i=0\n"
        'while kill -0 1 2>/dev/null && [ "$i" -lt 30 ]; do sleep 1; i=$((i+1)); done',
    )


@pytest.mark.parametrize("signal", list(Signal), ids=[s.value for s in Signal])
def test_signal_and_wait_names_the_signal_without_sig_prefix(signal: Signal) -> None:
    script = hooks.signal_and_wait(1, signal, 2)["exec"]["command"][2]
    assert f"\nkill -{signal.value[3:]} 1\n" in script
    assert script.startswith(HOOK_MARKER + "\n")


def test_hooks_are_fresh_objects() -> None:
    a = hooks.signal_and_wait(1, Signal.SIGQUIT, 2)
    a["exec"]["command"].append("x")
    assert hooks.signal_and_wait(1, Signal.SIGQUIT, 2) != a


def test_pre_stop_from_api() -> None:
    assert _pre_stop(None).kind is PreStopKind.NONE
    assert _pre_stop({}).kind is PreStopKind.NONE
    assert PreStop.from_api({"preStop": "nonsense"}).kind is PreStopKind.NONE
    sleep = _pre_stop({"sleep": {"seconds": 7}})
    assert (sleep.kind, sleep.sleep_seconds, sleep.raw) == (PreStopKind.SLEEP, 7, {"sleep": {"seconds": 7}})
    ex = _pre_stop(_exec("nginx", "-s", "quit"))
    assert (ex.kind, ex.command) == (PreStopKind.EXEC, ("nginx", "-s", "quit"))
    assert _pre_stop({"httpGet": {"path": "/", "port": 80}}).kind is PreStopKind.HTTP_GET
    assert _pre_stop({"tcpSocket": {"port": 80}}).kind is PreStopKind.TCP_SOCKET


E = hooks.HookEffect

# (preStop handler, HookEffect(delay, signal, waits_for_exit, known_bad, podgrace_form))
ANALYZE = [
    pytest.param(None, E(0, None, False, False, False), id="none"),
    pytest.param({"sleep": {"seconds": 7}}, E(7, None, False, False, False), id="native-sleep"),
    pytest.param({"httpGet": {"path": "/drain", "port": 80}}, E(0, None, False, False, False), id="http-get"),
    pytest.param({"tcpSocket": {"port": 80}}, E(0, None, False, False, False), id="tcp-socket"),
    pytest.param(_exec("/bin/sleep", "5"), E(5, None, False, False, False), id="exec-bin-sleep"),
    pytest.param(_exec("sleep", "5"), E(5, None, False, False, False), id="exec-sleep"),
    pytest.param(_exec("/usr/bin/sleep", "5"), E(5, None, False, False, False), id="exec-usr-bin-sleep"),
    pytest.param(_exec("/bin/busybox", "sleep", "5"), E(5, None, False, False, False), id="busybox-sleep"),
    pytest.param(_exec("sh", "-c", "sleep 5"), E(5, None, False, False, False), id="sh-c-sleep"),
    pytest.param(_exec("/bin/bash", "-c", "sleep 5 && sleep 3"), E(8, None, False, False, False), id="sum"),
    pytest.param(_exec("sh", "-c", "sleep 5s"), E(5, None, False, False, False), id="seconds-suffix"),
    pytest.param(_exec("sh", "-c", "sleep 2.5"), E(2, None, False, False, False), id="fraction-floored"),
    pytest.param(_exec("sh", "-c", "sleep 5m"), E(0, None, False, False, False), id="minutes-not-counted"),
    pytest.param(_exec("sh", "-c", "sleep $DELAY"), E(0, None, False, False, False), id="variable"),
    # the seed article's hook: signals nginx and returns at once, the kubelet's SIGTERM follows
    pytest.param(
        _exec("/usr/sbin/nginx", "-s", "quit"), E(0, "SIGQUIT", False, True, False), id="nginx-s-quit"
    ),
    pytest.param(
        _exec("/bin/sh", "-c", "sleep 5; nginx -s quit"),
        E(5, "SIGQUIT", False, True, False),
        id="sleep-then-quit",
    ),
    pytest.param(
        _exec("apachectl", "-k", "graceful-stop"),
        E(0, "SIGWINCH", False, True, False),
        id="apachectl-graceful",
    ),
    pytest.param(
        _exec("sh", "-c", "httpd -k graceful-stop"), E(0, "SIGWINCH", False, True, False), id="httpd-graceful"
    ),
    pytest.param(
        _exec("sh", "-c", "sleep 5; kill -QUIT 1"), E(5, "SIGQUIT", False, True, False), id="kill-no-wait"
    ),
    pytest.param(
        _exec("sh", "-c", "sleep 4; kill -s QUIT 1; while kill -0 1; do sleep 1; done"),
        E(4, "SIGQUIT", True, False, False),
        id="kill-s-and-wait",
    ),
    pytest.param(
        _exec("sh", "-c", "kill -SIGWINCH 1 && while kill -0 1 2>/dev/null; do sleep 1; done"),
        E(0, "SIGWINCH", True, False, False),
        id="kill-sigwinch-and-wait",
    ),
    pytest.param(_exec("sh", "-c", "kill -USR1 1"), E(0, "SIGUSR1", False, True, False), id="kill-usr1"),
    pytest.param(
        _exec("sh", "-c", "sleep 3; kill -QUIT 10"), E(3, None, False, False, False), id="not-pid-1"
    ),
    # podgrace's own hooks
    pytest.param(hooks.exec_sleep(5), E(5, None, False, False, True), id="podgrace-exec-sleep"),
    pytest.param(
        hooks.signal_and_wait(35, Signal.SIGQUIT, 30),
        E(35, "SIGQUIT", True, False, True, 30),
        id="podgrace-quit",
    ),
    pytest.param(
        hooks.signal_and_wait(0, Signal.SIGWINCH, 30),
        E(0, "SIGWINCH", True, False, True, 30),
        id="podgrace-winch-0",
    ),
]


@pytest.mark.parametrize(("handler", "effect"), ANALYZE)
def test_analyze(handler: dict[str, Any] | None, effect: hooks.HookEffect) -> None:
    assert hooks.analyze(_pre_stop(handler)) == effect


def test_wait_loop_sleep_is_not_counted_as_delay() -> None:
    # `sleep 1` inside the wait loop comes after the signal: it does not delay the signal
    effect = hooks.analyze(_pre_stop(hooks.signal_and_wait(5, Signal.SIGQUIT, 30)))
    assert effect.delay_seconds == 5


def test_marker_alone_does_not_make_a_signal_hook_good() -> None:
    script = f"{HOOK_MARKER}\nsleep 5\nkill -QUIT 1"
    assert hooks.analyze(_pre_stop(_exec("/bin/sh", "-c", script))) == E(5, "SIGQUIT", False, True, True)


@pytest.mark.parametrize(
    "command",
    [("/bin/sh", "-ec", "sleep 10"), ("bash", "-lc", "sleep 10")],
    ids=["sh-ec", "bash-lc"],
)
def test_sleep_behind_other_shell_flags_is_counted(command: tuple[str, ...]) -> None:
    assert hooks.analyze(_pre_stop(_exec(*command))).delay_seconds == 10
