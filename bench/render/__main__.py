"""Time `podgrace render` (a subprocess, interpreter start included) on a stream of N Deployments.

    python -m bench.render [--deployments 5000] [--repeat 3] [--keep FILE]

The stream mixes what a GitOps repository holds: opted-in Deployments of every built-in profile (one to
three containers, some with the user's own hooks, grace periods and annotations), Deployments not opted in
and a Service per Deployment. Prints the input size, each run's wall time and the best throughput.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]

PODS: list[tuple[str | None, list[dict[str, Any]]]] = [
    (
        "nginx-php-fpm",
        [
            {"name": "nginx", "image": "nginx:1.27", "ports": [{"containerPort": 80}]},
            {"name": "php-fpm", "image": "php:8.3-fpm", "env": [{"name": "APP_ENV", "value": "prod"}]},
        ],
    ),
    ("nginx", [{"name": "web", "image": "nginxinc/nginx-unprivileged:1.27-alpine"}]),
    ("apache", [{"name": "wordpress", "image": "wordpress:6.6-php8.3-apache"}]),
    ("php-fpm", [{"name": "app", "image": "wordpress:6.6-fpm-alpine"}]),
    ("web", [{"name": "api", "image": "ghcr.io/example/api:2.1", "ports": [{"containerPort": 8080}]}]),
    (None, [{"name": "nginx", "image": "nginx:1.27"}, {"name": "exporter", "image": "nginx/exporter:1"}]),
]


def deployment(index: int) -> dict[str, Any]:
    profile, containers = PODS[index % len(PODS)]
    name = f"app-{index:05d}"
    annotations = {"podgrace.dev/profile": profile} if profile else {}
    if index % 7 == 0 and profile:
        annotations["podgrace.dev/drain-seconds"] = "45"
    pod: dict[str, Any] = {
        "containers": [dict(c, resources={"requests": {"cpu": "100m"}}) for c in containers]
    }
    if index % 5 == 0:
        pod["terminationGracePeriodSeconds"] = 120
    if index % 11 == 0:
        pod["containers"][0]["lifecycle"] = {"preStop": {"exec": {"command": ["sh", "-c", "sleep 3"]}}}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": f"team-{index % 25}", "annotations": annotations},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": pod},
        },
    }


def service(index: int) -> dict[str, Any]:
    name = f"app-{index:05d}"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": f"team-{index % 25}"},
        "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 80}]},
    }


def stream(deployments: int) -> str:
    documents = [doc for i in range(deployments) for doc in (deployment(i), service(i))]
    return yaml.dump_all(documents, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), sort_keys=False)


def _calibrate() -> float:
    """CPU seconds of 5 million additions in Python: bench/scale's calibration (0.24-0.26 s on this
    machine when idle), so that runs on a loaded or another machine can be compared."""
    started, total = time.process_time(), 0
    for i in range(5_000_000):
        total += i
    return time.process_time() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.render", description=__doc__)
    parser.add_argument("--deployments", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", metavar="FILE", help="also write the input stream here")
    args = parser.parse_args(argv)
    text = stream(args.deployments)
    if args.keep:
        Path(args.keep).write_text(text, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "operator"), str(ROOT)])}
    command = [sys.executable, "-m", "podgrace.cli.main", "render", "-f", "-"]
    calibration = _calibrate()
    times, cpu = [], []
    with tempfile.TemporaryFile("w+", encoding="utf-8") as source:
        source.write(text)
        for _ in range(args.repeat):
            source.seek(0)
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.perf_counter()
            done = subprocess.run(command, stdin=source, capture_output=True, env=env, check=False, cwd=ROOT)
            times.append(time.perf_counter() - started)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
            if done.returncode != 0:
                print(done.stderr.decode(), file=sys.stderr)
                return 1
            out_bytes = len(done.stdout)
    best = min(times)
    size = len(text.encode())
    print(f"input: {args.deployments} Deployments + {args.deployments} Services, {size / 1e6:.1f} MB")
    print(f"output: {out_bytes / 1e6:.1f} MB")
    print("runs, wall s: " + ", ".join(f"{t:.2f}" for t in times))
    print("runs, CPU s:  " + ", ".join(f"{t:.2f}" for t in cpu))
    print(f"calibration: 5 million additions take {calibration:.2f} CPU s here now (bench/scale's measure)")
    print(f"best: {best:.2f} s, {size / best / 1e6:.2f} MB/s, {args.deployments / best:,.0f} Deployments/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
