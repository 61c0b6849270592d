"""Reconciling Deployments and ShutdownProfiles: read, plan, apply only what changes, report.

No Kopf here: deployment_events and profile_events call these methods, and the unit tests drive them
with a fake API.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import aiohttp

from podgrace.controller.capability_probe import CapabilityCache, ProbeFailed
from podgrace.controller.deployment_key import Key
from podgrace.controller.event_recorder import NORMAL, WARNING, EventRecorder
from podgrace.controller.kube_api import Api, ApiError
from podgrace.controller.metrics import DEPLOYMENT, PROFILE, Metrics
from podgrace.controller.skip_record import SkipRecord
from podgrace.controller.workload_gauges import WorkloadGauges
from podgrace.core.apply_body import apply_body
from podgrace.core.findings import Code, Finding
from podgrace.core.hook_intent import SignalAndWait
from podgrace.core.managed_fields import apply_is_noop
from podgrace.core.planner import Outcome, Plan, plan
from podgrace.core.profile_store import ProfileStore, desired_status, status_differs
from podgrace.core.workload_parser import ManifestError, from_object

log = logging.getLogger(__name__)

TRANSIENT_RETRIES = 3
REQUEUE_DELAY = 5.0  # seconds before a conflicted apply is planned again on a fresh read


class Result(StrEnum):
    APPLIED = "applied"
    REVERTED = "reverted"
    UNCHANGED = "unchanged"
    INVALID = "invalid"
    FAILED = "failed"
    REQUEUE = "requeue"


@dataclass(frozen=True)
class ReconcileOutcome:
    result: Result
    plan: Plan | None = None
    written: Mapping[str, Any] | None = None  # what podgrace's apply returned (APPLIED, REVERTED)


class Reconciler:
    def __init__(
        self,
        api: Api,
        store: ProfileStore,
        capabilities: CapabilityCache,
        events: EventRecorder,
        metrics: Metrics,
        gauges: WorkloadGauges,
        record: SkipRecord,
        *,
        fanout_concurrency: int = 20,
        concurrency: int | None = None,
    ) -> None:
        self.api = api
        self.store = store
        self.capabilities = capabilities
        self.events = events
        self.metrics = metrics
        self.gauges = gauges
        self.record = record
        self._fanout = asyncio.Semaphore(fanout_concurrency)
        # At most this many Deployment reconciles at once (None: no limit); Kopf's workers are unlimited.
        self._slots = asyncio.Semaphore(concurrency) if concurrency else None
        self._requeued: set[Key] = set()
        self._background: set[asyncio.Task[None]] = set()
        self.requeue_delay = REQUEUE_DELAY

    # --- Deployments -------------------------------------------------------------------------------

    async def reconcile_deployment(self, body: Mapping[str, Any]) -> ReconcileOutcome:
        if self._slots is None:
            return await self._timed_reconcile(body)
        async with self._slots:
            return await self._timed_reconcile(body)

    async def _timed_reconcile(self, body: Mapping[str, Any]) -> ReconcileOutcome:
        started = time.monotonic()
        result = Result.FAILED
        try:
            outcome = await self._reconcile_deployment(body)
            result = outcome.result
            return outcome
        finally:
            self.metrics.reconcile_time.labels(DEPLOYMENT).observe(time.monotonic() - started)
            label = {Result.FAILED: "error", Result.REQUEUE: "requeue"}.get(result, "success")
            self.metrics.reconcile_total.labels(DEPLOYMENT, label).inc()
            if result is Result.FAILED:
                self.metrics.reconcile_errors.labels(DEPLOYMENT).inc()

    async def _reconcile_deployment(self, body: Mapping[str, Any]) -> ReconcileOutcome:
        metadata = body.get("metadata") or {}
        namespace, name = key = str(metadata.get("namespace")), str(metadata.get("name"))
        if self.record.is_stale(key, metadata):
            return ReconcileOutcome(Result.UNCHANGED)
        try:
            workload = from_object(body, with_ownership=True)
        except ManifestError as error:
            log.error("cannot read Deployment %s/%s: %s", namespace, name, error)
            return ReconcileOutcome(Result.FAILED)
        profile_name = workload.overrides.profile
        invalid_profile = self.store.error(profile_name) if profile_name else None
        if invalid_profile is not None:
            message = f"ShutdownProfile {profile_name} is not valid: {invalid_profile}"
            await self.events.post(body, WARNING, Code.INVALID_PROFILE.value, message)
            self.gauges.observe(key, None, ())
            return ReconcileOutcome(Result.INVALID)
        try:
            capabilities = await self.capabilities.get(body)
        except ProbeFailed as error:
            log.warning("Deployment %s/%s not reconciled: %s", namespace, name, error)
            return ReconcileOutcome(Result.FAILED)
        result = plan(workload, self.store.valid(), capabilities)
        if result.outcome is Outcome.INVALID:
            for finding in result.errors:
                await self.events.post(body, WARNING, finding.code.value, finding.message)
            self.gauges.observe(key, None, ())  # refused: not managed, and no user-made label value
            return ReconcileOutcome(Result.INVALID, result)
        risks = result.findings_before if result.outcome is not Outcome.MANAGED else result.findings_after
        managed_profile = result.profile if result.outcome is not Outcome.NOT_OPTED_IN else None
        self.gauges.observe(key, managed_profile, (f.code for f in risks))
        desired = apply_body(namespace, name, result)
        if apply_is_noop(body, desired):
            await self._report_decisions(body, result.decisions)
            return ReconcileOutcome(Result.UNCHANGED, result)
        reverting = "spec" not in desired
        try:
            written = await self._with_retries(
                lambda: self.api.apply_deployment(namespace, name, desired, force=result.force)
            )
        except ApiError as apply_error:
            if apply_error.status == 404:
                return ReconcileOutcome(Result.UNCHANGED, result)  # deleted meanwhile
            if apply_error.status == 409:
                # A field podgrace wants changed owner after this event was sent: plan again on a fresh
                # read a little later (never force a field another manager holds).
                log.warning(
                    "apply to Deployment %s/%s conflicted, requeued: %s", namespace, name, apply_error
                )
                self._requeue(namespace, name)
                return ReconcileOutcome(Result.REQUEUE, result)
            log.warning("apply to Deployment %s/%s failed: %s", namespace, name, apply_error)
            await self.events.post(
                body, WARNING, Code.APPLY_FAILED.value, f"podgrace's apply was rejected: {apply_error}"
            )
            return ReconcileOutcome(Result.FAILED, result)
        self.metrics.writes.labels("revert" if reverting else "apply").inc()
        # Recorded here rather than by the caller: the fan-out and the requeue reconcile without the work
        # queue, and their writes, too, make older watch events stale.
        self.record.wrote(key, written)
        if reverting:
            await self.events.post(body, NORMAL, "Reverted", "podgrace removed the settings it had injected")
        else:
            await self.events.post(body, NORMAL, "Applied", summary(result))
        await self._report_decisions(body, result.decisions)
        return ReconcileOutcome(Result.REVERTED if reverting else Result.APPLIED, result, written)

    async def _report_decisions(self, body: Mapping[str, Any], decisions: Iterable[Finding]) -> None:
        for decision in decisions:
            where = f"container {decision.container}: " if decision.container else ""
            await self.events.post(body, WARNING, decision.code.value, where + decision.message)

    async def _with_retries(self, call: Any) -> Any:
        """Retry transient failures (API server restarting, throttling) a few times with backoff."""
        for attempt in range(TRANSIENT_RETRIES):
            try:
                return await call()
            except ApiError as error:
                if (error.status < 500 and error.status != 429) or attempt == TRANSIENT_RETRIES - 1:
                    raise
            except (aiohttp.ClientError, TimeoutError):
                if attempt == TRANSIENT_RETRIES - 1:
                    raise
            await asyncio.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")

    # --- ShutdownProfiles --------------------------------------------------------------------------

    async def reconcile_profile(self, body: Mapping[str, Any], users: Iterable[Key]) -> bool:
        """Update the store and the profile's status; when its spec changed, re-reconcile its users.

        Returns whether the users were re-reconciled."""
        started = time.monotonic()
        failed = True
        try:
            name = str(body["metadata"]["name"])
            entry, changed = self.store.upsert(body)
            self.metrics.profile_ready.labels(name).set(1 if entry.profile is not None else 0)
            users = sorted(set(users))
            await self.update_profile_status(body, len(users))
            if changed:
                await asyncio.gather(*(self._refresh(namespace, dep) for namespace, dep in users))
            failed = False
            return changed
        finally:
            self.metrics.reconcile_time.labels(PROFILE).observe(time.monotonic() - started)
            self.metrics.reconcile_total.labels(PROFILE, "error" if failed else "success").inc()
            if failed:
                self.metrics.reconcile_errors.labels(PROFILE).inc()

    async def update_profile_status(self, body: Mapping[str, Any], workloads: int) -> None:
        name = str(body["metadata"]["name"])
        entry = self.store.entry(name) or self.store.upsert(body)[0]
        status = desired_status(body, entry, workloads)
        if status_differs(body, status):
            await self._with_retries(lambda: self.api.patch_profile_status(name, status))
            self.metrics.writes.labels("status").inc()

    def _requeue(self, namespace: str, name: str) -> None:
        if (namespace, name) in self._requeued:
            return
        self._requeued.add((namespace, name))

        async def later() -> None:
            await asyncio.sleep(self.requeue_delay)
            self._requeued.discard((namespace, name))
            await self._refresh(namespace, name)

        task = asyncio.create_task(later())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _refresh(self, namespace: str, name: str) -> None:
        async with self._fanout:
            body = await self._with_retries(lambda: self.api.get_deployment(namespace, name))
            if body is not None:
                await self.reconcile_deployment(body)

    def forget_profile(self, name: str) -> None:
        self.store.remove(name)
        self.metrics.forget_profile(name)


def summary(result: Plan) -> str:
    parts = []
    for s in result.containers:
        hook = s.pre_stop
        via_hook = f"{hook.signal.value} via preStop" if isinstance(hook, SignalAndWait) else ""
        signal = s.stop_signal or via_hook
        parts.append(
            f"{s.name}: stop after {s.signal_delay_seconds}s" + (f" with {signal}" if signal else "")
        )
    grace = result.termination_grace_period_seconds
    tail = f"; terminationGracePeriodSeconds {grace}" if grace is not None else ""
    return f"podgrace applied ShutdownProfile {result.profile}: " + ", ".join(parts) + tail
