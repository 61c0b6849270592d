"""Assess a pod template as it is: which containers would drop requests when the pod terminates."""

from __future__ import annotations

from collections.abc import Sequence

from podgrace.core import hooks
from podgrace.core.constants import KUBERNETES_DEFAULT_GRACE
from podgrace.core.findings import Code, Finding
from podgrace.core.models import PreStopKind, Workload
from podgrace.core.shellless import no_shell_reason
from podgrace.core.signals import Role
from podgrace.core.timing import Expectation, required_grace, signal_delays

# The image's own STOPSIGNAL cannot be seen from a manifest; without lifecycle.stopSignal or a hook that
# delivers the signal itself, the container is assumed to get the kubelet's SIGTERM.
ASSUMED_IMAGE_SIGNAL = "SIGTERM"


def assess(workload: Workload, expectations: Sequence[Expectation]) -> tuple[Finding, ...]:
    findings: list[Finding] = []
    containers = {c.name: c for c in workload.containers}
    needed = signal_delays(expectations)
    for e in expectations:
        container = containers[e.container]
        effect = hooks.effect(container.pre_stop)
        no_shell = no_shell_reason(container, workload.overrides)
        broken = no_shell is not None and hooks.needs_shell(container.pre_stop)
        if broken:
            effect = hooks.NO_EFFECT
            findings.append(
                Finding(
                    Code.EXEC_HOOK_WITHOUT_SHELL,
                    e.container,
                    f"the preStop exec hook starts {container.pre_stop.command[0]!r}, but {no_shell}: "
                    "it fails at once (FailedPreStopHook) and the stop signal follows immediately",
                )
            )
        elif container.pre_stop.kind is PreStopKind.NONE and needed[e.container] > 0:
            findings.append(
                Finding(
                    Code.NO_PRESTOP,
                    e.container,
                    f"no preStop hook: the stop signal races endpoint removal "
                    f"(expected {e.propagation_seconds}s of propagation)",
                )
            )
        elif effect.known_bad:
            findings.append(
                Finding(
                    Code.KNOWN_BAD_HOOK,
                    e.container,
                    "the preStop hook signals the server and returns at once, so the kubelet's stop "
                    "signal follows immediately",
                )
            )
        elif effect.delay_seconds < e.propagation_seconds:
            findings.append(
                Finding(
                    Code.SLEEP_TOO_SHORT,
                    e.container,
                    f"preStop waits {effect.delay_seconds}s, less than the {e.propagation_seconds}s "
                    "endpoint/load-balancer propagation",
                )
            )
        elif e.role is Role.PHP_FPM and effect.delay_seconds < needed[e.container]:
            upstream = ", ".join(e.after) or "its own requests"
            findings.append(
                Finding(
                    Code.PHP_FPM_BEFORE_DRAIN,
                    e.container,
                    f"php-fpm gets its stop after {effect.delay_seconds}s, before {upstream} can have "
                    f"drained ({needed[e.container]}s); with process_control_timeout = 0 busy workers "
                    "are terminated",
                )
            )
        hits_pause = bool(effect.signal and effect.signals_pid1 and workload.share_process_namespace)
        if hits_pause:
            findings.append(
                Finding(
                    Code.SIGNAL_HITS_PAUSE,
                    e.container,
                    f"the preStop hook sends {effect.signal} to PID 1, which is the pause process in a pod "
                    "with shareProcessNamespace: the server never gets it (SIGTERM or SIGINT would end the "
                    "whole pod)",
                )
            )
        reaches = effect.signal and effect.waits_for_exit and not hits_pause
        delivered = (effect.signal if reaches else container.stop_signal) or ASSUMED_IMAGE_SIGNAL
        if e.signal is not None and delivered != e.signal.value:
            findings.append(
                Finding(
                    Code.FAST_STOP_SIGNAL,
                    e.container,
                    f"{e.role.value} stops on {delivered}, a fast shutdown; its graceful stop is "
                    f"{e.signal.value}"
                    + (
                        f" (only lifecycle.stopSignal can give it: {no_shell}, so no preStop hook can)"
                        if no_shell
                        else ""
                    ),
                )
            )
    grace = workload.termination_grace_period_seconds or KUBERNETES_DEFAULT_GRACE
    # A hook that waits longer than needed delays the stop just as much: the grace period must cover it.
    waits = {
        e.container: max(needed[e.container], hooks.effect(containers[e.container].pre_stop).delay_seconds)
        for e in expectations
    }
    needed_grace = required_grace(expectations, waits)
    if expectations and grace < needed_grace:
        findings.append(
            Finding(
                Code.GRACE_TOO_SHORT,
                None,
                f"terminationGracePeriodSeconds {grace} is shorter than the {needed_grace}s of "
                "preStop waits plus drain",
            )
        )
    return tuple(sorted(findings))
