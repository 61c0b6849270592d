"""Reconciling workloads (Deployments, StatefulSets, DaemonSets: one code path, the kind is in the body and
its key) and ShutdownProfiles: read, plan, apply only what changes, report.

No Kopf here: workload_events and profile_events call these methods, and the unit tests drive them
with a fake API.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import aiohttp

from podgrace.controller.capability_probe import CapabilityCache, ProbeFailed
from podgrace.controller.event_recorder import NORMAL, WARNING, EventRecorder
from podgrace.controller.field_memory import FieldMemory
from podgrace.controller.kube_api import Api, ApiError, retry_after
from podgrace.controller.metrics import PROFILE, Metrics
from podgrace.controller.skip_record import SkipRecord
from podgrace.controller.stop_signal_check import Evidence, StopSignalCheck
from podgrace.controller.workload_gauges import WorkloadGauges
from podgrace.controller.workload_key import Key, key_of, kind_named
from podgrace.core import hook_intent, replaced_hooks
from podgrace.core.apply_body import pod_spec_fields
from podgrace.core.capabilities import Capabilities
from podgrace.core.constants import FIELD_MANAGER
from podgrace.core.findings import Code
from podgrace.core.hook_intent import SignalAndWait
from podgrace.core.models import ShutdownProfile, Workload
from podgrace.core.planner import Outcome, Plan, plan
from podgrace.core.profile_store import ProfileStore, desired_status, status_differs
from podgrace.core.take_once import Verdict, contested_values, inputs_key, metric_label, podgrace_owned
from podgrace.core.workload_parser import ManifestError, from_object
from podgrace.core.write_patch import write_patch

log = logging.getLogger(__name__)

TRANSIENT_RETRIES = 3
CONFLICT_RETRIES = 3  # a 409 is planned again on a fresh read at once this often, then with backoff


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
    cause: str | None = None  # why it FAILED or is to be retried (REQUEUE)
    body: Mapping[str, Any] | None = None  # the workload reconciled (for an Event about it)
    retry_after: float | None = None  # the API server asked to wait this long before trying again


RETRY_RESULTS = frozenset({Result.FAILED, Result.REQUEUE})  # the work queue retries these with backoff


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
        # At most this many workload reconciles at once (None: no limit); Kopf's workers are unlimited.
        self._slots = asyncio.Semaphore(concurrency) if concurrency else None
        self.memory = FieldMemory()  # take once, never fight
        # Whether the runtime under a workload's pods honours lifecycle.stopSignal (read from the pods).
        self.stop_signals = StopSignalCheck(api, on_change=metrics.stop_signal_ignored.set)
        # Where a workload whose reconcile failed outside the work queue (a profile's fan-out) goes to be
        # retried with backoff: the work queue's `retry`, set by the wiring.
        # Its second argument: no sooner than this many seconds (the API server's Retry-After).
        self.retry: Callable[[Key, float], None] | None = None
        # Whether the work queue holds a workload for a Retry-After: the fan-out then leaves it to the
        # queue, whose retry reads it afresh (with the new profile) when the time is up.
        self.held: Callable[[Key], bool] = lambda key: False
        # The work queue's per-workload exclusivity (wiring sets it): a fan-out never reconciles a workload
        # the queue is reconciling too. Without a queue (tests), every workload is the fan-out's.
        self.exclusive: Callable[[Key], AbstractAsyncContextManager[bool]] = _always_mine

    # --- Workloads ---------------------------------------------------------------------------------

    async def reconcile_workload(
        self, body: Mapping[str, Any], *, fresh: bool = False, listed: bool = False
    ) -> ReconcileOutcome:
        """Reconcile a workload as `body` shows it (`fresh`: just read from the API server; `listed`: from
        an informer's list, as current as a read when nothing changed it since)."""
        if self._slots is None:
            return await self._timed_reconcile(body, fresh, listed)
        async with self._slots:
            return await self._timed_reconcile(body, fresh, listed)

    async def _timed_reconcile(self, body: Mapping[str, Any], fresh: bool, listed: bool) -> ReconcileOutcome:
        started = time.monotonic()
        result = Result.FAILED
        try:
            outcome = await self._reconcile_workload(body, fresh, listed=listed)
            result = outcome.result
            return outcome
        finally:
            self._count(key_of(body), result, time.monotonic() - started)

    def _count(self, key: Key, result: Result, seconds: float) -> None:
        controller = kind_named(key.kind).label  # one controller per workload kind
        self.metrics.reconcile_time.labels(controller).observe(seconds)
        label = {Result.FAILED: "error", Result.REQUEUE: "requeue"}.get(result, "success")
        self.metrics.reconcile_total.labels(controller, label).inc()
        if result is Result.FAILED:
            self.metrics.reconcile_errors.labels(controller).inc()

    async def reconcile_fresh(self, key: Key) -> ReconcileOutcome | None:
        """Read the workload afresh and reconcile it (None: it is gone). A failed read is a failed
        reconcile (counted, logged, with its cause)."""
        started = time.monotonic()
        try:
            body = await self.api.get_workload(key)
        except (ApiError, aiohttp.ClientError, TimeoutError) as error:
            cause = describe(error)
            log.warning("reading %s failed: %s", key, cause)
            self._count(key, Result.FAILED, time.monotonic() - started)
            return ReconcileOutcome(Result.FAILED, cause=cause, retry_after=retry_after(error))
        if body is None:
            return None
        self.record.read(key, body)
        return await self.reconcile_workload(body, fresh=True)

    async def _reconcile_workload(
        self, body: Mapping[str, Any], fresh: bool, conflicts: int = 0, *, listed: bool = False
    ) -> ReconcileOutcome:
        metadata = body.get("metadata") or {}
        key = key_of(body)
        if self.record.is_stale(key, metadata):
            return ReconcileOutcome(Result.UNCHANGED)
        try:
            workload = from_object(body, with_ownership=True)
        except ManifestError as error:
            log.error("cannot read %s: %s", key, error)
            return ReconcileOutcome(Result.FAILED, cause=str(error), body=body)
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
            log.warning("%s not reconciled: %s", key, error)
            return ReconcileOutcome(Result.FAILED, cause=str(error), body=body)
        profiles = self.store.valid()
        uid = str(metadata.get("uid") or "")
        inputs = _inputs(metadata, profiles, profile_name)
        workload = self._with_reclaimed(key, uid, body, workload, inputs)
        result = plan(workload, profiles, capabilities)
        if result.outcome is Outcome.MANAGED and capabilities.stop_signal:
            result = await self._unless_runtime_ignores(body, workload, profiles, capabilities, result)
        elif result.outcome is not Outcome.MANAGED:
            self.stop_signals.forget(uid)
        if result.outcome is Outcome.INVALID:
            for finding in result.errors:
                await self.events.post(body, WARNING, finding.code.value, finding.message)
            self.gauges.observe(key, None, ())  # refused: not managed, and no user-made label value
            return ReconcileOutcome(Result.INVALID, result)
        risks = result.findings_before if result.outcome is not Outcome.MANAGED else result.findings_after
        managed_profile = result.profile if result.outcome is not Outcome.NOT_OPTED_IN else None
        self.gauges.observe(key, managed_profile, (f.code for f in risks))
        desired = pod_spec_fields(result)
        bookkeeping = replaced_hooks.annotation(body, result, workload.ownership) if desired else None
        patch = write_patch(body, desired, bookkeeping)
        if patch is None:
            await self._report(body, result)
            return ReconcileOutcome(Result.UNCHANGED, result)
        if not fresh and not (listed and desired and "managedFields" not in patch["metadata"]):
            # A watch event's body is often older than the object (the rollout's status updates): the patch
            # names the resourceVersion it was planned on, so plan it on a fresh read (one GET per write,
            # rather than a 409 and a retry). A listed body is as current as such a read unless something
            # changed it since, which the 409 says: its settings are written at once (a cold start over
            # 5,000 Deployments read each one again before). Not a revert, and not a write of managedFields:
            # those are made from the whole object, and the queue keeps listed bodies slimmed.
            try:
                latest = await self.api.get_workload(key)
            except (ApiError, aiohttp.ClientError, TimeoutError) as error:
                cause = describe(error)
                log.warning("reading %s failed: %s", key, cause)
                return ReconcileOutcome(
                    Result.FAILED, result, cause=cause, body=body, retry_after=retry_after(error)
                )
            if latest is None:
                return ReconcileOutcome(Result.UNCHANGED, result)  # deleted meanwhile
            self.record.read(key, latest)
            return await self._reconcile_workload(latest, True, conflicts)
        reverting = not desired
        # No retries in place: a failed write fails this reconcile (counted, logged with its cause), and
        # the work queue tries again with backoff (no sooner than a Retry-After), on a fresh read.
        try:
            if reverting and replaced_hooks.restore_patches(body):
                body = await self._restore_replaced_hooks(key, body)
                patch = write_patch(body, desired, None)
            written = await self._write(key, patch)
        except (aiohttp.ClientError, TimeoutError) as error:
            cause = describe(error)
            log.warning("apply to %s failed, will retry: %s", key, cause)
            return ReconcileOutcome(Result.FAILED, result, cause=cause, body=body)
        except ApiError as apply_error:
            cause = describe(apply_error)
            if apply_error.status == 404:
                return ReconcileOutcome(Result.UNCHANGED, result)  # deleted meanwhile
            if apply_error.status == 409 and conflicts < CONFLICT_RETRIES:
                # The workload changed after podgrace read it (its patch names the resourceVersion read;
                # the rollout's status updates do it too): plan again on a fresh read, at once, as
                # client-go's RetryOnConflict (never overwrite what podgrace has not seen).
                log.info("apply to %s conflicted, planning again: %s", key, cause)
                return await self._reconcile_workload(body, False, conflicts + 1)
            if apply_error.status == 409:
                log.warning("apply to %s conflicted, will retry: %s", key, cause)
                return ReconcileOutcome(Result.REQUEUE, result, cause=cause, body=body)
            log.warning("apply to %s failed, will retry: %s", key, cause)
            if not is_transient(apply_error):
                # Rejected (invalid, denied by admission): the user can act on it, so say it at once.
                message = f"podgrace's apply was rejected: {cause}"
                await self.events.post(body, WARNING, Code.APPLY_FAILED.value, message)
            wait = apply_error.retry_after
            return ReconcileOutcome(Result.FAILED, result, cause=cause, body=body, retry_after=wait)
        self.metrics.writes.labels("revert" if reverting else "apply").inc()
        if result.outcome is not Outcome.MANAGED:
            self.memory.forget(key)  # opted out: a new opt-in starts afresh
        else:  # (an apply that leaves podgrace nothing, every field taken back, keeps the memory)
            self.memory.wrote(key, uid, _written_fields(desired), inputs)
        # Recorded here rather than by the caller: the fan-out and the requeue reconcile without the work
        # queue, and their writes, too, make older watch events stale.
        self.record.wrote(key, written)
        if reverting:
            await self.events.post(body, NORMAL, "Reverted", "podgrace removed the settings it had injected")
        else:
            await self.events.post(body, NORMAL, "Applied", summary(result))
        await self._report(body, result)
        return ReconcileOutcome(Result.REVERTED if reverting else Result.APPLIED, result, written)

    async def _write(self, key: Key, patch: dict[str, Any] | None) -> Mapping[str, Any]:
        if patch is None:  # the restores left nothing else to give up
            return await self._read_metadata(key)
        return await self.api.patch_workload_as(key, patch, FIELD_MANAGER)

    async def _read_metadata(self, key: Key) -> Mapping[str, Any]:
        body = await self.api.get_workload(key)
        if body is None:
            raise ApiError(404, "NotFound", f"{kind_named(key.kind).plural}.apps {key.name} not found")
        return body

    async def _restore_replaced_hooks(self, key: Key, body: Mapping[str, Any]) -> Mapping[str, Any]:
        """The hooks podgrace replaced go back to their managers first (then the revert removes nothing of
        theirs): an Update under the manager's name, which takes the field back without conflict. Returns
        the workload as it is afterwards (the revert is planned on it)."""
        for manager, restore in replaced_hooks.restore_patches(body):
            try:
                await self.api.patch_workload_as(key, restore, manager)
                self.metrics.writes.labels("revert").inc()
            except ApiError as error:
                log.warning("cannot restore a replaced hook of %s: %s", key, error)
        return await self._read_metadata(key)

    async def _unless_runtime_ignores(
        self,
        body: Mapping[str, Any],
        workload: Workload,
        profiles: Mapping[str, ShutdownProfile],
        capabilities: Capabilities,
        result: Plan,
    ) -> Plan:
        """The plan, or the plan with the fallback hook where the workload's pods show that the runtime
        ignores lifecycle.stopSignal (stop_signal_check.py). Without running pods to tell, a fallback hook
        podgrace already gave the workload stays: no rollout on a guess."""
        containers = [s.name for s in result.containers if s.stop_signal]
        if not containers:
            return result
        finding = await self.stop_signals.check(body, containers)
        if finding.evidence is Evidence.HONOURED:
            return result
        if finding.evidence is Evidence.UNKNOWN and not _has_fallback_hook(body, containers):
            return result
        if finding.evidence is Evidence.IGNORED:
            await self.events.post(body, WARNING, Code.STOP_SIGNAL_IGNORED.value, finding.describe())
        return plan(workload, profiles, dataclasses.replace(capabilities, stop_signal=False))

    def _with_reclaimed(
        self, key: Key, uid: str, body: Mapping[str, Any], workload: Workload, inputs: str
    ) -> Workload:
        """The workload with the fields its owners took back from podgrace (take once, never fight)."""
        if workload.overrides.profile is None:
            self.memory.forget(key)
            return workload
        verdicts = self.memory.verdicts(key, uid, contested_values(body), podgrace_owned(body), inputs)
        if not verdicts:
            return workload
        ownership = workload.ownership
        reclaimed = []
        for field, verdict in sorted(verdicts.items()):
            reclaimed.append((field, ownership.owner_of(field) or ownership.last_writer))
            if verdict is Verdict.RECLAIMED:
                self.metrics.reclaimed.labels(metric_label(field)).inc()
        update = {"ownership": ownership.model_copy(update={"reclaimed": tuple(reclaimed)})}
        return workload.model_copy(update=update)

    async def _report(self, body: Mapping[str, Any], result: Plan) -> None:
        """The plan's notices (Normal) and decisions (Warning), each posted once, also over restarts: a
        notice is said on every reconcile, not only beside a write, so it survives a failed post and is
        there in audit mode; the recorder finds it by name on the API server after a restart."""
        for type_, findings in ((NORMAL, result.notices), (WARNING, result.decisions)):
            for finding in findings:
                where = f"container {finding.container}: " if finding.container else ""
                await self.events.post(body, type_, finding.code.value, where + finding.message, once=True)

    async def _with_retries(self, call: Any) -> Any:
        """Retry transient failures (API server restarting, throttling) a few times with backoff, each
        no sooner than the API server's Retry-After."""
        for attempt in range(TRANSIENT_RETRIES):
            wait = 0.0
            try:
                return await call()
            except ApiError as error:
                if (error.status < 500 and error.status != 429) or attempt == TRANSIENT_RETRIES - 1:
                    raise
                wait = error.retry_after or 0.0
            except (aiohttp.ClientError, TimeoutError):
                if attempt == TRANSIENT_RETRIES - 1:
                    raise
            await asyncio.sleep(max(0.5 * 2**attempt, wait))
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
                await asyncio.gather(*(self._refresh(key) for key in users))
            failed = False
            return changed
        finally:
            self.metrics.reconcile_time.labels(PROFILE).observe(time.monotonic() - started)
            self.metrics.reconcile_total.labels(PROFILE, "error" if failed else "success").inc()
            if failed:
                self.metrics.reconcile_errors.labels(PROFILE).inc()

    async def update_profile_status(
        self, body: Mapping[str, Any], workloads: int, *, retry_in_place: bool = True
    ) -> None:
        """Write the profile's status if it differs. `retry_in_place`: transient failures are retried
        here a few times (the Kopf handler); the status flusher passes False, it backs off on its own."""
        name = str(body["metadata"]["name"])
        entry = self.store.entry(name) or self.store.upsert(body)[0]
        status = desired_status(body, entry, workloads)
        if status_differs(body, status):
            if retry_in_place:
                await self._with_retries(lambda: self.api.patch_profile_status(name, status))
            else:
                await self.api.patch_profile_status(name, status)
            self.metrics.writes.labels("status").inc()

    async def _refresh(self, key: Key) -> None:
        """A profile's fan-out to one of its workloads (any kind); a failure goes to the work queue's
        retries."""
        if self.held(key):
            return
        async with self._fanout, self.exclusive(key) as mine:
            if not mine:
                return  # the queue has it: it reconciles it once more, afresh, with the new profile
            outcome = await self.reconcile_fresh(key)
        if outcome is not None and outcome.result in RETRY_RESULTS and self.retry is not None:
            self.retry(key, outcome.retry_after or 0.0)

    async def profile_deleted(self, name: str, users: Iterable[Key]) -> None:
        """A deleted ShutdownProfile: its workloads are reconciled again (each gets an UnknownProfile
        Warning, keeps the settings it has, and is no longer counted as managed), then its series go."""
        self.store.remove(name)
        await asyncio.gather(*(self._refresh(key) for key in sorted(set(users))))
        self.metrics.forget_profile(name)

    def forget_profile(self, name: str) -> None:
        self.store.remove(name)
        self.metrics.forget_profile(name)


@contextlib.asynccontextmanager
async def _always_mine(key: Key) -> AsyncIterator[bool]:
    yield True


def _has_fallback_hook(body: Mapping[str, Any], containers: Iterable[str]) -> bool:
    """Whether one of the containers has podgrace's signal-and-wait hook now."""
    spec = ((body.get("spec") or {}).get("template") or {}).get("spec") or {}
    for container in spec.get("containers") or []:
        pre_stop = (container.get("lifecycle") or {}).get("preStop")
        is_own = isinstance(pre_stop, Mapping) and isinstance(hook_intent.read(pre_stop), SignalAndWait)
        if container.get("name") in containers and is_own:
            return True
    return False


def _inputs(metadata: Mapping[str, Any], profiles: Mapping[str, Any], profile: str | None) -> str:
    spec = profiles.get(profile) if profile else None
    dumped = spec.spec.model_dump(mode="json") if spec is not None else None
    return inputs_key(metadata.get("annotations") or {}, dumped)


def _written_fields(pod_spec: Mapping[str, Any]) -> dict[str, Any]:
    """The contested fields podgrace's pod spec sets (absent ones are not podgrace's)."""
    values = contested_values({"spec": {"template": {"spec": pod_spec}}})
    return {k: v for k, v in values.items() if v is not None}


def is_transient(error: ApiError) -> bool:
    """5xx and 429: the API server's own trouble, which passes (retried quietly until it persists)."""
    return error.status >= 500 or error.status == 429


def describe(error: BaseException) -> str:
    """An error as a log line or message: its text (API errors: status, reason, message), bounded."""
    text = str(error) if isinstance(error, ApiError) else f"{type(error).__name__}: {error}".rstrip(": ")
    if isinstance(error, TimeoutError) and not str(error):
        text = "timed out"
    return text if len(text) <= 500 else text[:500] + "..."


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
