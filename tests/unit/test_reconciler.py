"""The operator's reconcile logic against an in-memory API (no cluster): writes, reverts, events, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import copy
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from fake_api import FakeApi
from fake_clock import Clock
from prometheus_client import CollectorRegistry

from podgrace.controller.capability_probe import CapabilityCache
from podgrace.controller.event_recorder import EventRecorder
from podgrace.controller.kube_api import ApiError
from podgrace.controller.metrics import Metrics
from podgrace.controller.profile_events import ProfileEvents
from podgrace.controller.profile_index import ProfileIndex
from podgrace.controller.reconciler import Reconciler, Result, summary
from podgrace.controller.skip_record import SkipRecord
from podgrace.controller.status_flusher import StatusFlusher
from podgrace.controller.work_queue import WorkQueue, slim
from podgrace.controller.workload_events import WorkloadEvents
from podgrace.controller.workload_gauges import WorkloadGauges
from podgrace.controller.workload_key import Key
from podgrace.core import capabilities, profiles, workload_parser
from podgrace.core.planner import plan
from podgrace.core.profile_store import ProfileStore


def deployment(name: str = "shop", annotations: dict[str, str] | None = None, **pod: Any) -> dict[str, Any]:
    containers = pod.pop(
        "containers",
        [{"name": "nginx", "image": "nginx:1.27"}, {"name": "php-fpm", "image": "php:8.3-fpm"}],
    )
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": "web",
            "annotations": {"podgrace.dev/profile": "nginx-php-fpm"} if annotations is None else annotations,
        },
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": containers, **pod},
            },
        },
    }


def builtin_bodies() -> list[dict[str, Any]]:
    bodies = []
    for profile in profiles.builtin().values():
        body = profile.model_dump(by_alias=True, mode="json", exclude_none=True)
        body["metadata"]["generation"] = 1
        bodies.append(body)
    return bodies


def make(
    api: FakeApi, *, version: tuple[int, int] = (1, 35), index: ProfileIndex | None = None
) -> Reconciler:
    api.version = version
    metrics = Metrics(CollectorRegistry())
    store = ProfileStore()
    for body in builtin_bodies():
        store.upsert(body)
    gauges = WorkloadGauges(metrics, index if index is not None else ProfileIndex())
    return Reconciler(
        api, store, CapabilityCache(api), EventRecorder(api, metrics), metrics, gauges, SkipRecord()
    )


@dataclass
class Pipeline:
    """Workload events as the informers deliver them, through the work queue to the reconciler."""

    reconciler: Reconciler
    index: ProfileIndex
    queue: WorkQueue
    workloads: WorkloadEvents

    async def deliver(self, event_type: str, body: dict[str, Any]) -> None:
        """Deliver one event and wait until it has been handled."""
        await self.workloads.on_event(event_type, body)
        await asyncio.wait_for(self.queue.wait_idle(), 2)


@contextlib.asynccontextmanager
async def pipeline(api: FakeApi, *, workers: int = 2) -> AsyncIterator[Pipeline]:
    index = ProfileIndex()
    reconciler = make(api, index=index)
    queue = WorkQueue(workers)
    workloads = WorkloadEvents(reconciler, index, queue)
    reconciler.retry = queue.retry  # as controller.wiring
    reconciler.held = queue.held
    reconciler.exclusive = queue.exclusive
    queue.on_retry = lambda key: reconciler.metrics.retries.labels(key.kind.lower()).inc()
    queue.start(workloads.handle)
    try:
        yield Pipeline(reconciler, index, queue, workloads)
    finally:
        await queue.stop()


def dkey(name: str) -> Key:
    """The key of the Deployment `deployment(name)` makes."""
    return Key("Deployment", "web", name)


def deps(**labels: str) -> dict[str, str]:
    """Metric labels of a series about Deployments."""
    return {**labels, "kind": "deployment"}


def reasons(api: FakeApi) -> list[str]:
    return [e["reason"] for e in api.events]


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = obj["spec"]["template"]["spec"]
    return spec


async def test_first_reconcile_writes_once_then_nothing() -> None:
    api = FakeApi()
    live = api.create(deployment())
    reconciler = make(api)
    assert (await reconciler.reconcile_workload(live)).result is Result.APPLIED
    assert len(api.writes()) == 1
    assert reasons(api) == ["Applied"]
    after = api.get("web", "shop")
    assert pod_spec(after)["terminationGracePeriodSeconds"] == 70
    assert (await reconciler.reconcile_workload(after)).result is Result.UNCHANGED
    assert len(api.writes()) == 1
    assert reasons(api) == ["Applied"]


async def test_a_listed_body_is_written_at_once_a_watched_one_after_a_read() -> None:
    """A watch event's body may be older than the object: podgrace reads it before writing. A listed body is
    as current as that read (a cold start over thousands of Deployments read each one again), and when it is
    not, the write's resourceVersion gets a 409 and the read follows."""
    api = FakeApi()
    reconciler = make(api)
    listed = slim(api.create(deployment("listed")))
    assert (await reconciler.reconcile_workload(listed, listed=True)).result is Result.APPLIED
    assert (api.workload_reads, len(api.writes())) == (0, 1)
    watched = slim(api.create(deployment("watched")))
    assert (await reconciler.reconcile_workload(watched)).result is Result.APPLIED
    assert (api.workload_reads, len(api.writes())) == (1, 2)
    stale = slim(api.create(deployment("stale")))
    api.workloads[Key("Deployment", "web", "stale")]["metadata"]["resourceVersion"] = "2"  # changed since
    assert (await reconciler.reconcile_workload(stale, listed=True)).result is Result.APPLIED
    # the write refused with 409 (it names resourceVersion 1), the read, the write planned on it
    assert api.workload_reads == 2
    assert [p["metadata"]["resourceVersion"] for _, n, p, _, _ in api.writes() if n == "stale"] == ["1", "2"]
    assert pod_spec(api.get("web", "stale"))["terminationGracePeriodSeconds"] == 70
    # a revert is made from the whole object (it may give up claims by writing managedFields): read first
    api.workloads[Key("Deployment", "web", "listed")]["metadata"]["annotations"] = {}
    reverted = await reconciler.reconcile_workload(slim(api.get("web", "listed")), listed=True)
    assert (reverted.result, api.workload_reads) == (Result.REVERTED, 3)


