"""The results table (Markdown), one row per size."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any


def _f(value: Any, fmt: str = "{:.1f}") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return fmt.format(value)


def _writes_per(sync: dict[str, Any]) -> str:
    per = sync.get("writes_per_deployment") or {}
    if not per:
        return "—"
    counts = sorted(per.items(), key=lambda kv: int(kv[0]))
    return ", ".join(f"{k} (x{v})" if len(counts) > 1 else str(k) for k, v in counts)


HEADER = (
    "| N | sync: podgrace s | floor s | ratio | writes / Deployment | other writes (Events done s) "
    "| restart writes | restart idle s | churn p50 / p99 s | fan-out s (N) | peak RSS MiB "
    "| CPU s sync / total |"
)


def table(results: Iterable[dict[str, Any]]) -> str:
    lines = [HEADER, "|" + "|".join("---" for _ in range(HEADER.count("|") - 1)) + "|"]
    for r in sorted(results, key=lambda r: int(r["size"])):
        sync = r.get("sync") or {}
        fl = r.get("floor") or {}
        restart = r.get("restart") or {}
        churn = r.get("churn") or {}
        fanout = r.get("fanout") or {}
        final = r.get("operator_final") or {}
        other = sync.get("other_writes") or {}
        lines.append(
            "| "
            + " | ".join(
                [
                    f"{r['size']:,}",
                    _f(sync.get("seconds")),
                    _f(fl.get("seconds"), "{:.2f}"),
                    _f(r.get("ratio_to_floor"), "{:.2f}"),
                    _writes_per(sync),
                    (", ".join(f"{v} {k}" for k, v in sorted(other.items())) or "0")
                    + (f" ({sync['events_done_s']:.0f})" if "events_done_s" in sync else ""),
                    _f(restart.get("writes"), "{}"),
                    _f(restart.get("idle_s")),
                    f"{_f(churn.get('p50_s'), '{:.3f}')} / {_f(churn.get('p99_s'), '{:.3f}')}",
                    f"{_f(fanout.get('seconds'))} ({fanout.get('users', '—')})",
                    _f(r.get("peak_rss_mib"), "{:.0f}"),
                    f"{_f(sync.get('cpu_s'))} / "
                    f"{_f((sync.get('cpu_s') or 0) + (final.get('cpu_s') or 0) if final else None)}",
                ]
            )
            + " |"
        )
    return "\n".join(lines)
