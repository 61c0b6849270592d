"""python -m bench.soak [--size 500] [--seconds 300] ...: run the soak once and print its table.

It starts its own local control plane (tests/cluster/localcluster.py) and stops it at the end (every
process by PID, also on failure or Ctrl-C). The JSON result goes to --out; `--table FILE...` prints the
table of earlier results without running anything.
"""

from __future__ import annotations

import argparse
import dataclasses
import signal

from bench.scale.cli import output_args, printed_tables
from bench.soak.report import table

# flag, the Params field it sets, type, default, help
OPTIONS: list[tuple[str, str, type, object, str]] = [
    ("--size", "size", int, 500, "opted-in Deployments (default 500)"),
    ("--pool", "pool", int, None, "Deployments not opted in (default size/5)"),
    ("--rate", "churn_rate", float, 4.0, "owner changes per second (default 4)"),
    ("--seconds", "churn_seconds", float, 300.0, "seconds of churn and faults (default 300)"),
    ("--fault-scale", "fault_scale", float, 1.0, "multiplies every fault share (default 1)"),
]


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # runs the cleanup: operator, proxy and cluster stopped


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    ap = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    for flag, dest, kind, default, meaning in OPTIONS:
        ap.add_argument(flag, dest=dest, type=kind, default=default, help=meaning)
    ap.add_argument("--keep", action="store_true", help="keep the cluster's workdir (logs)")
    output_args(ap, "soak")
    args = ap.parse_args(argv)
    if printed_tables(args, table):
        return 0
    from bench.soak.scenario import Params, Soak

    chosen = {f.name: getattr(args, f.name) for f in dataclasses.fields(Params) if hasattr(args, f.name)}
    result = Soak(Params(**chosen), args.out).run()
    print(table([result]))
    print(f"\nresult: {args.out}")
    return 0
