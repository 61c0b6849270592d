"""StatefulSets and DaemonSets go through the same pipeline as Deployments (informer event -> work queue ->
reconciler), keyed by their kind: one write with the planner's settings, none on a restart, an exact
revert, Events on the object itself, metrics by kind, a profile's fan-out reaching every kind."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from fake_api import FakeApi
from test_reconciler import builtin_bodies, deployment, make, pipeline, pod_spec, profile_events

from podgrace.controller.reconciler import Result
from podgrace.controller.status_flusher import StatusFlusher
from podgrace.controller.workload_key import (
    DAEMONSET,
    STATEFULSET,
    Key,
    collection_path,
    key_of,
    kind_named,
    object_path,
)
from podgrace.core import capabilities, profiles, workload_parser
from podgrace.core.apply_body import merge_into_manifest
from podgrace.core.planner import plan

KINDS = ["StatefulSet", "DaemonSet"]


def workload(kind: str, name: str = "shop", annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """A workload of `kind` as a user writes it: the Deployment's pod template, the kind's own spec."""
    obj = deployment(name, annotations)
    obj["kind"] = kind
    spec = obj["spec"]
    if kind == "DaemonSet":
        del spec["replicas"]  # a DaemonSet has none
        spec["updateStrategy"] = {"type": "RollingUpdate"}
    elif kind == "StatefulSet":
        spec["serviceName"] = name
        spec["updateStrategy"] = {"type": "OnDelete"}
    return obj


def managed(kind_label: str) -> dict[str, str]:
    return {"profile": "nginx-php-fpm", "kind": kind_label}


async def deliver_with_echo(p: Any, api: FakeApi, event_type: str, obj: dict[str, Any]) -> None:
    """An informer event, then the watch's echo of the object as it is after the reconcile."""
    await p.deliver(event_type, obj)
    await p.deliver("MODIFIED", api.get("web", "shop", obj["kind"]))


def involved(api: FakeApi) -> set[tuple[str, str, str]]:
    return {(e["involvedObject"]["kind"], e["involvedObject"]["name"], e["reason"]) for e in api.events}


@pytest.mark.parametrize("kind", KINDS)
async def test_opt_in_writes_once_what_render_writes_and_a_restart_writes_nothing(kind: str) -> None:
    api = FakeApi()
    original = workload(kind)
    async with pipeline(api) as p:
        await deliver_with_echo(p, api, "ADDED", api.create(original))
    writes = api.writes()
    assert len(writes) == 1
    assert api.written_kinds == [kind] and not writes[0][3]  # to the kind's resource, not forced
    # The same settings `podgrace render` merges into the manifest, for the same API server.
    caps = capabilities.from_description((1, 35), {"ContainerStopSignals": True})  # FakeApi keeps the field
    rendered = merge_into_manifest(
        original, plan(workload_parser.from_object(original, with_ownership=False), profiles.builtin(), caps)
    )
    live = api.get("web", "shop", kind)
    assert pod_spec(live) == pod_spec(rendered)
    assert {k: v for k, v in live["spec"].items() if k != "template"} == {
        k: v for k, v in original["spec"].items() if k != "template"
    }  # replicas, updateStrategy, serviceName: untouched
    assert involved(api) == {(kind, "shop", "Applied")}  # on the object itself, not on a Deployment
    registry = p.reconciler.metrics.registry
    label = kind.lower()
    assert registry.get_sample_value("podgrace_managed_workloads", managed(label)) == 1
    assert not registry.get_sample_value("podgrace_managed_workloads", managed("deployment"))
    success = {"controller": label, "result": "success"}
    assert registry.get_sample_value("podgrace_reconcile_total", success) == 1  # the echo was not planned
    # A restart: a new process, nothing remembered, the same object: no write, no new Event.
    restarted = make(api)
    assert (await restarted.reconcile_workload(api.get("web", "shop", kind))).result is Result.UNCHANGED
    assert len(api.writes()) == 1
    assert len(api.events) == 1


@pytest.mark.parametrize("kind", KINDS)
async def test_opt_out_reverts_the_whole_spec_exactly(kind: str) -> None:
    api = FakeApi()
    created = api.create(workload(kind))
    async with pipeline(api) as p:
        await deliver_with_echo(p, api, "ADDED", created)
        opted_out = api.get("web", "shop", kind)
        assert opted_out["spec"] != created["spec"]
        opted_out["metadata"]["annotations"] = {}
        api.workloads[Key(kind, "web", "shop")] = copy.deepcopy(opted_out)
        await deliver_with_echo(p, api, "MODIFIED", opted_out)  # the revert's echo: nothing more
        assert api.get("web", "shop", kind)["spec"] == created["spec"]
        registry = p.reconciler.metrics.registry
        assert registry.get_sample_value("podgrace_managed_workloads", managed(kind.lower())) == 0
    assert len(api.writes()) == 2
    assert involved(api) == {(kind, "shop", "Applied"), (kind, "shop", "Reverted")}


