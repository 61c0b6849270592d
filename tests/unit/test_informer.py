"""The workload informers (operator/podgrace/controller/informer.py) against a scripted API: list in
pages, watch from the list's resourceVersion, resume, relist on 410 Gone, retry on errors, never stop; one
informer per kind, each stamping its kind on what it delivers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest

from podgrace.controller.informer import Informers, WorkloadInformer, scope_paths
from podgrace.controller.kube_api import ApiError
from podgrace.controller.workload_key import DAEMONSET, DEPLOYMENT, KINDS, STATEFULSET, Kind

ALL = "/apis/apps/v1/deployments"


def dep(namespace: str, name: str, rv: str, uid: str = "") -> dict[str, Any]:
    return {"metadata": {"namespace": namespace, "name": name, "resourceVersion": rv, "uid": uid or name}}


def event(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind, "object": obj}


class ScriptedSource:
    """Lists and watches answered from scripts; a watch with nothing scripted blocks until cancelled."""

    def __init__(self, lists: list[list[dict[str, Any]]], watches: list[Any]) -> None:
        self.lists = lists  # each entry: the pages of one list (a page: {"items":..., "metadata":...})
        self.watches = watches  # each entry: a list of events, or an exception to raise
        self.list_calls: list[dict[str, str]] = []
        self.watch_calls: list[dict[str, str]] = []
        self._pages: list[dict[str, Any]] = []

    async def list_page(self, path: str, params: Mapping[str, str]) -> dict[str, Any]:
        self.list_calls.append({"path": path, **params})
        if "continue" not in params:
            if not self.lists:
                raise ApiError(503, "ServiceUnavailable", "no list scripted")
            self._pages = list(self.lists.pop(0))
        page = self._pages.pop(0)
        if isinstance(page, Exception):
            raise page
        return page

    async def watch(self, path: str, params: Mapping[str, str]) -> AsyncIterator[dict[str, Any]]:
        self.watch_calls.append({"path": path, **params})
        if not self.watches:
            await asyncio.Event().wait()
        script = self.watches.pop(0)
        if isinstance(script, Exception):
            raise script
        for item in script:
            if isinstance(item, Exception):  # the stream breaks after the events before it
                raise item
            yield item


def page(items: list[dict[str, Any]], rv: str, token: str = "") -> dict[str, Any]:
    metadata: dict[str, Any] = {"resourceVersion": rv}
    if token:
        metadata["continue"] = token
    return {"items": items, "metadata": metadata}


async def run_until(
    source: ScriptedSource,
    done: Any,
    namespaces: list[str] | None = None,
    fail_on: set[str] | None = None,
    kind: Kind = DEPLOYMENT,
) -> tuple[list[tuple[str, str, str]], WorkloadInformer]:
    seen: list[tuple[str, str, str]] = []

    async def on_event(kind: str, obj: Mapping[str, Any]) -> None:
        meta = obj["metadata"]
        seen.append((kind, meta["name"], obj.get("kind", "")))
        if fail_on and meta["name"] in fail_on:
            raise RuntimeError("handler failed")

    informer = WorkloadInformer(source, namespaces or [], on_event, kind=kind, page=2, retry_delays=(0.0,))
    task = asyncio.create_task(informer.run())
    try:
        for _ in range(500):
            if done(seen, source):
                break
            await asyncio.sleep(0.001)
        else:
            raise AssertionError(f"not reached; seen {seen}, watches {source.watch_calls}")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    return seen, informer


async def test_lists_in_pages_then_watches_from_the_lists_version() -> None:
    source = ScriptedSource(
        lists=[
            [
                page([dep("a", "web", "1"), dep("a", "api", "2")], "10", "next"),
                page([dep("b", "x", "3")], "11"),
            ]
        ],
        watches=[],
    )
    seen, informer = await run_until(source, lambda seen, s: s.watch_calls)
    assert seen == [
        ("LISTED", "web", "Deployment"),
        ("LISTED", "api", "Deployment"),
        ("LISTED", "x", "Deployment"),
    ]
    assert informer.listed.is_set()
    assert source.list_calls == [{"path": ALL, "limit": "2"}, {"path": ALL, "limit": "2", "continue": "next"}]
    assert source.watch_calls == [
        {
            "path": ALL,
            "watch": "true",
            "resourceVersion": "11",
            "allowWatchBookmarks": "true",
            "timeoutSeconds": "600",
        }
    ]


async def test_watch_events_are_delivered_and_a_stream_end_resumes_from_the_last_version() -> None:
    source = ScriptedSource(
        lists=[[page([], "5")]],
        watches=[
            [
                event("ADDED", dep("a", "web", "6")),
                event("MODIFIED", dep("a", "web", "7")),
                event("BOOKMARK", {"kind": "Deployment", "metadata": {"resourceVersion": "9"}}),
            ],
            [event("DELETED", dep("a", "web", "10"))],
        ],
    )
    seen, _ = await run_until(source, lambda seen, s: len(s.watch_calls) == 3)
    assert seen == [
        ("ADDED", "web", "Deployment"),
        ("MODIFIED", "web", "Deployment"),
        ("DELETED", "web", "Deployment"),
    ]
    assert [c["resourceVersion"] for c in source.watch_calls] == ["5", "9", "10"]
    assert len(source.list_calls) == 1  # resumed, not relisted


async def test_a_broken_watch_resumes_after_its_last_event_not_from_its_start() -> None:
    """A stream cut mid-way (a proxy, an API server restart): before, the next watch started from the
    broken one's own start version and every event of it was delivered again."""
    source = ScriptedSource(
        lists=[[page([], "5")]],
        watches=[
            [event("ADDED", dep("a", "web", "6")), event("MODIFIED", dep("a", "web", "7")), OSError("cut")],
            [event("MODIFIED", dep("a", "web", "8"))],
        ],
    )
    seen, _ = await run_until(source, lambda seen, s: len(s.watch_calls) == 3)
    # rv 6, 7, then 8: nothing delivered twice
    assert seen == [
        ("ADDED", "web", "Deployment"),
        ("MODIFIED", "web", "Deployment"),
        ("MODIFIED", "web", "Deployment"),
    ]
    assert [c["resourceVersion"] for c in source.watch_calls] == ["5", "7", "8"]
    assert len(source.list_calls) == 1