async def test_restart_makes_no_write_and_repeats_no_event() -> None:
    api = FakeApi()
    api.create(deployment(containers=[{"name": "nginx", "image": "nginx", "lifecycle": {"preStop": {
        "exec": {"command": ["nginx", "-s", "quit"]}}}}]))  # fmt: skip
    first = make(api)
    await first.reconcile_workload(api.get("web", "shop"))
    writes, events = len(api.writes()), len(api.events)
    assert "UserHookKept" in reasons(api)
    restarted = make(api)  # a new process: empty caches
    assert (await restarted.reconcile_workload(api.get("web", "shop"))).result is Result.UNCHANGED
    assert len(api.writes()) == writes
    assert len(api.events) == events


async def test_stop_signal_detected_by_dry_run_and_cached() -> None:
    api = FakeApi()
    reconciler = make(api)
    for name in ("a", "b"):
        await reconciler.reconcile_workload(api.create(deployment(name)))
    dry_runs = [a for a in api.applies if a[4]]
    assert len(dry_runs) == 1
    containers = pod_spec(api.get("web", "a"))["containers"]
    assert containers[0]["lifecycle"] == {"preStop": {"sleep": {"seconds": 5}}, "stopSignal": "SIGQUIT"}
    assert pod_spec(api.get("web", "a"))["os"] == {"name": "linux"}


async def test_server_that_drops_stop_signal_gets_the_fallback_hook() -> None:
    api = FakeApi()
    api.keep_stop_signal = False
    reconciler = make(api)
    await reconciler.reconcile_workload(api.create(deployment()))
    nginx = pod_spec(api.get("web", "shop"))["containers"][0]
    assert "stopSignal" not in nginx["lifecycle"]
    assert "kill -QUIT $w" in nginx["lifecycle"]["preStop"]["exec"]["command"][2]
    assert "os" not in pod_spec(api.get("web", "shop"))


