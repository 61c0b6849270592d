"""Findings: why a workload may drop requests on termination, and decisions worth a Warning.

Codes are a closed set: they are metric label values and Event reasons.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Code(StrEnum):
    # Risks: the pod as it is may drop requests when it terminates.
    NO_PRESTOP = "NoPreStop"
    SLEEP_TOO_SHORT = "SleepTooShort"
    KNOWN_BAD_HOOK = "SignalHookReturnsEarly"
    FAST_STOP_SIGNAL = "FastStopSignal"
    GRACE_TOO_SHORT = "GracePeriodTooShort"
    PHP_FPM_BEFORE_DRAIN = "PhpFpmStopsBeforeDrain"
    SIGNAL_HITS_PAUSE = "SignalHookHitsPause"
    # an exec hook in an image without a shell: it fails at once (FailedPreStopHook)
    EXEC_HOOK_WITHOUT_SHELL = "ExecHookWithoutShell"
    # Decisions: podgrace left something as the user had it.
    USER_HOOK_KEPT = "UserHookKept"
    STOP_SIGNAL_KEPT = "UserStopSignalKept"
    GRACE_PINNED = "GracePeriodPinned"
    OWNER_RECLAIMED = "OwnerReclaimed"  # an owner took back a field podgrace had taken: podgrace backs off
    NO_MATCHING_CONTAINERS = "NoMatchingContainers"
    # podgrace wrote only the native forms: the image has no shell for its exec hooks.
    NO_SHELL_FOR_FALLBACK = "NoShellForFallback"
    # Notices (a Normal Event): what podgrace assumed from an explicit statement, or what its settings
    # will visibly do.
    SOLE_RULE_APPLIED = "SoleRuleApplied"
    # a generic server's fallback hook is ended with PID 1: the kubelet posts FailedPreStopHook per pod
    HOOK_ENDS_WITH_SERVER = "FallbackHookEndsWithServer"
    # Input errors: nothing is changed.
    INVALID_ANNOTATION = "InvalidAnnotation"
    UNKNOWN_PROFILE = "UnknownProfile"
    INVALID_PROFILE = "InvalidProfile"
    APPLY_FAILED = "ApplyFailed"
    # podgrace cannot deliver the graceful signal: nothing is changed.
    SIGNAL_UNREACHABLE = "SignalHookCannotReachServer"
    # The container runtime ignores lifecycle.stopSignal: podgrace delivers the signal from its hook.
    STOP_SIGNAL_IGNORED = "StopSignalIgnored"


RISKS = frozenset(
    {
        Code.NO_PRESTOP,
        Code.SLEEP_TOO_SHORT,
        Code.KNOWN_BAD_HOOK,
        Code.FAST_STOP_SIGNAL,
        Code.GRACE_TOO_SHORT,
        Code.PHP_FPM_BEFORE_DRAIN,
        Code.SIGNAL_HITS_PAUSE,
        Code.EXEC_HOOK_WITHOUT_SHELL,
    }
)
ERRORS = frozenset(
    {
        Code.INVALID_ANNOTATION,
        Code.UNKNOWN_PROFILE,
        Code.INVALID_PROFILE,
        Code.APPLY_FAILED,
        Code.SIGNAL_UNREACHABLE,
    }
)
NOTICES = frozenset({Code.SOLE_RULE_APPLIED, Code.HOOK_ENDS_WITH_SERVER})


@dataclass(frozen=True, order=True)
class Finding:
    code: Code
    container: str | None
    message: str

    @property
    def is_risk(self) -> bool:
        return self.code in RISKS

    @property
    def is_error(self) -> bool:
        return self.code in ERRORS

    def to_dict(self) -> dict[str, str | None]:
        return {"code": self.code.value, "container": self.container, "message": self.message}
