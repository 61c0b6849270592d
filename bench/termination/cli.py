"""python -m bench.termination {run,matrix,plan,render} ... (see README.md)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.termination.plan import plan_from_text
from bench.termination.scenario import Params, run_scenario, write_json


def _signals(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        name, sep, sig = item.partition("=")
        if not sep or not name or not sig:
            raise SystemExit(f"--image-stop-signal wants CONTAINER=SIGNAL, got {item!r}")
        out[name] = sig
    return out


def _add_params(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--endpoint-delay", type=float, default=2.0, help="seconds until the LB stops routing to the pod"
    )
    p.add_argument("--request-ms", type=int, default=300, help="time each request spends in the app")
    p.add_argument("--rate", type=float, default=40.0, help="requests per second (open loop)")
    p.add_argument("--duration", type=float, default=None, help="seconds of load after the deletion")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of load before the deletion")
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--process-control-timeout", type=int, default=0, help="php-fpm; 0 = unset")
    p.add_argument(
        "--image-stop-signal",
        action="append",
        default=[],
        metavar="CONTAINER=SIG",
        help="the image's STOPSIGNAL for a container (default: official images' value, else SIGTERM)",
    )
    p.add_argument("--lb-action", choices=["maint", "drain"], default="maint")


def _params(a: argparse.Namespace) -> Params:
    return Params(
        endpoint_delay=a.endpoint_delay,
        request_ms=a.request_ms,
        rate=a.rate,
        duration=a.duration,
        warmup=a.warmup,
        replicas=a.replicas,
        process_control_timeout=a.process_control_timeout,
        image_stop_signals=_signals(a.image_stop_signal),
        lb_action=a.lb_action,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.termination", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)

    run = sub.add_parser("run", help="one scenario: a manifest, pod0 deleted under load")
    run.add_argument("--manifest", "-f", required=True, type=Path)
    run.add_argument(
        "--render", choices=["native", "fallback"], help="run `podgrace render` on the manifest first"
    )
    run.add_argument("--podgrace", default=None, help="podgrace command (default: podgrace on PATH)")
    run.add_argument("--json", type=Path, help="write the full result here")
    run.add_argument("--keep", action="store_true", help="keep the scenario's temp dir (configs, logs)")
    _add_params(run)

    plan = sub.add_parser("plan", help="print the termination plan the lab reads from a manifest")
    plan.add_argument("--manifest", "-f", required=True, type=Path)
    plan.add_argument("--image-stop-signal", action="append", default=[], metavar="CONTAINER=SIG")

    render = sub.add_parser("render", help="print podgrace's rendering of a manifest, as the lab gets it")
    render.add_argument("--manifest", "-f", required=True, type=Path)
    render.add_argument("--mode", choices=["native", "fallback"], default="native")
    render.add_argument("--podgrace", default=None)

    mx = sub.add_parser("matrix", help="originals vs podgrace renders across scenario cells")
    mx.add_argument("--short", action="store_true", help="one cell per profile (CI)")
    mx.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "results",
        help="writes OUT/{short,full}/",
    )
    mx.add_argument("--only", action="append", default=[], help="profile(s) to run")
    mx.add_argument("--podgrace", default=None)
    mx.add_argument("--keep", action="store_true")

    rep = sub.add_parser("report", help="regenerate matrix.md/matrix.png from DIR/matrix.json")
    rep.add_argument("dir", type=Path)

    a = ap.parse_args(argv)
    if a.cmd == "report":
        from bench.termination.matrix import rewrite_report

        rewrite_report(a.dir)
        print((a.dir / "matrix.md").read_text(), end="")
        return 0
    if a.cmd == "plan":
        p = plan_from_text(a.manifest.read_text(), _signals(a.image_stop_signal))
        print(json.dumps(p.to_dict(), indent=2))
        return 0
    if a.cmd == "render":
        from bench.termination.render import render_manifest

        print(render_manifest(a.manifest, a.mode, a.podgrace), end="")
        return 0
    if a.cmd == "run":
        text = a.manifest.read_text()
        if a.render:
            from bench.termination.render import render_manifest

            text = render_manifest(a.manifest, a.render, a.podgrace)
        res = run_scenario(text, _params(a), label=a.manifest.stem, keep_workdir=a.keep, log=_log)
        if a.json:
            write_json(res, a.json)
        _print_result(res)
        return 0
    if a.cmd == "matrix":
        from bench.termination.matrix import run_matrix

        return run_matrix(short=a.short, out=a.out, only=a.only, podgrace=a.podgrace, keep=a.keep)
    return 2


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _print_result(res: dict) -> None:  # type: ignore[type-arg]
    print(f"{res['label']}: {res['total']} requests, {res['failed']} failed {res['counts']}")
    print(f"  failed by server: {res['failed_by_server']}  (to terminating pod: {res['to_terminating_pod']})")
    a = res["assumptions"]
    print(f"  assumptions: {'hold' if a['hold'] else 'BROKEN: ' + '; '.join(a['broken'])}")
    print(f"  endpoint removed: {res['endpoint_removed']}")
    for c in res["containers"]:
        for e in c["events"]:
            print(f"  [{c['container']}] {e}")
        if c["hook_output"]:
            print(f"  [{c['container']}] hook output: {c['hook_output']!r}")
    if res["failures"]:
        first = res["failures"][:8]
        print(
            "  first failures: "
            + ", ".join(f"{f['t_send']:+.2f}s {f['outcome']} {f['lb_term']}" for f in first)
        )
    print(f"  wall {res['wall_s']}s, max send lateness {res['max_send_lateness_ms']} ms")