async def test_workloads_of_different_kinds_with_one_name_are_separate_and_all_reached_by_a_profile() -> None:
    api = FakeApi()
    async with pipeline(api) as p:
        for kind in ("Deployment", *KINDS):
            await p.deliver("ADDED", api.create(workload(kind)))
        assert len(api.writes()) == 3  # one each: the same namespace/name under three kinds
        users = p.index.users_of("nginx-php-fpm")
        assert users == sorted(Key(kind, "web", "shop") for kind in ("Deployment", *KINDS))
        # A new generation of the profile re-reconciles every user, whatever its kind.
        events = profile_events(p, StatusFlusher(p.reconciler, p.index, p.queue.wait_idle))
        body = next(b for b in builtin_bodies() if b["metadata"]["name"] == "nginx-php-fpm")
        body["spec"]["containers"][0]["preStopSleepSeconds"] = 9
        body["metadata"]["generation"] = 2
        await events.on_event("MODIFIED", body)
    assert sorted(api.written_kinds[3:]) == ["DaemonSet", "Deployment", "StatefulSet"]
    for kind in ("Deployment", *KINDS):
        nginx = pod_spec(api.get("web", "shop", kind))["containers"][0]
        assert nginx["lifecycle"]["preStop"] == {"sleep": {"seconds": 9}}


@pytest.mark.parametrize("kind", KINDS)
async def test_deleting_one_kind_forgets_only_that_workload(kind: str) -> None:
    api = FakeApi()
    async with pipeline(api) as p:
        await p.deliver("ADDED", api.create(workload("Deployment")))
        await p.deliver("ADDED", api.create(workload(kind)))
        gone = api.workloads.pop(Key(kind, "web", "shop"))
        await p.deliver("DELETED", gone)
        assert p.index.users_of("nginx-php-fpm") == [Key("Deployment", "web", "shop")]
        registry = p.reconciler.metrics.registry
        assert registry.get_sample_value("podgrace_managed_workloads", managed(kind.lower())) == 0
        assert registry.get_sample_value("podgrace_managed_workloads", managed("deployment")) == 1


@pytest.mark.parametrize(
    ("body", "key", "path"),
    [
        ({"kind": "Deployment", "metadata": {"namespace": "a", "name": "b"}}, Key("Deployment", "a", "b"),
         "/apis/apps/v1/namespaces/a/deployments/b"),
        ({"kind": "StatefulSet", "metadata": {"namespace": "a", "name": "b"}}, Key("StatefulSet", "a", "b"),
         "/apis/apps/v1/namespaces/a/statefulsets/b"),
        ({"kind": "DaemonSet", "metadata": {"namespace": "a", "name": "b"}}, Key("DaemonSet", "a", "b"),
         "/apis/apps/v1/namespaces/a/daemonsets/b"),
    ],
)  # fmt: skip
def test_a_key_names_the_kind_and_its_resource(body: dict[str, Any], key: Key, path: str) -> None:
    assert key_of(body) == key
    assert object_path(key) == path
    assert str(key) == f"{key.kind} a/b"  # what the logs say
    assert kind_named(key.kind).label == key.kind.lower()  # the bounded metric label


def test_a_kind_podgrace_does_not_reconcile_has_no_resource() -> None:
    with pytest.raises(KeyError):
        kind_named("CronJob")
    assert collection_path(STATEFULSET) == "/apis/apps/v1/statefulsets"
    assert collection_path(DAEMONSET, "shop") == "/apis/apps/v1/namespaces/shop/daemonsets"


@pytest.mark.parametrize("kind", KINDS)
async def test_a_replaced_hook_comes_back_to_its_manager_on_opt_out(kind: str) -> None:
    """After the merge of the patch-based writes with the kind-generic controller: the replacing write, the
    restore under the hook's manager and the release all go to the kind's own object."""
    api = FakeApi()
    user_hook = {"exec": {"command": ["/bin/sh", "-c", "sleep 3; nginx -s quit"]}}
    doc = workload(kind, annotations={"podgrace.dev/profile": "nginx-php-fpm",
                                      "podgrace.dev/existing-prestop": "replace"})  # fmt: skip
    doc["spec"]["template"]["spec"]["containers"][0]["lifecycle"] = {"preStop": user_hook}
    reconciler = make(api)
    outcome = await reconciler.reconcile_workload(api.create(doc, manager="kubectl-create"))
    assert outcome.result is Result.APPLIED
    taken = api.get("web", "shop", kind)
    assert pod_spec(taken)["containers"][0]["lifecycle"]["preStop"] != user_hook
    assert "podgrace.dev/replaced-prestop" in taken["metadata"]["annotations"]
    opted_out = copy.deepcopy(taken)
    opted_out["metadata"]["annotations"] = {
        k: v for k, v in taken["metadata"]["annotations"].items() if k != "podgrace.dev/profile"
    }
    api.workloads[Key(kind, "web", "shop")] = copy.deepcopy(opted_out)
    outcome = await reconciler.reconcile_workload(opted_out)
    assert outcome.result is Result.REVERTED
    after = api.get("web", "shop", kind)
    assert pod_spec(after)["containers"][0]["lifecycle"] == {"preStop": user_hook}
    assert "podgrace.dev/replaced-prestop" not in after["metadata"]["annotations"]
    assert [e["manager"] for e in after["metadata"]["managedFields"] if e["manager"] == "podgrace"] == []
    assert set(api.written_kinds) == {kind} and len(api.written_kinds) == 3  # replace, restore, release
