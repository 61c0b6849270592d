"""`podgrace` command line: `run` the operator, `render` and `audit` manifests offline."""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from podgrace import __version__
from podgrace.cli import sarif
from podgrace.cli.yaml_stream import (
    Document,
    InputError,
    Source,
    dumps,
    parse_documents,
    read_documents,
    read_stream,
)
from podgrace.core import capabilities, profiles
from podgrace.core.apply_body import merge_into_manifest
from podgrace.core.constants import ANN_PROFILE
from podgrace.core.findings import Code, Finding
from podgrace.core.kinds import describe, unhandled_warning
from podgrace.core.models import ShutdownProfile
from podgrace.core.planner import Outcome, Plan, plan
from podgrace.core.workload_parser import ManifestError, from_object, is_workload

EXIT_FINDINGS = 1  # audit: workloads at risk
EXIT_USAGE = 2  # bad input or usage: one line per problem on stderr, nothing on stdout
EXIT_INTERNAL = 3  # a bug in podgrace: one line on stderr (no traceback)
EXIT_BROKEN_PIPE = 141  # the reader closed stdout early (`render | head`), as for a tool killed by SIGPIPE

N = TypeVar("N", int, float)


class CliError(Exception):
    pass


def _cluster_args(parser: argparse.ArgumentParser, live: bool = False) -> None:
    if not live:
        parser.add_argument(
            "-f", "--filename", required=True, metavar="FILE|-", help="YAML stream; - for stdin"
        )
    else:
        source = parser.add_mutually_exclusive_group(required=True)
        source.add_argument("-f", "--filename", metavar="FILE|-", help="YAML stream; - for stdin")
        source.add_argument(
            "--cluster",
            action="store_true",
            help="read the Deployments, StatefulSets and DaemonSets of a live cluster through the kubeconfig "
            "(KUBECONFIG or ~/.kube/config; exec credential plugins work)",
        )
        parser.add_argument("--context", metavar="NAME", help="with --cluster: the kubeconfig context to use")
        scope = parser.add_mutually_exclusive_group()
        scope.add_argument(
            "-n", "--namespace", metavar="NS", help="with --cluster: this namespace (default: the context's)"
        )
        scope.add_argument(
            "-A", "--all-namespaces", action="store_true", help="with --cluster: every namespace"
        )
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
    _cluster_args(audit, live=True)
    audit.add_argument("-o", "--output", choices=["text", "json", "sarif"], default="text")

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
        "--resync-seconds",
        type=_resync,
        default=600,
        help="list and reconcile every Deployment again this often; no write when nothing changed; "
        "0: never (default 600)",
    )
    run.add_argument(
        "--stop-signals",
        choices=["auto", "true", "false"],
        default="auto",
        help="use lifecycle.stopSignal: auto detects it with a server-side dry-run (default auto)",
    )
    run.add_argument("--verbose", action="store_true")
    return parser


def _bounded(kind: Callable[[str], N], what: str, low: int, high: int) -> Callable[[str], N]:
    """An argparse `type`: a number of `kind` from low to high, or argparse's exit 2 saying why not."""

    def parse(text: str) -> N:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not low <= value <= high:
            shown = f"{value:g}" if isinstance(value, float) else str(value)
            raise argparse.ArgumentTypeError(f"{shown} is out of range {low}..{high}")
        return value

    return parse


_resync = _bounded(float, "a number of seconds", 0, 86400)
_port = _bounded(int, "a port number", 1, 65535)


@dataclass
class Item:
    """One object of the input (a document, or an item of a `kind: List`) and what podgrace made of it."""

    obj: dict[Any, Any]
    source: Source
    raw: dict[Any, Any] | None = None  # what is printed, when it differs from obj (a typed list's item)
    plan: Plan | None = None
    warning: str | None = None

    @property
    def label(self) -> str:
        """How messages name the workload: `ns/name` for a Deployment, `Kind ns/name` for other kinds."""
        assert self.plan is not None
        kind = self.obj.get("kind")
        return self.plan.workload if kind == "Deployment" else f"{kind} {self.plan.workload}"

    def line_of(self, finding: Finding) -> int:
        pod = ["spec", "template", "spec"]
        if finding.container is not None:
            containers = _at(self.obj, [*pod, "containers"])
            names = [c.get("name") for c in containers] if isinstance(containers, list) else []
            if finding.container in names:
                return self.source.line_of([*pod, "containers", names.index(finding.container)])
        if finding.code is Code.GRACE_TOO_SHORT or finding.code is Code.GRACE_PINNED:
            return self.source.line_of([*pod, "terminationGracePeriodSeconds"])
        if finding.is_error or finding.code is Code.NO_MATCHING_CONTAINERS:
            return self.source.line_of(["metadata", "annotations", ANN_PROFILE])
        return self.source.line


