"""The demo behind hack/demo.sh: a local cluster with podgrace installed by its chart, and the example
PHP-FPM Deployment opted in. Stays up until Ctrl-C (or SIGTERM)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

from tests.cluster.localcluster import STOP_SIGNALS_GATES, LocalCluster
from tests.support.podgrace_env import OperatorProcess, install_chart, wait_until

ROOT = Path(__file__).resolve().parents[1]

EXAMPLE = ROOT / "examples" / "php-fpm-deployment.yaml"


def show(title: str, text: str) -> None:
    print(f"\n== {title}\n{text.rstrip()}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--stop-signals", action="store_true", help="API server with ContainerStopSignals=true"
    )
    parser.add_argument("--exit", action="store_true", help="stop after showing the result (for CI)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with LocalCluster(
        feature_gates=STOP_SIGNALS_GATES if args.stop_signals else None, name="demo"
    ) as cluster:
        show("cluster", f"{cluster.server} (started in {cluster.start_seconds:.1f}s)")
        install_chart(cluster)
        show("helm install podgrace charts/podgrace", cluster.kubectl("get", "shutdownprofiles").stdout)
        operator = OperatorProcess(cluster, "--all-namespaces").start()
        try:
            cluster.kubectl("apply", "-f", str(EXAMPLE))
            show("kubectl apply -f examples/php-fpm-deployment.yaml", "")

            def injected() -> dict[str, object] | None:
                obj = cluster.kubectl_json("get", "deployment", "shop", "-n", "default")
                spec = obj["spec"]["template"]["spec"]
                return spec if "lifecycle" in spec["containers"][0] else None

            spec = wait_until("podgrace's settings", injected, timeout=60)
            assert isinstance(spec, dict)
            injected_view = {
                "terminationGracePeriodSeconds": spec.get("terminationGracePeriodSeconds"),
                "os": spec.get("os"),
                "containers": [
                    {"name": c["name"], "lifecycle": c.get("lifecycle")} for c in spec["containers"]
                ],
            }
            show("what podgrace injected (spec.template.spec)", json.dumps(injected_view, indent=2))
            cluster.kubectl("rollout", "status", "deployment/shop", "-n", "default", "--timeout=120s")
            show(
                "the rollout (one new ReplicaSet)",
                cluster.kubectl("get", "replicasets", "-n", "default").stdout,
            )
            events = cluster.kubectl(
                "get", "events", "-n", "default", "--field-selector", "involvedObject.kind=Deployment"
            ).stdout
            show("events", events)
            show("ShutdownProfiles", cluster.kubectl("get", "shutdownprofiles").stdout)
            show(
                "explore",
                f"export KUBECONFIG={cluster.kubeconfig}\n"
                f"export PATH={cluster.bin('kubectl').parent}:$PATH\n"
                f"metrics: curl -s http://127.0.0.1:{operator.metrics_port}/metrics | grep ^podgrace_\n"
                f"podgrace log:     {operator.log_path}\n"
                "Ctrl-C stops the cluster and podgrace.",
            )
            if not args.exit:
                while operator.alive():
                    time.sleep(1)
                print("podgrace exited; see its log above", file=sys.stderr)
                return 1
        finally:
            operator.stop()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(0)
