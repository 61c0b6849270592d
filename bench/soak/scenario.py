"""One soak run on a fresh local control plane:

1. setup   cluster (audit log of podgrace's and the admin's requests), the chart, the edited profile
           (a copy of nginx-php-fpm named by a tenth of the opted-in Deployments), N opted-in Deployments
           and a pool of N/5 not opted in, 25 to a namespace
2. sync    the fault proxy in place but no faults; podgrace started, pointed at the proxy; every opted-in
           Deployment written; idle; the operator's asyncio task count taken (the baseline)
3. soak    faults on (faults.py) while the owners change Deployments at `rate`/s for `seconds` (churn.py),
           two profile edits, cuts of every watch, an API server restart at 30 % and an etcd restart at 60 %
4. settle  faults off; wait until every Deployment equals the planner's rendering (at most `settle` s),
           then until podgrace is idle; the task count again
5. verdict `podgrace render` (the CLI) of the owners' manifests against the live objects; podgrace's
           Deployment writes (audit log) against the minimum (churn.py); writes to Deployments never opted
           in; the operator process (alive, one start, no traceback in its log); Retry-After honoured

The owners write directly to the API server (as admin, retrying through the restarts); only podgrace's
traffic goes through the proxy. Results are a JSON-serialisable dict.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from bench.scale.audit import AuditTail, Request, policy
from bench.scale.client import MERGE, Client
from bench.scale.scenario import ScaleCluster, log
from bench.scale.workload import (
    DEFAULT_PROFILE,
    FANOUT_PROFILE,
    PROFILE_ANN,
    create_deployments,
    fanout_profile,
    layout,
    list_set,
    wait_settled,
)
from bench.soak import faults
from bench.soak.churn import Churn, Model, Owner, settings
from tests.cluster.localcluster import ADMIN_USER, ensure_binaries
from tests.support.fault_proxy import FaultProxy
from tests.support.podgrace_env import OPERATOR_USER, OperatorProcess, install_chart, wait_until

from podgrace.core.capabilities import from_description

SERVER_VERSION = (1, 36)  # tests/cluster/build.sh's kube-apiserver; ContainerStopSignals off
SETS = ("main", "pool")


@dataclasses.dataclass
class Params:
    size: int = 500  # opted-in Deployments at the start
    pool: int | None = None  # Deployments not opted in at the start (default size // 5)
    per_namespace: int = 25
    churn_rate: float = 4.0  # owner changes per second
    churn_seconds: float = 300.0
    fault_scale: float = 1.0  # multiplies every fault share (faults.rules)
    watch_cut_every: float = 30.0  # seconds between cuts of every watch through the proxy
    settle_seconds: float = 600.0
    workers: int = 20
    binaries: Path | None = None
    keep: bool = False

    @property
    def pool_size(self) -> int:
        return self.pool if self.pool is not None else max(1, self.size // 5)


def is_podgrace(r: Request) -> bool:
    return r.user == OPERATOR_USER


class Soak:
    def __init__(self, params: Params, out_dir: Path) -> None:
        self.p, self.out = params, out_dir
        self.result: dict[str, Any] = {
            "params": dataclasses.asdict(params),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "loadavg_before": os.getloadavg(),
        }
        self.main = layout(params.size, prefix="soak", per_namespace=params.per_namespace,
                           fanout=max(1, params.size // 10))  # fmt: skip
        self.pool = layout(params.pool_size, prefix="soakpool", per_namespace=params.per_namespace,
                           fanout=0, profile=False)  # fmt: skip
        self.cluster: ScaleCluster | None = None
        self.proxy: FaultProxy | None = None
        self.op: OperatorProcess | None = None
        self.audit: AuditTail | None = None
        self.model: Model | None = None

    # ---- helpers

    def admin(self) -> Client:
        c = self.cluster
        assert c is not None
        return Client(c.server, c.admin_token, c.pki / "ca.crt", limit=16)

    def run_async(self, fn: Callable[[Client], Any]) -> Any:
        async def go() -> Any:
            async with self.admin() as client:
                return await fn(client)

        return asyncio.run(go())

    def tasks(self) -> float:
        assert self.op is not None
        return self.op.metric("podgrace_asyncio_tasks")

    def wait_idle(self, quiet: float = 5.0, timeout: float = 900.0) -> None:
        assert self.op is not None
        self.op.wait_quiet(quiet, timeout)

    async def live(self, client: Client) -> dict[tuple[str, str], dict[str, Any]]:
        objs = [o for s in SETS for o in await list_set(client, s)]
        return {(o["metadata"]["namespace"], o["metadata"]["name"]): o for o in objs}

    def mismatches(self, live: dict[tuple[str, str], dict[str, Any]]) -> list[tuple[str, str]]:
        assert self.model is not None
        model = self.model
        return sorted(
            key for key, owner in model.owners.items()
            if key not in live or settings(live[key]) != model.rendered(owner)
        )  # fmt: skip

    # ---- phases

    def setup(self) -> None:
        policy_file = self.out / "audit-policy.yaml"
        policy_file.write_text(policy([OPERATOR_USER, ADMIN_USER]))
        self.cluster = ScaleCluster(
            kcm_qps=200,
            binaries=self.p.binaries or ensure_binaries(),
            nodes=1,
            name=f"soak-{self.p.size}",
            keep_workdir=self.p.keep,
            start_timeout=180,
            extra_apiserver_args=[f"--audit-policy-file={policy_file}"],
        )
        self.cluster.start()
        cluster = self.cluster
        log(f"cluster up in {cluster.start_seconds:.1f}s (workdir {cluster.workdir})")
        self.audit = AuditTail(cluster.audit_log)
        install_chart(cluster)

        def builtin() -> dict[str, Any] | None:
            status, body = cluster.request(
                "GET", f"/apis/podgrace.dev/v1alpha1/shutdownprofiles/{DEFAULT_PROFILE}"
            )
            return body if status == 200 else None

        edited = fanout_profile(wait_until("the chart's built-in profiles", builtin, timeout=60))
        cluster.kubectl("apply", "-f", "-", input=json.dumps(edited))
        self.run_async(lambda c: create_deployments(c, self.main, "main"))
        self.run_async(lambda c: create_deployments(c, self.pool, "pool"))
        self.run_async(lambda c: wait_settled(c, "main", len(self.main)))
        self.run_async(lambda c: wait_settled(c, "pool", len(self.pool)))
        owners = [Owner(i, "main", {PROFILE_ANN: str(i.profile)}) for i in self.main]
        owners += [Owner(i, "pool", {}) for i in self.pool]
        capabilities = from_description(SERVER_VERSION, {})
        self.model = Model(owners, {FANOUT_PROFILE: edited}, capabilities)
        log(f"{len(self.main)} opted-in and {len(self.pool)} other Deployments created and settled")

    def sync(self) -> None:
        assert self.cluster is not None and self.audit is not None and self.model is not None
        self.proxy = FaultProxy.for_cluster(self.cluster).start()
        self.op = OperatorProcess(
            self.cluster, "--all-namespaces", "--workers", str(self.p.workers), server=self.proxy.url
        )
        self.op.start()
        started = time.monotonic()
        model = self.model
        wait_until(
            "every opted-in Deployment written",
            lambda: not self.mismatches(self.run_async(self.live)),
            timeout=1800,
            interval=5.0,
        )
        self.wait_idle()
        time.sleep(10)  # Kopf's per-object workers of the profiles end after their idle timeout
        self.result["sync"] = {"seconds": time.monotonic() - started, "minimum": model.minimum}
        self.result["tasks_idle_before"] = self.tasks()
        log(f"sync: {self.result['sync']}, tasks {self.result['tasks_idle_before']}")

    def soak(self) -> None:
        assert self.cluster is not None and self.proxy is not None and self.model is not None
        cluster, proxy, model = self.cluster, self.proxy, self.model
        by_type = faults.rules(self.p.fault_scale)
        faults.install(proxy, by_type)
        churn = Churn([o.key for o in model.owners.values() if o.item.profile != FANOUT_PROFILE])
        seconds = self.p.churn_seconds
        timeline: list[tuple[float, float, str]] = []  # began, done (s into the soak), what
        events: Counter[str] = Counter()
        history: list[dict[str, Any]] = []  # every owner write, with the status of each attempt
        stop = threading.Event()

        restarted = threading.Event()  # both restarts done: the churn goes on at least until then
        failure: list[BaseException] = []

        def disruptions() -> None:
            """Restarts and watch cuts, on their own thread (a restart blocks for seconds; on a loaded
            machine kube-apiserver can take a minute to be ready again)."""
            plan = [(0.3 * seconds, "apiserver restart"), (0.6 * seconds, "etcd restart")]
            cut = self.p.watch_cut_every
            plan += [(t * cut, "watch cut") for t in range(1, int(seconds // cut) + 1)]
            t0 = time.monotonic()
            try:
                for at, what in sorted(plan):
                    if stop.wait(max(0.0, at - (time.monotonic() - t0))):  # set only once restarted
                        return
                    began = time.monotonic() - t0
                    if what == "apiserver restart":
                        cluster.restart_apiserver()
                    elif what == "etcd restart":
                        cluster.restart_etcd()
                        restarted.set()
                    else:
                        proxy.drop_streams()
                    timeline.append((began, time.monotonic() - t0, what))
                    events[what] += 1
                    log(f"soak: {what} at {began:.0f}s (ready again at {time.monotonic() - t0:.0f}s)")
            except BaseException as error:
                failure.append(error)
                restarted.set()

        async def write(client: Client, method: str, path: str, body: Any, content_type: str) -> None:
            """An owner's write, retried through the restarts (a merge patch is idempotent); every
            attempt's status goes into the history."""
            attempts: list[int] = []
            history.append({"at": time.time(), "path": path, "body": body, "statuses": attempts})
            give_up = time.monotonic() + 300  # a restart on a loaded machine takes up to a minute or two
            while time.monotonic() < give_up:
                try:
                    status, payload = await client.request(
                        method, path, body, content_type=content_type, parse=True
                    )
                except (aiohttp.ClientError, TimeoutError):
                    status, payload = 0, "connection failed"
                attempts.append(status)
                if 0 < status < 400:  # 0: no answer (connection failed)
                    return
                if status not in (0, 429) and status < 500:
                    raise RuntimeError(f"{method} {path}: {status} {str(payload)[:300]}")
                await asyncio.sleep(0.5)
            raise RuntimeError(f"{method} {path}: still failing after 300 s: {attempts}")

        async def owners(client: Client) -> None:
            started = time.monotonic()
            edits = [0.2 * seconds, 0.75 * seconds]
            drains = [25, 20]
            n = 0
            while (elapsed := time.monotonic() - started) < seconds or not restarted.is_set():
                if edits and elapsed >= edits[0]:
                    edits.pop(0)
                    spec = copy.deepcopy(model.profile_bodies[FANOUT_PROFILE]["spec"])
                    drain = drains.pop(0)
                    for rule in spec["containers"]:
                        rule["drainSeconds"] = drain
                    path = f"/apis/podgrace.dev/v1alpha1/shutdownprofiles/{FANOUT_PROFILE}"
                    await write(client, "PATCH", path, {"spec": spec}, MERGE)
                    model.edit_profile(FANOUT_PROFILE, spec)
                    log(f"soak: profile edit (drainSeconds {drain}) at {elapsed:.0f}s")
                key, kind, changes = churn.next(model, DEFAULT_PROFILE)
                path = f"/apis/apps/v1/namespaces/{key[0]}/deployments/{key[1]}"
                await write(client, "PATCH", path, {"metadata": {"annotations": changes}}, MERGE)
                model.annotate(key, kind, changes)
                n += 1
                await asyncio.sleep(max(0.0, started + n / self.p.churn_rate - time.monotonic()))

        thread = threading.Thread(target=disruptions, name="soak-disruptions")
        thread.start()
        try:
            self.run_async(owners)
        finally:
            stop.set()
            restarted.set()
            thread.join()
            proxy.clear()
        if failure:
            raise failure[0]
        self.result["soak"] = {
            "owner_changes": dict(model.events),
            "disruptions": dict(events),
            "timeline": timeline,
            "faults": faults.injected(by_type),
            "proxy_requests": dict(faults.answered(proxy)),
            "owner_writes": history,
        }
        log(f"soak: {self.result['soak']}")

    def settle(self) -> None:
        started = time.monotonic()
        deadline = started + self.p.settle_seconds
        left: list[tuple[str, str]] = []
        while time.monotonic() < deadline:
            left = self.mismatches(self.run_async(self.live))
            if not left:
                break
            time.sleep(5.0)
        self.result["settle"] = {"seconds": time.monotonic() - started, "mismatches_at_end": len(left)}
        self.wait_idle()
        time.sleep(10)
        self.result["tasks_idle_after"] = self.tasks()
        log(f"settle: {self.result['settle']}, tasks {self.result['tasks_idle_after']}")

    def verdict(self) -> None:
        assert self.audit is not None and self.model is not None and self.op is not None
        assert self.proxy is not None
        model, op = self.model, self.op
        live = self.run_async(self.live)
        rendered = render_cli(model)
        wrong = sorted(k for k in model.owners if settings(live[k]) != settings(rendered[k]))
        mismatched = [f"{ns}/{name}" for ns, name in wrong]
        # For a post-mortem: what the owner wrote (the model) beside what the API server has.
        self.result["mismatch_details"] = {
            f"{k[0]}/{k[1]}": {"owner": model.owners[k].annotations,
                               "live": live[k]["metadata"].get("annotations"),
                               "live_settings": settings(live[k]), "rendered": settings(rendered[k])}
            for k in wrong
        }  # fmt: skip
        requests = self.audit.since(0, is_podgrace)
        dep = [r for r in requests if r.resource == "deployments" and not r.subresource]
        writes = [r for r in dep if r.is_write and r.code < 400]
        never = {k for k, o in model.owners.items() if not o.ever_opted_in}
        fanout_users = {k for k, o in model.owners.items() if o.item.profile == FANOUT_PROFILE}
        outside = [r for r in writes if r.key in never or r.key not in model.owners]
        gaps, short = faults.retry_after_gaps(self.proxy, dep, fanout_users)
        log_text = op.log_path.read_text(errors="replace")
        self.result["verdict"] = {
            "deployments": len(model.owners),
            "opted_in_at_end": sum(1 for o in model.owners.values() if o.opted_in),
            "ever_opted_in": len(model.owners) - len(never),
            "podgrace_deployment_writes": len(writes),
            "failed_deployment_writes": sum(1 for r in dep if r.is_write and r.code >= 400),
            "minimum_writes": model.minimum,
            "minimum_by_cause": dict(model.minimum_by_cause),
            "ratio": len(writes) / model.minimum if model.minimum else float("nan"),
            "mismatches_vs_render": mismatched,
            "writes_to_never_opted_in": [f"{r.namespace}/{r.name}" for r in outside],
            "other_writes": dict(
                Counter(r.full_resource for r in requests if r.is_write and r.resource != "deployments")
            ),
            "operator_alive": op.alive(),
            "operator_starts": op.starts,
            "tracebacks": log_text.count("Traceback (most recent call last)"),
            "retry_after_checked": len(gaps),
            "retry_after_min_gap_s": min(gaps) if gaps else None,
            "retry_after_too_early": short,
            "tasks_idle_before": self.result.get("tasks_idle_before"),
            "tasks_idle_after": self.result.get("tasks_idle_after"),
            "operator_log": str(op.log_path),
        }

    def run(self) -> dict[str, Any]:
        self.out.mkdir(parents=True, exist_ok=True)
        try:
            self.setup()
            self.sync()
            self.soak()
            self.settle()
            self.verdict()
        finally:
            self.result["loadavg_after"] = os.getloadavg()
            self.stop()
            (self.out / f"soak-{self.p.size}.json").write_text(json.dumps(self.result, indent=1, default=str))
        return self.result

    def stop(self) -> None:
        if self.cluster is not None and self.cluster.audit_log.exists():
            shutil.copy(self.cluster.audit_log, self.out / "audit.jsonl")  # the cluster's workdir goes
        for thing in (self.op, self.proxy, self.cluster):
            if thing is not None:
                thing.stop()


def render_cli(model: Model) -> dict[tuple[str, str], dict[str, Any]]:
    """`podgrace render` (the CLI, as a user runs it) of every owner's manifest, with the profiles as
    they are now, for the API server's version and gates."""
    with tempfile.TemporaryDirectory(prefix="soak-render-") as tmp:
        manifests = Path(tmp) / "deployments.yaml"
        manifests.write_text(yaml.safe_dump_all([o.manifest() for o in model.owners.values()]))
        profile_file = Path(tmp) / "profiles.yaml"
        profile_file.write_text(yaml.safe_dump_all(list(model.profile_bodies.values())))
        out = subprocess.run(
            [sys.executable, "-m", "podgrace.cli.main", "render", "-f", str(manifests),
             "--profiles", str(profile_file), "--server-version", "{}.{}".format(*SERVER_VERSION)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    return {(d["metadata"]["namespace"], d["metadata"]["name"]): d for d in docs}