def _at(obj: Any, path: Sequence[str]) -> Any:
    for step in path:
        obj = obj.get(step) if isinstance(obj, dict) else None
    return obj


def _is_list(obj: dict[Any, Any]) -> bool:
    """`kind: List` as kubectl prints it, or a typed list (DeploymentList) as the API returns it."""
    kind = obj.get("kind")
    return isinstance(kind, str) and kind.endswith("List") and "items" in obj


def _items(document: Document) -> list[Item]:
    obj = document.obj
    if not _is_list(obj):
        return [Item(obj, document.source)]
    raw = obj.get("items")
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise InputError(f"{document.source.describe()}: {obj['kind']} items must be a list")
    typed = obj["kind"] != "List"  # a DeploymentList's items carry no kind of their own
    items = []
    for index, entry in enumerate(raw):
        source = document.source.for_item(index)
        if not isinstance(entry, dict):
            raise InputError(f"{source.describe()}: not a mapping (a Kubernetes object)")
        if typed:
            kind = obj["kind"].removesuffix("List")
            items.append(Item({"apiVersion": obj.get("apiVersion"), "kind": kind, **entry}, source, entry))
        else:
            items.append(Item(entry, source))
    return items


def _load(
    args: argparse.Namespace,
) -> tuple[list[Document], dict[str, ShutdownProfile], capabilities.Capabilities]:
    try:
        caps = capabilities.from_description(
            capabilities.parse_server_version(args.server_version),
            capabilities.parse_feature_gates(args.feature_gates),
        )
    except capabilities.CapabilityError as error:
        raise CliError(str(error)) from error
    known = profiles.builtin()
    for path in args.profiles:
        loaded = profiles.from_documents(read_stream(path))
        if not loaded:
            raise CliError(f"{path}: no ShutdownProfile found")
        known.update(loaded)
    if getattr(args, "cluster", False):
        return _cluster_documents(args), known, caps
    return read_documents(args.filename), known, caps


def _cluster_documents(args: argparse.Namespace) -> list[Document]:
    """The live cluster's workloads as one `kind: List` document, printed as `kubectl get -o yaml` would
    and read back by the same reader as `-f`: the same code path, the same report; lines and `file`
    (`cluster:CONTEXT`) point into that List."""
    from podgrace.cli.cluster_source import ClusterError, read_workloads

    try:
        found = read_workloads(args.context, args.namespace, args.all_namespaces)
    except ClusterError as error:
        raise CliError(str(error)) from None
    text = dumps([{"apiVersion": "v1", "kind": "List", "items": found.objects}])
    return parse_documents(text, f"cluster:{found.context}")


def _plan_all(
    documents: list[Document], known: dict[str, ShutdownProfile], caps: capabilities.Capabilities
) -> list[list[Item]]:
    planned = []
    for document in documents:
        items = _items(document)
        for item in items:
            if is_workload(item.obj):
                try:
                    workload = from_object(item.obj, with_ownership=False)
                except ManifestError as error:
                    raise InputError(f"{item.source.describe()}: {error}") from error
                item.plan = plan(workload, known, caps)
            item.warning = unhandled_warning(item.obj)
        planned.append(items)
    return planned


def _warn_unhandled(items: Sequence[Item]) -> None:
    for item in items:
        if item.warning is not None:
            print(f"warning: {item.source.describe()}: {describe(item.obj)}: {item.warning}", file=sys.stderr)


def cmd_render(args: argparse.Namespace) -> int:
    documents, known, caps = _load(args)
    planned = _plan_all(documents, known, caps)
    items = [item for group in planned for item in group]
    errors = [
        f"{item.source.describe()}: {item.plan.workload}: {e.message}"
        for item in items
        if item.plan is not None
        for e in item.plan.errors
    ]
    if errors:
        raise CliError("\n".join(errors))
    rendered = []
    for document, group in zip(documents, planned, strict=True):
        merged = [
            merge_into_manifest(i.raw or i.obj, i.plan) if i.plan is not None else (i.raw or i.obj)
            for i in group
        ]
        if _is_list(document.obj):
            rendered.append({**document.obj, "items": merged} if group else document.obj)
        else:
            rendered.append(merged[0])
    text = dumps(rendered)
    _warn_unhandled(items)
    for item in items:
        result = item.plan
        if result is None:
            continue
        for note in result.notices:
            where = f" container {note.container}" if note.container else ""
            print(f"note: {item.label}{where}: {note.message}", file=sys.stderr)
        for decision in result.decisions:
            where = f" container {decision.container}" if decision.container else ""
            print(f"warning: {item.label}{where}: {decision.message}", file=sys.stderr)
    sys.stdout.write(text)
    sys.stdout.flush()
    return 0


