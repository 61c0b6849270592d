"""The headline matrix: each built-in profile's ORIGINAL manifest vs `podgrace render` of it (native stop
signal and fallback hook), across endpoint delays, request durations and php-fpm process_control_timeout.

Verdicts (the exit code is non-zero if any fails):
  original                    must drop at least one request   (else the scenario proves nothing)
  podgrace, assumptions hold  must drop none                   (else: a planner bug, reported precisely)
  podgrace, assumption broken reported, no expectation         (which assumption is broken is shown)
  every scenario              failures only on the terminating pod, the LB sent it nothing after the
                              endpoint removal, the other pods stayed up
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.termination.plan import outcome_kind
from bench.termination.render import RenderError, render_command, render_manifest
from bench.termination.scenario import Params, run_scenario, write_json

MANIFESTS = Path(__file__).resolve().parent / "manifests"
PROFILES = {
    "nginx": "nginx.yaml",
    "php-fpm": "php-fpm.yaml",
    "nginx-php-fpm": "nginx-php-fpm.yaml",
    "apache": "apache.yaml",
    "web": "web.yaml",
}
PCT_SET = 20  # php-fpm process_control_timeout when "set"


# Containers whose workers do not log the graceful signal podgrace's fallback hook sends them
# (core/hook_intent.py signals nginx's and php-fpm's workers, not the master): php-fpm's children are
# silent, and its master's first logged signal is the kubelet's SIGTERM once they have drained. Their
# proof is the request count (zero dropped), not the log.
SILENT_WORKERS = frozenset({"php-fpm"})


@dataclass(frozen=True)
class Cell:
    name: str
    endpoint_delay: float
    request_ms: int
    rate: float
    note: str = ""


CELLS = {
    "base": Cell("base", 2.0, 300, 40, "the article's setup"),
    "long-requests": Cell("long-requests", 2.0, 3000, 20, "requests of 3 s (< drain 6 s)"),
    "slow-endpoints": Cell("slow-endpoints", 5.0, 300, 40, "endpoint delay 5 s > preStop sleep"),
    "over-drain": Cell("over-drain", 2.0, 7500, 8, "requests of 7.5 s > drain 6 s"),
    "4s-requests": Cell("4s-requests", 2.0, 4000, 20, "requests of 4 s"),
}


@dataclass(frozen=True)
class Row:
    """One comparison: the same cell for the original and podgrace's renders."""

    profile: str
    manifest: str  # relative to manifests/
    cell: Cell
    pct: int = 0
    image_signals: dict[str, str] = field(default_factory=dict)
    modes: tuple[str, ...] = ("original", "native", "fallback")
    expect_original: str = "fail"  # fail | zero | any
    note: str = ""
    # the stop signal each server of pod0 must log first: (in the original, in podgrace's output); the log
    # shows which signal reached the server (a hook's signal to pause never does); None: not checked
    first_signals: tuple[str, str] | None = None

    @property
    def key(self) -> str:
        sig = "".join(f"-{k}.{v.removeprefix('SIG').lower()}" for k, v in sorted(self.image_signals.items()))
        pct = f"-pct{self.pct}" if self.pct else ""
        return f"{self.prefix}-{self.cell.name}{pct}{sig}"

    @property
    def prefix(self) -> str:
        return f"article-{Path(self.manifest).stem}" if self.profile == "article" else self.profile

    @property
    def label(self) -> str:
        """Short chart label."""
        sig = "".join(f" {v.removeprefix('SIG')}" for v in self.image_signals.values())
        pct = f" pct{self.pct}" if self.pct else ""
        return f"{self.prefix.removeprefix('article-')}\n{self.cell.name}{pct}{sig}"


def uses_php_fpm(row: Row) -> bool:
    return "php" in row.manifest and "apache" not in row.manifest


