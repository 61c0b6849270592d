"""StatefulSets and DaemonSets on the real control plane: the same opt-in, restart and opt-out as
Deployments, by the operator running with the chart's RBAC.

Write counts come from the API server's audit log. The settings are compared with `podgrace render` of
the same object; the revert with the whole spec as it was before the opt-in. The tests share one operator
process and run in file order.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.support.accepted_writes import accepted_writes
from tests.support.podgrace_env import (
    OPERATOR_USER,
    OperatorProcess,
    deployment,
    nginx_profile,
    running_operator,
    wait_until,
)

APP_NS = "kinds-e2e"
ROOT = Path(__file__).resolve().parents[2]
PROFILE = {"podgrace.dev/profile": "nginx-php-fpm"}
KINDS = {"StatefulSet": "statefulsets", "DaemonSet": "daemonsets"}


@pytest.fixture(scope="module")
def operator(cluster: Any) -> Iterator[OperatorProcess]:
    cluster.kubectl("create", "namespace", APP_NS)
    with running_operator(cluster) as op:
        yield op


def workload(kind: str, name: str, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """A `kind` with the e2e Deployment's pod template (nginx + php-fpm) and the kind's own spec."""
    obj = deployment(name, APP_NS, annotations)
    obj["kind"] = kind
    spec = obj["spec"]
    if kind == "DaemonSet":
        del spec["replicas"]
    else:
        spec["serviceName"] = name
        spec["updateStrategy"] = {"type": "OnDelete"}  # new settings reach pods only when recreated
    return obj


def name_of(kind: str) -> str:
    return f"web-{kind.lower()}"


def get(cluster: Any, kind: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = cluster.kubectl_json(
        "get", kind.lower(), name, "-n", APP_NS, "--show-managed-fields"
    )
    return obj


def injected(cluster: Any, kind: str, name: str) -> dict[str, Any] | None:
    obj = get(cluster, kind, name)
    lifecycle = obj["spec"]["template"]["spec"]["containers"][0].get("lifecycle") or {}
    return obj if "preStop" in lifecycle else None


# podgrace's writes are counted in this file's namespace only: the operator watches every namespace of the
# shared cluster, and other files' opted-in workloads change (and are rightly written) meanwhile.


def podgrace_writes(cluster: Any, since: float, resource: str | None = None) -> list[Any]:
    return list(cluster.write_events(user=OPERATOR_USER, since=since, resource=resource, namespace=APP_NS))


def workload_writes(cluster: Any, since: float) -> list[tuple[str, str, str]]:
    """podgrace's writes to workloads of any kind that went through (not its Events or profile statuses)."""
    return [(w.verb, w.resource, w.name) for w in accepted_writes(cluster, since, namespace=APP_NS)]


def profile_users(cluster: Any, profile: str, resources: str = "deployments,statefulsets,daemonsets") -> int:
    """The workloads (of every kind, or of `resources`) in the cluster that name `profile`: the live count
    the gauges must equal (other e2e files leave opted-in workloads of their own in the shared cluster)."""
    items = cluster.kubectl_json("get", resources, "-A")["items"]
    named = [(o["metadata"].get("annotations") or {}).get("podgrace.dev/profile") for o in items]
    return named.count(profile)


def reasons_on(cluster: Any, kind: str, name: str) -> list[str]:
    selector = f"involvedObject.kind={kind},involvedObject.name={name}"
    items = cluster.kubectl_json("get", "events", "-n", APP_NS, "--field-selector", selector)["items"]
    return [e["reason"] for e in items]


def rendered(cluster: Any, obj: dict[str, Any]) -> dict[str, Any]:
    """`podgrace render` of `obj` for this API server (ContainerStopSignals off, as the e2e cluster)."""
    version = cluster.kubectl_json("version")["serverVersion"]
    minor = "".join(ch for ch in version["minor"] if ch.isdigit())
    result = subprocess.run(
        [sys.executable, "-m", "podgrace.cli.main", "render", "-f", "-",
         "--server-version", f"{version['major']}.{minor}", "--feature-gates", "ContainerStopSignals=false"],
        input=json.dumps(obj), capture_output=True, text=True, timeout=60, check=True,
        env={**os.environ, "PYTHONPATH": f"{ROOT / 'operator'}:{ROOT}"},
    )  # fmt: skip
    out: dict[str, Any] = yaml.safe_load(result.stdout)
    return out