async def test_old_server_is_not_probed() -> None:
    api = FakeApi()
    reconciler = make(api, version=(1, 29))
    await reconciler.reconcile_workload(api.create(deployment()))
    assert not [a for a in api.applies if a[4]]
    nginx = pod_spec(api.get("web", "shop"))["containers"][0]
    assert nginx["lifecycle"]["preStop"]["exec"]["command"][0] == "/bin/sh"


async def test_opt_out_reverts_exactly_what_podgrace_injected() -> None:
    api = FakeApi()
    user_hook = {"preStop": {"httpGet": {"path": "/drain", "port": 80}}}
    original = deployment(
        containers=[
            {"name": "nginx", "image": "nginx:1.27"},
            {"name": "php-fpm", "image": "php:8.3-fpm"},
            {"name": "sidecar", "image": "busybox", "lifecycle": user_hook},
        ],
        terminationGracePeriodSeconds=90,
    )
    reconciler = make(api)
    await reconciler.reconcile_workload(api.create(original))
    applied = api.get("web", "shop")
    assert pod_spec(applied)["terminationGracePeriodSeconds"] == 90  # the user's longer value survives
    applied["metadata"]["annotations"] = {}
    api.workloads[dkey("shop")] = copy.deepcopy(applied)
    assert (await reconciler.reconcile_workload(applied)).result is Result.REVERTED
    reverted = api.get("web", "shop")
    assert reverted["spec"] == original["spec"]
    assert "Reverted" in reasons(api)
    assert (await reconciler.reconcile_workload(reverted)).result is Result.UNCHANGED


@pytest.mark.parametrize(
    ("annotations", "reason"),
    [
        ({"podgrace.dev/profile": "nginx", "podgrace.dev/drain-seconds": "5s"}, "InvalidAnnotation"),
        ({"podgrace.dev/profile": "nginx", "podgrace.dev/mode": "yolo"}, "InvalidAnnotation"),
        ({"podgrace.dev/profile": "nope"}, "UnknownProfile"),
        ({"podgrace.dev/profile": "nginx", "podgrace.dev/containers": "ghost"}, "InvalidAnnotation"),
    ],
    ids=["drain-with-unit", "bad-mode", "unknown-profile", "unknown-container"],
)
async def test_bad_input_warns_and_changes_nothing(annotations: dict[str, str], reason: str) -> None:
    api = FakeApi()
    live = api.create(deployment(annotations=annotations))
    reconciler = make(api)
    assert (await reconciler.reconcile_workload(live)).result is Result.INVALID
    assert api.writes() == []
    assert api.get("web", "shop")["spec"] == live["spec"]
    assert [(e["type"], e["reason"]) for e in api.events] == [("Warning", reason)]


async def test_bad_input_after_opt_in_keeps_the_applied_settings() -> None:
    api = FakeApi()
    reconciler = make(api)
    await reconciler.reconcile_workload(api.create(deployment()))
    applied = api.get("web", "shop")
    applied["metadata"]["annotations"]["podgrace.dev/prestop-sleep-seconds"] = "-1"
    assert (await reconciler.reconcile_workload(applied)).result is Result.INVALID
    assert len(api.writes()) == 1
    assert api.get("web", "shop")["spec"] == applied["spec"]


async def test_invalid_profile_is_reported_on_its_users() -> None:
    api = FakeApi()
    reconciler = make(api)
    broken = builtin_bodies()[0]
    broken["metadata"]["name"] = "broken"
    broken["spec"]["containers"][0]["stopAfter"] = ["missing"]
    await reconciler.reconcile_profile(broken, [])
    assert api.statuses["broken"]["conditions"][0]["status"] == "False"
    assert "missing" in api.statuses["broken"]["conditions"][0]["message"]
    live = api.create(deployment(annotations={"podgrace.dev/profile": "broken"}))
    assert (await reconciler.reconcile_workload(live)).result is Result.INVALID
    assert reasons(api) == ["InvalidProfile"]
    assert api.writes() == []


