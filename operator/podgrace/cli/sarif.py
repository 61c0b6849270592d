"""`podgrace audit -o sarif`: the audit as SARIF 2.1.0, so that code review shows findings inline.

Each finding is a result on the line of the manifest it concerns (the container, the grace period or the
profile annotation); containers podgrace cannot classify are notes, annotations on kinds podgrace does not
handle are warnings. Validated against the OASIS schema in tests/unit/test_sarif.py.
"""

from __future__ import annotations

from pathlib import PurePath
from typing import Any
from urllib.parse import quote

from podgrace.core.findings import ERRORS, RISKS, Code

SCHEMA = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
INFORMATION_URI = "https://podgrace.dev"

UNRECOGNISED = "Unrecognised"
UNHANDLED_KIND = "UnhandledKind"

RULES: dict[str, str] = {
    Code.NO_PRESTOP: "No preStop hook: the stop signal races endpoint removal",
    Code.SLEEP_TOO_SHORT: "The preStop wait is shorter than the endpoint/load-balancer propagation",
    Code.KNOWN_BAD_HOOK: "The preStop hook signals the server and returns at once",
    Code.FAST_STOP_SIGNAL: "The server is stopped with a fast-shutdown signal (SIGTERM)",
    Code.GRACE_TOO_SHORT: "terminationGracePeriodSeconds is shorter than the waits plus the drain",
    Code.PHP_FPM_BEFORE_DRAIN: "php-fpm gets its stop before requests can have drained",
    Code.SIGNAL_HITS_PAUSE: "The preStop hook signals PID 1, the pause process of a shared PID namespace",
    Code.EXEC_HOOK_WITHOUT_SHELL: "An exec preStop hook needs a shell the image does not have",
    Code.NO_MATCHING_CONTAINERS: "No rule of the named ShutdownProfile matches a container",
    Code.INVALID_ANNOTATION: "A podgrace.dev/ annotation has an invalid value",
    Code.UNKNOWN_PROFILE: "The workload names a ShutdownProfile that does not exist",
    Code.INVALID_PROFILE: "The workload names an invalid ShutdownProfile",
    Code.APPLY_FAILED: "podgrace's apply was rejected",
    Code.SIGNAL_UNREACHABLE: "podgrace's hook cannot deliver the graceful signal to the server",
    UNRECOGNISED: "A container podgrace cannot classify (not assessed)",
    UNHANDLED_KIND: "podgrace annotations on an object podgrace does not handle",
}


def _level(rule: str) -> str:
    if rule in RISKS or rule in ERRORS or rule == Code.NO_MATCHING_CONTAINERS:
        return "error"
    return "warning" if rule == UNHANDLED_KIND else "note"


def _uri(file: str) -> str:
    return "stdin" if file == "<stdin>" else quote(PurePath(file).as_posix(), safe="/:")


def _result(rules: list[str], rule: str, message: str, file: str, line: int, name: str) -> dict[str, Any]:
    return {
        "ruleId": rule,
        "ruleIndex": rules.index(rule),
        "level": _level(rule),
        "message": {"text": message},
        "locations": [
            {
                "physicalLocation": {
                    "artifactLocation": {"uri": _uri(file)},
                    "region": {"startLine": max(line, 1)},
                },
                "logicalLocations": [{"fullyQualifiedName": name, "kind": "object"}],
            }
        ],
    }


def report(workloads: list[dict[str, Any]], warnings: list[dict[str, Any]], version: str) -> dict[str, Any]:
    """SARIF from `podgrace audit`'s JSON entries (workloads and warnings)."""
    rules = list(RULES)
    results = []
    for w in workloads:
        name = f"{w['kind']}/{w['namespace']}/{w['name']}"
        for f in w["findings"]:
            where = f"container {f['container']}: " if f["container"] else ""
            subject = f"{w['kind']} {w['namespace']}/{w['name']}"
            results.append(
                _result(
                    rules, f["code"], f"{subject}: {where}{f['message']}", w["file"], f["line"],
                    f"{name}/{f['container']}" if f["container"] else name,
                )
            )  # fmt: skip
        for u in w["unrecognised"]:
            message = (
                f"{w['kind']} {w['namespace']}/{w['name']}: container {u['container']} (image "
                f"{u['image']!r}) is not one podgrace recognises; it is not assessed"
            )
            results.append(
                _result(rules, UNRECOGNISED, message, w["file"], u["line"], f"{name}/{u['container']}")
            )
    for warning in warnings:
        message = f"{warning['object']}: {warning['message']}"
        results.append(
            _result(rules, UNHANDLED_KIND, message, warning["file"], warning["line"], warning["object"])
        )
    return {
        "$schema": SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "podgrace",
                        "version": version,
                        "informationUri": INFORMATION_URI,
                        "rules": [
                            {
                                "id": rule,
                                "shortDescription": {"text": text},
                                "defaultConfiguration": {"level": _level(rule)},
                            }
                            for rule, text in RULES.items()
                        ],
                    }
                },
                "results": results,
            }
        ],
    }