def podgrace_fields(pod: dict[str, Any]) -> dict[str, Any]:
    """What podgrace sets in a pod spec (the API server adds defaults elsewhere)."""
    return {
        "terminationGracePeriodSeconds": pod.get("terminationGracePeriodSeconds"),
        "os": pod.get("os"),
        "lifecycle": {c["name"]: c.get("lifecycle") for c in pod["containers"]},
    }


# 1 -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(KINDS))
def test_opt_in_writes_once_what_render_writes_with_events_and_metrics_of_its_kind(
    cluster: Any, operator: OperatorProcess, kind: str
) -> None:
    name = name_of(kind)
    manifest = workload(kind, name)
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    time.sleep(2)  # the not-opted-in object is seen (and left alone) first
    t0 = time.time()
    cluster.kubectl("annotate", kind.lower(), name, "-n", APP_NS, "podgrace.dev/profile=nginx-php-fpm")
    live = wait_until(f"{kind} injected", lambda: injected(cluster, kind, name), timeout=60)
    time.sleep(3)  # the echo of the write, the controller-manager's status updates: no more writes
    assert workload_writes(cluster, t0) == [("patch", KINDS[kind], name)]
    expected = rendered(cluster, {**manifest, "metadata": {**manifest["metadata"], "annotations": PROFILE}})
    assert expected["kind"] == kind
    assert podgrace_fields(live["spec"]["template"]["spec"]) == podgrace_fields(
        expected["spec"]["template"]["spec"]
    )
    assert podgrace_fields(live["spec"]["template"]["spec"])["terminationGracePeriodSeconds"] == 70
    wait_until(f"Applied Event on the {kind}", lambda: "Applied" in reasons_on(cluster, kind, name))
    # The profile's WORKLOADS count includes it (every kind counts).
    wait_until(
        "nginx-php-fpm's status to count every workload naming it",
        lambda: (
            (cluster.kubectl_json("get", "shutdownprofile", "nginx-php-fpm").get("status") or {}).get(
                "workloads"
            )
            == profile_users(cluster, "nginx-php-fpm")
        ),
    )
    label = kind.lower()
    managed = operator.metric("podgrace_managed_workloads", profile="nginx-php-fpm", kind=label)
    assert managed == profile_users(cluster, "nginx-php-fpm", KINDS[kind]) >= 1
    assert operator.metric("podgrace_reconcile_total", controller=label, result="success") >= 1
    assert operator.metric("podgrace_reconcile_total", controller=label, result="error") == 0


# 2 -----------------------------------------------------------------------------------------------------


def test_restart_makes_zero_writes(cluster: Any, operator: OperatorProcess) -> None:
    counts = {kind: len(cluster.kubectl_json("get", plural, "-A")["items"]) for kind, plural in KINDS.items()}
    t0 = time.time()
    operator.restart()
    for kind, count in counts.items():
        wait_until(
            f"podgrace to reconcile every {kind}",
            lambda k=kind, c=count: operator.metric("podgrace_reconcile_total", controller=k.lower()) >= c,
            timeout=60,
        )
    time.sleep(3)
    assert podgrace_writes(cluster, t0) == []
    for kind in KINDS:
        managed = operator.metric("podgrace_managed_workloads", profile="nginx-php-fpm", kind=kind.lower())
        assert managed == profile_users(cluster, "nginx-php-fpm", KINDS[kind]) >= 1


# 3 -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(KINDS))
def test_opt_out_reverts_the_whole_spec_exactly(cluster: Any, operator: OperatorProcess, kind: str) -> None:
    name = f"revert-{kind.lower()}"
    cluster.kubectl("apply", "-f", "-", input=json.dumps(workload(kind, name)))
    before = copy.deepcopy(get(cluster, kind, name)["spec"])  # with the API server's defaults
    cluster.kubectl("annotate", kind.lower(), name, "-n", APP_NS, "podgrace.dev/profile=nginx-php-fpm")
    applied = wait_until(f"{kind} injected", lambda: injected(cluster, kind, name), timeout=60)
    generation = applied["metadata"]["generation"]
    t0 = time.time()
    cluster.kubectl("annotate", kind.lower(), name, "-n", APP_NS, "podgrace.dev/profile-")
    wait_until(f"{kind} reverted", lambda: not injected(cluster, kind, name), timeout=60)
    time.sleep(3)
    after = get(cluster, kind, name)
    assert after["spec"] == before
    assert not [m for m in after["metadata"]["managedFields"] if m["manager"] == "podgrace"]
    # The revert, then the release of the grace period the API server defaulted again to 30 s (an Update is
    # recorded as owning what the server defaulted in it) by a write of managedFields alone: no rollout.
    assert workload_writes(cluster, t0) == [("patch", KINDS[kind], name)] * 2
    assert after["metadata"]["generation"] == generation + 1
    wait_until(f"Reverted Event on the {kind}", lambda: "Reverted" in reasons_on(cluster, kind, name))
    managed = operator.metric("podgrace_managed_workloads", profile="nginx-php-fpm", kind=kind.lower())
    assert managed == profile_users(cluster, "nginx-php-fpm", KINDS[kind])  # the reverted one not counted