async def test_profile_change_reconciles_exactly_its_users() -> None:
    api = FakeApi()
    reconciler = make(api)
    for name, profile in (("a", "nginx"), ("b", "nginx"), ("c", "apache")):
        containers = [{"name": "web", "image": "nginx" if profile == "nginx" else "httpd:2.4"}]
        await reconciler.reconcile_workload(
            api.create(deployment(name, {"podgrace.dev/profile": profile}, containers=containers))
        )
    before = len(api.writes())
    nginx = next(b for b in builtin_bodies() if b["metadata"]["name"] == "nginx")
    await reconciler.reconcile_profile(nginx, [dkey("a"), dkey("b")])  # unchanged spec: no fan-out
    assert len(api.writes()) == before
    nginx["spec"]["containers"][0]["preStopSleepSeconds"] = 9
    nginx["metadata"]["generation"] = 2
    await reconciler.reconcile_profile(nginx, [dkey("a"), dkey("b")])
    touched = sorted(a[1] for a in api.writes()[before:])
    assert touched == ["a", "b"]
    assert pod_spec(api.get("web", "a"))["containers"][0]["lifecycle"]["preStop"] == {"sleep": {"seconds": 9}}
    assert api.statuses["nginx"]["observedGeneration"] == 2
    assert api.statuses["nginx"]["workloads"] == 2


async def test_profile_status_written_only_when_it_changes() -> None:
    api = FakeApi()
    reconciler = make(api)
    body = builtin_bodies()[0]
    await reconciler.reconcile_profile(body, [dkey("a")])
    status = api.statuses[body["metadata"]["name"]]
    assert status["conditions"][0]["type"] == "Ready"
    assert status["conditions"][0]["observedGeneration"] == 1
    body["status"] = status
    api.statuses.clear()
    await reconciler.reconcile_profile(body, [dkey("a")])
    assert api.statuses == {}


async def test_transient_errors_are_retried_by_the_queue_with_backoff_and_without_an_event() -> None:
    api = FakeApi()
    async with pipeline(api) as p:
        api.version = (1, 29)  # no stop-signal probe
        api.fail_next = [ApiError(503, "ServiceUnavailable", "apiserver restarting")] * 3
        await p.deliver("ADDED", api.create(deployment()))
        for _ in range(100):  # 5, 10, 20 ms of backoff, then the fourth attempt applies
            if api.writes():
                break
            await asyncio.sleep(0.01)
        assert len(api.writes()) == 1
        registry = p.reconciler.metrics.registry
        errors = {"controller": "deployment", "result": "error"}
        assert registry.get_sample_value("podgrace_reconcile_total", errors) == 3
        assert registry.get_sample_value("podgrace_workqueue_retries_total", {"name": "deployment"}) == 3
        await asyncio.wait_for(p.queue.wait_idle(), 2)
        assert "ApplyFailed" not in reasons(api)  # a passing 503 is no news
        assert p.queue.failures(dkey("shop")) == 0  # the success reset the backoff


async def test_conflict_is_deferred_not_forced() -> None:
    api = FakeApi()
    reconciler = make(api, version=(1, 29))
    api.fail_next = [ApiError(409, "Conflict", "the object has been modified")] * 4
    outcome = await reconciler.reconcile_workload(api.create(deployment()))
    assert outcome.result is Result.REQUEUE  # after three plans on fresh reads, in place
    assert api.fail_next == [] and api.get("web", "shop")["metadata"]["generation"] == 1
    assert not any(a[3] for a in api.applies)  # never forced


async def test_a_conflict_is_planned_again_at_once_on_a_fresh_read() -> None:
    api = FakeApi()
    reconciler = make(api, version=(1, 29))
    api.fail_next = [ApiError(409, "Conflict", "the object has been modified")]
    outcome = await reconciler.reconcile_workload(api.create(deployment()))
    assert outcome.result is Result.APPLIED
    assert api.workloads[Key("Deployment", "web", "shop")]["metadata"]["generation"] == 2