def shape_rows() -> list[Row]:
    """Built-in profiles in pods of other shapes (rows of both matrices)."""
    shared = "nginx-php-fpm-shared-pid"
    return [
        Row("nginx-tini", "nginx-tini.yaml", CELLS["base"]),  # nginx as the child of Debian's tini (PID 1)
        # shareProcessNamespace: true, pause is PID 1, nginx and php-fpm beside it
        Row(shared, f"{shared}.yaml", CELLS["base"], first_signals=("SIGTERM", "SIGQUIT")),
        Row(
            f"{shared}-hook-pid1",
            f"{shared}-hook-pid1.yaml",
            CELLS["base"],
            modes=("original",),
            expect_original="any",
            first_signals=("SIGTERM", "SIGQUIT"),
            note="hand-written hooks: sleep, kill -QUIT 1 (pause), wait while PID 1 lives",
        ),
    ]


def short_rows() -> list[Row]:
    return [*(Row(p, m, CELLS["base"]) for p, m in PROFILES.items()), *shape_rows()]


def full_rows() -> list[Row]:
    rows: list[Row] = []
    rows.extend(shape_rows())
    # requests still in flight when nginx gets its QUIT: the fallback hook must find nginx's workers beside
    # pause and wait for them
    shared = next(r for r in shape_rows() if r.profile == "nginx-php-fpm-shared-pid")
    rows.append(replace(shared, cell=CELLS["long-requests"]))
    for profile, manifest in PROFILES.items():
        for cell in ("base", "long-requests", "slow-endpoints", "over-drain"):
            rows.append(Row(profile, manifest, CELLS[cell]))
        if profile == "nginx":
            for cell in ("base", "long-requests"):
                rows.append(
                    Row(
                        profile,
                        manifest,
                        CELLS[cell],
                        image_signals={"nginx": "SIGQUIT"},
                        modes=("original",),
                        note="image STOPSIGNAL SIGQUIT",
                    )
                )
        if profile in ("php-fpm", "nginx-php-fpm"):
            for cell in ("base", "over-drain"):
                rows.append(Row(profile, manifest, CELLS[cell], pct=PCT_SET))
    # The remedies of the article (manifests/article/), in their original form only.
    rows += [
        _article("nginx-s-quit", "base", "preStop `nginx -s quit` only"),
        _article("sleep-both", "base", "preStop sleep 5 on both + SIGQUIT", expect_original="zero"),
        _article("sleep-both", "4s-requests", "preStop sleep 5 on both + SIGQUIT"),
        _article("signal-and-wait", "base", "exec hook: sleep, kill -QUIT 1, wait", expect_original="zero"),
        _article("hook-overruns-grace", "over-drain", "exec sleep 10 > grace 5: stop at 5 s, SIGKILL at 7 s"),
    ]
    return rows


def _article(name: str, cell: str, note: str, expect_original: str = "fail") -> Row:
    return Row(
        "article",
        f"article/{name}.yaml",
        CELLS[cell],
        modes=("original",),
        expect_original=expect_original,
        note=note,
    )


# ------------------------------------------------------------------------------------------------ run


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def verdict(mode: str, row: Row, res: dict[str, Any]) -> tuple[bool, str]:
    """(passed, text) for one scenario's result."""
    problems: list[str] = []
    if res.get("error"):
        return False, "ERROR: " + res["error"].splitlines()[-1]
    if res["unattributed_failures"]:
        others = {k: v for k, v in res["failed_by_server"].items() if k != "pod0"}  # "?": not in the LB's log
        kinds = dict(Counter(f["outcome"] for f in res["failures"] if f["server"] != "pod0"))
        problems.append(
            f"{res['unattributed_failures']} failures on pods that were not terminating ({others}, {kinds})"
        )
    if res["routed_after_removal"]:
        problems.append(f"LB sent {res['routed_after_removal']} requests to pod0 after the endpoint removal")
    if not res["survivors_ok"]:
        problems.append("another pod exited")
    if res["to_terminating_pod"] == 0:
        problems.append("no request reached the terminating pod")
    if row.first_signals is not None:
        want = row.first_signals[0 if mode == "original" else 1]
        first = {c["container"]: (c.get("server_signals") or ["none"])[0] for c in res.get("containers", [])}
        if mode == "fallback":  # the hook signals workers: php-fpm's log nothing (SILENT_WORKERS)
            first = {name: got for name, got in first.items() if name not in SILENT_WORKERS}
        if not first or any(got != want for got in first.values()):
            problems.append(f"first stop signal the servers logged: {first}, expected {want}")
    failed = res["failed"]
    if mode == "original":
        if row.expect_original == "fail" and failed == 0:
            problems.append("original dropped no request (the scenario proves nothing)")
        if row.expect_original == "zero" and failed:
            problems.append(f"expected zero failures, got {failed}")
    elif res["assumptions"]["hold"] and failed:
        problems.append(
            f"podgrace's output dropped {failed} request(s) although the profile's assumptions hold"
        )
    if problems:
        return False, "; ".join(problems)
    if mode != "original" and not res["assumptions"]["hold"]:
        return True, "assumption broken: " + "; ".join(res["assumptions"]["broken"])
    return True, "ok"