# 4 -----------------------------------------------------------------------------------------------------


def server_side_apply(cluster: Any, obj: dict[str, Any], manager: str) -> None:
    """A GitOps tool's apply (Argo CD, Flux): server-side, forced; raises on an error."""
    cluster.kubectl(
        "apply", "--server-side", "--force-conflicts", f"--field-manager={manager}", "-f", "-",
        input=json.dumps(obj),
    )  # fmt: skip


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_gitops_reapply_does_not_fight_podgrace(cluster: Any, operator: OperatorProcess, kind: str) -> None:
    name = f"gitops-{kind.lower()}"
    manifest = workload(kind, name, PROFILE)
    server_side_apply(cluster, manifest, "argocd-controller")
    wait_until(f"{kind} injected", lambda: injected(cluster, kind, name), timeout=60)
    time.sleep(2)
    generation = get(cluster, kind, name)["metadata"]["generation"]
    t0 = time.time()
    for _ in range(3):
        server_side_apply(cluster, manifest, "argocd-controller")
        time.sleep(1)
    time.sleep(3)
    after = get(cluster, kind, name)
    assert injected(cluster, kind, name)
    assert after["metadata"]["generation"] == generation  # no rollout from either side
    assert workload_writes(cluster, t0) == []


@pytest.mark.parametrize("kind", list(KINDS))
def test_an_owner_forcing_its_grace_period_back_wins_and_podgrace_backs_off(
    cluster: Any, operator: OperatorProcess, kind: str
) -> None:
    name = f"forced-{kind.lower()}"
    cluster.kubectl("apply", "-f", "-", input=json.dumps(workload(kind, name, PROFILE)))
    live = wait_until(f"{kind} injected", lambda: injected(cluster, kind, name), timeout=60)
    assert live["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 70
    # The owner's manifest, now with its own grace period, re-applied by a GitOps tool with force (the
    # first such apply also takes over kubectl's client-side-applied fields, as kubectl migrates them).
    owner = workload(kind, name, PROFILE)
    owner["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 45
    t0 = time.time()
    server_side_apply(cluster, owner, "flux")  # takes the field from podgrace by force
    # Posted by the reconcile that saw the take, after its write (if any).
    wait_until(
        f"OwnerReclaimed Warning on the {kind}", lambda: "OwnerReclaimed" in reasons_on(cluster, kind, name)
    )
    time.sleep(3)
    first = workload_writes(cluster, t0)
    assert len(first) <= 1  # at most once: its hooks fitted into the owner's 45 s
    t1 = time.time()
    for _ in range(3):  # the owner keeps re-asserting: podgrace does not answer
        server_side_apply(cluster, owner, "flux")
        time.sleep(1)
    time.sleep(3)
    assert workload_writes(cluster, t1) == []
    spec = get(cluster, kind, name)["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] == 45
    for container in spec["containers"]:
        assert "preStop" in (container.get("lifecycle") or {})  # podgrace's hooks stay


# 5 -----------------------------------------------------------------------------------------------------


def test_a_profile_change_reaches_its_users_of_every_kind_and_only_them(
    cluster: Any, operator: OperatorProcess
) -> None:
    cluster.kubectl("apply", "-f", "-", input=json.dumps(nginx_profile("kinds-nginx", 4)))
    users = {"Deployment": "fan-deploy", "StatefulSet": "fan-sts", "DaemonSet": "fan-ds"}
    for kind, name in users.items():
        obj = (
            workload(kind, name, {"podgrace.dev/profile": "kinds-nginx"})
            if kind in KINDS
            else deployment(name, APP_NS, {"podgrace.dev/profile": "kinds-nginx"})
        )
        cluster.kubectl("apply", "-f", "-", input=json.dumps(obj))
    for kind, name in users.items():
        wait_until(f"{kind} {name} injected", lambda k=kind, n=name: injected(cluster, k, n), timeout=60)
    wait_until(
        "kinds-nginx's status to count its 3 workloads",
        lambda: (
            (cluster.kubectl_json("get", "shutdownprofile", "kinds-nginx").get("status") or {}).get(
                "workloads"
            )
            == 3
        ),
    )
    time.sleep(2)
    t0 = time.time()
    cluster.kubectl("apply", "-f", "-", input=json.dumps(nginx_profile("kinds-nginx", 6)))

    def updated(kind: str, name: str) -> bool:
        hook = get(cluster, kind, name)["spec"]["template"]["spec"]["containers"][0]["lifecycle"]["preStop"]
        return "sleep 6" in " ".join(hook["exec"]["command"])

    wait_until("every user updated", lambda: all(updated(k, n) for k, n in users.items()), timeout=60)
    time.sleep(3)
    plural = {"Deployment": "deployments", **KINDS}
    assert sorted(workload_writes(cluster, t0)) == sorted(("patch", plural[k], n) for k, n in users.items())


# 6 -----------------------------------------------------------------------------------------------------


def hook_managers(obj: dict[str, Any], container: str) -> list[str]:
    """The field managers that own `container`'s lifecycle.preStop."""
    key = f'k:{{"name":"{container}"}}'
    owners = []
    for entry in obj["metadata"].get("managedFields") or []:
        spec = ((entry.get("fieldsV1") or {}).get("f:spec") or {}).get("f:template") or {}
        lifecycle = ((spec.get("f:spec") or {}).get("f:containers") or {}).get(key, {}).get("f:lifecycle", {})
        if "f:preStop" in lifecycle:
            owners.append(entry["manager"])
    return sorted(owners)


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_replaced_user_hook_comes_back_to_its_manager_on_opt_out(
    cluster: Any, operator: OperatorProcess, kind: str
) -> None:
    """`kubectl create` (an Update owner, as Helm 3) with the user's own nginx hook and `existing-prestop:
    replace`: podgrace takes the hook once, records it, and the opt-out gives it back, under its manager,
    with the rest of the spec exactly as before."""
    name = f"replace-{kind.lower()}"
    user_hook = {"exec": {"command": ["/bin/sh", "-c", "sleep 3; nginx -s quit"]}}
    doc = workload(kind, name, {**PROFILE, "podgrace.dev/existing-prestop": "replace"})
    doc["spec"]["template"]["spec"]["containers"][0]["lifecycle"] = {"preStop": user_hook}
    cluster.kubectl("create", "-f", "-", input=json.dumps(doc))

    def replaced() -> dict[str, Any] | None:
        obj = get(cluster, kind, name)
        hook = obj["spec"]["template"]["spec"]["containers"][0]["lifecycle"]["preStop"]
        return obj if hook != user_hook else None

    taken = wait_until(f"the {kind}'s hook replaced", replaced, timeout=60)
    assert "podgrace.dev/replaced-prestop" in taken["metadata"]["annotations"]
    t0 = time.time()
    cluster.kubectl("annotate", kind.lower(), name, "-n", APP_NS, "podgrace.dev/profile-")
    wait_until(f"the {kind}'s hook back", lambda: not replaced(), timeout=60)
    time.sleep(3)
    after = get(cluster, kind, name)
    assert after["spec"]["template"]["spec"]["containers"][0]["lifecycle"] == {"preStop": user_hook}
    assert hook_managers(after, "nginx") == ["kubectl-create"]
    assert "podgrace.dev/replaced-prestop" not in after["metadata"]["annotations"]
    assert not [m for m in after["metadata"]["managedFields"] if m["manager"] == "podgrace"]
    # The restore (a patch under kubectl-create's name, by podgrace's token), the revert, and the release
    # of the grace period the API server defaulted again (managedFields alone).
    assert workload_writes(cluster, t0) == [("patch", KINDS[kind], name)] * 3
    assert after["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 30  # the default, as created
    assert {k: v for k, v in after["spec"].items() if k != "template"} == {
        k: v for k, v in taken["spec"].items() if k != "template"
    }