async def test_metrics_count_managed_and_at_risk_workloads() -> None:
    api = FakeApi()
    async with pipeline(api) as p:
        await p.deliver("ADDED", api.create(deployment("a")))
        await p.deliver("ADDED", api.create(deployment("b", annotations={})))  # not opted in, risky
        registry = p.reconciler.metrics.registry
        assert registry.get_sample_value("podgrace_managed_workloads", deps(profile="nginx-php-fpm")) == 1
        assert registry.get_sample_value("podgrace_workloads_at_risk", deps(finding="NoPreStop")) == 1
        assert registry.get_sample_value("podgrace_writes_total", {"kind": "apply"}) == 1
        assert (
            registry.get_sample_value(
                "podgrace_reconcile_total", {"controller": "deployment", "result": "success"}
            )
            == 2
        )
        await p.deliver("DELETED", api.get("web", "b"))
        assert registry.get_sample_value("podgrace_workloads_at_risk", deps(finding="NoPreStop")) == 0
        assert registry.get_sample_value("podgrace_managed_workloads", deps(profile="nginx-php-fpm")) == 1


async def test_a_reconcile_counts_as_managed_only_under_the_profile_the_deployment_names_now() -> None:
    api = FakeApi()
    index = ProfileIndex()
    reconciler = make(api, index=index)
    registry = reconciler.metrics.registry
    live = api.create(deployment())
    index.set_profile(dkey("shop"), "nginx-php-fpm")  # as the informer's event does
    await reconciler.reconcile_workload(live)
    assert registry.get_sample_value("podgrace_managed_workloads", deps(profile="nginx-php-fpm")) == 1
    # The Deployment names another profile now; a reconcile of its older state still finishing says
    # nginx-php-fpm, and must count it nowhere until its newer state is reconciled.
    reconciler.gauges.profile_changed(dkey("shop"))
    index.set_profile(dkey("shop"), "nginx")
    assert registry.get_sample_value("podgrace_managed_workloads", deps(profile="nginx-php-fpm")) == 0
    await reconciler.reconcile_workload(api.get("web", "shop"))
    assert registry.get_sample_value("podgrace_managed_workloads", deps(profile="nginx-php-fpm")) == 0
    assert registry.get_sample_value("podgrace_managed_workloads", deps(profile="nginx")) is None


async def test_deployment_events_reach_the_reconciler_through_the_queue() -> None:
    api = FakeApi()
    async with pipeline(api, workers=4) as p:
        await p.deliver("ADDED", api.create(deployment()))
        assert len(api.writes()) == 1
        assert p.index.users_of("nginx-php-fpm") == [dkey("shop")]
        assert p.index.take_recount() == {"nginx-php-fpm"}
        await p.deliver("DELETED", api.get("web", "shop"))
        assert p.index.users_of("nginx-php-fpm") == []
        assert p.index.take_recount() == {"nginx-php-fpm"}
        assert (
            p.reconciler.metrics.registry.get_sample_value(
                "podgrace_managed_workloads", deps(profile="nginx-php-fpm")
            )
            == 0
        )


async def test_a_watch_event_older_than_podgraces_write_is_skipped() -> None:
    api = FakeApi()
    stale = api.create(deployment())
    reconciler = make(api)
    await reconciler.reconcile_workload(stale)
    assert len(api.writes()) == 1
    # The watch can still deliver an event from before podgrace's write (e.g. a status update).
    assert (await reconciler.reconcile_workload(stale)).result is Result.UNCHANGED
    assert len(api.writes()) == 1


async def test_refused_deployments_add_no_profile_label() -> None:
    api = FakeApi()
    async with pipeline(api) as p:
        await p.deliver("ADDED", api.create(deployment(annotations={"podgrace.dev/profile": "typo"})))
        assert p.index.users_of("typo") == [dkey("shop")]  # counted as a user, for the status
        registry = p.reconciler.metrics.registry
        assert registry.get_sample_value("podgrace_managed_workloads", deps(profile="typo")) is None


async def test_deleted_profile_series_go_away() -> None:
    api = FakeApi()
    reconciler = make(api)
    body = builtin_bodies()[0]
    await reconciler.reconcile_profile(body, [])
    registry = reconciler.metrics.registry
    assert registry.get_sample_value("podgrace_profile_ready", {"profile": body["metadata"]["name"]}) == 1
    reconciler.forget_profile(body["metadata"]["name"])
    assert registry.get_sample_value("podgrace_profile_ready", {"profile": body["metadata"]["name"]}) is None


