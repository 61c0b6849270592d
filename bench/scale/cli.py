"""python -m bench.scale [--sizes 100,1000,5000] ...: run the scale benchmark and print the table.

Each size runs on its own fresh local control plane (tests/cluster/localcluster.py). Results go to
--out (one JSON per size); `--table FILE...` prints the table of earlier results without running anything.
"""

from __future__ import annotations

import argparse
import json
import signal
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from bench.scale import ROOT
from bench.scale.report import table
from bench.scale.snapshot import snapshot_operator

PHASES = ("sync", "restart", "churn", "fanout", "floor")


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # runs the cleanup: operator and cluster stopped


def output_args(ap: argparse.ArgumentParser, bench: str) -> None:
    """--out (a new directory under bench/BENCH/results by default) and --table (print only)."""
    default = ROOT / "bench" / bench / "results" / time.strftime("%Y%m%d-%H%M%S")
    ap.add_argument("--out", type=Path, default=default, help="results directory")
    ap.add_argument("--table", nargs="+", type=Path, metavar="RESULT.json", help="only print a table")


def printed_tables(args: argparse.Namespace, table: Callable[[Iterable[Any]], str]) -> bool:
    """With --table: print the table of those results and say so (nothing is run)."""
    if args.table:
        print(table(json.loads(p.read_text()) for p in args.table))
    return bool(args.table)


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    ap = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__)
    ap.add_argument("--sizes", default="100,1000,5000", help="comma-separated N (default %(default)s)")
    ap.add_argument("--per-namespace", type=int, default=25, help="Deployments per namespace (default 25)")
    ap.add_argument("--fanout", type=int, default=1000, help="Deployments naming the edited profile")
    ap.add_argument("--churn-rate", type=float, default=20.0, help="user changes per second (default 20)")
    ap.add_argument("--churn-seconds", type=float, default=30.0, help="seconds of churn (default 30)")
    ap.add_argument("--workers", type=int, default=20, help="podgrace --workers and the floor's concurrency")
    ap.add_argument(
        "--operator-arg", action="append", default=[], metavar="ARG", help="extra `podgrace run` argument"
    )
    ap.add_argument("--phases", default=",".join(PHASES), help="subset of %(default)s")
    ap.add_argument("--profile", action="store_true", help="record py-spy profiles of the operator")
    ap.add_argument("--kcm-qps", type=int, default=200, help="controller-manager --kube-api-qps (0: default)")
    ap.add_argument("--keep", action="store_true", help="keep each cluster's workdir (logs, audit log)")
    output_args(ap, "scale")
    args = ap.parse_args(argv)

    if printed_tables(args, table):
        return 0
    phases = tuple(p.strip() for p in args.phases.split(",") if p.strip())
    unknown = set(phases) - set(PHASES)
    if unknown:
        ap.error(f"unknown phase(s): {', '.join(sorted(unknown))}")
    snapshot_operator(args.out)  # before podgrace is imported here: the floor uses the same planner
    from bench.scale.scenario import Bench, Params, log

    results = []
    for size in (int(s) for s in args.sizes.split(",") if s.strip()):
        params = Params(
            size=size,
            per_namespace=args.per_namespace,
            fanout=args.fanout,
            churn_rate=args.churn_rate,
            churn_seconds=args.churn_seconds,
            workers=args.workers,
            operator_args=list(args.operator_arg),
            phases=phases,
            profile=args.profile,
            keep=args.keep,
            kcm_qps=args.kcm_qps,
        )
        log(f"N = {size}: results in {args.out}")
        results.append(Bench(params, args.out).run())
        print(table(results), flush=True)
    print(f"\nresults: {args.out}")
    return 0
