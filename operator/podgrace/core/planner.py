"""The planner: a Deployment's pod template + a ShutdownProfile + cluster capabilities -> desired settings.

Pure: no I/O. The operator, `podgrace render` and `podgrace audit` all call `plan`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from podgrace.core import hooks, overrides
from podgrace.core.assess import assess
from podgrace.core.capabilities import Capabilities
from podgrace.core.constants import ANN_CONTAINERS, ANN_PROFILE
from podgrace.core.findings import Code, Finding
from podgrace.core.models import (
    ContainerView,
    ExistingPreStop,
    Mode,
    Ownership,
    PreStop,
    PreStopKind,
    Role,
    ShutdownProfile,
    ShutdownProfileSpec,
    Workload,
)
from podgrace.core.timing import (
    KUBERNETES_DEFAULT_GRACE,
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
    pre_stop: dict[str, Any] | None = None  # podgrace's preStop handler; None: podgrace leaves preStop alone
    stop_signal: str | None = None  # lifecycle.stopSignal podgrace owns


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
    parsed = overrides.parse(workload.annotations)
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
    if parsed.containers is not None:
        missing = sorted(parsed.containers - {c.name for c in workload.containers})
        if missing:
            message = f"{ANN_CONTAINERS}: the pod has no container named {', '.join(missing)}"
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
    return replace(result, notices=notices, unrecognised=unrecognised)


def sole_rule_expectations(
    workload: Workload, profile: ShutdownProfile, parsed: overrides.Overrides
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
    parsed: overrides.Overrides,
    expectations: tuple[Expectation, ...],
    capabilities: Capabilities,
    before: tuple[Finding, ...],
) -> Plan:
    delays = signal_delays(expectations)
    policy = parsed.existing_pre_stop or profile.spec.existing_pre_stop
    first = _decide_containers(
        workload, expectations, delays, capabilities, policy, lambda delay, drain: drain
    )
    # A kept hook that waits longer than podgrace would must still fit in the grace period.
    waits = {n: max(d, first.kept_waits.get(n, 0)) for n, d in delays.items()}
    required = required_grace(expectations, waits)
    grace_decisions: list[Finding] = []
    grace = _grace(workload, parsed, required, profile.spec.grace_period_margin_seconds, grace_decisions)
    effective_grace = grace or workload.termination_grace_period_seconds or KUBERNETES_DEFAULT_GRACE

    def hold_until_grace_ends(delay: int, drain: int) -> int:
        # A hook that delivers the signal also holds back the kubelet's own stop signal (SIGTERM, a fast
        # stop) until just before the grace period ends, as lifecycle.stopSignal would: waiting only `drain`
        # would cut requests that run longer than expected while grace remains (seen in the lab).
        return max(drain, effective_grace - delay - KUBELET_STOP_TAIL)

    decided = _decide_containers(workload, expectations, delays, capabilities, policy, hold_until_grace_ends)
    settings, force = decided.settings, decided.force
    decisions = [*decided.decisions, *grace_decisions]
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
        decisions=tuple(sorted(decisions)),
    )
    after = assess(apply_to_workload(workload, result), expectations)
    return Plan(**{**result.__dict__, "findings_after": after})


@dataclass(frozen=True)
class _Decided:
    settings: list[ContainerSettings]
    decisions: list[Finding]
    kept_waits: dict[str, int]  # containers keeping their own hook: how long it holds the stop back
    force: bool


def _decide_containers(
    workload: Workload,
    expectations: tuple[Expectation, ...],
    delays: Mapping[str, int],
    capabilities: Capabilities,
    policy: ExistingPreStop,
    wait_for: Callable[[int, int], int],
) -> _Decided:
    containers = {c.name: c for c in workload.containers}
    ownership = workload.ownership
    os_allows_signal = workload.os_name in (None, "linux")
    settings: list[ContainerSettings] = []
    decisions: list[Finding] = []
    kept_waits: dict[str, int] = {}
    force = False
    for e in expectations:
        container = containers[e.container]
        delay = delays[e.container]
        wait = wait_for(delay, e.drain_seconds)
        stop_signal = None
        if e.signal is not None and capabilities.stop_signal and os_allows_signal:
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
        desired_hook = _equivalent_current(
            container, _hook(e, delay, wait, stop_signal is not None, capabilities)
        )
        pre_stop: dict[str, Any] | None = desired_hook
        if _users_hook(container, ownership, desired_hook):
            replacement = _replacement(container, e, delay, wait, stop_signal is not None, capabilities)
            if policy is ExistingPreStop.REPLACE and replacement is not None:
                pre_stop = replacement
                force = True
            else:
                pre_stop = None
                why = (
                    f"existingPreStop: {policy.value}"
                    if policy is ExistingPreStop.KEEP or desired_hook is None
                    else f"a {container.pre_stop.kind.value} hook cannot be replaced in place by podgrace's"
                )
                decisions.append(
                    Finding(
                        Code.USER_HOOK_KEPT,
                        e.container,
                        f"the container's own preStop hook is kept ({why}); podgrace's "
                        f"needs {delay}s before the stop signal",
                    )
                )
                kept_waits[e.container] = hooks.analyze(container.pre_stop).delay_seconds
        settings.append(
            ContainerSettings(
                e.container,
                e.rule,
                e.role,
                delay,
                e.drain_seconds,
                pre_stop=pre_stop,
                stop_signal=stop_signal,
            )
        )
    return _Decided(settings, decisions, kept_waits, force)


def _hook(
    e: Expectation, delay: int, wait: int, native_signal: bool, capabilities: Capabilities
) -> dict[str, Any] | None:
    if e.signal is not None and not native_signal:
        return hooks.signal_and_wait(delay, e.signal, wait)
    if delay == 0:
        return None
    return hooks.native_sleep(delay) if capabilities.native_sleep else hooks.exec_sleep(delay)


def _equivalent_current(container: ContainerView, desired: dict[str, Any] | None) -> dict[str, Any] | None:
    """Keep podgrace's current hook when it already does what the desired one does (an exec sleep
    written while replacing a user's exec hook, say): a change of form alone is not worth a rollout."""
    current = container.pre_stop
    if desired is None or current.kind is PreStopKind.NONE:
        return desired
    now, wanted = hooks.analyze(current), hooks.analyze(PreStop.from_api({"preStop": desired}))
    same = (now.delay_seconds, now.signal, now.waits_for_exit, now.wait_limit) == (
        wanted.delay_seconds, wanted.signal, wanted.waits_for_exit, wanted.wait_limit
    )  # fmt: skip
    return current.raw if (same and now.podgrace_form) or (same and current.raw == desired) else desired