def audit_entry(item: Item) -> dict[str, Any]:
    result = item.plan
    assert result is not None
    risks = [f for f in (*result.errors, *result.findings_before) if f.is_risk or f.is_error]
    risks += [d for d in result.decisions if d.code is Code.NO_MATCHING_CONTAINERS]
    containers = _at(item.obj, ["spec", "template", "spec", "containers"]) or []
    images = {c.get("name"): c.get("image") for c in containers}
    unrecognised = [
        {
            "container": name,
            "image": images.get(name),
            "line": item.line_of(Finding(Code.NO_PRESTOP, name, "")),
        }
        for name in result.unrecognised
    ]
    if risks:
        status = "atRisk"
    elif len(result.unrecognised) >= len(containers):
        status = "notAssessed"  # nothing recognised: not safe, just unknown
    else:
        status = "ok"
    namespace, _, name = result.workload.partition("/")
    return {
        "kind": item.obj.get("kind"),
        "namespace": namespace,
        "name": name,
        "file": item.source.file,
        "line": item.source.line,
        "profile": result.profile,
        "optedIn": result.outcome is not Outcome.NOT_OPTED_IN,
        "atRisk": bool(risks),
        "status": status,
        "findings": [{**f.to_dict(), "line": item.line_of(f)} for f in risks],
        "unrecognised": unrecognised,
    }


def cmd_audit(args: argparse.Namespace) -> int:
    documents, known, caps = _load(args)
    items = [item for group in _plan_all(documents, known, caps) for item in group]
    report = [audit_entry(item) for item in items if item.plan is not None]
    warnings = [
        {"file": i.source.file, "line": i.source.line, "object": describe(i.obj), "message": i.warning}
        for i in items
        if i.warning is not None
    ]
    at_risk = [w for w in report if w["atRisk"]]
    not_assessed = [w for w in report if w["status"] == "notAssessed"]
    if args.output == "json":
        text = json.dumps({"workloads": report, "atRisk": len(at_risk), "warnings": warnings}, indent=2)
        sys.stdout.write(text + "\n")
    elif args.output == "sarif":
        sys.stdout.write(json.dumps(sarif.report(report, warnings, __version__), indent=2) + "\n")
    else:
        _warn_unhandled(items)
        lines = []
        for w in report:
            if w["status"] == "ok" and not w["unrecognised"]:
                continue
            profile = f"profile {w['profile']}" if w["optedIn"] else "not opted in"
            kind = "" if w["kind"] == "Deployment" else f"{w['kind']}, "
            assessed = ": not assessed, no container recognised" if w["status"] == "notAssessed" else ""
            lines.append(f"{w['namespace']}/{w['name']} ({kind}{profile}){assessed}")
            for f in w["findings"]:
                where = f"{f['container']}: " if f["container"] else ""
                lines.append(f"  {f['code']:<24} {where}{f['message']}")
            for u in w["unrecognised"]:
                lines.append(f"  {'Unrecognised':<24} {u['container']}: image {u['image']!r}")
        summary = f"{len(at_risk)} of {len(report)} workloads at risk of dropping requests on termination"
        if not_assessed:
            summary += f"; {len(not_assessed)} not assessed (no container recognised)"
        sys.stdout.write("".join(f"{line}\n" for line in [*lines, summary]))
    sys.stdout.flush()
    return EXIT_FINDINGS if at_risk else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    live_only = args.command == "audit" and (args.context or args.namespace or args.all_namespaces)
    if live_only and not args.cluster:
        build_parser().error("audit: --context, -n and -A go with --cluster")
    if args.command == "run":
        from podgrace.controller.run import run  # the operator's imports are only paid for by `run`

        return run(args)
    # A short-lived command whose objects hold no cycles: the cyclic collector's passes over the growing
    # heap cost a third of a large render (bench/render) and free nothing.
    gc.disable()
    try:
        return cmd_render(args) if args.command == "render" else cmd_audit(args)
    except (CliError, InputError, ManifestError, profiles.ProfileError) as error:
        for line in str(error).splitlines():
            print(f"podgrace {args.command}: {line}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except Exception as error:  # a bug: one line, its own exit code, never a traceback
        print(
            f"podgrace {args.command}: internal error (a bug in podgrace, please report it): "
            f"{type(error).__name__}: {str(error)[:200]}",
            file=sys.stderr,
        )
        return EXIT_INTERNAL
    finally:
        gc.enable()


def _silence_stdout() -> None:
    """After a broken pipe, point stdout at /dev/null so the interpreter's final flush stays quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


if __name__ == "__main__":
    sys.exit(main())