def test_counters_start_at_zero_for_every_reason_and_kind() -> None:
    metrics = Metrics(CollectorRegistry())
    for reason in ("InvalidAnnotation", "UnknownProfile", "UserHookKept", "ApplyFailed"):
        assert metrics.registry.get_sample_value("podgrace_warnings_total", {"reason": reason}) == 0
    for kind in ("apply", "revert", "status", "event"):
        assert metrics.registry.get_sample_value("podgrace_writes_total", {"kind": kind}) == 0
    for field in ("terminationGracePeriodSeconds", "os.name", "preStop", "stopSignal"):
        assert metrics.registry.get_sample_value("podgrace_field_reclaimed_total", {"field": field}) == 0


async def test_conflict_is_requeued_and_planned_again() -> None:
    api = FakeApi()
    async with pipeline(api) as p:
        api.version = (1, 29)
        api.fail_next = [ApiError(409, "Conflict", "the object has been modified")] * 4
        await p.deliver("ADDED", api.create(deployment()))
        registry = p.reconciler.metrics.registry
        labels = {"controller": "deployment", "result": "requeue"}
        assert registry.get_sample_value("podgrace_reconcile_total", labels) == 1
        await asyncio.sleep(0.3)
        assert len(api.writes()) == 1  # the requeued reconcile applied on a fresh read


async def test_the_echo_of_podgraces_own_write_is_not_reconciled_even_if_it_arrives_during_the_write() -> (
    None
):
    api = FakeApi()
    async with pipeline(api) as p:
        real_write = api.patch_workload_as  # podgrace's writes (strategic merge patches)

        async def write_then_echo(*args: Any, **kwargs: Any) -> dict[str, Any]:
            result = await real_write(*args, **kwargs)
            # The watch delivers the written object before the reconcile has finished.
            await p.workloads.on_event("MODIFIED", api.get("web", "shop"))
            return result

        api.patch_workload_as = write_then_echo  # type: ignore[method-assign]
        await p.deliver("ADDED", api.create(deployment()))
        await p.deliver("MODIFIED", api.get("web", "shop"))  # and once more, after it settled
    assert len(api.writes()) == 1
    total = p.reconciler.metrics.registry.get_sample_value(
        "podgrace_reconcile_total", {"controller": "deployment", "result": "success"}
    )
    assert total == 1  # the first event only: both echoes were recognised without planning again


@pytest.mark.parametrize(
    ("caps", "expected"),
    [
        (
            capabilities.Capabilities(native_sleep=False, stop_signal=False),
            "nginx: stop after 5s with SIGQUIT via preStop, php-fpm: stop after 35s with SIGQUIT via preStop",
        ),
        (
            capabilities.Capabilities(native_sleep=True, stop_signal=True),
            "nginx: stop after 5s with SIGQUIT, php-fpm: stop after 35s with SIGQUIT",
        ),
    ],
    ids=["signal-from-the-hook", "stop-signal"],
)
def test_applied_summary_names_where_the_graceful_signal_comes_from(
    caps: capabilities.Capabilities, expected: str
) -> None:
    result = plan(workload_parser.from_object(deployment(), with_ownership=False), profiles.builtin(), caps)
    assert summary(result) == (
        f"podgrace applied ShutdownProfile nginx-php-fpm: {expected}; terminationGracePeriodSeconds 70"
    )


def profile_events(p: Pipeline, flusher: StatusFlusher) -> ProfileEvents:
    async def listed() -> None:
        pass

    return ProfileEvents(p.reconciler, p.index, flusher, listed)


