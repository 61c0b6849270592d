"""The real-node lab's table (Markdown) and chart (PNG) from its cells (or their JSON)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from bench.termination.realnode.lab import Cell, PodEnd

MODE_TITLES = {
    "default": "default (ContainerStopSignals off: podgrace's fallback hooks)",
    "stopsignals": "ContainerStopSignals on (podgrace's lifecycle.stopSignal)",
}


def to_json(cells: list[Cell]) -> str:
    return json.dumps([asdict(c) for c in cells], indent=1) + "\n"


def from_json(text: str) -> list[Cell]:
    cells = []
    for d in json.loads(text):
        d["pods"] = [PodEnd(**p) for p in d["pods"]]
        d["lb_changes"] = [tuple(x) for x in d["lb_changes"]]
        cells.append(Cell(**d))
    return cells


def _failed(c: Cell | None) -> str:
    if c is None:
        return ""
    if c.error:
        return "ERROR"
    return f"**{c.failed}**/{c.sent}"


def _gone(c: Cell | None) -> str:
    if c is None or c.error or not c.pods:
        return "—" if c is not None and not c.error else ""
    return ", ".join("not gone" if p.gone_s is None else f"{p.gone_s:.1f}" for p in c.pods)


def _warnings(c: Cell | None) -> str:
    if c is None or c.error:
        return ""
    return ", ".join(f"{r} x{n}" for r, n in c.warnings.items()) or "none"


def markdown(cells: list[Cell]) -> str:
    """One table per capability mode; a row per workload x event, original vs podgrace side by side."""
    by: dict[tuple[str, str, str, str], Cell] = {(c.mode, c.workload, c.event, c.manifest): c for c in cells}
    lines: list[str] = []
    modes = list(dict.fromkeys(c.mode for c in cells))
    for mode in modes:
        rows = list(dict.fromkeys((c.workload, c.event) for c in cells if c.mode == mode))
        lines += [
            f"**{MODE_TITLES.get(mode, mode)}**",
            "",
            "| workload | event | failed/sent original | failed/sent podgrace | deletion→gone s original "
            "| deletion→gone s podgrace | Warning Events original | Warning Events podgrace |",
            "|---|---|---:|---:|---:|---:|---|---|",
        ]
        for workload, event in rows:
            o = by.get((mode, workload, event, "original"))
            g = by.get((mode, workload, event, "podgrace"))
            lines.append(
                f"| {workload} | {event} | {_failed(o)} | {_failed(g)} | {_gone(o)} | {_gone(g)} "
                f"| {_warnings(o)} | {_warnings(g)} |"
            )
        lines.append("")
    errors = [c for c in cells if c.error]
    if errors:
        lines += ["Errors:", ""] + [f"- `{c.key}`: {c.error}" for c in errors] + [""]
    return "\n".join(lines)


def chart(cells: list[Cell], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(dict.fromkeys(c.mode for c in cells))
    fig, axes = plt.subplots(len(modes), 1, figsize=(11, 3.6 * len(modes)), squeeze=False)
    for ax, mode in zip(axes[:, 0], modes, strict=True):
        rows = list(dict.fromkeys((c.workload, c.event) for c in cells if c.mode == mode))
        by: dict[tuple[str, str, str], Cell] = {
            (c.workload, c.event, c.manifest): c for c in cells if c.mode == mode
        }
        width = 0.38
        for i, (kind, color) in enumerate((("original", "#d62728"), ("podgrace", "#2ca02c"))):
            points = [
                (j + (i - 0.5) * width, 100.0 * c.failed / c.sent, c.failed)
                for j, (w, e) in enumerate(rows)
                if (c := by.get((w, e, kind))) is not None and not c.error and c.sent
            ]
            ax.bar([x for x, _, _ in points], [y for _, y, _ in points], width, color=color, label=kind)
            for x, y, n in points:
                ax.annotate(str(n), (x, y), ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels([f"{w}\n{e}" for w, e in rows], fontsize=7)
        ax.set_ylabel("failed requests, % of sent")
        ax.set_title(MODE_TITLES.get(mode, mode), fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("podgrace real-node termination lab: failed requests per event (number = failed count)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def short_markdown(cells: list[Cell]) -> str:
    """Totals per capability mode and manifest, for the README: failed / sent over every cell, how many
    cells dropped requests, the longest deletion->gone, and the FailedPreStopHook Events."""
    lines = [
        "| capability mode | manifest | cells | cells with failed requests | failed / sent "
        "| longest deletion→gone | FailedPreStopHook Events |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    groups: dict[tuple[str, str], list[Cell]] = {}
    for c in cells:
        if not c.error:
            groups.setdefault((c.mode, c.manifest), []).append(c)
    for (mode, kind), cs in groups.items():
        gone = [p.gone_s for c in cs for p in c.pods if p.gone_s is not None]
        hooks = sum(n for c in cs for r, n in c.warnings.items() if r.startswith("FailedPreStopHook"))
        failed, sent = sum(c.failed for c in cs), sum(c.sent for c in cs)
        lines.append(
            f"| {mode} | {kind} | {len(cs)} | {sum(c.failed > 0 for c in cs)} | **{failed}**/{sent} "
            f"| {max(gone, default=0):.1f} s | {hooks} |"
        )
    return "\n".join(lines) + "\n"
