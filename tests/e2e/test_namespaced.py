"""Namespaced mode: the chart with rbac.clusterWide=false and watchNamespaces, podgrace run with
--namespace. The Deployment in the watched namespace is managed; one elsewhere is not touched, and
podgrace never hits a permission it was not granted."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.cluster.localcluster import LocalCluster
from tests.support.podgrace_env import (
    CHART,
    NAMESPACE,
    OPERATOR_USER,
    RELEASE,
    OperatorProcess,
    deployment,
    wait_until,
)


@pytest.fixture(scope="module")
def namespaced(cluster_bin_dir: Path) -> Iterator[tuple[LocalCluster, OperatorProcess]]:
    with LocalCluster(binaries=cluster_bin_dir, name="namespaced") as cluster:
        for ns in ("team-a", "team-b"):
            cluster.kubectl("create", "namespace", ns)
        cluster.helm(
            "install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--create-namespace",
            "--set", "rbac.clusterWide=false", "--set", "watchNamespaces={team-a}",
        )  # fmt: skip
        op = OperatorProcess(cluster, "--namespace", "team-a")
        op.start()
        try:
            yield cluster, op
        finally:
            op.stop()


def test_only_the_watched_namespace_is_managed(namespaced: tuple[LocalCluster, OperatorProcess]) -> None:
    cluster, op = namespaced
    for ns in ("team-a", "team-b"):
        obj = deployment("shop", ns, {"podgrace.dev/profile": "nginx-php-fpm"})
        cluster.kubectl("apply", "-f", "-", input=json.dumps(obj))

    def injected(ns: str) -> bool:
        obj: dict[str, Any] = cluster.kubectl_json("get", "deployment", "shop", "-n", ns)
        return "lifecycle" in obj["spec"]["template"]["spec"]["containers"][0]

    wait_until("team-a injected", lambda: injected("team-a"))
    wait_until(
        "the nginx-php-fpm profile's status",
        lambda: (
            (cluster.kubectl_json("get", "shutdownprofile", "nginx-php-fpm").get("status") or {}).get(
                "workloads"
            )
            == 1
        ),
    )
    assert not injected("team-b")
    denied = [e for e in cluster.audit_events(user=OPERATOR_USER) if e.code == 403]
    assert denied == [], [f"{e.verb} {e.request_uri}" for e in denied]
    assert op.alive()