async def test_only_a_new_profile_generation_or_a_deletion_unsettles_its_deployments() -> None:
    api = FakeApi()
    async with pipeline(api) as p:
        events = profile_events(p, StatusFlusher(p.reconciler, p.index, p.queue.wait_idle))
        registry = p.reconciler.metrics.registry

        def reconciles() -> float | None:
            labels = {"controller": "deployment", "result": "success"}
            return registry.get_sample_value("podgrace_reconcile_total", labels)

        await p.deliver("ADDED", api.create(deployment()))
        await p.deliver("MODIFIED", api.get("web", "shop"))
        assert reconciles() == 1  # settled
        body = next(b for b in builtin_bodies() if b["metadata"]["name"] == "nginx-php-fpm")
        await events.on_event("MODIFIED", body)  # the generation the store has: e.g. a status update
        await p.deliver("MODIFIED", api.get("web", "shop"))
        assert reconciles() == 1
        body["metadata"]["generation"] = 2
        await events.on_event("MODIFIED", body)
        assert reconciles() == 2  # its users, reconciled by the fan-out
        assert api.statuses["nginx-php-fpm"]["workloads"] == 1
        await p.deliver("MODIFIED", api.get("web", "shop"))
        assert reconciles() == 3  # settled under the former generation: planned again
        await p.deliver("MODIFIED", api.get("web", "shop"))
        assert reconciles() == 3
        await events.on_event("DELETED", body)
        assert p.reconciler.store.entry("nginx-php-fpm") is None
        assert reconciles() == 4  # its users, told by the fan-out (UnknownProfile)
        await p.deliver("MODIFIED", api.get("web", "shop"))
        assert reconciles() == 5


async def test_statuses_are_recounted_when_users_change_and_retried_when_the_write_fails() -> None:
    api = FakeApi()
    clock = Clock()
    async with pipeline(api) as p:
        flusher = StatusFlusher(p.reconciler, p.index, p.queue.wait_idle, clock=clock)
        body = next(b for b in builtin_bodies() if b["metadata"]["name"] == "nginx-php-fpm")
        flusher.track(body)
        await p.deliver("ADDED", api.create(deployment("a")))
        await p.deliver("ADDED", api.create(deployment("b")))
        api.fail_next_status = ApiError(403, "Forbidden", "RBAC")
        await flusher.flush()
        assert "nginx-php-fpm" not in api.statuses
        clock.now += 1.0  # the first retry's backoff (status_flusher's own test has the steps)
        await flusher.flush()  # marked again after the failure
        assert api.statuses["nginx-php-fpm"]["workloads"] == 2
        api.statuses.clear()
        await flusher.flush()  # nothing changed since
        assert api.statuses == {}
        await p.deliver("DELETED", api.get("web", "a"))
        await flusher.flush()
        assert api.statuses["nginx-php-fpm"]["workloads"] == 1


