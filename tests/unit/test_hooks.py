"""The preStop hooks podgrace writes (hook_intent.render) and recognises as its own (hook_intent.read), and
hooks.analyze: what any other hook does before the stop signal."""

from __future__ import annotations

from typing import Any

import pytest
from tests.unit.hook_texts import signal_wait_script

from podgrace.core import hook_intent, hooks
from podgrace.core.constants import HOOK_MARKER
from podgrace.core.hook_intent import ExecSleep, HookIntent, NativeSleep, SignalAndWait
from podgrace.core.models import PreStop, PreStopKind
from podgrace.core.signals import Role, Signal


def _pre_stop(handler: dict[str, Any] | None) -> PreStop:
    return PreStop.from_api({"preStop": handler} if handler is not None else None)


def _exec(*command: str) -> dict[str, Any]:
    return {"exec": {"command": list(command)}}


def test_native_sleep() -> None:
    assert hook_intent.render(NativeSleep(5)) == {"sleep": {"seconds": 5}}


def test_exec_sleep() -> None:
    assert hook_intent.render(ExecSleep(12)) == _exec("/bin/sh", "-c", "# podgrace graceful stop\nsleep 12")


def test_signal_and_wait_script() -> None:
    assert hook_intent.render(SignalAndWait(35, Signal.SIGQUIT, 30)) == _exec(
        "/bin/sh",
        "-c",
        "# podgrace graceful stop\n"
        "sleep 35\n"
        "kill -QUIT 1\n"
        "i=0\n"
        'while kill -0 1 2>/dev/null && [ "$i" -lt 30 ]; do sleep 1; i=$((i+1)); done',
    )


def test_signal_and_wait_signals_apaches_parent() -> None:
    script = hook_intent.render(SignalAndWait(5, Signal.SIGWINCH, 33, Role.APACHE))["exec"]["command"][2]
    assert script == signal_wait_script(5, "WINCH", 33, "apache2|httpd")
    assert 'kill -WINCH "$m"' in script and "w=" not in script


@pytest.mark.parametrize(("role", "names"), [(Role.NGINX, "nginx"), (Role.PHP_FPM, "php-fpm*")])
def test_signal_and_wait_signals_the_workers_of_nginx_and_php_fpm(role: Role, names: str) -> None:
    script = hook_intent.render(SignalAndWait(5, Signal.SIGQUIT, 33, role))["exec"]["command"][2]
    assert script == signal_wait_script(5, "QUIT", 33, names)
    assert "kill -QUIT $w" in script and 'kill -QUIT "$m"' not in script


def test_read_tells_the_roles_apart() -> None:
    nginx = hook_intent.render(SignalAndWait(5, Signal.SIGQUIT, 33, Role.NGINX))
    php = hook_intent.render(SignalAndWait(5, Signal.SIGQUIT, 33, Role.PHP_FPM))
    assert hook_intent.read(nginx) == SignalAndWait(5, Signal.SIGQUIT, 33, Role.NGINX)
    assert hook_intent.read(php) == SignalAndWait(5, Signal.SIGQUIT, 33, Role.PHP_FPM)
    edited = nginx["exec"]["command"][2].replace("in nginx)", "in nginx|angie)")
    assert hook_intent.read(_exec("/bin/sh", "-c", edited)) is None


@pytest.mark.parametrize("signal", list(Signal), ids=[s.value for s in Signal])
def test_signal_and_wait_names_the_signal_without_sig_prefix(signal: Signal) -> None:
    script = hook_intent.render(SignalAndWait(1, signal, 2))["exec"]["command"][2]
    assert f"\nkill -{signal.value[3:]} 1\n" in script
    assert script.startswith(HOOK_MARKER + "\n")


def test_hooks_are_fresh_objects() -> None:
    a = hook_intent.render(SignalAndWait(1, Signal.SIGQUIT, 2))
    a["exec"]["command"].append("x")
    assert hook_intent.render(SignalAndWait(1, Signal.SIGQUIT, 2)) != a


def test_pre_stop_from_api() -> None:
    assert _pre_stop(None).kind is PreStopKind.NONE
    assert _pre_stop({}).kind is PreStopKind.NONE
    assert PreStop.from_api({"preStop": "nonsense"}).kind is PreStopKind.NONE
    sleep = _pre_stop({"sleep": {"seconds": 7}})
    assert (sleep.kind, sleep.sleep_seconds, sleep.podgrace_hook) == (PreStopKind.SLEEP, 7, NativeSleep(7))
    ex = _pre_stop(_exec("nginx", "-s", "quit"))
    assert (ex.kind, ex.command) == (PreStopKind.EXEC, ("nginx", "-s", "quit"))
    assert _pre_stop({"httpGet": {"path": "/", "port": 80}}).kind is PreStopKind.HTTP_GET
    assert _pre_stop({"tcpSocket": {"port": 80}}).kind is PreStopKind.TCP_SOCKET


