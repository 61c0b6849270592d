"""python -m bench.termination.realnode [--only NAME] [--rate R] [--request-ms MS] [--json OUT]"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from dataclasses import asdict
from pathlib import Path

from bench.termination.realnode.lab import SCENARIOS, run_all


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.termination.realnode", description=__doc__)
    ap.add_argument("--only", action="append", choices=sorted(SCENARIOS))
    ap.add_argument("--rate", type=float, default=40.0)
    ap.add_argument("--request-ms", type=int, default=300)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    def stop(signum: int, _frame: object) -> None:  # run every finally: node, cluster, HAProxy cleanup
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    results = run_all(
        args.only, rate=args.rate, request_ms=args.request_ms, log=lambda m: print(m, flush=True)
    )
    print("\n| scenario | requests | failed | outcomes | endpoint removed | pod gone |")
    print("| --- | ---: | ---: | --- | ---: | ---: |")
    for r in results:
        print(
            f"| {r.name} | {r.requests} | {r.failed} | {r.outcomes} | +{r.endpoint_removed_after_s} s "
            f"| +{r.pod_gone_after_s} s |"
        )
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
