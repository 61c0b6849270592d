"""Issue 13 on a real control plane (ContainerStopSignals off, native preStop sleep on), with the chart's RBAC
and admission policy: shell-less containers get no exec hook and a Warning saying what podgrace could not do;
a plan's notice (SoleRuleApplied) is one Normal Event, not repeated by a restart or a no-op reconcile.

Write counts come from the API server's audit log. The tests share one operator and run in file order.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from tests.support.accepted_writes import accepted_writes
from tests.support.podgrace_env import (
    OPERATOR_USER,
    OperatorProcess,
    deployment,
    running_operator,
    wait_until,
)

NS = "shellless-e2e"
CHAINGUARD_NGINX = "cgr.dev/chainguard/nginx:latest"  # kwok runs no image: nothing is pulled


@pytest.fixture(scope="module")
def operator(cluster: Any) -> Iterator[OperatorProcess]:
    cluster.kubectl("create", "namespace", NS)
    with running_operator(cluster) as op:
        yield op


def apply(cluster: Any, obj: dict[str, Any], manager: str = "kubectl") -> None:
    cluster.kubectl("apply", "--server-side", f"--field-manager={manager}", "-f", "-", input=json.dumps(obj))


def get(cluster: Any, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = cluster.kubectl_json("get", "deployment", name, "-n", NS, "--show-managed-fields")
    return obj


def containers(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in obj["spec"]["template"]["spec"]["containers"]}


def events(cluster: Any, name: str, reason: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.kubectl_json(
        "get", "events", "-n", NS, "--field-selector", f"involvedObject.name={name},reason={reason}"
    )["items"]
    return items


def deployment_writes(cluster: Any, since: float) -> list[Any]:
    """podgrace's writes to this file's Deployments that went through (409s refused on a stale read are
    left out; other files' opted-in Deployments share the cluster and may be written meanwhile)."""
    return accepted_writes(cluster, since, ("deployments",), namespace=NS)


def applied(cluster: Any, name: str) -> list[dict[str, Any]] | None:
    return events(cluster, name, "Applied") or None


def test_no_exec_hook_in_shellless_containers(cluster: Any, operator: OperatorProcess) -> None:
    """nginx is known shell-less by its image (Chainguard), php-fpm is declared so by the annotation."""
    t0 = time.time()
    apply(
        cluster,
        deployment(
            "shop",
            NS,
            {"podgrace.dev/profile": "nginx-php-fpm", "podgrace.dev/no-shell": "php-fpm"},
            [{"name": "nginx", "image": CHAINGUARD_NGINX}, {"name": "php-fpm", "image": "php:8.3-fpm"}],
        ),
    )
    wait_until("podgrace's Applied Event", lambda: applied(cluster, "shop"), timeout=60)
    obj = get(cluster, "shop")
    lifecycles = {name: c.get("lifecycle") for name, c in containers(obj).items()}
    assert lifecycles == {
        "nginx": {"preStop": {"sleep": {"seconds": 5}}},
        "php-fpm": {"preStop": {"sleep": {"seconds": 35}}},
    }
    assert obj["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 70
    assert [(w.verb, w.name) for w in deployment_writes(cluster, t0)] == [("patch", "shop")]

    def two_warnings() -> list[dict[str, Any]] | None:
        found = events(cluster, "shop", "NoShellForFallback")
        return found if len(found) == 2 else None

    warnings = wait_until("two NoShellForFallback Warnings", two_warnings, timeout=30)
    assert {e["type"] for e in warnings} == {"Warning"}
    assert sorted(e["message"] for e in warnings) == [
        "container nginx: nginx gets SIGTERM (a fast shutdown), not its graceful SIGQUIT: the cluster has no "
        "lifecycle.stopSignal (feature gate ContainerStopSignals), and podgrace's fallback hook that sends "
        f"SIGQUIT needs a shell (its image '{CHAINGUARD_NGINX}' is a Chainguard image, without a shell)",
        "container php-fpm: php-fpm gets SIGTERM (a fast shutdown), not its graceful SIGQUIT: the cluster "
        "has no lifecycle.stopSignal (feature gate ContainerStopSignals), and podgrace's fallback hook that "
        "sends SIGQUIT needs a shell (podgrace.dev/no-shell declares no shell in it)",
    ]


def test_a_users_exec_hook_in_a_shellless_container_is_left_and_said_broken(
    cluster: Any, operator: OperatorProcess
) -> None:
    """existingPreStop: replace takes a hook written by an Update (`kubectl create`) in a container with a
    shell, replacing it with podgrace's exec form; in a shell-less one podgrace can neither put its native
    sleep there (a forced apply would leave two handler types) nor an exec hook of its own: the user's hook
    stays the user's, with a Warning saying it fails."""
    script = "sleep 5; kill -QUIT 1; while kill -0 1; do sleep 1; done"
    hook = {"exec": {"command": ["/bin/sh", "-c", script]}}
    t0 = time.time()
    manifest = deployment(
        "edge",
        NS,
        {"podgrace.dev/profile": "nginx", "podgrace.dev/existing-prestop": "replace"},
        [{"name": "nginx", "image": CHAINGUARD_NGINX, "lifecycle": {"preStop": hook}}],
    )
    cluster.kubectl("create", "--field-manager=ci-script", "-f", "-", input=json.dumps(manifest))
    kept = wait_until("a UserHookKept Warning", lambda: events(cluster, "edge", "UserHookKept"), timeout=60)
    assert "it fails at once" in kept[0]["message"]
    wait_until("podgrace's Applied Event", lambda: applied(cluster, "edge"), timeout=60)
    obj = get(cluster, "edge")
    assert containers(obj)["nginx"]["lifecycle"]["preStop"] == hook
    # the hook is still owned by its manager alone; podgrace took the defaulted grace period only
    owners = {
        m["manager"]
        for m in obj["metadata"]["managedFields"]
        if "f:preStop" in json.dumps(m.get("fieldsV1", {}))
    }
    assert owners == {"ci-script"}
    assert [(w.verb, w.name) for w in deployment_writes(cluster, t0)] == [("patch", "edge")]
    assert obj["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 40


def test_a_plan_notice_is_one_normal_event(cluster: Any, operator: OperatorProcess) -> None:
    """The one-rule `apache` profile named for an image no rule knows: rule apache applies (SoleRuleApplied).
    A restart and a no-op reconcile (an unrelated annotation changed) post it no second time."""
    apply(
        cluster,
        deployment(
            "custom",
            NS,
            {"podgrace.dev/profile": "apache"},
            [{"name": "app", "image": "registry.example.com/acme/shop:1.4"}],
        ),
    )
    wait_until("podgrace's Applied Event", lambda: applied(cluster, "custom"), timeout=60)
    [notice] = wait_until("the notice", lambda: events(cluster, "custom", "SoleRuleApplied"), timeout=30)
    assert notice["type"] == "Normal"
    assert notice["message"].startswith(
        "container app: image 'registry.example.com/acme/shop:1.4' matches no rule of ShutdownProfile "
        "'apache'"
    )
    before = {
        name: {r: len(events(cluster, name, r)) for r in ("NoShellForFallback", "UserHookKept")}
        for name in ("shop", "edge")
    }

    t0 = time.time()
    operator.restart()
    total = len(cluster.kubectl_json("get", "deployments", "-A")["items"])
    wait_until(
        "the restarted podgrace to reconcile every Deployment",
        lambda: operator.metric("podgrace_reconcile_total", controller="deployment") >= total,
        timeout=60,
    )
    reconciled = operator.metric("podgrace_reconcile_total", controller="deployment")
    cluster.kubectl("annotate", "deployment", "custom", "-n", NS, "example.com/touched=1")
    wait_until(
        "the reconcile of the annotation change",
        lambda: operator.metric("podgrace_reconcile_total", controller="deployment") > reconciled,
        timeout=30,
    )
    time.sleep(3)  # anything podgrace would still post
    assert deployment_writes(cluster, t0) == []
    [again] = events(cluster, "custom", "SoleRuleApplied")
    assert again["metadata"]["uid"] == notice["metadata"]["uid"]
    assert again.get("count", 1) == 1
    assert {
        name: {r: len(events(cluster, name, r)) for r in ("NoShellForFallback", "UserHookKept")}
        for name in ("shop", "edge")
    } == before
    assert list(cluster.write_events(user=OPERATOR_USER, since=t0, resource="events")) == []


@pytest.fixture(scope="module")
def operator_stopsignals(cluster_stopsignals: Any) -> Iterator[OperatorProcess]:
    cluster_stopsignals.kubectl("create", "namespace", NS)
    with running_operator(cluster_stopsignals) as op:
        yield op


def test_with_stop_signals_a_shellless_pod_is_graceful_and_an_owners_signal_is_said(
    cluster_stopsignals: Any, operator_stopsignals: OperatorProcess
) -> None:
    """ContainerStopSignals on: the native forms do everything, no Warning for nginx. php-fpm's owner set
    lifecycle.stopSignal SIGTERM by server-side apply: podgrace keeps it (UserStopSignalKept) and, with no
    shell for its fallback hook, says php-fpm gets SIGTERM (NoShellForFallback)."""
    cluster = cluster_stopsignals
    php = {
        "name": "php-fpm",
        "image": "cgr.dev/chainguard/php:latest-fpm",
        "lifecycle": {"stopSignal": "SIGTERM"},
    }
    manifest = deployment(
        "shop",
        NS,
        {"podgrace.dev/profile": "nginx-php-fpm"},
        [{"name": "nginx", "image": CHAINGUARD_NGINX}, php],
        os={"name": "linux"},
    )
    t0 = time.time()
    apply(cluster, manifest, manager="gitops")
    wait_until("podgrace's Applied Event", lambda: applied(cluster, "shop"), timeout=60)
    spec = get(cluster, "shop")["spec"]["template"]["spec"]
    lifecycles = {c["name"]: c["lifecycle"] for c in spec["containers"]}
    assert lifecycles == {
        "nginx": {"preStop": {"sleep": {"seconds": 5}}, "stopSignal": "SIGQUIT"},
        "php-fpm": {"preStop": {"sleep": {"seconds": 35}}, "stopSignal": "SIGTERM"},
    }
    assert spec["os"] == {"name": "linux"} and spec["terminationGracePeriodSeconds"] == 70
    assert [(w.verb, w.name) for w in deployment_writes(cluster, t0)] == [("patch", "shop")]
    [lost] = wait_until("a NoShellForFallback Warning", lambda: events(cluster, "shop", "NoShellForFallback"))
    assert lost["message"] == (
        "container php-fpm: php-fpm gets SIGTERM (a fast shutdown), not its graceful SIGQUIT: its "
        "lifecycle.stopSignal SIGTERM is set by its owner, and podgrace's fallback hook that sends SIGQUIT "
        "needs a shell (its image 'cgr.dev/chainguard/php:latest-fpm' is a Chainguard image, without a shell)"
    )
    assert [e["involvedObject"]["name"] for e in events(cluster, "shop", "UserStopSignalKept")] == ["shop"]