@pytest.mark.parametrize(
    "error",
    [
        ApiError(422, "Invalid", 'Deployment.apps "shop" is invalid: spec.template: Forbidden'),
        ApiError(503, "ServiceUnavailable", "the server is currently unable to handle the request"),
        ApiError(409, "Conflict", 'conflict with "argocd-controller": .spec.template.spec.containers'),
    ],
    ids=lambda e: str(e.status),
)
async def test_every_failed_apply_is_logged_with_its_object_and_cause(
    error: ApiError, caplog: pytest.LogCaptureFixture
) -> None:
    api = FakeApi()
    reconciler = make(api, version=(1, 29))
    api.fail_next = [error] * 4  # (a 409 is planned again at once three times: the fourth is logged)
    outcome = await reconciler.reconcile_workload(api.create(deployment()))
    assert outcome.result in (Result.FAILED, Result.REQUEUE)
    logged = [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")]
    assert any("web/shop" in r.getMessage() and error.message in r.getMessage() for r in logged), caplog.text


async def test_a_replace_that_drops_every_podgrace_field_is_taken_back_once_with_one_warning_per_field() -> (
    None
):
    """`kubectl replace` of the user's manifest on a cluster with ContainerStopSignals: lifecycle.stopSignal
    and os.name are taken back like the grace period and the hooks; nothing is written again, and the
    metric counts exactly the fields the Warnings name."""
    api = FakeApi()
    reconciler = make(api)
    await reconciler.reconcile_workload(api.create(deployment(), manager="kubectl-create"))
    spec = pod_spec(api.get("web", "shop"))
    assert spec["os"] == {"name": "linux"}
    assert [c["lifecycle"]["stopSignal"] for c in spec["containers"]] == ["SIGQUIT", "SIGQUIT"]
    drop = {"spec": {"template": {"spec": {
        "os": None, "terminationGracePeriodSeconds": 30,
        "containers": [{"name": "nginx", "lifecycle": None}, {"name": "php-fpm", "lifecycle": None}],
    }}}}  # fmt: skip
    # an Update, as a replace is
    await api.patch_workload_as(Key("Deployment", "web", "shop"), drop, "kubectl-replace")
    writes = len(api.writes())
    for _ in range(3):
        outcome = await reconciler.reconcile_workload(api.get("web", "shop"))
        assert outcome.result is Result.UNCHANGED
    assert len(api.writes()) == writes  # backed off from every field: nothing written
    warnings = [e["message"] for e in api.events if e["reason"] == "OwnerReclaimed"]
    assert all("kubectl-replace" in m for m in warnings), warnings
    fields = ("os.name", "lifecycle.stopSignal", "terminationGracePeriodSeconds", "preStop")
    named = [next(f for f in fields if f in m) for m in warnings]
    assert sorted(named) == sorted(
        ["os.name", "terminationGracePeriodSeconds", *["lifecycle.stopSignal"] * 2, *["preStop"] * 2]
    )
    registry = reconciler.metrics.registry
    counted = {
        label: registry.get_sample_value("podgrace_field_reclaimed_total", {"field": label})
        for label in ("os.name", "stopSignal", "terminationGracePeriodSeconds", "preStop")
    }
    assert counted == {"os.name": 1, "stopSignal": 2, "terminationGracePeriodSeconds": 1, "preStop": 2}


async def test_a_write_is_planned_on_a_fresh_read_not_on_an_older_event_body() -> None:
    """podgrace's patch names the resourceVersion it was planned on: planned on a watch event's body that the
    rollout's status updates have since overtaken, it would be refused (409) and retried."""
    api = FakeApi()
    reconciler = make(api)
    stale = api.create(deployment())
    live = api.workloads[Key("Deployment", "web", "shop")]
    live["status"] = {"observedGeneration": 1}  # the deployment controller wrote meanwhile
    live["metadata"]["resourceVersion"] = "2"
    outcome = await reconciler.reconcile_workload(stale)
    assert outcome.result is Result.APPLIED
    assert [w[2]["metadata"]["resourceVersion"] for w in api.writes()] == ["2"]


@pytest.mark.parametrize("background", [0, 2])
async def test_a_plan_notice_is_one_normal_event_over_resyncs_and_restarts(background: int) -> None:
    """SoleRuleApplied: a Deployment naming the one-rule `apache` profile for an image no rule knows. The
    notice is a Normal Event posted once: not again on a resync, nor by a restarted process (found by name
    with one read), also when the recorder's other Normal Events go through the background lane."""
    api = FakeApi()
    live = api.create(deployment(
        annotations={"podgrace.dev/profile": "apache"}, containers=[{"name": "app", "image": "acme/shop:1.4"}]
    ))  # fmt: skip
    first = make(api)
    first.events = EventRecorder(api, first.metrics, background=background)
    assert (await first.reconcile_workload(live)).result is Result.APPLIED
    assert (await first.reconcile_workload(api.get("web", "shop"))).result is Result.UNCHANGED  # resync
    await first.events.close()
    assert sorted(reasons(api)) == ["Applied", "SoleRuleApplied"]
    [notice] = [e for e in api.events if e["reason"] == "SoleRuleApplied"]
    assert notice["type"] == "Normal"
    assert notice["message"].startswith("container app: image 'acme/shop:1.4' matches no rule")
    writes = len(api.writes())
    restarted = make(api)
    assert (await restarted.reconcile_workload(api.get("web", "shop"))).result is Result.UNCHANGED
    assert sorted(reasons(api)) == ["Applied", "SoleRuleApplied"]
    assert len(api.writes()) == writes


async def test_a_notice_is_posted_in_audit_mode_too() -> None:
    api = FakeApi()
    annotations = {"podgrace.dev/profile": "apache", "podgrace.dev/mode": "audit"}
    live = api.create(deployment(annotations=annotations, containers=[{"name": "app", "image": "acme/shop"}]))
    assert (await make(api).reconcile_workload(live)).result is Result.UNCHANGED
    assert reasons(api) == ["SoleRuleApplied"]
    assert api.writes() == []
