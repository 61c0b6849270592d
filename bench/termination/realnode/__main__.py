"""python -m bench.termination.realnode [--workload W] [--event E] [--manifest M] [--mode MODE]
[--rate R] [--request-ms MS] [--lb-delay S] [--json OUT] [--png OUT] [--from-json IN]

Runs the real-node termination matrix (root; ~28 min for all 48 cells on a loaded 2-core machine, warm
caches) and prints its table.
--from-json only rewrites the table / chart of an earlier run.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from bench.termination.realnode import report
from bench.termination.realnode.lab import EVENTS, MODES, Cell, Params, Selection, run_matrix
from bench.termination.realnode.workloads import MANIFEST_KINDS, WORKLOADS


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.termination.realnode", description=__doc__)
    ap.add_argument("--workload", action="append", choices=list(WORKLOADS))
    ap.add_argument("--event", action="append", choices=EVENTS)
    ap.add_argument("--manifest", action="append", choices=MANIFEST_KINDS)
    ap.add_argument("--mode", action="append", choices=MODES)
    ap.add_argument("--rate", type=float, default=Params.rate)
    ap.add_argument("--request-ms", type=int, default=Params.request_ms)
    ap.add_argument("--lb-delay", type=float, default=Params.lb_delay, help="extra LB propagation, s")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--png", type=Path)
    ap.add_argument("--from-json", type=Path, action="append", help="repeatable: runs are concatenated")
    args = ap.parse_args(argv)

    def stop(signum: int, _frame: object) -> None:  # run every finally: node, cluster, HAProxy cleanup
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    if args.from_json:
        cells = [c for path in args.from_json for c in report.from_json(path.read_text())]
    else:
        sel = Selection(
            tuple(args.workload or WORKLOADS),
            tuple(args.event or EVENTS),
            tuple(args.manifest or MANIFEST_KINDS),
            tuple(args.mode or MODES),
        )
        params = Params(rate=args.rate, request_ms=args.request_ms, lb_delay=args.lb_delay)
        done: list[Cell] = []

        def save(cell: Cell) -> None:  # after every cell: an interrupted run keeps what it measured
            done.append(cell)
            if args.json:
                args.json.write_text(report.to_json(done))

        cells = run_matrix(sel, params, log=lambda m: print(m, flush=True), on_cell=save)
    if args.json:
        args.json.write_text(report.to_json(cells))
    if args.png:
        report.chart(cells, args.png)
    print()
    print(report.markdown(cells))
    return 1 if any(c.error for c in cells) else 0


if __name__ == "__main__":
    sys.exit(main())