def summarize_result(res: dict[str, Any]) -> dict[str, Any]:
    keep = (
        "failed",
        "total",
        "counts",
        "failed_by_server",
        "to_terminating_pod",
        "routed_after_removal",
        "unattributed_failures",
        "survivors_ok",
        "endpoint_removed",
        "assumptions",
        "wall_s",
        "max_send_lateness_ms",
    )
    out = {k: res.get(k) for k in keep}
    out["containers"] = [
        {
            k: c[k]
            for k in (
                "container",
                "runtime",
                "stop_signal",
                "stop_signal_source",
                "pre_stop",
                "hook_result",
                "signal_time",
                "signal_note",
                "sigkill_time",
                "exit_time",
                "exit_code",
                "server_signals",
            )
            if k in c
        }
        for c in res.get("containers", [])
    ]
    # hooks a real kubelet would report with a FailedPreStopHook Warning Event (killed or failed)
    out["failed_pre_stop_hooks"] = sum(
        "FailedPreStopHook" in (c.get("hook_result") or "") for c in res.get("containers", [])
    )
    out["grace_seconds"] = res.get("plan", {}).get("grace_seconds")
    out["plan_warnings"] = res.get("plan", {}).get("warnings")
    return out


def run_matrix(
    short: bool,
    out: Path,
    only: list[str] | None = None,
    podgrace: str | None = None,
    keep: bool = False,
) -> int:
    rows = short_rows() if short else full_rows()
    if only:
        rows = [r for r in rows if r.profile in only]
    out = out / ("short" if short else "full") if out.name not in ("short", "full") else out
    (out / "scenarios").mkdir(parents=True, exist_ok=True)
    (out / "rendered").mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    rendered: dict[tuple[str, str], str] = {}
    render_errors: list[str] = []
    entries: list[dict[str, Any]] = []
    total = sum(len(r.modes) for r in rows)
    n = 0
    for row in rows:
        path = MANIFESTS / row.manifest
        for mode in row.modes:
            n += 1
            sid = f"{row.key}-{mode}"
            entry: dict[str, Any] = {
                "id": sid,
                "profile": row.profile,
                "manifest": row.manifest,
                "cell": row.cell.name,
                "endpoint_delay": row.cell.endpoint_delay,
                "request_ms": row.cell.request_ms,
                "rate": row.cell.rate,
                "process_control_timeout": row.pct,
                "image_signals": row.image_signals,
                "mode": mode,
                "row": row.key,
                "label": row.label,
                "note": row.note,
            }
            try:
                if mode == "original":
                    text = path.read_text()
                else:
                    if (row.manifest, mode) not in rendered:
                        rendered[(row.manifest, mode)] = render_manifest(path, mode, podgrace)
                        name = row.manifest.replace("/", "_").removesuffix(".yaml")
                        (out / "rendered" / f"{name}.{mode}.yaml").write_text(
                            "# "
                            + " ".join(
                                render_command(Path("bench/termination/manifests") / row.manifest, mode)
                            )
                            + "\n"
                            + rendered[(row.manifest, mode)]
                        )
                    text = rendered[(row.manifest, mode)]
                params = Params(
                    endpoint_delay=row.cell.endpoint_delay,
                    request_ms=row.cell.request_ms,
                    rate=row.cell.rate,
                    process_control_timeout=row.pct,
                    image_stop_signals=dict(row.image_signals),
                )
                _say(f"[{n}/{total}] {sid} ({time.monotonic() - started:.0f}s elapsed)")
                res = run_scenario(text, params, label=sid, keep_workdir=keep, log=_say)
                res["mode"] = mode
                write_json(res, out / "scenarios" / f"{sid}.json")
                entry.update(summarize_result(res))
            except RenderError as exc:
                render_errors.append(str(exc))
                entry["error"] = f"podgrace render failed: {exc}"
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                entry["error"] = "".join(traceback.format_exception_only(type(exc), exc)).strip()
                _say(traceback.format_exc())
            ok, text_verdict = verdict(mode, row, entry if "error" in entry else {**entry})
            entry["passed"] = ok
            entry["verdict"] = text_verdict
            _say(
                f"    -> {entry.get('failed', '?')}/{entry.get('total', '?')} failed "
                f"{entry.get('counts', '')} FailedPreStopHook x{entry.get('failed_pre_stop_hooks', '?')} "
                f"{'PASS' if ok else 'FAIL'}: {text_verdict}"
            )
            entries.append(entry)
    wall = time.monotonic() - started
    summary = {
        "kind": "short" if short else "full",
        "wall_s": round(wall, 1),
        "podgrace_render": " ".join(render_command(Path("MANIFEST"), "native", podgrace)),
        "render_errors": render_errors,
        "passed": all(e["passed"] for e in entries),
        "scenarios": entries,
    }
    (out / "matrix.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "matrix.md").write_text(markdown(summary))
    try:
        chart(summary, out / "matrix.png")
    except Exception as exc:  # the chart is a convenience; the verdicts are in the JSON and the table
        _say(f"chart failed: {exc!r}")
    _say(f"matrix: {len(entries)} scenarios in {wall:.0f}s -> {out}/matrix.md")
    failed = [e for e in entries if not e["passed"]]
    for e in failed:
        _say(f"FAILED {e['id']}: {e['verdict']}")
    print((out / "matrix.md").read_text())
    return 1 if failed or not entries else 0


# ------------------------------------------------------------------------------------------------ report


def _cell_text(e: dict[str, Any] | None) -> str:
    if e is None:
        return ""
    if e.get("error"):
        return "ERROR"
    kinds: dict[str, int] = {}
    for k, v in (e.get("counts") or {}).items():
        if k != "ok":
            label = k.split(":", 1)[1] if outcome_kind(k) == "5xx" else k
            kinds[label] = kinds.get(label, 0) + v
    detail = ", ".join(f"{k}x{v}" for k, v in sorted(kinds.items()))
    mark = "" if e["passed"] else " ✘"
    return f"**{e['failed']}**/{e['total']}" + (f" ({detail})" if detail else "") + mark


def _assumption_text(entries: list[dict[str, Any]]) -> str:
    for e in entries:
        a = e.get("assumptions")
        if a:
            return "hold" if a["hold"] else "broken: " + "; ".join(a["broken"])
    return "?"


def markdown(summary: dict[str, Any]) -> str:
    entries = summary["scenarios"]
    rows: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        rows.setdefault(e["row"], []).append(e)
    lines = [
        f"# podgrace termination lab: {summary['kind']} matrix",
        "",
        f"{len(entries)} scenarios, wall time {summary['wall_s']:.0f} s, "
        f"{'all verdicts passed' if summary['passed'] else 'SOME VERDICTS FAILED'}. "
        f"Rendered with `{summary['podgrace_render']}` (native) / `ContainerStopSignals=false` (fallback).",
        "",
        "Failed requests / requests sent (all pods; only pod0 terminates). Failure kinds: 502/503 from the",
        "load balancer or nginx, `refused`, `reset`, `timeout`, `incomplete`. ✘ = verdict failed.",
        "",
        "| profile | cell: endpoint delay / request / rate | php-fpm pct | image signal | "
        "assumptions | original | podgrace native | podgrace fallback | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for _key, es in rows.items():
        by_mode = {e["mode"]: e for e in es}
        e0 = es[0]
        pct = "n/a"
        runtimes = {c["runtime"] for e in es for c in e.get("containers") or []}
        if "php-fpm" in runtimes:
            pct = f"{e0['process_control_timeout']} s" if e0["process_control_timeout"] else "unset"
        profile = e0["profile"]
        if profile == "article":
            profile = "article: " + Path(e0["manifest"]).stem
        sig = ", ".join(f"{k}={v}" for k, v in e0["image_signals"].items()) or "image default"
        assumptions = _assumption_text([by_mode[m] for m in ("native", "fallback") if m in by_mode])
        if "native" not in by_mode and "fallback" not in by_mode:
            assumptions = "n/a"
        lines.append(
            f"| {profile} | {e0['cell']}: {e0['endpoint_delay']:g} s / {e0['request_ms']} ms / "
            f"{e0['rate']:g}/s | {pct} | {sig} | {assumptions} | {_cell_text(by_mode.get('original'))} | "
            f"{_cell_text(by_mode.get('native'))} | {_cell_text(by_mode.get('fallback'))} | {e0['note']} |"
        )
    lines += ["", "## Termination timelines (pod0; seconds after deletion)", ""]
    lines += [
        "| scenario | container | stop signal | preStop | hook result | signal sent | SIGKILL | exited |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in entries:
        for c in e.get("containers") or []:
            sent = "—" if c["signal_time"] is None else f"{c['signal_time']:.2f}"
            if c["signal_time"] is None and c["signal_note"]:
                sent = "not sent (exited)"
            killed = "—" if c["sigkill_time"] is None else f"{c['sigkill_time']:.2f}"
            exited = "—" if c["exit_time"] is None else f"{c['exit_time']:.2f}"
            hook = (c["pre_stop"] or "—").replace("|", "/")
            lines.append(
                f"| {e['id']} | {c['container']} | {c['stop_signal']} ({c['stop_signal_source']}) | "
                f"{hook} | {c['hook_result'] or '—'} | {sent} | {killed} | {exited} |"
            )
    failed = [e for e in entries if not e["passed"]]
    if failed:
        lines += ["", "## Failed verdicts", ""]
        lines += [f"- `{e['id']}`: {e['verdict']}" for e in failed]
    broken = [
        e
        for e in entries
        if e["mode"] != "original" and e.get("assumptions") and not e["assumptions"]["hold"]
    ]
    if broken:
        lines += ["", "## podgrace with a broken assumption (informational)", ""]
        lines += [f"- `{e['id']}`: {e['failed']}/{e['total']} failed — {e['verdict']}" for e in broken]
    return "\n".join(lines) + "\n"


def rewrite_report(out: Path) -> None:
    """Regenerate matrix.md and matrix.png from an existing matrix.json (no scenario is run)."""
    summary = json.loads((out / "matrix.json").read_text())
    (out / "matrix.md").write_text(markdown(summary))
    chart(summary, out / "matrix.png")


def chart(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows: dict[str, dict[str, dict[str, Any]]] = {}
    for e in summary["scenarios"]:
        rows.setdefault(e["row"], {})[e["mode"]] = e
    keys = list(rows)
    labels = [next(iter(rows[k].values())).get("label", k) for k in keys]
    modes = [
        ("original", "#d62728", "original"),
        ("native", "#2ca02c", "podgrace native"),
        ("fallback", "#1f77b4", "podgrace fallback"),
    ]
    width = 0.27
    fig, ax = plt.subplots(figsize=(max(8, 0.62 * len(labels) + 2), 6))
    shaded = False
    for j, key in enumerate(keys):
        broken = any(
            e.get("assumptions") and not e["assumptions"]["hold"]
            for m, e in rows[key].items()
            if m != "original"
        )
        if broken:
            ax.axvspan(
                j - 0.5, j + 0.5, color="#e8e8e8", zorder=0, label=None if shaded else "assumption broken"
            )
            shaded = True
    for i, (mode, color, legend) in enumerate(modes):
        xs, ys = [], []
        for j, key in enumerate(keys):
            e = rows[key].get(mode)
            if e is None or e.get("failed") is None:
                continue
            xs.append(j + (i - 1) * width)
            ys.append(e["failed"])
        bars = ax.bar(xs, ys, width, color=color, label=legend)
        for b, y in zip(bars, ys, strict=True):
            ax.annotate(str(y), (b.get_x() + b.get_width() / 2, y), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=90, fontsize=7)
    ax.set_ylabel("failed requests")
    ax.set_title(
        f"podgrace termination lab ({summary['kind']}): failed requests per scenario, before vs after"
    )
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
