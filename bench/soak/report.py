"""The soak's table, from one or more results (scenario.Soak.run)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

COLUMNS = (
    "Deployments (opted in at start / others)",
    "owner changes (opt-in / opt-out / sleep / unrelated / profile edits)",
    "faults injected",
    "restarts (apiserver / etcd), watch cuts",
    "podgrace writes / minimum",
    "mismatches vs render",
    "writes to never-opted-in",
    "crashes (exits / restarts / tracebacks)",
    "asyncio tasks idle before → after",
    "Retry-After retries checked (min gap s)",
    "settled after faults s",
)


CHANGE_KINDS = ("opt-in", "opt-out", "sleep edit", "unrelated edit", "profile edit")


def row(result: dict[str, Any]) -> list[str]:
    p, soak, v = result["params"], result["soak"], result["verdict"]
    changes = soak["owner_changes"]
    pool = p["pool"] if p["pool"] is not None else max(1, p["size"] // 5)
    injected = ", ".join(f"{k} {n}" for k, n in soak["faults"].items())
    disruptions = soak["disruptions"]
    gap = v["retry_after_min_gap_s"]
    return [
        f"{p['size']} / {pool}",
        " / ".join(str(changes.get(k, 0)) for k in CHANGE_KINDS),
        injected,
        f"{disruptions.get('apiserver restart', 0)} / {disruptions.get('etcd restart', 0)}, "
        f"{disruptions.get('watch cut', 0)}",
        f"{v['podgrace_deployment_writes']} / {v['minimum_writes']} ({v['ratio']:.2f} x)",
        str(len(v["mismatches_vs_render"])),
        str(len(v["writes_to_never_opted_in"])),
        f"{0 if v['operator_alive'] else 1} / {v['operator_starts'] - 1} / {v['tracebacks']}",
        f"{v['tasks_idle_before']:.0f} → {v['tasks_idle_after']:.0f}",
        f"{v['retry_after_checked']} ({gap:.2f})" if gap is not None else "0",
        f"{result['settle']['seconds']:.0f}",
    ]


def table(results: Iterable[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row(r)) + " |" for r in results]
    return "\n".join(lines)
