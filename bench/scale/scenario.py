"""One benchmark run at one size N, on a fresh local control plane:

1. setup    cluster (narrow audit policy), the chart (CRD, RBAC, built-in profiles), a fan-out profile,
            N opted-in Deployments in N/per_namespace namespaces; wait for the controller-manager to settle
2. sync     podgrace started cold: time until every Deployment carries its settings, writes per Deployment
3. restart  podgrace restarted: writes (target 0), time until idle
4. churn    a pool of Deployments not yet opted in; open-loop user changes at `rate`/s for `seconds`
            (half opt-ins of pool Deployments, half edits of an opted-in Deployment's sleep annotation);
            latency = the user's write (requestReceivedTimestamp) -> podgrace's patch of that object
5. fanout   one edit of the profile `fanout` Deployments name: time until all are updated
6. floor    podgrace stopped; an identical copy of the N Deployments; a plain client sends the same patches
            with the same credentials and concurrency

Every write count and every latency comes from the API server's audit log. The operator's peak RSS and CPU
come from /proc. Results are a JSON-serialisable dict.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.scale import floor as floor_mod
from bench.scale.audit import AuditTail, Request, policy
from bench.scale.client import MERGE, Client
from bench.scale.operator import CLOCK_TICKS, BenchOperator
from bench.scale.snapshot import snapshot_operator
from bench.scale.workload import (
    DEFAULT_PROFILE,
    FANOUT_PROFILE,
    PROFILE_ANN,
    SLEEP_ANN,
    Item,
    carries_settings,
    create_deployments,
    fanout_profile,
    layout,
    list_set,
    wait_settled,
)
from tests.cluster.localcluster import ADMIN_USER, LocalCluster, ensure_binaries
from tests.support.podgrace_env import NAMESPACE, OPERATOR_USER, SERVICE_ACCOUNT, install_chart, wait_until

from podgrace.core.capabilities import NATIVE_SLEEP_SINCE, STOP_SIGNALS_GATE, Capabilities

PHASES = ("sync", "restart", "churn", "fanout", "floor")
FLOOR_AGENT = "podgrace-bench-floor"


class ScaleCluster(LocalCluster):
    """The e2e control plane, with the controller-manager's client rate limit raised (`kcm_qps`).

    At its default (20 requests/s per controller) the controller-manager needs ~12 minutes to roll out
    5,000 Deployments, and the benchmark waits for it to settle between phases. It does the same work
    either way; raised, it does it while podgrace (or the floor) is writing, as in a tuned large cluster.
    """

    def __init__(self, *args: Any, kcm_qps: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.kcm_qps = kcm_qps

    def _start_proc(self, name: str, argv: list[str]) -> Any:
        if name == "kube-controller-manager" and self.kcm_qps:
            argv = [*argv, f"--kube-api-qps={self.kcm_qps}", f"--kube-api-burst={2 * self.kcm_qps}"]
        return super()._start_proc(name, argv)


@dataclasses.dataclass
class Params:
    size: int
    per_namespace: int = 25
    fanout: int = 1000
    churn_rate: float = 20.0
    churn_seconds: float = 30.0
    workers: int = 20
    operator_args: list[str] = dataclasses.field(default_factory=list)
    chart_sets: list[str] = dataclasses.field(default_factory=list)  # helm install --set KEY=VALUE
    phases: tuple[str, ...] = PHASES
    profile: bool = False  # py-spy the operator during sync, churn and fan-out
    kcm_qps: int = 200  # the controller-manager's --kube-api-qps (0: its default, 20)
    keep: bool = False  # keep the cluster's workdir (logs, audit log)
    binaries: Path | None = None  # tests/cluster/build.sh's bin dir (default: build or find it)
    snapshot: bool = True  # run podgrace from a copy of operator/ (see snapshot.py); False: as installed


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def reads(reqs: list[Request]) -> dict[str, int]:
    """Non-write requests by verb and resource (dry-run applies included, marked)."""
    return dict(
        Counter(f"{r.verb} {r.full_resource or 'non-resource'}{' (dry-run)' if r.dry_run else ''}"
                for r in reqs if not r.is_write)
    )  # fmt: skip


def server_side(writes: list[Request]) -> dict[str, float]:
    """How the API server served these requests: median and p90 time from received to response, and how
    many were in flight on average over their span (the client's effective concurrency)."""
    if not writes:
        return {}
    took = [r.completed - r.received for r in writes]
    span = max(r.completed for r in writes) - min(r.received for r in writes)
    return {
        "server_p50_ms": pct(took, 50) * 1000,
        "server_p90_ms": pct(took, 90) * 1000,
        "in_flight": sum(took) / span if span > 0 else float("nan"),
        "per_s": len(writes) / span if span > 0 else float("nan"),
    }


def python_speed() -> float:
    """CPU seconds of a fixed pure-Python loop (5 million additions): how fast this machine runs Python
    right now, so that runs on different (or differently loaded) machines can be compared."""
    started = time.process_time()
    total = 0
    for i in range(5_000_000):
        total += i
    return time.process_time() - started


def is_podgrace(r: Request) -> bool:
    return r.user == OPERATOR_USER and r.user_agent != FLOOR_AGENT


class Bench:
    def __init__(self, params: Params, out_dir: Path) -> None:
        self.p = params
        self.out = out_dir
        self.out.mkdir(parents=True, exist_ok=True)
        self.result: dict[str, Any] = {
            "size": params.size,
            "params": dataclasses.asdict(params),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "loadavg_before": os.getloadavg(),
            "python_loop_s": {"before": python_speed()},
        }
        self.cluster: LocalCluster | None = None
        self.audit: AuditTail | None = None
        self.op: BenchOperator | None = None
        self.main = layout(
            params.size, prefix="bench", per_namespace=params.per_namespace, fanout=self.fanout_count
        )

    @property
    def fanout_count(self) -> int:
        return min(self.p.size, self.p.fanout)

    # ---- helpers

    def admin(self, **kw: Any) -> Client:
        c = self.cluster
        assert c is not None
        return Client(c.server, c.admin_token, c.pki / "ca.crt", **kw)

    def run_async(self, fn: Callable[[Client], Any], **kw: Any) -> Any:
        async def go() -> Any:
            async with self.admin(**kw) as client:
                return await fn(client)

        return asyncio.run(go())

    def podgrace_requests(self, mark: int) -> list[Request]:
        assert self.audit is not None
        return self.audit.since(mark, is_podgrace)

    def cluster_cpu(self) -> dict[str, float]:
        """CPU seconds (utime + stime) each control-plane process has used so far."""
        assert self.cluster is not None
        out = {}
        for name, pid in self.cluster.pids().items():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            out[name] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
        return out

    @staticmethod
    def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        return {k: round(after[k] - before.get(k, 0.0), 2) for k in after}

    def total_deployments(self) -> int:
        c = self.cluster
        assert c is not None
        status, body = c.request("GET", "/apis/apps/v1/deployments?limit=1")
        assert status == 200, body
        remaining = int(body["metadata"].get("remainingItemCount") or 0)
        return len(body["items"]) + remaining

    def start_operator(self, label: str) -> BenchOperator:
        assert self.cluster is not None
        args = ["--all-namespaces", "--workers", str(self.p.workers), *self.p.operator_args]
        op = BenchOperator(self.cluster, *args)
        op.start()
        if self.p.profile:
            op.start_profile(self.out / f"pyspy-{self.p.size}-{label}.folded.txt")
        self.op = op
        return op

    # ---- phases

    def setup(self) -> None:
        if self.p.snapshot:
            self.result["operator_code"] = snapshot_operator(self.out)
        policy_file = self.out / "audit-policy.yaml"
        policy_file.write_text(policy([OPERATOR_USER, ADMIN_USER]))
        self.cluster = ScaleCluster(
            kcm_qps=self.p.kcm_qps,
            binaries=self.p.binaries or ensure_binaries(),
            nodes=1,
            name=f"scale-{self.p.size}",
            keep_workdir=self.p.keep,
            start_timeout=180,
            extra_apiserver_args=[f"--audit-policy-file={policy_file}"],  # the last flag wins
        )
        self.cluster.start()
        log(f"cluster up in {self.cluster.start_seconds:.1f}s (workdir {self.cluster.workdir})")
        self.audit = AuditTail(self.cluster.audit_log)
        install_chart(self.cluster, *(arg for kv in self.p.chart_sets for arg in ("--set", kv)))
        cluster = self.cluster

        def builtin() -> dict[str, Any] | None:
            status, body = cluster.request(
                "GET", f"/apis/podgrace.dev/v1alpha1/shutdownprofiles/{DEFAULT_PROFILE}"
            )
            return body if status == 200 else None

        base = wait_until("the chart's built-in profiles", builtin, timeout=60)
        cluster.kubectl("apply", "-f", "-", input=json.dumps(fanout_profile(base)))
        seconds = self.run_async(lambda c: create_deployments(c, self.main, "main"))
        log(f"created {len(self.main)} Deployments in {seconds:.1f}s ({len(self.main) / seconds:.0f}/s)")
        self.run_async(lambda c: wait_settled(c, "main", len(self.main)))
        log("controller-manager settled")
        self.result["setup"] = {"create_s": seconds, "namespaces": len({i.namespace for i in self.main})}

    def sync(self) -> None:
        assert self.audit is not None
        mark = self.audit.mark()
        cpu_before = self.cluster_cpu()
        op = self.start_operator("sync")
        n = len(self.main)
        keys = {i.key for i in self.main}
        deadline = time.monotonic() + 3600
        while True:
            patched = {
                r.key for r in self.podgrace_requests(mark) if r.is_write and r.resource == "deployments"
            }
            if keys <= patched:
                cluster_cpu = self.cpu_delta(cpu_before, self.cluster_cpu())
                podgrace_cpu = op.stats()["cpu_s"]
                break
            if not op.alive():
                raise RuntimeError(f"podgrace exited:\n{op.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"sync: {len(keys & patched)}/{n} Deployments patched after 1 h")
            time.sleep(0.5)
        idle_at = op.wait_idle(self.total_deployments())
        op.stop_profile()
        stats = op.stats()
        stats["reconciles"] = op.reconciles()
        # podgrace posts its Applied Events after the settings: wait for them too, and say when.
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            made = [r for r in self.podgrace_requests(mark) if r.is_write and r.resource == "events"]
            if len(made) >= n:
                break
            time.sleep(1.0)
        reqs = self.podgrace_requests(mark)
        writes = [r for r in reqs if r.is_write]
        dep_writes = [r for r in writes if r.resource == "deployments"]
        per = Counter(r.key for r in dep_writes)
        # Writes while the settings were being written (the sync's own window), and in all.
        last_setting = max(r.completed for r in dep_writes)
        during = Counter(
            r.full_resource for r in writes if r.resource != "deployments" and r.received <= last_setting
        )
        objs = self.run_async(lambda c: list_set(c, "main"))
        missing = [o["metadata"]["name"] for o in objs if not carries_settings(o)]
        self.result["sync"] = {
            "seconds": max(r.completed for r in dep_writes) - op.started_at,
            "first_write_s": min(r.received for r in dep_writes) - op.started_at,
            "write_span_s": max(r.completed for r in dep_writes) - min(r.received for r in dep_writes),
            "idle_s": idle_at - op.started_at,
            "events_done_s": max((r.completed for r in made), default=op.started_at) - op.started_at,
            "deployment_writes": len(dep_writes),
            "writes_per_deployment": dict(Counter(per.values())),
            "other_writes": dict(Counter(r.full_resource for r in writes if r.resource != "deployments")),
            "other_writes_during_sync": dict(during),
            "reads": reads(reqs),
            "http_429": sum(1 for r in reqs if r.code == 429),
            "errors": sum(1 for r in reqs if r.code >= 400 and r.code != 404),
            "missing_settings": len(missing),
            "cluster_cpu_s": cluster_cpu,  # control plane, from start to the last setting (+ <0.5 s)
            "podgrace_cpu_s_to_last_setting": podgrace_cpu,
            "deployment_writes_served": server_side(dep_writes),
            "all_requests_served": server_side([r for r in reqs if r.verb != "watch"]),
            **stats,
        }
        log(f"sync: {self.result['sync']['seconds']:.1f}s, {len(dep_writes)} Deployment writes, {stats}")
        # Let the controller-manager finish the rollouts podgrace caused before restarting it.
        self.run_async(lambda c: wait_settled(c, "main", n, generation=2))
        self.op.wait_idle(0)  # type: ignore[union-attr]

    def restart(self) -> None:
        assert self.audit is not None
        if self.op is not None:
            self.op.stop()
        mark = self.audit.mark()
        op = self.start_operator("restart")
        idle_at = op.wait_idle(self.total_deployments(), quiet=3.0)
        stats = op.stats()
        stats["reconciles"] = op.reconciles()
        reqs = self.podgrace_requests(mark)
        writes = [r for r in reqs if r.is_write]
        self.result["restart"] = {
            "idle_s": idle_at - op.started_at,
            "writes": len(writes),
            "writes_by_resource": dict(Counter(r.resource for r in writes)),
            "reads": reads(reqs),
            "http_429": sum(1 for r in reqs if r.code == 429),
            **stats,
        }
        log(f"restart: idle after {idle_at - op.started_at:.1f}s, {len(writes)} writes, {stats}")

    def churn(self) -> None:
        assert self.audit is not None and self.op is not None
        rate, seconds = self.p.churn_rate, self.p.churn_seconds
        changes = int(rate * seconds)
        pool = layout(
            (changes + 1) // 2, prefix="pool", per_namespace=self.p.per_namespace, fanout=0, profile=False
        )
        self.run_async(lambda c: create_deployments(c, pool, "pool"))
        self.run_async(lambda c: wait_settled(c, "pool", len(pool)))
        self.op.wait_idle(0, quiet=3.0)
        # Edits go to Deployments of the built-in profile where there are enough (the fan-out phase changes
        # the other profile); at small N they cycle, each object edited again only N/(rate/2) s later.
        edit_targets = [i for i in self.main if i.profile == DEFAULT_PROFILE] or list(self.main)
        plan: list[tuple[str, Item, dict[str, Any]]] = []
        for k in range(changes):
            if k % 2 == 0:
                item = pool[k // 2]
                plan.append(("opt-in", item, {PROFILE_ANN: DEFAULT_PROFILE}))
            else:
                j = k // 2
                item = edit_targets[j % len(edit_targets)]
                plan.append(("edit", item, {SLEEP_ANN: str(6 + (j // len(edit_targets)) % 50)}))
        mark = self.audit.mark()
        cpu_before = self.op.stats()["cpu_s"]
        if self.p.profile:
            self.op.start_profile(self.out / f"pyspy-{self.p.size}-churn.folded.txt")

        async def drive(client: Client) -> list[int]:
            started = time.monotonic()
            tasks = []
            for k, (_, item, wanted) in enumerate(plan):
                delay = started + k / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                body = {"metadata": {"annotations": wanted}}
                path = f"/apis/apps/v1/namespaces/{item.namespace}/deployments/{item.name}"
                tasks.append(
                    asyncio.create_task(client.request("PATCH", path, body, content_type=MERGE, parse=False))
                )
            return [s for s, _ in await asyncio.gather(*tasks)]

        statuses = self.run_async(drive)
        user_writes: list[Request] = []
        deadline = time.monotonic() + 300
        while True:
            reqs = self.audit.since(mark)
            user_writes = [
                r for r in reqs if r.user == ADMIN_USER and r.is_write and r.resource == "deployments"
            ]
            ours = [r for r in reqs if is_podgrace(r) and r.is_write and r.resource == "deployments"]
            latencies, missed = match(user_writes, ours)
            if len(user_writes) >= changes and not missed:
                break
            if time.monotonic() > deadline:
                log(f"churn: {len(missed)} changes without a podgrace patch after 300 s")
                break
            time.sleep(1.0)
        self.op.stop_profile()
        stats = self.op.stats()
        self.result["churn"] = {
            "rate": rate,
            "seconds": seconds,
            "changes": changes,
            "user_statuses": dict(Counter(statuses)),
            "matched": len(latencies),
            "missed": len(missed),
            "p50_s": pct(latencies, 50),
            "p90_s": pct(latencies, 90),
            "p99_s": pct(latencies, 99),
            "max_s": max(latencies) if latencies else float("nan"),
            "mean_s": statistics.fmean(latencies) if latencies else float("nan"),
            # Writes that went through; a patch refused with 409 (it names the resourceVersion podgrace read,
            # and the user's next change came in between) changed nothing and is planned again: counted apart.
            "podgrace_writes": sum(1 for r in ours if r.code < 400),
            "podgrace_refused": dict(Counter(r.code for r in ours if r.code >= 400)),
            "cpu_s": stats["cpu_s"] - cpu_before,
            "http_429": sum(1 for r in reqs if r.code == 429),
        }
        log(
            f"churn: p50 {pct(latencies, 50):.3f}s p99 {pct(latencies, 99):.3f}s "
            f"({len(latencies)} matched, {len(missed)} missed)"
        )
        self.run_async(lambda c: wait_settled(c, "pool", len(pool)))

    def fanout(self) -> None:
        assert self.audit is not None and self.op is not None and self.cluster is not None
        self.op.wait_idle(0, quiet=3.0)
        users = {i.key for i in self.main if i.profile == FANOUT_PROFILE}
        profile = self.cluster.kubectl_json("get", "shutdownprofile", FANOUT_PROFILE)
        containers = profile["spec"]["containers"]
        containers[0]["drainSeconds"] = int(containers[0].get("drainSeconds", 30)) + 1
        mark = self.audit.mark()
        if self.p.profile:
            self.op.start_profile(self.out / f"pyspy-{self.p.size}-fanout.folded.txt")
        self.run_async(
            lambda c: c.ok(
                "PATCH",
                f"/apis/podgrace.dev/v1alpha1/shutdownprofiles/{FANOUT_PROFILE}",
                {"spec": {"containers": containers}},
                content_type=MERGE,
            )
        )
        deadline = time.monotonic() + 1800
        while True:
            reqs = self.audit.since(mark)
            ours = [r for r in reqs if is_podgrace(r) and r.is_write and r.resource == "deployments"]
            if users <= {r.key for r in ours}:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"fan-out: {len(users & {r.key for r in ours})}/{len(users)} after 30 min")
            time.sleep(0.5)
        self.op.stop_profile()
        edit = next(
            r for r in reqs if r.user == ADMIN_USER and r.resource == "shutdownprofiles" and r.verb == "patch"
        )
        time.sleep(3)
        reqs = self.audit.since(mark)
        ours = [r for r in reqs if is_podgrace(r) and r.is_write and r.resource == "deployments"]
        self.result["fanout"] = {
            "users": len(users),
            "seconds": max(r.completed for r in ours) - edit.received,
            "first_write_s": min(r.received for r in ours) - edit.received,
            "deployment_writes": len(ours),
            "outside_users": sum(1 for r in ours if r.key not in users),
            "deployment_writes_served": server_side(ours),
            "reads": reads([r for r in reqs if is_podgrace(r)]),
            "http_429": sum(1 for r in reqs if r.code == 429),
        }
        log(f"fan-out: {self.result['fanout']['seconds']:.1f}s for {len(users)} Deployments")

    def finish_operator(self) -> None:
        if self.op is not None:
            self.result["operator_final"] = self.op.stats()
            self.op.stop()
            log(f"podgrace log: {self.op.log_path}")
            self.op = None

    def floor(self) -> None:
        assert self.cluster is not None and self.audit is not None
        c = self.cluster
        items = layout(
            self.p.size, prefix="floor", per_namespace=self.p.per_namespace, fanout=self.fanout_count
        )
        self.run_async(lambda cl: create_deployments(cl, items, "floor"))
        self.run_async(lambda cl: wait_settled(cl, "floor", len(items)))
        token = c.create_token(SERVICE_ACCOUNT, NAMESPACE, duration="2h")
        _, version = c.request("GET", "/version")
        minor = int("".join(ch for ch in str(version["minor"]) if ch.isdigit()))
        caps = Capabilities(
            native_sleep=(int(version["major"]), minor) >= NATIVE_SLEEP_SINCE,
            stop_signal=bool(c.feature_gates.get(STOP_SIGNALS_GATE)),
        )

        async def go() -> dict[str, Any]:
            limit = max(10, self.p.workers * 2)  # podgrace's KubeClient connection limit
            async with Client(c.server, token, c.pki / "ca.crt", limit=limit, user_agent=FLOOR_AGENT) as sa:
                t0 = time.monotonic()
                objs = await sa.list_all(
                    "/apis/apps/v1/deployments", label_selector="bench.podgrace.dev/set=floor", chunk=0
                )
                list_s = time.monotonic() - t0
                profiles = (await sa.ok("GET", "/apis/podgrace.dev/v1alpha1/shutdownprofiles"))["items"]
                writes = floor_mod.build(objs, profiles, caps)
                mark = self.audit.mark()  # type: ignore[union-attr]
                cpu0, client0 = self.cluster_cpu(), time.process_time()
                res = await floor_mod.run(sa, writes, self.p.workers)
                client_cpu = time.process_time() - client0
                cluster_cpu = self.cpu_delta(cpu0, self.cluster_cpu())
                return {
                    "list_s": list_s,
                    "mark": mark,
                    "result": res,
                    "client_cpu": client_cpu,
                    "cluster_cpu": cluster_cpu,
                }

        out = asyncio.run(go())
        res: floor_mod.FloorResult = out["result"]
        time.sleep(1)
        reqs = [r for r in self.audit.since(out["mark"]) if r.user_agent == FLOOR_AGENT]
        writes = [r for r in reqs if r.is_write and r.resource == "deployments"]
        span = max(r.completed for r in writes) - min(r.received for r in writes)
        self.result["floor"] = {
            "requests": res.requests,
            "client_s": res.seconds,
            "list_s": out["list_s"],
            "write_span_s": span,
            "seconds": out["list_s"] + span,
            "statuses": res.statuses,
            "client_cpu_s": out["client_cpu"],
            "cluster_cpu_s": out["cluster_cpu"],
            "audit_writes": len(writes),
            "deployment_writes_served": server_side(writes),
            "http_429": sum(1 for r in reqs if r.code == 429),
        }
        log(
            f"floor: list {out['list_s']:.2f}s + patches {span:.2f}s "
            f"(client {res.seconds:.2f}s), {res.statuses}"
        )

    # ---- all

    def run(self) -> dict[str, Any]:
        try:
            self.setup()
            if "sync" in self.p.phases:
                self.sync()
            if "restart" in self.p.phases:
                self.restart()
            if ("churn" in self.p.phases or "fanout" in self.p.phases) and self.op is None:
                self.start_operator("run").wait_idle(self.total_deployments())
            if "churn" in self.p.phases:
                self.churn()
            if "fanout" in self.p.phases:
                self.fanout()
            self.finish_operator()
            if "floor" in self.p.phases:
                self.floor()
            derive(self.result)
            self.result["loadavg_after"] = os.getloadavg()
            self.result["python_loop_s"]["after"] = python_speed()
            log(f"Python speed (CPU s of a 5M-addition loop): {self.result['python_loop_s']}")
            return self.result
        except BaseException:
            if self.cluster is not None:
                self.cluster.keep_workdir = True
                log(f"failed; cluster workdir kept: {self.cluster.workdir}")
            if self.op is not None:
                log(f"podgrace log: {self.op.log_path}\n{self.op.log_tail(30)}")
            raise
        finally:
            if self.op is not None:
                self.op.stop()
            if self.cluster is not None:
                self.cluster.stop()
            (self.out / f"result-{self.p.size}.json").write_text(
                json.dumps(self.result, indent=2, default=str)
            )


def match(user_writes: list[Request], ours: list[Request]) -> tuple[list[float], list[Request]]:
    """For each user write, the first podgrace patch of the same object received after it."""
    by_key: dict[tuple[str, str], list[Request]] = {}
    for r in sorted(ours, key=lambda r: r.received):
        by_key.setdefault(r.key, []).append(r)
    latencies, missed = [], []
    used: set[int] = set()
    for u in sorted(user_writes, key=lambda r: r.received):
        candidates = [r for r in by_key.get(u.key, []) if r.received >= u.received and id(r) not in used]
        if candidates:
            used.add(id(candidates[0]))
            latencies.append(candidates[0].received - u.received)
        else:
            missed.append(u)
    return latencies, missed


def derive(result: dict[str, Any]) -> None:
    sync, fl = result.get("sync"), result.get("floor")
    if sync and fl:
        result["ratio_to_floor"] = sync["seconds"] / fl["seconds"]
        result["write_span_ratio"] = sync["write_span_s"] / fl["write_span_s"]
    finals = [result.get(k, {}).get("peak_rss_mib", 0.0) for k in ("sync", "restart", "operator_final")]
    result["peak_rss_mib"] = max(finals)