E = hooks.HookEffect

# (preStop handler, HookEffect(delay, signal, waits_for_exit, known_bad[, signals_pid1]))
ANALYZE = [
    pytest.param(None, E(0, None, False, False), id="none"),
    pytest.param({"sleep": {"seconds": 7}}, E(7, None, False, False), id="native-sleep"),
    pytest.param({"httpGet": {"path": "/drain", "port": 80}}, E(0, None, False, False), id="http-get"),
    pytest.param({"tcpSocket": {"port": 80}}, E(0, None, False, False), id="tcp-socket"),
    pytest.param(_exec("/bin/sleep", "5"), E(5, None, False, False), id="exec-bin-sleep"),
    pytest.param(_exec("sleep", "5"), E(5, None, False, False), id="exec-sleep"),
    pytest.param(_exec("/usr/bin/sleep", "5"), E(5, None, False, False), id="exec-usr-bin-sleep"),
    pytest.param(_exec("/bin/busybox", "sleep", "5"), E(5, None, False, False), id="busybox-sleep"),
    pytest.param(_exec("sh", "-c", "sleep 5"), E(5, None, False, False), id="sh-c-sleep"),
    pytest.param(_exec("/bin/bash", "-c", "sleep 5 && sleep 3"), E(8, None, False, False), id="sum"),
    pytest.param(_exec("sh", "-c", "sleep 5s"), E(5, None, False, False), id="seconds-suffix"),
    pytest.param(_exec("sh", "-c", "sleep 2.5"), E(2, None, False, False), id="fraction-floored"),
    pytest.param(_exec("sh", "-c", "sleep 5m"), E(0, None, False, False), id="minutes-not-counted"),
    pytest.param(_exec("sh", "-c", "sleep $DELAY"), E(0, None, False, False), id="variable"),
    # the seed article's hook: signals nginx and returns at once, the kubelet's SIGTERM follows
    pytest.param(_exec("/usr/sbin/nginx", "-s", "quit"), E(0, "SIGQUIT", False, True), id="nginx-s-quit"),
    pytest.param(
        _exec("/bin/sh", "-c", "sleep 5; nginx -s quit"),
        E(5, "SIGQUIT", False, True),
        id="sleep-then-quit",
    ),
    pytest.param(
        _exec("apachectl", "-k", "graceful-stop"),
        E(0, "SIGWINCH", False, True),
        id="apachectl-graceful",
    ),
    pytest.param(
        _exec("sh", "-c", "httpd -k graceful-stop"), E(0, "SIGWINCH", False, True), id="httpd-graceful"
    ),
    pytest.param(
        _exec("sh", "-c", "sleep 5; kill -QUIT 1"), E(5, "SIGQUIT", False, True, True), id="kill-no-wait"
    ),
    pytest.param(
        _exec("sh", "-c", "sleep 4; kill -s QUIT 1; while kill -0 1; do sleep 1; done"),
        E(4, "SIGQUIT", True, False, True),
        id="kill-s-and-wait",
    ),
    pytest.param(
        _exec("sh", "-c", "kill -SIGWINCH 1 && while kill -0 1 2>/dev/null; do sleep 1; done"),
        E(0, "SIGWINCH", True, False, True),
        id="kill-sigwinch-and-wait",
    ),
    pytest.param(_exec("sh", "-c", "kill -USR1 1"), E(0, "SIGUSR1", False, True, True), id="kill-usr1"),
    pytest.param(_exec("sh", "-c", "sleep 3; kill -QUIT 10"), E(3, None, False, False), id="not-pid-1"),
    # podgrace's own forms, as hooks.analyze reads a copy somebody else owns
    pytest.param(hook_intent.render(ExecSleep(5)), E(5, None, False, False), id="podgrace-exec-sleep"),
    pytest.param(
        hook_intent.render(SignalAndWait(35, Signal.SIGQUIT, 30)),
        E(35, "SIGQUIT", True, False, True),
        id="podgrace-quit",
    ),
    pytest.param(
        hook_intent.render(SignalAndWait(0, Signal.SIGWINCH, 30)),
        E(0, "SIGWINCH", True, False, True),
        id="podgrace-winch-0",
    ),
    pytest.param(
        hook_intent.render(SignalAndWait(5, Signal.SIGQUIT, 30, Role.NGINX)),
        E(5, "SIGQUIT", True, False, False),
        id="podgrace-finds-nginx",
    ),
]


