"""Prometheus metrics, with controller-runtime's meanings under a `podgrace_` prefix.

Label values are bounded: controller and result are fixed sets, findings and reasons are `findings.Code`,
and profiles are the cluster's ShutdownProfiles (a handful).
"""

from __future__ import annotations

import contextlib
import platform

from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client import Counter as PromCounter

from podgrace import __version__
from podgrace.core.findings import RISKS, Code

WRITE_KINDS = ("apply", "revert", "status", "event")
# the `field` label of podgrace_field_reclaimed_total (core.take_once.metric_label)
RECLAIMED_FIELDS = ("terminationGracePeriodSeconds", "os.name", "preStop", "stopSignal")
# The reasons of the Warning Events podgrace posts (Code values that are not risks).
WARNING_REASONS = frozenset(Code) - RISKS

DEPLOYMENT = "deployment"
PROFILE = "shutdownprofile"

# controller-runtime's default reconcile-time buckets.
RECONCILE_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0,
    1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5, 6, 7, 8, 9, 10, 15, 20, 25, 30, 40, 50, 60,
)  # fmt: skip


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        from prometheus_client import REGISTRY

        self.registry = registry if registry is not None else REGISTRY
        r = self.registry
        self.reconcile_total = PromCounter(
            "podgrace_reconcile_total", "Reconciliations by controller and result.", ["controller", "result"],
            registry=r,
        )  # fmt: skip
        self.reconcile_errors = PromCounter(
            "podgrace_reconcile_errors_total",
            "Reconciliations that ended in an error.",
            ["controller"],
            registry=r,
        )
        self.reconcile_time = Histogram(
            "podgrace_reconcile_time_seconds", "Time per reconciliation.", ["controller"],
            buckets=RECONCILE_BUCKETS, registry=r,
        )  # fmt: skip
        self.reclaimed = PromCounter(
            "podgrace_field_reclaimed_total",
            "Fields an owner took back after podgrace had taken them (podgrace backed off), by field "
            "(terminationGracePeriodSeconds, os.name, preStop or stopSignal).",
            ["field"],
            registry=r,
        )
        self.writes = PromCounter(
            "podgrace_writes_total", "API write requests podgrace made, by kind.", ["kind"], registry=r
        )
        self.managed = Gauge(
            "podgrace_managed_workloads",
            "Deployments opted in to each ShutdownProfile.",
            ["profile"],
            registry=r,
        )
        self.at_risk = Gauge(
            "podgrace_workloads_at_risk", "Deployments that may drop requests, by finding.", ["finding"],
            registry=r,
        )  # fmt: skip
        self.profile_ready = Gauge(
            "podgrace_profile_ready",
            "1 when the ShutdownProfile is valid and Ready.",
            ["profile"],
            registry=r,
        )
        self.warnings = PromCounter(
            "podgrace_warnings_total", "Warning Events posted, by reason.", ["reason"], registry=r
        )
        self.retries = PromCounter(
            "podgrace_workqueue_retries_total",
            "Reconciles tried again after a failure, with backoff.",
            ["name"],
            registry=r,
        )
        self.retries.labels(DEPLOYMENT)
        self.build_info = Gauge(
            "podgrace_build_info", "podgrace's version.", ["version", "python_version"], registry=r
        )
        self.build_info.labels(__version__, platform.python_version()).set(1)
        for controller in (DEPLOYMENT, PROFILE):
            for result in ("success", "error", "requeue"):
                self.reconcile_total.labels(controller, result)
            self.reconcile_errors.labels(controller)
        for code in sorted(RISKS):
            self.at_risk.labels(code.value).set(0)
        # Counters exist at 0 from the start, so the first increment after a start shows in increase().
        for code in sorted(WARNING_REASONS):
            self.warnings.labels(code.value)
        for kind in WRITE_KINDS:
            self.writes.labels(kind)
        for field in RECLAIMED_FIELDS:
            self.reclaimed.labels(field)

    def forget_profile(self, name: str) -> None:
        """A deleted ShutdownProfile's series go away rather than report a profile that is not there."""
        for gauge in (self.profile_ready, self.managed):
            with contextlib.suppress(KeyError):
                gauge.remove(name)
