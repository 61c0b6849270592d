"""podgrace installed in a real-node cluster the way users install it: the operator image (built by
tests/image/build.py) imported into the node's containerd, then ``helm install charts/podgrace``; the pod
reaches the API server through tests/node/api_relay.py (see there why). Used by tests/node and by the
real-node termination lab (bench/termination/realnode).

    with podgrace_release(cluster, node, image, values=["operator.workers=4"]) as rel:
        rel.pod, rel.pod_ip, rel.exec("cat", "/proc/1/status")
"""

from __future__ import annotations

import datetime as dt
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.image.build import BuiltImage
from tests.node.api_relay import ApiRelay
from tests.support.podgrace_env import metric_total, wait_until

CHART = Path(__file__).resolve().parents[2] / "charts" / "podgrace"
NAMESPACE = "podgrace-system"
RELEASE = "podgrace"


@dataclass
class Release:
    cluster: Any
    node: Any
    image: BuiltImage
    relay: ApiRelay
    pod: str
    pod_ip: str
    started: float  # time.time() when the pod's container started

    def exec(self, *cmd: str, check: bool = True) -> Any:
        return self.cluster.kubectl(
            "exec", "-n", NAMESPACE, self.pod, "-c", "operator", "--", *cmd, check=check
        )

    def metrics(self) -> str:
        """podgrace's /metrics, scraped from the pod IP."""
        with urllib.request.urlopen(f"http://{self.pod_ip}:9090/metrics", timeout=10) as r:
            return str(r.read().decode())

    def metric(self, name: str, **labels: str) -> float:
        return metric_total(self.metrics(), name, **labels)

    def pod_obj(self) -> dict[str, Any]:
        obj: dict[str, Any] = self.cluster.kubectl_json("get", "pod", self.pod, "-n", NAMESPACE)
        return obj


def ready_pod(cluster: Any) -> dict[str, Any] | None:
    pods = cluster.kubectl_json("get", "pods", "-n", NAMESPACE, "-l", "app.kubernetes.io/component=operator")[
        "items"
    ]
    for pod in pods:
        conds = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions", [])}
        if conds.get("Ready") == "True" and pod["status"].get("podIP"):
            return dict(pod)
    return None


def _rfc3339(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@contextmanager
def podgrace_release(
    cluster: Any,
    node: Any,
    image: BuiltImage,
    values: Sequence[str] = (),
    log: Callable[[str], None] = print,
) -> Iterator[Release]:
    """Import ``image``, ``helm install`` the chart with it (plus ``values``), wait for the pod to be Ready;
    on exit print podgrace's log tail and ``helm uninstall --wait``."""
    t0 = time.monotonic()
    node.ctr("images", "import", "--platform=linux/amd64", str(image.path))
    listed = node.ctr("images", "ls", "-q").stdout.split()
    assert image.ref in listed, listed
    log(f"[operator-pod] {image.ref} imported in {time.monotonic() - t0:.1f}s")
    with ApiRelay(listen=(node.node_ip, 443), target=("127.0.0.1", cluster.port)) as relay:
        settings = [
            f"image.repository={image.repository}",
            f"image.tag={image.tag}",
            "image.pullPolicy=Never",
            f"hostAliases[0].ip={node.node_ip}",
            "hostAliases[0].hostnames[0]=kubernetes.default.svc",
            *values,
        ]
        t0 = time.monotonic()
        cluster.helm(
            "install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--create-namespace",
            *(a for v in settings for a in ("--set", v)),
        )  # fmt: skip
        try:
            try:
                pod = wait_until("the operator pod Ready", lambda: ready_pod(cluster), timeout=240)
            except AssertionError:
                log(cluster.kubectl("describe", "pods", "-n", NAMESPACE, check=False).stdout[-4000:])
                log(cluster.kubectl("logs", "-n", NAMESPACE, "deploy/podgrace", check=False).stdout[-4000:])
                raise
            log(f"[operator-pod] helm install -> pod Ready in {time.monotonic() - t0:.1f}s")
            state = pod["status"]["containerStatuses"][0]["state"]["running"]
            yield Release(
                cluster,
                node,
                image,
                relay,
                pod["metadata"]["name"],
                pod["status"]["podIP"],
                _rfc3339(state["startedAt"]),
            )
        finally:
            logs = cluster.kubectl("logs", "-n", NAMESPACE, "deploy/podgrace", "--tail=40", check=False)
            log(f"[operator-pod] podgrace log (tail):\n{logs.stdout}")
            cluster.helm("uninstall", RELEASE, "--namespace", NAMESPACE, "--wait", check=False)