@pytest.mark.parametrize(("handler", "effect"), ANALYZE)
def test_analyze(handler: dict[str, Any] | None, effect: hooks.HookEffect) -> None:
    assert hooks.analyze(_pre_stop(handler)) == effect


def test_wait_loop_sleep_is_not_counted_as_delay() -> None:
    # `sleep 1` inside the wait loop comes after the signal: it does not delay the signal
    effect = hooks.analyze(_pre_stop(hook_intent.render(SignalAndWait(5, Signal.SIGQUIT, 30))))
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


# --- podgrace's own hooks as typed values --------------------------------------------------------------

OWN_HOOKS = [
    NativeSleep(5),
    NativeSleep(0),
    ExecSleep(12),
    *(SignalAndWait(35, signal, 33) for signal in Signal),
    SignalAndWait(0, Signal.SIGWINCH, 1800),
    *(SignalAndWait(5, Signal.SIGQUIT, 33, role) for role in Role),
    SignalAndWait(0, Signal.SIGWINCH, 1800, Role.APACHE),
]


@pytest.mark.parametrize("hook", OWN_HOOKS, ids=repr)
def test_read_recognises_what_render_writes(hook: HookIntent) -> None:
    assert hook_intent.read(hook_intent.render(hook)) == hook
    assert _pre_stop(hook_intent.render(hook)).podgrace_hook == hook
    assert PreStop.of_podgrace_hook(hook) == _pre_stop(hook_intent.render(hook))


@pytest.mark.parametrize("hook", OWN_HOOKS, ids=repr)
def test_effect_of_an_own_hook_is_what_its_text_does(hook: HookIntent) -> None:
    pre_stop = _pre_stop(hook_intent.render(hook))
    assert hooks.effect(pre_stop) == hooks.analyze(pre_stop)


SCRIPT = hook_intent.render(SignalAndWait(5, Signal.SIGQUIT, 33))["exec"]["command"][2]


@pytest.mark.parametrize(
    "handler",
    [
        pytest.param(_exec("/bin/sh", "-c", "sleep 5"), id="no-marker"),
        pytest.param(_exec("/bin/sh", "-c", f"{HOOK_MARKER}\nsleep 5\nkill -QUIT 1"), id="marker-no-wait"),
        pytest.param(_exec("/bin/sh", "-c", f"{HOOK_MARKER}\nsleep 05"), id="leading-zero"),
        pytest.param(_exec("/bin/sh", "-c", f"{HOOK_MARKER}\nsleep 5 "), id="trailing-space"),
        pytest.param(_exec("/bin/bash", "-c", f"{HOOK_MARKER}\nsleep 5"), id="other-shell"),
        pytest.param(_exec("/bin/sh", "-c", f"{HOOK_MARKER}\nsleep 5", "x"), id="extra-argument"),
        pytest.param(_exec("/bin/sh", "-c", SCRIPT.replace("-QUIT", "-KILL")), id="signal-not-named"),
        pytest.param(_exec("/bin/sh", "-c", SCRIPT.replace("-lt 33", "-lt 3x")), id="limit-not-a-number"),
        pytest.param(_exec("/bin/sh", "-c", SCRIPT + "\n"), id="trailing-newline"),
        pytest.param({"sleep": {"seconds": "5"}}, id="sleep-seconds-text"),
        pytest.param({"sleep": {"seconds": True}}, id="sleep-seconds-bool"),
        pytest.param({"sleep": {"seconds": 5, "x": 1}}, id="sleep-extra-field"),
        pytest.param({"httpGet": {"path": "/", "port": 80}}, id="http-get"),
    ],
)
def test_read_rejects_anything_but_podgraces_exact_forms(handler: dict[str, Any]) -> None:
    assert hook_intent.read(handler) is None
    assert _pre_stop(handler).podgrace_hook is None


def test_only_exec_forms_carry_the_marker() -> None:
    assert [PreStop.of_podgrace_hook(hook).marked for hook in OWN_HOOKS[:3]] == [False, False, True]
    assert all(PreStop.of_podgrace_hook(hook).marked for hook in OWN_HOOKS[3:])


@pytest.mark.parametrize(
    ("handler", "marked"),
    [
        pytest.param(_exec("/bin/sh", "-c", f"{HOOK_MARKER}\nsleep 5\nkill -QUIT 1"), True, id="edited-own"),
        pytest.param(_exec("/bin/sh", "-c", "sleep 5"), False, id="users"),
        pytest.param(_exec("/bin/sh", "-c", "true", HOOK_MARKER), False, id="marker-outside-the-script"),
        pytest.param({"sleep": {"seconds": 5}}, False, id="native-sleep"),
    ],
)
def test_marker_is_read_from_the_script(handler: dict[str, Any], marked: bool) -> None:
    assert _pre_stop(handler).marked is marked