async def test_410_gone_relists_and_reports_what_vanished_meanwhile() -> None:
    source = ScriptedSource(
        lists=[
            [page([dep("a", "web", "1"), dep("a", "old", "2", uid="u-old")], "5")],
            [page([dep("a", "web", "8")], "20")],
        ],
        watches=[[event("ERROR", {"kind": "Status", "code": 410, "reason": "Expired"})]],
    )
    seen, _ = await run_until(source, lambda seen, s: len(s.watch_calls) == 2)
    assert seen == [
        ("LISTED", "web", "Deployment"),
        ("LISTED", "old", "Deployment"),
        ("LISTED", "web", "Deployment"),
        ("DELETED", "old", "Deployment"),  # a stub with namespace, name and uid
    ]
    assert source.watch_calls[-1]["resourceVersion"] == "20"


async def test_errors_are_retried_and_a_failing_handler_does_not_stop_the_watch() -> None:
    source = ScriptedSource(
        lists=[
            [ApiError(403, "Forbidden", "not yet")],
            [page([dep("a", "bad", "1"), dep("a", "good", "2")], "5")],
        ],
        watches=[
            ApiError(500, "InternalError", "etcd"),
            [event("ERROR", {"kind": "Status", "code": 500, "reason": "InternalError"})],
            [event("MODIFIED", dep("a", "good", "6"))],
        ],
    )
    seen, informer = await run_until(source, lambda seen, s: len(seen) == 3, fail_on={"bad"})
    assert seen == [
        ("LISTED", "bad", "Deployment"),
        ("LISTED", "good", "Deployment"),
        ("MODIFIED", "good", "Deployment"),
    ]
    assert informer.listed.is_set()
    assert informer.failing == set()  # recovered
    # Errors other than 410 resume from the same version: no relist.
    assert [c["resourceVersion"] for c in source.watch_calls[:3]] == ["5", "5", "5"]
    assert len([c for c in source.list_calls if "continue" not in c]) == 2


async def test_namespaced_scopes_are_listed_before_listed_is_set() -> None:
    assert scope_paths(DEPLOYMENT, []) == [ALL]
    assert scope_paths(DEPLOYMENT, ["shop", "blog"]) == [
        "/apis/apps/v1/namespaces/shop/deployments",
        "/apis/apps/v1/namespaces/blog/deployments",
    ]
    source = ScriptedSource(lists=[[page([dep("shop", "web", "1")], "5")]], watches=[])
    # The second namespace's list fails (nothing scripted): the informer is not yet "listed".
    seen, informer = await run_until(
        source, lambda seen, s: len(s.list_calls) >= 3, namespaces=["shop", "blog"]
    )
    assert seen == [("LISTED", "web", "Deployment")]
    assert not informer.listed.is_set()
    assert informer.failing == {"/apis/apps/v1/namespaces/blog/deployments"}


async def test_health_reports_the_informer_and_fails_once_it_has_stopped() -> None:
    source = ScriptedSource(lists=[[page([], "1")]], watches=[])

    async def ignore(kind: str, obj: Mapping[str, Any]) -> None:
        pass

    informer = WorkloadInformer(source, [], ignore, kind=DEPLOYMENT)
    assert informer.health() == {"listed": False, "failing": []}  # not started yet: alive
    informer.start()
    try:
        await informer.listed.wait()
        assert informer.health() == {"listed": True, "failing": []}
    finally:
        await informer.stop()
    with pytest.raises(RuntimeError, match="informer has stopped"):
        informer.health()