def _replacement(
    container: ContainerView,
    e: Expectation,
    delay: int,
    wait: int,
    native_signal: bool,
    capabilities: Capabilities,
) -> dict[str, Any] | None:
    """podgrace's hook in the user's handler type, or None when it cannot take the user's hook over.

    A forced server-side apply takes over only the fields it sends: the user's other handler type would
    stay beside podgrace's, which the API server rejects. So an exec hook is replaced by podgrace's exec
    form and a native sleep by podgrace's native sleep (when no signal must go through the hook); an
    httpGet or tcpSocket hook is kept."""
    needs_signal_hook = e.signal is not None and not native_signal
    if delay == 0 and not needs_signal_hook:
        return None
    if container.pre_stop.kind is PreStopKind.EXEC:
        return hooks.signal_and_wait(delay, e.signal, wait) if needs_signal_hook and e.signal \
            else hooks.exec_sleep(delay)  # fmt: skip
    if container.pre_stop.kind is PreStopKind.SLEEP and not needs_signal_hook and capabilities.native_sleep:
        return hooks.native_sleep(delay)
    return None


def _users_hook(container: ContainerView, ownership: Ownership, desired: dict[str, Any] | None) -> bool:
    """Whether the container's current preStop belongs to somebody else (and differs from ours)."""
    current = container.pre_stop
    if current.kind is PreStopKind.NONE or (desired is not None and current.raw == desired):
        return False
    if ownership.known:
        return (
            container.name in ownership.foreign_pre_stop or container.name not in ownership.podgrace_pre_stop
        )
    return not hooks.analyze(current).podgrace_form


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
    workload: Workload, parsed: overrides.Overrides, required: int, margin: int, decisions: list[Finding]
) -> int | None:
    wanted = grace_with_margin(required, margin)
    current = workload.termination_grace_period_seconds
    ownership = workload.ownership
    pinned_by_owner = current is not None and (
        ownership.foreign_grace if ownership.known else current != parsed.termination_grace_period_seconds
    )
    if pinned_by_owner and current is not None:
        if current < required:
            decisions.append(
                Finding(
                    Code.GRACE_PINNED,
                    None,
                    f"terminationGracePeriodSeconds {current} is set by the Deployment's owner and kept, "
                    f"but the pod needs {required}s",
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
    workload: Workload, spec: ShutdownProfileSpec, parsed: overrides.Overrides
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
    spec: ShutdownProfileSpec, parsed: overrides.Overrides, matched: list[tuple[str, str]]
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
    """Expectations for a workload that has not opted in: the first profile, in name order, that matches a
    container of a known web role (nginx, php-fpm, Apache) and the most of them. Generic containers are not
    assessed: from a manifest alone they cannot be told apart from workers and sidecars."""
    best: tuple[Expectation, ...] = ()
    no_overrides = overrides.Overrides()
    for name in sorted(profiles):
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
        pre_stop = PreStop.from_api({"preStop": s.pre_stop}) if s.pre_stop is not None else container.pre_stop
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
