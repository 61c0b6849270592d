"""The planner: a Deployment's pod template + a ShutdownProfile + cluster capabilities -> desired settings.

Pure: no I/O. The operator, `podgrace render` and `podgrace audit` all call `plan`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

from podgrace.core import hooks
from podgrace.core.assess import assess
from podgrace.core.capabilities import Capabilities
from podgrace.core.constants import ANN_CONTAINERS, ANN_NO_SHELL, ANN_PROFILE, KUBERNETES_DEFAULT_GRACE
from podgrace.core.findings import Code, Finding
from podgrace.core.hook_intent import ExecSleep, HookIntent, NativeSleep, SignalAndWait, signal_and_wait
from podgrace.core.models import (
    GRACE_FIELD,
    OS_FIELD,
    ContainerView,
    ExistingPreStop,
    Mode,
    Overrides,
    Ownership,
    PreStop,
    PreStopKind,
    ShutdownProfile,
    ShutdownProfileSpec,
    Workload,
    pre_stop_field,
    stop_signal_field,
)
from podgrace.core.profiles import builtin_names
from podgrace.core.shellless import declared_missing, no_shell_reason
from podgrace.core.signals import Role, Signal
from podgrace.core.timing import (
    Expectation,
    grace_with_margin,
    required_grace,
    signal_delays,
)

# The fallback hook returns this long before the grace period ends, so the kubelet's own stop signal and
# its SIGKILL (at the end of the grace period, at least 2 s after the hook) come only once time is up.
KUBELET_STOP_TAIL = 2


class Outcome(StrEnum):
    MANAGED = "managed"  # opted in, enforce: podgrace owns the settings below
    AUDIT = "audit"  # opted in, audit mode: findings only, podgrace owns nothing
    NOT_OPTED_IN = "not-opted-in"  # podgrace owns nothing (a revert if it owned something)
    INVALID = "invalid"  # bad input: leave the workload exactly as it is


@dataclass(frozen=True)
class ContainerSettings:
    name: str
    rule: str
    role: Role
    signal_delay_seconds: int
    drain_seconds: int
    pre_stop: HookIntent | None = None  # podgrace's preStop hook; None: podgrace leaves preStop alone
    stop_signal: str | None = None  # lifecycle.stopSignal podgrace owns
    replaces_users_hook: bool = False  # pre_stop takes the place of somebody else's hook (forced, once)


@dataclass(frozen=True)
class Plan:
    workload: str
    outcome: Outcome
    profile: str | None = None
    containers: tuple[ContainerSettings, ...] = ()
    termination_grace_period_seconds: int | None = None  # None: podgrace does not own it
    os_name: str | None = None
    required_grace_seconds: int = 0
    force: bool = False  # replacing a user's hook takes the field from its manager
    findings_before: tuple[Finding, ...] = ()  # risks as the workload is now
    findings_after: tuple[Finding, ...] = ()  # risks once the plan is applied
    decisions: tuple[Finding, ...] = ()  # Warnings: what podgrace left as the user had it
    errors: tuple[Finding, ...] = field(default=())
    notices: tuple[Finding, ...] = ()  # Normal Events: what podgrace assumed (SoleRuleApplied)
    unrecognised: tuple[str, ...] = ()  # containers no rule classified (audit lists them)

    @property
    def owns_anything(self) -> bool:
        return bool(self.containers or self.termination_grace_period_seconds or self.os_name)


def plan(
    workload: Workload,
    profiles: Mapping[str, ShutdownProfile],
    capabilities: Capabilities,
) -> Plan:
    parsed = workload.overrides
    if parsed.profile is None:
        # Not opted in: other podgrace annotations left behind mean nothing, and must not block a revert.
        expectations = detect_expectations(workload, profiles)
        return Plan(
            workload.key,
            Outcome.NOT_OPTED_IN,
            findings_before=assess(workload, expectations),
            unrecognised=_unrecognised(workload, expectations, None),
        )
    if parsed.errors:
        return _invalid(
            workload, parsed.profile, *(Finding(Code.INVALID_ANNOTATION, None, e) for e in parsed.errors)
        )
    profile = profiles.get(parsed.profile)
    if profile is None:
        known = ", ".join(sorted(profiles)) or "none"
        message = f"{ANN_PROFILE}: ShutdownProfile {parsed.profile!r} does not exist (known: {known})"
        return _invalid(workload, parsed.profile, Finding(Code.UNKNOWN_PROFILE, None, message))
    names = frozenset(c.name for c in workload.containers)
    for key, missing in (
        (ANN_CONTAINERS, sorted((parsed.containers or names) - names)),
        (ANN_NO_SHELL, declared_missing(parsed, names)),
    ):
        if missing:
            message = f"{key}: the pod has no container named {', '.join(missing)}"
            return _invalid(workload, profile.name, Finding(Code.INVALID_ANNOTATION, None, message))
    expectations = profile_expectations(workload, profile.spec, parsed)
    notices: tuple[Finding, ...] = ()
    if not expectations:
        expectations, notices = sole_rule_expectations(workload, profile, parsed)
    unrecognised = _unrecognised(workload, expectations, parsed.containers)
    no_match: tuple[Finding, ...] = ()
    if not expectations:
        no_match = (
            Finding(
                Code.NO_MATCHING_CONTAINERS,
                None,
                f"no container matches a rule of ShutdownProfile {profile.name!r} "
                f"(unrecognised: {', '.join(unrecognised) or 'none'})",
            ),
        )
    before = assess(workload, expectations)
    if parsed.mode is Mode.AUDIT:
        return Plan(
            workload.key,
            Outcome.AUDIT,
            profile=profile.name,
            findings_before=before,
            findings_after=before,
            decisions=no_match,
            notices=notices,
            unrecognised=unrecognised,
        )
    if not expectations:
        return Plan(
            workload.key, Outcome.MANAGED, profile=profile.name, decisions=no_match, unrecognised=unrecognised
        )
    result = _enforce(workload, profile, parsed, expectations, capabilities, before)
    notices += _hooks_ending_with_server(result.containers)
    return replace(result, notices=notices, unrecognised=unrecognised)


def _hooks_ending_with_server(settings: tuple[ContainerSettings, ...]) -> tuple[Finding, ...]:
    """A generic server's fallback hook signals PID 1 and waits for it to exit: there is no process name
    whose exit it could watch instead (nginx's, php-fpm's and Apache's hooks return while PID 1 lives). The
    kernel ends the hook with PID 1, and a kubelet reports that as a FailedPreStopHook Warning for every
    pod; the drain itself completes. Said once, so that the Warnings are no surprise."""
    return tuple(
        Finding(
            Code.HOOK_ENDS_WITH_SERVER,
            s.name,
            f"the preStop hook delivers {s.pre_stop.signal.value} to PID 1 and waits while it drains; a "
            f"{s.role.value} server has no process name whose exit the hook could watch instead, so the "
            "kernel ends the hook when PID 1 exits and the kubelet posts a FailedPreStopHook Warning for "
            "each pod it stops (the drain completes). Where the nodes deliver lifecycle.stopSignal "
            "(ContainerStopSignals, containerd 2), podgrace writes that instead and no Warning follows",
        )
        for s in settings
        if isinstance(s.pre_stop, SignalAndWait) and s.role is Role.GENERIC
    )


def sole_rule_expectations(
    workload: Workload, profile: ShutdownProfile, parsed: Overrides
) -> tuple[tuple[Expectation, ...], tuple[Finding, ...]]:
    """A Deployment that names a profile says what its server is: when no rule matches, the profile has
    one rule and the pod one serving container (the only one, or the only one `podgrace.dev/containers`
    names), that rule applies, unless the rule excludes the container's image."""
    candidates = [c for c in workload.containers if parsed.containers is None or c.name in parsed.containers]
    if len(profile.spec.containers) != 1 or len(candidates) != 1:
        return (), ()
    (rule,), (container,) = profile.spec.containers, candidates
    if rule.match.excludes(container.image):
        return (), ()
    notice = Finding(
        Code.SOLE_RULE_APPLIED,
        container.name,
        f"image {container.image or '(none)'!r} matches no rule of ShutdownProfile {profile.name!r}; "
        f"as the Deployment names that profile and it has one rule, rule {rule.name!r} "
        f"({rule.role.value}) applies to the pod's only container",
    )
    return _expectations(profile.spec, parsed, [(container.name, rule.name)]), (notice,)


def _unrecognised(
    workload: Workload, expectations: tuple[Expectation, ...], selected: frozenset[str] | None
) -> tuple[str, ...]:
    matched = {e.container for e in expectations}
    return tuple(
        c.name
        for c in workload.containers
        if c.name not in matched and (selected is None or c.name in selected)
    )


def _invalid(workload: Workload, profile: str | None, *errors: Finding) -> Plan:
    return Plan(workload.key, Outcome.INVALID, profile=profile, errors=errors)


def _enforce(
    workload: Workload,
    profile: ShutdownProfile,
    parsed: Overrides,
    expectations: tuple[Expectation, ...],
    capabilities: Capabilities,
    before: tuple[Finding, ...],
) -> Plan:
    delays = signal_delays(expectations)
    policy = parsed.existing_pre_stop or profile.spec.existing_pre_stop
    views = {c.name: c for c in workload.containers}
    decisions: list[Finding] = []
    matched = [
        _match(workload, views[e.container], e, delays[e.container], capabilities, policy, decisions)
        for e in expectations
    ]
    unreachable = [
        Finding(
            Code.SIGNAL_UNREACHABLE,
            m.view.name,
            f"the pod shares its process namespace, so PID 1 is the pause process: podgrace's hook cannot "
            f"deliver {m.hook_signal.value} to a {m.expectation.role.value} server it cannot find by name "
            "(set lifecycle.stopSignal on a cluster that supports it, or a role with a known process name); "
            "the Deployment is left unchanged",
        )
        for m in matched
        if workload.share_process_namespace
        and m.hook_signal is not None
        and m.expectation.role is Role.GENERIC
        and not m.keeps_users_hook
    ]
    if unreachable:
        return Plan(
            workload.key,
            Outcome.INVALID,
            profile=profile.name,
            findings_before=before,
            errors=tuple(unreachable),
        )
    # A kept hook that waits longer than podgrace would must still fit in the grace period.
    waits = {m.view.name: max(m.delay, m.kept_hook_wait) for m in matched}
    required = required_grace(expectations, waits)
    grace = _grace(workload, parsed, required, profile.spec.grace_period_margin_seconds, decisions)
    effective_grace = grace or workload.termination_grace_period_seconds or KUBERNETES_DEFAULT_GRACE
    matched = _fit_into_grace(matched, effective_grace, decisions)
    settled = [
        _settle(m, effective_grace, capabilities, policy, workload.ownership, decisions) for m in matched
    ]
    settings = [s for s, _ in settled]
    os_reclaimed_by = workload.ownership.reclaimed_by(OS_FIELD)
    if os_reclaimed_by is not None and capabilities.stop_signal:
        # said after the grace period's findings (_fit_into_grace extends the first pod-level one)
        decisions.append(
            Finding(
                Code.OWNER_RECLAIMED,
                None,
                f"{OS_FIELD} was taken back by field manager {os_reclaimed_by or 'unknown'} after podgrace "
                f"had set it ({workload.os_name or 'now unset'}): podgrace keeps it, so it writes no "
                "lifecycle.stopSignal (its own preStop hooks deliver the signal where it has them), until "
                "the owner's value, the podgrace annotations or the profile change",
            )
        )
    force = any(replaced for _, replaced in settled)
    if grace is not None and workload.ownership.known and workload.ownership.grace_defaulted:
        force = True  # the creator "owns" only the API server's default: taking it overrides no choice
    os_name = "linux" if any(s.stop_signal for s in settings) else None
    result = Plan(
        workload.key,
        Outcome.MANAGED,
        profile=profile.name,
        containers=tuple(settings),
        termination_grace_period_seconds=grace,
        os_name=os_name,
        required_grace_seconds=required,
        force=force,
        findings_before=before,
        decisions=tuple(sorted(decisions, key=lambda d: (d.code, d.container or "", d.message))),
    )
    after = assess(apply_to_workload(workload, result), expectations)
    return Plan(**{**result.__dict__, "findings_after": after})


@dataclass(frozen=True)
class _Matched:
    """A container a profile rule matched, decided as far as it can be before the grace period is known
    (which bounds how long a signal hook waits)."""

    view: ContainerView
    expectation: Expectation
    delay: int  # seconds from pod deletion until its stop signal
    stop_signal: str | None  # lifecycle.stopSignal podgrace owns
    hook_signal: Signal | None  # the graceful signal podgrace's hook delivers, where stopSignal cannot
    users_hook: bool  # its preStop is somebody else's: neither absent nor podgrace's own
    keeps_users_hook: bool  # ... and podgrace keeps it (existingPreStop: keep, or no in-place replacement)
    field_key: str = ""  # models.pre_stop_field of the container
    no_shell: str | None = None  # why it has no /bin/sh (shellless.no_shell_reason): no exec hook then

    @property
    def kept_hook_wait(self) -> int:
        """How long a kept hook of the user's holds the stop signal back."""
        return hooks.effect(self.view.pre_stop).delay_seconds if self.keeps_users_hook else 0


def _match(
    workload: Workload,
    container: ContainerView,
    e: Expectation,
    delay: int,
    capabilities: Capabilities,
    policy: ExistingPreStop,
    decisions: list[Finding],
) -> _Matched:
    ownership = workload.ownership
    stop_signal = None
    signal_reclaimed_by = ownership.reclaimed_by(stop_signal_field(container.name))
    # os.name taken back: lifecycle.stopSignal cannot be written without it (the hook delivers the signal)
    os_free = workload.os_name in (None, "linux") and ownership.reclaimed_by(OS_FIELD) is None
    if e.signal is not None and capabilities.stop_signal and signal_reclaimed_by is not None:
        decisions.append(
            Finding(
                Code.OWNER_RECLAIMED,
                e.container,
                f"lifecycle.stopSignal was taken back by field manager {signal_reclaimed_by or 'unknown'} "
                f"after podgrace had set it ({container.stop_signal or 'now unset'}): podgrace keeps it and "
                "writes it again only when the owner's value, the podgrace annotations or the profile change",
            )
        )
    elif e.signal is not None and capabilities.stop_signal and os_free:
        stop_signal = e.signal.value
        if _foreign_stop_signal(container, ownership, stop_signal):
            stop_signal = None
            decisions.append(
                Finding(
                    Code.STOP_SIGNAL_KEPT,
                    e.container,
                    f"lifecycle.stopSignal {container.stop_signal} is set by its owner and kept",
                )
            )
    # A graceful SIGTERM is the kubelet's own stop signal (unless the container names another): a sleep gets
    # it to the server as well, where a hook that sent it would end with PID 1 (FailedPreStopHook) and could
    # not reach the server beside pause.
    kubelet_sends_it = e.signal is Signal.SIGTERM and container.stop_signal in (None, Signal.SIGTERM.value)
    hook_signal = e.signal if stop_signal is None and not kubelet_sends_it else None
    no_shell = no_shell_reason(container, workload.overrides)
    if no_shell is not None and hook_signal is not None:
        decisions.append(_signal_lost(workload, container, e, capabilities, no_shell))
        hook_signal = None  # no fallback hook: it would fail at once
    key = pre_stop_field(container.name)
    # an owner that removed or changed podgrace's hook took the field back: it is the owner's now
    users_hook = not _podgrace_may_rewrite(container, ownership) or ownership.reclaimed_by(key) is not None
    replaceable = _replaceable(
        container.pre_stop, hook_signal is not None, delay, capabilities, shell=no_shell is None
    )
    # never taken from a server-side-apply owner (it re-asserts with force, or its next apply conflicts),
    # nor again from an owner that took it back (take-once)
    protected = key in ownership.applied or ownership.reclaimed_by(key) is not None
    keeps = users_hook and not (policy is ExistingPreStop.REPLACE and replaceable and not protected)
    return _Matched(container, e, delay, stop_signal, hook_signal, users_hook, keeps, key, no_shell)


def _signal_lost(
    workload: Workload, container: ContainerView, e: Expectation, capabilities: Capabilities, no_shell: str
) -> Finding:
    """What a shell-less container gets instead of its graceful signal, and why."""
    assert e.signal is not None
    if not capabilities.stop_signal:
        why = "the cluster has no lifecycle.stopSignal (feature gate ContainerStopSignals)"
    elif workload.os_name not in (None, "linux"):
        why = f"lifecycle.stopSignal needs spec.os.name linux, not {workload.os_name}"
    else:
        why = f"its lifecycle.stopSignal {container.stop_signal} is set by its owner"
    delivered = container.stop_signal or "SIGTERM"
    fast = " (a fast shutdown)" if delivered in ("SIGTERM", "SIGINT") and e.role is not Role.GENERIC else ""
    return Finding(
        Code.NO_SHELL_FOR_FALLBACK,
        container.name,
        f"{e.role.value} gets {delivered}{fast}, not its graceful {e.signal.value}: {why}, and podgrace's "
        f"fallback hook that sends {e.signal.value} needs a shell ({no_shell})",
    )


def _fit_into_grace(matched: list[_Matched], grace: int, decisions: list[Finding]) -> list[_Matched]:
    """The best valid settings inside a grace period that is kept shorter than the pod needs.

    The API server rejects a preStop sleep longer than the grace period, and a container whose signal
    delay reaches the end of the grace period never gets its graceful stop (SIGKILL comes first). So every
    signal delay is capped at `grace - 2` (the kubelet's own stop signal comes at least 2 s before its
    SIGKILL): a delay that fits keeps its value, a longer one is cut to the cap, which keeps their order
    (nginx is not stopped after php-fpm). The hook's wait is cut to the end of the grace period
    (`_hold_until_grace_ends`). The GracePeriodPinned Warning says what was shortened."""
    budget = max(grace - KUBELET_STOP_TAIL, 0)
    if all(m.delay <= budget for m in matched):
        return matched
    fitted: list[_Matched] = []
    shortened: list[str] = []
    for m in matched:
        delay = min(m.delay, budget)
        if delay != m.delay:
            shortened.append(f"{m.view.name} is stopped after {delay}s (it needs {m.delay}s)")
        keeps = m.keeps_users_hook or (m.users_hook and delay == 0 and m.hook_signal is None)
        fitted.append(dataclasses.replace(m, delay=delay, keeps_users_hook=keeps))
    if shortened:
        what = "; ".join(shortened)
        about_grace = (Code.GRACE_PINNED, Code.OWNER_RECLAIMED)
        pinned = next(
            (i for i, d in enumerate(decisions) if d.code in about_grace and d.container is None), None
        )
        if pinned is None:
            message = f"terminationGracePeriodSeconds {grace} leaves too little time: {what}"
            decisions.append(Finding(Code.GRACE_PINNED, None, message))
        else:
            said = decisions[pinned]
            decisions[pinned] = Finding(said.code, None, f"{said.message}; so {what}")
    return fitted


def _settle(
    m: _Matched,
    grace: int,
    capabilities: Capabilities,
    policy: ExistingPreStop,
    ownership: Ownership,
    decisions: list[Finding],
) -> tuple[ContainerSettings, bool]:
    """The container's settings once the grace period is known, and whether they replace a user's hook."""
    e, current = m.expectation, m.view.pre_stop
    wait = _hold_until_grace_ends(m.delay, e.drain_seconds, grace)
    shell = m.no_shell is None
    desired = _hook(m.hook_signal, e.role, m.delay, wait, native_sleep=capabilities.native_sleep, shell=shell)
    if shell:
        desired = _equivalent_current(current.podgrace_hook, desired)
    elif desired is None and m.delay > 0 and not m.keeps_users_hook:
        decisions.append(
            Finding(
                Code.NO_SHELL_FOR_FALLBACK,
                e.container,
                f"no preStop wait of {m.delay}s: the cluster has no native preStop sleep (Kubernetes "
                f"1.30+) and an exec sleep needs a shell ({m.no_shell}); the stop signal races endpoint "
                "removal",
            )
        )
    pre_stop = desired
    # somebody else's hook, and not already the one podgrace wants
    conflict = m.users_hook and (desired is None or current.podgrace_hook != desired)
    replaces = conflict and not m.keeps_users_hook
    if replaces:  # with podgrace's hook in the user's handler type: see _replaceable
        native = current.kind is PreStopKind.SLEEP
        pre_stop = _hook(m.hook_signal, e.role, m.delay, wait, native_sleep=native, shell=shell)
    elif conflict:
        pre_stop = None
        owner = ownership.owner_of(m.field_key)
        reclaimed_by = ownership.reclaimed_by(m.field_key)
        code = Code.USER_HOOK_KEPT
        if reclaimed_by is not None:
            code = Code.OWNER_RECLAIMED
            why = (
                f"field manager {reclaimed_by or 'unknown'} took it back after podgrace had written it; "
                "podgrace replaces it again only when the hook, the podgrace annotations or the profile "
                "change"
            )
        elif policy is ExistingPreStop.KEEP or desired is None:
            why = f"existingPreStop: {policy.value}"
        elif m.field_key in ownership.applied:
            why = (
                f"field manager {owner} sets it by server-side apply and would take it back: podgrace "
                "never takes a field from a server-side-apply owner"
            )
        else:
            why = f"a {current.kind.value} hook cannot be replaced in place by podgrace's"
        by = f" (field manager {owner})" if owner and owner not in why else ""
        what = "own preStop hook" if current.kind is not PreStopKind.NONE else "lack of a preStop hook"
        if m.no_shell is not None and hooks.needs_shell(current):
            why += f"; it fails at once: {m.no_shell}"
        decisions.append(
            Finding(
                code,
                e.container,
                f"the container's {what}{by} is kept ({why}); podgrace's "
                f"needs {m.delay}s before the stop signal",
            )
        )
    settings = ContainerSettings(
        e.container,
        e.rule,
        e.role,
        m.delay,
        e.drain_seconds,
        pre_stop=pre_stop,
        stop_signal=m.stop_signal,
        replaces_users_hook=replaces and pre_stop is not None,
    )
    return settings, replaces


def _hold_until_grace_ends(delay: int, drain: int, grace: int) -> int:
    """How long a hook that delivers the signal waits for the server to exit. It also holds back the
    kubelet's own stop signal (SIGTERM, a fast stop) until just before the grace period ends, as
    lifecycle.stopSignal would: waiting only `drain` would cut requests that run longer than expected while
    grace remains (seen in the lab)."""
    return max(min(drain, grace - delay), grace - delay - KUBELET_STOP_TAIL, 0)


def _hook(
    hook_signal: Signal | None, role: Role, delay: int, wait: int, *, native_sleep: bool, shell: bool
) -> HookIntent | None:
    """podgrace's hook; never an exec form without a shell (`_match` then gives no hook_signal)."""
    if hook_signal is not None:
        return signal_and_wait(delay, hook_signal, wait, role)
    if delay == 0:
        return None
    if native_sleep:
        return NativeSleep(delay)
    return ExecSleep(delay) if shell else None


def _equivalent_current(current: HookIntent | None, desired: HookIntent | None) -> HookIntent | None:
    """Keep podgrace's current hook when it already does what the desired one does (an exec sleep written
    while replacing a user's exec hook, where a native sleep would do now): a change of form alone is not
    worth a rollout."""
    if (
        isinstance(current, ExecSleep)
        and isinstance(desired, NativeSleep)
        and current.seconds == desired.seconds
    ):
        return current
    return desired


def _replaceable(
    current: PreStop, needs_signal_hook: bool, delay: int, capabilities: Capabilities, *, shell: bool
) -> bool:
    """Whether podgrace's hook can take the user's hook over.

    A forced server-side apply takes over only the fields it sends: the user's other handler type would
    stay beside podgrace's, which the API server rejects. So an exec hook is replaced by podgrace's exec
    form and a native sleep by podgrace's native sleep (when no signal must go through the hook); an
    httpGet or tcpSocket hook is kept, and so is an exec hook in a container without a shell."""
    if delay == 0 and not needs_signal_hook:
        return False  # podgrace has no hook to put there
    if current.kind is PreStopKind.EXEC:
        return shell
    return current.kind is PreStopKind.SLEEP and not needs_signal_hook and capabilities.native_sleep


def _podgrace_may_rewrite(container: ContainerView, ownership: Ownership) -> bool:
    """Whether the container's preStop is absent or podgrace's own: from managedFields when known, else
    by podgrace's marker."""
    current = container.pre_stop
    if current.kind is PreStopKind.NONE:
        return True
    if ownership.known:
        return (
            container.name not in ownership.foreign_pre_stop and container.name in ownership.podgrace_pre_stop
        )
    return current.marked


def _foreign_stop_signal(container: ContainerView, ownership: Ownership, desired: str) -> bool:
    if container.stop_signal is None or container.stop_signal == desired:
        return False
    if ownership.known:
        return (
            container.name in ownership.foreign_stop_signal
            or container.name not in ownership.podgrace_stop_signal
        )
    return True


def _grace(
    workload: Workload, parsed: Overrides, required: int, margin: int, decisions: list[Finding]
) -> int | None:
    wanted = grace_with_margin(required, margin)
    current = workload.termination_grace_period_seconds
    ownership = workload.ownership
    reclaimed_by = ownership.reclaimed_by(GRACE_FIELD)
    pinned_by_owner = current is not None and (
        ownership.foreign_grace or reclaimed_by is not None
        if ownership.known
        else current != parsed.termination_grace_period_seconds
    )
    if pinned_by_owner and current is not None:
        if reclaimed_by is not None:
            decisions.append(
                Finding(
                    Code.OWNER_RECLAIMED,
                    None,
                    f"{GRACE_FIELD} {current} was taken back by field manager {reclaimed_by or 'unknown'} "
                    f"after podgrace had set it: podgrace keeps it and writes it again only when "
                    f"{reclaimed_by or 'its owner'}'s value, the podgrace annotations or the profile "
                    f"change" + (f"; the pod needs {required}s" if current < required else ""),
                )
            )
        elif current < required:
            owner = ownership.owner_of(GRACE_FIELD)
            by = f"field manager {owner}" if owner else "the Deployment's owner"
            decisions.append(
                Finding(
                    Code.GRACE_PINNED,
                    None,
                    f"{GRACE_FIELD} {current} is set by {by} and kept, but the pod needs {required}s",
                )
            )
        return None
    if parsed.termination_grace_period_seconds is not None:
        pinned = parsed.termination_grace_period_seconds
        if pinned < required:
            decisions.append(
                Finding(
                    Code.GRACE_PINNED,
                    None,
                    f"the grace period annotation pins {pinned}s, but the pod needs {required}s",
                )
            )
        return pinned
    return wanted


def profile_expectations(
    workload: Workload, spec: ShutdownProfileSpec, parsed: Overrides
) -> tuple[Expectation, ...]:
    matched: list[tuple[str, str]] = []  # (container, rule)
    for container in workload.containers:
        if parsed.containers is not None and container.name not in parsed.containers:
            continue
        rule = spec.match(container.name, container.image)
        if rule is not None:
            matched.append((container.name, rule.name))
    return _expectations(spec, parsed, matched)


def _expectations(
    spec: ShutdownProfileSpec, parsed: Overrides, matched: list[tuple[str, str]]
) -> tuple[Expectation, ...]:
    containers_of_rule: dict[str, list[str]] = {}
    for container_name, rule_name in matched:
        containers_of_rule.setdefault(rule_name, []).append(container_name)
    expectations = []
    for container_name, rule_name in matched:
        rule = spec.rule(rule_name)
        after = tuple(c for upstream in rule.stop_after for c in containers_of_rule.get(upstream, []))
        expectations.append(
            Expectation(
                container=container_name,
                rule=rule.name,
                role=rule.role,
                propagation_seconds=_pick(parsed.pre_stop_sleep_seconds, rule.pre_stop_sleep_seconds),
                drain_seconds=_pick(parsed.drain_seconds, rule.drain_seconds),
                signal=rule.effective_signal,
                after=after,
            )
        )
    return tuple(expectations)


def _pick(override: int | None, default: int) -> int:
    return default if override is None else override


def detect_expectations(
    workload: Workload, profiles: Mapping[str, ShutdownProfile]
) -> tuple[Expectation, ...]:
    """Expectations for a workload that has not opted in: the first built-in profile, in name order, that
    matches a container of a known web role (nginx, php-fpm, Apache) and the most of them. Generic
    containers are not assessed: from a manifest alone they cannot be told apart from workers and sidecars.

    Only the built-in profiles (as given: the cluster's copies, which the chart may have tuned) decide: a
    custom profile is for the Deployments that name it, and must not change how all others are judged."""
    best: tuple[Expectation, ...] = ()
    no_overrides = Overrides()
    for name in sorted(n for n in profiles if n in builtin_names()):
        found = tuple(
            e
            for e in profile_expectations(workload, profiles[name].spec, no_overrides)
            if e.role is not Role.GENERIC
        )
        if len(found) > len(best):
            best = found
    return best


def apply_to_workload(workload: Workload, result: Plan) -> Workload:
    """The workload as it will be once podgrace's settings are applied (for assessing the outcome)."""
    by_name = {s.name: s for s in result.containers}
    containers = []
    for container in workload.containers:
        s = by_name.get(container.name)
        if s is None:
            containers.append(container)
            continue
        pre_stop = PreStop.of_podgrace_hook(s.pre_stop) if s.pre_stop is not None else container.pre_stop
        containers.append(
            container.model_copy(
                update={"pre_stop": pre_stop, "stop_signal": s.stop_signal or container.stop_signal}
            )
        )
    grace = result.termination_grace_period_seconds or workload.termination_grace_period_seconds
    return workload.model_copy(
        update={
            "containers": tuple(containers),
            "termination_grace_period_seconds": grace,
            "os_name": result.os_name or workload.os_name,
        }
    )