async def test_a_watch_refused_with_http_410_relists() -> None:
    source = ScriptedSource(
        lists=[[page([dep("a", "web", "1")], "5")], [page([dep("a", "web", "1")], "30")]],
        watches=[ApiError(410, "Gone", "too old resource version: 5 (25)")],
    )
    seen, _ = await run_until(source, lambda seen, s: len(s.watch_calls) == 2)
    assert [c["resourceVersion"] for c in source.watch_calls] == ["5", "30"]
    assert len(source.list_calls) == 2
    assert seen == [("LISTED", "web", "Deployment")] * 2  # listed twice, nothing vanished


async def test_a_periodic_resync_lists_everything_again_as_resync_events() -> None:
    lists = 0
    watches: list[str] = []

    class Source:
        async def list_page(self, path: str, params: Mapping[str, str]) -> dict[str, Any]:
            nonlocal lists
            lists += 1
            return page([dep("shop", "web", str(lists))], str(lists))

        async def watch(self, path: str, params: Mapping[str, str]) -> AsyncIterator[dict[str, Any]]:
            watches.append(params["timeoutSeconds"])
            await asyncio.sleep(float(params["timeoutSeconds"]) / 10)  # the API server ends it (faster here)
            return
            yield {}

    seen: list[str] = []

    async def on_event(kind: str, obj: Mapping[str, Any]) -> None:
        seen.append(kind)

    informer = WorkloadInformer(Source(), [], on_event, kind=DEPLOYMENT, resync_seconds=0.25)
    task = asyncio.create_task(informer.run())
    try:
        for _ in range(300):
            if seen.count("RESYNC") >= 2:
                break
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert seen[:3] == ["LISTED", "RESYNC", "RESYNC"]
    assert set(watches) == {"1"}  # each watch ends by the next resync (at least 1 s: the API's unit)


async def test_no_resync_by_default() -> None:
    source = ScriptedSource([[page([dep("shop", "web", "1")], "1")]], [[]])
    seen, _ = await run_until(source, lambda seen, s: len(s.watch_calls) >= 2)
    assert [kind for kind, _, _ in seen] == ["LISTED"]
    assert source.watch_calls[-1]["timeoutSeconds"] == "600"


@pytest.mark.parametrize("kind", [STATEFULSET, DAEMONSET], ids=lambda k: k.name)
async def test_each_kind_lists_and_watches_its_own_resource_and_stamps_its_kind(kind: Kind) -> None:
    assert scope_paths(kind, []) == [f"/apis/apps/v1/{kind.plural}"]
    assert scope_paths(kind, ["shop"]) == [f"/apis/apps/v1/namespaces/shop/{kind.plural}"]
    gone = dep("a", "old", "2")
    source = ScriptedSource(
        lists=[[page([dep("a", "web", "1"), gone], "10")], [page([dep("a", "web", "1")], "20")]],
        watches=[
            [
                event("MODIFIED", dep("a", "web", "11")),  # without a kind: the informer's is stamped
                event("ERROR", {"kind": "Status", "code": 410, "reason": "Expired"}),
            ]
        ],
    )
    seen, _ = await run_until(source, lambda seen, s: len(seen) >= 5, kind=kind)
    # Listed, watched, relisted after 410: every delivery carries the informer's kind, also the DELETED
    # stub of the object that vanished between the two lists.
    assert seen == [
        ("LISTED", "web", kind.name),
        ("LISTED", "old", kind.name),
        ("MODIFIED", "web", kind.name),
        ("LISTED", "web", kind.name),
        ("DELETED", "old", kind.name),
    ]
    assert {c["path"] for c in source.list_calls + source.watch_calls} == {f"/apis/apps/v1/{kind.plural}"}


async def test_informers_of_every_kind_are_listed_and_healthy_only_together() -> None:
    class Source:
        """Lists every kind at once but DaemonSets, whose list fails until `ready` is set."""

        def __init__(self) -> None:
            self.ready = False

        async def list_page(self, path: str, params: Mapping[str, str]) -> dict[str, Any]:
            if path.endswith("/daemonsets") and not self.ready:
                raise ApiError(403, "Forbidden", "daemonsets.apps is forbidden")
            return page([], "1")

        async def watch(self, path: str, params: Mapping[str, str]) -> AsyncIterator[dict[str, Any]]:
            await asyncio.Event().wait()
            yield {}

    async def ignore(event_type: str, obj: Mapping[str, Any]) -> None:
        pass

    source = Source()
    informers = Informers(
        [WorkloadInformer(source, [], ignore, kind=kind, retry_delays=(0.01,)) for kind in KINDS]
    )
    informers.start()
    try:
        waiting = asyncio.create_task(informers.wait_listed())
        await asyncio.sleep(0.1)
        assert not waiting.done()  # the DaemonSets are not known yet: profile counts would be partial
        assert informers.health() == {"listed": False, "failing": ["/apis/apps/v1/daemonsets"]}
        source.ready = True
        await asyncio.wait_for(waiting, 5)
        assert informers.health() == {"listed": True, "failing": []}
        informers.informers[1]._task.cancel()  # type: ignore[union-attr]  # one kind's informer ends
        await asyncio.sleep(0.01)
        with pytest.raises(RuntimeError, match="StatefulSet informer has stopped"):
            informers.health()
    finally:
        await informers.stop()
