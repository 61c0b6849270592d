"""`podgrace` command line: `run` the operator, `render` and `audit` manifests offline."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from podgrace import __version__
from podgrace.cli.yaml_stream import InputError, dump_stream, read_stream
from podgrace.core import capabilities, profiles
from podgrace.core.apply_body import merge_into_manifest
from podgrace.core.models import ShutdownProfile
from podgrace.core.planner import Outcome, Plan, plan
from podgrace.core.workload_parser import ManifestError, from_object, is_deployment

EXIT_FINDINGS = 1
EXIT_USAGE = 2


class CliError(Exception):
    pass


def _cluster_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-f", "--filename", required=True, metavar="FILE|-", help="YAML stream; - for stdin")
    parser.add_argument(
        "--profiles",
        action="append",
        default=[],
        metavar="FILE",
        help="ShutdownProfile YAML; adds to (and by name overrides) the built-in profiles; repeatable",
    )
    parser.add_argument(
        "--server-version",
        default="{}.{}".format(*capabilities.DEFAULT_SERVER_VERSION),
        metavar="MAJOR.MINOR",
        help="target API server version (default %(default)s): 1.30+ gets the native preStop sleep",
    )
    parser.add_argument(
        "--feature-gates",
        default="",
        metavar="ContainerStopSignals=true|false",
        help="target feature gates (default: ContainerStopSignals=false, the Kubernetes default)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="podgrace", description=__doc__)
    parser.add_argument("--version", action="version", version=f"podgrace {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    render = commands.add_parser("render", help="print a YAML stream with podgrace's settings applied")
    _cluster_args(render)

    audit = commands.add_parser("audit", help="list workloads at risk of dropping requests on termination")
    _cluster_args(audit)
    audit.add_argument("-o", "--output", choices=["text", "json"], default="text")

    run = commands.add_parser("run", help="run the operator")
    scope = run.add_mutually_exclusive_group()
    scope.add_argument(
        "-n", "--namespace", action="append", default=[], help="watch only this namespace; repeatable"
    )
    scope.add_argument(
        "-A", "--all-namespaces", action="store_true", help="watch the whole cluster (default)"
    )
    run.add_argument(
        "--liveness-port", type=_port, default=8080, help="liveness endpoint port (default 8080)"
    )
    run.add_argument(
        "--metrics-port", type=_port, default=9090, help="Prometheus /metrics port (default 9090)"
    )
    run.add_argument("--workers", type=int, default=20, help="concurrent reconciles (default 20)")
    run.add_argument(
        "--stop-signals",
        choices=["auto", "true", "false"],
        default="auto",
        help="use lifecycle.stopSignal: auto detects it with a server-side dry-run (default auto)",
    )
    run.add_argument("--verbose", action="store_true")
    return parser


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is out of range 1..65535")
    return value


def _load(
    args: argparse.Namespace,
) -> tuple[list[Any], dict[str, ShutdownProfile], capabilities.Capabilities]:
    try:
        caps = capabilities.from_description(
            capabilities.parse_server_version(args.server_version),
            capabilities.parse_feature_gates(args.feature_gates),
        )
    except capabilities.CapabilityError as error:
        raise CliError(str(error)) from error
    known = profiles.builtin()
    for path in args.profiles:
        docs = read_stream(path)
        loaded = profiles.from_documents(docs)
        if not loaded:
            raise CliError(f"{path}: no ShutdownProfile found")
        known.update(loaded)
    return read_stream(args.filename), known, caps


def _plans(
    documents: list[Any], known: dict[str, ShutdownProfile], caps: capabilities.Capabilities
) -> list[Plan | None]:
    results: list[Plan | None] = []
    for doc in documents:
        results.append(
            plan(from_object(doc, with_ownership=False), known, caps) if is_deployment(doc) else None
        )
    return results


def cmd_render(args: argparse.Namespace) -> int:
    documents, known, caps = _load(args)
    results = _plans(documents, known, caps)
    errors = [f"{r.workload}: {e.message}" for r in results if r is not None for e in r.errors]
    if errors:
        raise CliError("\n".join(errors))
    rendered = [
        merge_into_manifest(doc, result) if result is not None else doc
        for doc, result in zip(documents, results, strict=True)
    ]
    for result in results:
        if result is not None:
            for decision in result.decisions:
                where = f" container {decision.container}" if decision.container else ""
                print(f"warning: {result.workload}{where}: {decision.message}", file=sys.stderr)
    dump_stream(rendered, sys.stdout)
    return 0


def audit_report(results: Sequence[Plan]) -> list[dict[str, Any]]:
    report = []
    for result in results:
        findings = [f for f in (*result.errors, *result.findings_before) if f.is_risk or f.is_error]
        namespace, _, name = result.workload.partition("/")
        report.append(
            {
                "namespace": namespace,
                "name": name,
                "profile": result.profile,
                "optedIn": result.outcome is not Outcome.NOT_OPTED_IN,
                "atRisk": bool(findings),
                "findings": [f.to_dict() for f in findings],
            }
        )
    return report


def cmd_audit(args: argparse.Namespace) -> int:
    documents, known, caps = _load(args)
    report = audit_report([r for r in _plans(documents, known, caps) if r is not None])
    at_risk = [w for w in report if w["atRisk"]]
    if args.output == "json":
        json.dump({"workloads": report, "atRisk": len(at_risk)}, sys.stdout, indent=2)
        print()
    else:
        for w in at_risk:
            profile = f"profile {w['profile']}" if w["optedIn"] else "not opted in"
            print(f"{w['namespace']}/{w['name']} ({profile})")
            for f in w["findings"]:
                where = f"{f['container']}: " if f["container"] else ""
                print(f"  {f['code']:<24} {where}{f['message']}")
        print(f"{len(at_risk)} of {len(report)} Deployments at risk of dropping requests on termination")
    return EXIT_FINDINGS if at_risk else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "render":
            return cmd_render(args)
        if args.command == "audit":
            return cmd_audit(args)
        from podgrace.controller.run import run  # the operator's imports are only paid for by `run`

        return run(args)
    except (CliError, InputError, ManifestError, profiles.ProfileError) as error:
        print(f"podgrace {args.command}: {error}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
