"""Prometheus metrics, with controller-runtime's meanings under a `podgrace_` prefix.

Label values are bounded: controller and result are fixed sets (a controller per workload kind, and the
ShutdownProfiles'), `kind` is deployment, statefulset or daemonset, findings and reasons are
`findings.Code`, and profiles are the cluster's ShutdownProfiles (a handful).
"""

from __future__ import annotations

import asyncio
import contextlib
import platform

from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client import Counter as PromCounter

from podgrace import __version__
from podgrace.controller.workload_key import KINDS
from podgrace.core.findings import RISKS, Code

WRITE_KINDS = ("apply", "revert", "status", "event")
# the `field` label of podgrace_field_reclaimed_total (core.take_once.metric_label)
RECLAIMED_FIELDS = ("terminationGracePeriodSeconds", "os.name", "preStop", "stopSignal")
# The reasons of the Warning Events podgrace posts (Code values that are not risks).
WARNING_REASONS = frozenset(Code) - RISKS

# The workload controllers are named by their kind's label (deployment, statefulset, daemonset).
WORKLOAD_LABELS = tuple(kind.label for kind in KINDS)
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
        self.reconcile_total = self._counter(
            "podgrace_reconcile_total", "Reconciliations by controller and result.", "controller", "result"
        )
        self.reconcile_errors = self._counter(
            "podgrace_reconcile_errors_total", "Reconciliations that ended in an error.", "controller"
        )
        self.reconcile_time = Histogram(
            "podgrace_reconcile_time_seconds",
            "Time per reconciliation.",
            ["controller"],
            buckets=RECONCILE_BUCKETS,
            registry=self.registry,
        )
        self.reclaimed = self._counter(
            "podgrace_field_reclaimed_total",
            "Fields an owner took back after podgrace had taken them (podgrace backed off), by field "
            "(terminationGracePeriodSeconds, os.name, preStop or stopSignal).",
            "field",
        )
        self.writes = self._counter(
            "podgrace_writes_total", "API write requests podgrace made, by kind.", "kind"
        )
        self.managed = self._gauge(
            "podgrace_managed_workloads", "Workloads opted in to each ShutdownProfile, by kind.", "profile",
            "kind",
        )  # fmt: skip
        self.at_risk = self._gauge(
            "podgrace_workloads_at_risk", "Workloads that may drop requests, by finding and kind.", "finding",
            "kind",
        )  # fmt: skip
        self.profile_ready = self._gauge(
            "podgrace_profile_ready", "1 when the ShutdownProfile is valid and Ready.", "profile"
        )
        self.stop_signal_ignored = self._gauge(
            "podgrace_stop_signal_ignored_workloads",
            "Workloads whose pods show that the container runtime ignores lifecycle.stopSignal (they get "
            "the fallback preStop hook instead).",
        )
        self.warnings = self._counter(
            "podgrace_warnings_total", "Warning Events posted, by reason.", "reason"
        )
        self.retries = self._counter(
            "podgrace_workqueue_retries_total",
            "Reconciles tried again after a failure, with backoff.",
            "name",
        )
        for label in WORKLOAD_LABELS:
            self.retries.labels(label)
        self.tasks = self._gauge(
            "podgrace_asyncio_tasks",
            "asyncio tasks alive in the operator's event loop: steady when idle; growth is a leak.",
        )
        self.build_info = self._gauge(
            "podgrace_build_info", "podgrace's version.", "version", "python_version"
        )
        self.build_info.labels(__version__, platform.python_version()).set(1)
        for controller in (*WORKLOAD_LABELS, PROFILE):
            for result in ("success", "error", "requeue"):
                self.reconcile_total.labels(controller, result)
            self.reconcile_errors.labels(controller)
        for code in sorted(RISKS):
            for label in WORKLOAD_LABELS:
                self.at_risk.labels(code.value, label).set(0)
        # Counters exist at 0 from the start, so the first increment after a start shows in increase().
        for code in sorted(WARNING_REASONS):
            self.warnings.labels(code.value)
        for kind in WRITE_KINDS:
            self.writes.labels(kind)
        for field in RECLAIMED_FIELDS:
            self.reclaimed.labels(field)

    # A metric of this registry, from its name, help text and label names.

    def _counter(self, name: str, documentation: str, *labels: str) -> PromCounter:
        return PromCounter(name, documentation, labels, registry=self.registry)

    def _gauge(self, name: str, documentation: str, *labels: str) -> Gauge:
        return Gauge(name, documentation, labels, registry=self.registry)

    def count_tasks(self, loop: asyncio.AbstractEventLoop) -> None:
        """podgrace_asyncio_tasks counts `loop`'s unfinished tasks when scraped (all_tasks copes with
        being called from the metrics server's thread: it retries a copy that raced a change)."""
        self.tasks.set_function(lambda: len(asyncio.all_tasks(loop)))

    def forget_profile(self, name: str) -> None:
        """A deleted ShutdownProfile's series go away rather than report a profile that is not there."""
        with contextlib.suppress(KeyError):
            self.profile_ready.remove(name)
        for label in WORKLOAD_LABELS:
            with contextlib.suppress(KeyError):
                self.managed.remove(name, label)
