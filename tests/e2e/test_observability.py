"""podgrace's dashboard and alerts against a real Prometheus scraping a real podgrace.

Debian's `prometheus` scrapes the operator (a local `podgrace run`, as in the other e2e tests) every second
with the labels the chart's ServiceMonitor gives it, and loads the chart's rendered PrometheusRule as its
rule file. podgrace then reconciles a scenario on the shared control plane that should light up every
panel and every alert. Every dashboard query and every alert expression is evaluated through Prometheus'
HTTP API: a query that errors, or that returns no series where the scenario produces them, fails the test.

The scenario (namespaces obs-shop and obs-blog, cluster-scoped objects named obs-*, all removed after):

- opted-in Deployments on three profiles (nginx-php-fpm, nginx, the custom obs-web), one not opted in and
  at risk (nginx without preStop), an invalid annotation (InvalidAnnotation), a user hook kept
  (UserHookKept), an unknown profile (UnknownProfile), a profile whose stopAfter rules form a cycle
  (the API server accepts it, podgrace sets Ready=False: InvalidProfile), an edit of obs-web (re-applies its
  users) and opt-outs (reverts);
- reconcile errors of both controllers: a ValidatingAdmissionPolicy rejects podgrace's own writes (and only
  podgrace's) to objects labelled obs.podgrace.dev/reject, so its apply of one Deployment fails
  (ApplyFailed) and its status update of one ShutdownProfile fails;
- each Warning reason and each kind of write at least twice, the second after Prometheus has scraped the
  first: podgrace creates a reason's (a kind's) counter at its first increment, and increase()/rate()
  cannot see a counter's first value;
- finally the operator is stopped (the OperatorDown alert, `up` 0) and started again (a restart).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hack.chart import helmchart
from tests.support.podgrace_env import (
    NAMESPACE,
    OPERATOR_USER,
    RELEASE,
    OperatorProcess,
    deployment,
    install_chart,
    wait_until,
)
from tests.support.prometheus_env import (
    PanelQuery,
    Prometheus,
    dashboard_queries,
    find_prometheus,
    grafana_duration,
    scrape_config,
    substitute,
)

from podgrace import __version__

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

NS_SHOP, NS_BLOG = "obs-shop", "obs-blog"
REJECT_LABEL = "obs.podgrace.dev/reject"
POLICY = "obs-reject-podgrace-writes"
PROFILES = ("obs-web", "obs-cycle", "obs-frozen")
# Short `for`s, so that the alerts' states can be watched too (the expressions are what the chart ships).
ALERT_FOR = "2s"
ALERT_VALUES = ("operatorDown", "reconcileErrors", "workloadsAtRisk", "profileNotReady")
# Every Warning reason the scenario produces, each twice.
REASONS = {"InvalidAnnotation", "UserHookKept", "UnknownProfile", "InvalidProfile", "ApplyFailed"}
FINDINGS = {
    "NoPreStop", "SleepTooShort", "SignalHookReturnsEarly", "FastStopSignal", "GracePeriodTooShort",
    "PhpFpmStopsBeforeDrain",
}  # fmt: skip

Result = list[dict[str, Any]]


# --- the chart's monitoring objects, rendered -------------------------------------------------------------


@dataclass
class Monitoring:
    rules: dict[str, Any]  # the PrometheusRule's spec: a Prometheus rule file
    dashboard: dict[str, Any]
    service_monitor: dict[str, Any]

    def alerts(self) -> dict[str, str]:
        return {r["alert"]: r["expr"] for g in self.rules["groups"] for r in g["rules"] if "alert" in r}


def render_monitoring(helm: str) -> Monitoring:
    values = [
        "prometheusRule.enabled=true",
        "dashboard.enabled=true",
        "serviceMonitor.enabled=true",
        *(f"prometheusRule.alerts.{a}.for={ALERT_FOR}" for a in ALERT_VALUES),
    ]
    docs = helmchart.render(helm, [], values, release=RELEASE, namespace=NAMESPACE)
    dashboard_cm = next(
        d for d in helmchart.of_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-dashboard")
    )
    return Monitoring(
        rules=helmchart.one(docs, "PrometheusRule")["spec"],
        dashboard=json.loads(next(iter(dashboard_cm["data"].values()))),
        service_monitor=helmchart.one(docs, "ServiceMonitor"),
    )


# --- the cluster side of the scenario ---------------------------------------------------------------------


def kubectl_apply(cluster: Any, *objects: dict[str, Any]) -> None:
    cluster.kubectl(
        "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
    )


def workload(
    name: str,
    ns: str,
    annotations: dict[str, str],
    containers: list[dict[str, Any]] | None = None,
    labels: dict[str, str] | None = None,
    kind: str = "Deployment",
) -> dict[str, Any]:
    """A Deployment (or StatefulSet) without replicas: podgrace works on the pod template; pods would only
    load the cluster."""
    obj = deployment(name, ns, annotations, containers)
    obj["spec"]["replicas"] = 0
    if kind == "StatefulSet":
        obj["kind"] = kind
        obj["spec"]["serviceName"] = name
    if labels:
        obj["metadata"]["labels"] = labels
    return obj


def nginx(**container: Any) -> list[dict[str, Any]]:
    return [{"name": "nginx", "image": "nginx:1.27", **container}]


USER_HOOK = {"preStop": {"exec": {"command": ["sh", "-c", "sleep 2"]}}}


def profile(name: str, rules: list[dict[str, Any]], labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "podgrace.dev/v1alpha1",
        "kind": "ShutdownProfile",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"containers": rules},
    }


def web_profile(sleep: int) -> dict[str, Any]:
    rule = {"name": "web", "match": {"images": ["*nginx*"]}, "role": "nginx", "preStopSleepSeconds": sleep}
    return profile("obs-web", [rule])


# A stopAfter cycle: each rule names an existing other rule, which is all the CRD's CEL rules can check.
CYCLE = profile(
    "obs-cycle",
    [
        {"name": "a", "match": {"containerNames": ["a"]}, "role": "generic", "stopAfter": ["b"]},
        {"name": "b", "match": {"containerNames": ["b"]}, "role": "generic", "stopAfter": ["a"]},
    ],
)
# Valid, but podgrace may not write its status (the admission policy below): profile reconcile errors.
FROZEN = profile(
    "obs-frozen",
    [{"name": "web", "match": {"images": ["*nginx*"]}, "role": "nginx"}],
    labels={REJECT_LABEL: "true"},
)


def admission_policy() -> list[dict[str, Any]]:
    """Rejects podgrace's writes (only podgrace's) to Deployments and ShutdownProfile status labelled
    REJECT_LABEL: a real API-server rejection, which podgrace counts as a reconcile error."""
    return [
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": POLICY},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {
                    "resourceRules": [
                        {
                            "apiGroups": ["apps"],
                            "apiVersions": ["v1"],
                            "operations": ["UPDATE"],
                            "resources": ["deployments"],
                        },
                        {
                            "apiGroups": ["podgrace.dev"],
                            "apiVersions": ["*"],
                            "operations": ["UPDATE"],
                            "resources": ["shutdownprofiles/status"],
                        },
                    ],
                    "objectSelector": {"matchLabels": {REJECT_LABEL: "true"}},
                },
                "matchConditions": [
                    {"name": "podgrace", "expression": f"request.userInfo.username == '{OPERATOR_USER}'"}
                ],
                "validations": [{"expression": "false", "message": f"{POLICY}: rejected for the e2e test"}],
            },
        },
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": POLICY},
            "spec": {"policyName": POLICY, "validationActions": ["Deny"]},
        },
    ]


def warnings(cluster: Any) -> set[tuple[str, str]]:
    """(Deployment name, reason) of podgrace's Warning Events in the scenario's namespaces."""
    found = set()
    for ns in (NS_SHOP, NS_BLOG):
        for e in cluster.kubectl_json("get", "events", "-n", ns, "--field-selector", "type=Warning")["items"]:
            found.add((e["involvedObject"]["name"], e["reason"]))
    return found


def pre_stop_command(cluster: Any, ns: str, name: str, kind: str = "deployment") -> str:
    obj = cluster.kubectl_json("get", kind, name, "-n", ns)
    lifecycle = obj["spec"]["template"]["spec"]["containers"][0].get("lifecycle") or {}
    return " ".join(((lifecycle.get("preStop") or {}).get("exec") or {}).get("command") or [])


def wait_pre_stop(cluster: Any, ns: str, name: str, text: str, kind: str = "deployment") -> None:
    """Wait until podgrace's preStop hook on the workload's first container contains `text`."""
    wait_until(
        f"{ns}/{name}'s preStop with {text!r}", lambda: text in pre_stop_command(cluster, ns, name, kind)
    )


def opt_out(cluster: Any, name: str) -> None:
    """Remove a Deployment's profile annotation and wait for podgrace's revert."""
    cluster.kubectl("annotate", "deployment", name, "-n", NS_SHOP, "podgrace.dev/profile-")
    wait_until(f"{name} reverted", lambda: not pre_stop_command(cluster, NS_SHOP, name))


def profile_ready(cluster: Any, name: str) -> str | None:
    obj = cluster.kubectl_json("get", "shutdownprofile", name)
    conditions = (obj.get("status") or {}).get("conditions") or []
    return next((c["status"] for c in conditions if c["type"] == "Ready"), None)


# --- the fixture: Prometheus, podgrace and the scenario ---------------------------------------------------


@dataclass
class Observed:
    cluster: Any
    prom: Prometheus
    op: OperatorProcess
    monitoring: Monitoring
    labels: dict[str, str]  # the target labels the rules and the dashboard select by
    phase_b: float = 0.0
    variables: dict[str, str] = field(default_factory=dict)

    def selector(self) -> str:
        return ",".join(f'{k}="{v}"' for k, v in sorted(self.labels.items()))

    def scraped(self, metric: str, **labels: str) -> float | None:
        """The value Prometheus last scraped (summed over series), None while it has none."""
        match = ",".join([self.selector(), *(f'{k}="{v}"' for k, v in labels.items())])
        result = self.prom.query(f"sum({metric}{{{match}}})")
        return float(result[0]["value"][1]) if result else None

    def wait_scraped(
        self, what: str, metric: str, at_least: float, timeout: float = 30, **labels: str
    ) -> None:
        wait_until(
            f"Prometheus to scrape {what}",
            lambda: (v := self.scraped(metric, **labels)) is not None and v >= at_least,
            timeout=timeout,
        )

    def scrapes(self, n: int) -> None:
        """Wait until Prometheus has scraped the operator n more times."""
        before = self.prom.samples_of(f"up{{{self.selector()}}}")
        wait_until(
            f"{n} more scrapes",
            lambda: self.prom.samples_of(f"up{{{self.selector()}}}") >= before + n,
            timeout=n * 3 + 10,
        )


@pytest.fixture(scope="module")
def observed(request: pytest.FixtureRequest, cluster: Any) -> Iterator[Observed]:
    found = find_prometheus()
    if found is None:
        pytest.skip("Prometheus is not installed (Debian: apt-get install -y prometheus)")
    prometheus_bin, _ = found
    if cluster.helm("status", RELEASE, "--namespace", NAMESPACE, check=False).returncode != 0:
        install_chart(cluster)
    monitoring = render_monitoring(str(cluster.bin("helm")))
    op = OperatorProcess(cluster, "--all-namespaces")
    scrape = scrape_config(monitoring.service_monitor, NAMESPACE, f"127.0.0.1:{op.metrics_port}")
    labels = {"job": scrape["job_name"], **scrape["static_configs"][0]["labels"]}
    prom = Prometheus(prometheus_bin, [scrape], monitoring.rules)
    obs = Observed(cluster, prom, op, monitoring, {"job": labels["job"], "namespace": labels["namespace"]})
    try:
        for ns in (NS_SHOP, NS_BLOG):
            cluster.kubectl("create", "namespace", ns)
        op.start()
        prom.start()
        run_scenario(obs)
        yield obs
    except BaseException:
        print(f"\n[e2e] prometheus log ({prom.log_path}):\n{prom.log_tail()}")
        raise
    finally:
        prom.stop()
        op.stop()
        print(f"\n[e2e] podgrace log: {op.log_path}\n{op.log_tail(30)}")
        cleanup(cluster)
        if request.session.testsfailed:
            print(f"[e2e] Prometheus' files kept in {prom.workdir}")
        else:
            prom.cleanup()


def cleanup(cluster: Any) -> None:
    """Remove what the scenario created. The Deployments go first and explicitly (other modules count the
    cluster's Deployments); the namespaces then finish terminating in the background."""
    for kind in ("validatingadmissionpolicybinding", "validatingadmissionpolicy"):
        cluster.kubectl("delete", kind, POLICY, "--ignore-not-found", check=False)
    cluster.kubectl("delete", "shutdownprofile", *PROFILES, "--ignore-not-found", check=False)
    for ns in (NS_SHOP, NS_BLOG):
        cluster.kubectl("delete", "deployments", "--all", "-n", ns, "--ignore-not-found", check=False)
    cluster.kubectl(
        "delete", "namespace", NS_SHOP, NS_BLOG, "--ignore-not-found", "--wait=false", check=False
    )


def run_scenario(obs: Observed) -> None:
    cluster = obs.cluster
    obs.scrapes(2)

    # Phase A: everything once. The policy first, and proof that it rejects podgrace's writes.
    kubectl_apply(cluster, *admission_policy())
    kubectl_apply(cluster, workload("rejected", NS_SHOP, {}, nginx(), labels={REJECT_LABEL: "true"}))

    def policy_active() -> bool:
        # A change of a field podgrace owns: the chart's own admission policy allows it, only this one denies.
        probe = cluster.kubectl(
            "patch", "deployment", "rejected", "-n", NS_SHOP, "--type=merge",
            "-p", '{"spec":{"template":{"spec":{"terminationGracePeriodSeconds":31}}}}',
            "--dry-run=server", f"--as={OPERATOR_USER}", check=False,
        )  # fmt: skip
        return probe.returncode != 0 and POLICY in probe.stderr

    wait_until("the admission policy to reject podgrace's writes", policy_active, timeout=30)
    kubectl_apply(cluster, web_profile(4), CYCLE, FROZEN)
    kubectl_apply(
        cluster,
        workload("shop", NS_SHOP, {"podgrace.dev/profile": "nginx-php-fpm"}),
        workload("blog", NS_SHOP, {"podgrace.dev/profile": "nginx-php-fpm"}),
        workload("api", NS_SHOP, {"podgrace.dev/profile": "obs-web"}, nginx()),
        workload("static", NS_SHOP, {"podgrace.dev/profile": "nginx"}, nginx()),
        workload("static-2", NS_SHOP, {"podgrace.dev/profile": "nginx"}, nginx()),
        workload("legacy", NS_SHOP, {}, nginx()),
        workload("typo", NS_SHOP, {"podgrace.dev/profile": "nginx", "podgrace.dev/drain-seconds": "5s"}),
        workload(
            "hooked",
            NS_SHOP,
            {"podgrace.dev/profile": "nginx", "podgrace.dev/existing-prestop": "keep"},
            nginx(lifecycle=USER_HOOK),
        ),
        workload("cyclic", NS_SHOP, {"podgrace.dev/profile": "obs-cycle"}, nginx()),
        workload("ghost", NS_SHOP, {"podgrace.dev/profile": "obs-no-such-profile"}, nginx()),
        # A StatefulSet: the workload metrics carry its kind, its controller counts its reconciles.
        workload("edge", NS_SHOP, {"podgrace.dev/profile": "nginx"}, nginx(), kind="StatefulSet"),
    )
    cluster.kubectl("annotate", "deployment", "rejected", "-n", NS_SHOP, "podgrace.dev/profile=nginx")
    expected_a = {
        ("typo", "InvalidAnnotation"),
        ("hooked", "UserHookKept"),
        ("ghost", "UnknownProfile"),
        ("cyclic", "InvalidProfile"),
        ("rejected", "ApplyFailed"),
    }
    wait_until("phase A's Warnings", lambda: expected_a <= warnings(cluster), timeout=60)
    for name in ("shop", "blog", "api", "static", "static-2"):
        wait_pre_stop(cluster, NS_SHOP, name, "sleep")
    wait_pre_stop(cluster, NS_SHOP, "edge", "sleep", "statefulset")
    opt_out(cluster, "static")
    wait_until("obs-cycle Ready=False", lambda: profile_ready(cluster, "obs-cycle") == "False")
    wait_until("obs-web Ready=True", lambda: profile_ready(cluster, "obs-web") == "True")
    for reason in REASONS:
        obs.wait_scraped(f"the first {reason}", "podgrace_warnings_total", 1, reason=reason)
    obs.wait_scraped("the first revert", "podgrace_writes_total", 1, kind="revert")
    obs.scrapes(2)

    # Phase B: each Warning reason again, a profile edit, an opt-out, more reconcile errors.
    obs.phase_b = time.time()
    kubectl_apply(
        cluster,
        workload("cms", NS_BLOG, {"podgrace.dev/profile": "obs-web"}, nginx()),
        workload("legacy-2", NS_BLOG, {}, nginx()),
        workload("typo-2", NS_BLOG, {"podgrace.dev/profile": "nginx", "podgrace.dev/mode": "dry-run"}),
        workload(
            "hooked-2",
            NS_BLOG,
            {"podgrace.dev/profile": "nginx", "podgrace.dev/existing-prestop": "keep"},
            nginx(lifecycle=USER_HOOK),
        ),
        workload("cyclic-2", NS_BLOG, {"podgrace.dev/profile": "obs-cycle"}, nginx()),
        workload("ghost-2", NS_BLOG, {"podgrace.dev/profile": "obs-no-such-profile"}, nginx()),
        workload(
            "rejected-2", NS_BLOG, {"podgrace.dev/profile": "nginx"}, nginx(), labels={REJECT_LABEL: "true"}
        ),
    )
    kubectl_apply(cluster, web_profile(7))  # re-applies api and cms
    opt_out(cluster, "static-2")
    for i in range(3):  # each change is a reconcile that fails again
        cluster.kubectl("annotate", "deployment", "rejected", "-n", NS_SHOP, f"obs/touch={i}", "--overwrite")
        cluster.kubectl("label", "shutdownprofile", "obs-frozen", f"obs/touch={i}", "--overwrite")
        time.sleep(1)
    expected_b = {(f"{name}-2", reason) for name, reason in expected_a}
    wait_until("phase B's Warnings", lambda: expected_b <= warnings(cluster), timeout=60)
    wait_pre_stop(cluster, NS_SHOP, "api", "sleep 7")
    wait_pre_stop(cluster, NS_BLOG, "cms", "sleep 7")
    for reason in REASONS:
        obs.wait_scraped(f"the second {reason}", "podgrace_warnings_total", 2, reason=reason)
    obs.wait_scraped("the second revert", "podgrace_writes_total", 2, kind="revert")
    for controller in ("deployment", "shutdownprofile"):
        obs.wait_scraped(f"{controller} errors", "podgrace_reconcile_errors_total", 3, controller=controller)
    obs.scrapes(4)

    # Grafana's variables: job and namespace as the dashboard's own variable queries find them (checked in
    # a test), the default time range for $__range, and a rate window that covers phase B (≥ 4 scrapes).
    rate_window = max(15, math.ceil(time.time() - obs.phase_b) + 3)
    obs.variables = {
        "job": obs.labels["job"],
        "namespace": obs.labels["namespace"],
        "__rate_interval": f"{rate_window}s",
        "__interval": "1s",
        "__range": grafana_duration(obs.monitoring.dashboard["time"]["from"]),
    }


# --- what each query should return in this scenario --------------------------------------------------------


def values(result: Result, label: str) -> dict[str, float]:
    """The result by one label, summed over the others (a panel may also split by kind)."""
    got: dict[str, float] = {}
    for r in result:
        key = r["metric"].get(label, "")
        got[key] = got.get(key, 0.0) + float(r["value"][1])
    return got


def single(result: Result) -> float:
    assert len(result) == 1, f"expected one series, got {len(result)}"
    return float(result[0]["value"][1])


def has_at_least(label: str, expected: dict[str, float]) -> Callable[[Result], None]:
    def check(result: Result) -> None:
        got = values(result, label)
        short = {k: got.get(k) for k, v in expected.items() if not (got.get(k, -math.inf) >= v)}
        assert not short, f"by {label}: expected at least {expected}, got {got}"

    return check


def positive(label: str, keys: set[str]) -> Callable[[Result], None]:
    return has_at_least(label, {k: sys.float_info.min for k in keys})


def finite(label: str, keys: set[str]) -> Callable[[Result], None]:
    def check(result: Result) -> None:
        got = values(result, label)
        assert keys <= set(got) and all(math.isfinite(got[k]) for k in keys), f"by {label}: {got}"

    return check


def equals(label: str, expected: dict[str, float]) -> Callable[[Result], None]:
    def check(result: Result) -> None:
        got = values(result, label)
        assert {k: got.get(k) for k in expected} == expected, f"by {label}: expected {expected}, got {got}"

    return check


def scalar(predicate: Callable[[float], bool], what: str) -> Callable[[Result], None]:
    def check(result: Result) -> None:
        value = single(result)
        assert predicate(value), f"expected {what}, got {value}"

    return check


def reconcile_results(result: Result) -> None:
    got = {(r["metric"].get("controller"), r["metric"].get("result")): float(r["value"][1]) for r in result}
    for controller in ("deployment", "shutdownprofile"):
        assert (controller, "success") in got and got.get((controller, "error"), 0) > 0, got
    assert ("statefulset", "success") in got, got  # the StatefulSet "edge" (a rate: maybe 0 by now)


def managed_by_profile_and_kind(result: Result) -> None:
    has_at_least("profile", {"nginx-php-fpm": 2, "obs-web": 2, "nginx": 1})(result)
    by_kind = {(r["metric"].get("profile"), r["metric"].get("kind")): float(r["value"][1]) for r in result}
    assert by_kind.get(("nginx", "statefulset"), 0) >= 1, by_kind  # "edge", split out by its kind
    assert {kind for _, kind in by_kind} <= {"deployment", "statefulset", "daemonset"}, by_kind


def at_risk_by_finding(result: Result) -> None:
    has_at_least("finding", {"NoPreStop": 2})(result)
    finite("finding", FINDINGS)(result)  # every finding has a series (0 when nothing has it)


def version(result: Result) -> None:
    assert [r["metric"].get("version") for r in result] == [__version__], result


# (panel title, refId) → check; every query must also succeed and return at least one series.
PANELS: dict[tuple[str, str], Callable[[Result], None]] = {
    ("Operator up", "A"): scalar(lambda v: v == 1, "1"),
    ("Version", "A"): version,
    ("Managed workloads", "A"): scalar(lambda v: v >= 5, "≥ 5 (shop, blog, api, cms, edge)"),
    ("At-risk findings", "A"): scalar(lambda v: v >= 2, "≥ 2 (legacy, legacy-2)"),
    ("Profiles not Ready", "A"): scalar(lambda v: v >= 1, "≥ 1 (obs-cycle)"),
    ("Reconcile errors (1h)", "A"): scalar(lambda v: v > 0, "> 0"),
    ("Reconcile rate by result", "A"): reconcile_results,
    ("Reconcile errors", "A"): positive("controller", {"deployment", "shutdownprofile"}),
    ("Reconcile latency (p50 / p90 / p99)", "A"): finite("controller", {"deployment", "shutdownprofile"}),
    ("Reconcile latency (p50 / p90 / p99)", "B"): finite("controller", {"deployment", "shutdownprofile"}),
    ("Reconcile latency (p50 / p90 / p99)", "C"): finite("controller", {"deployment", "shutdownprofile"}),
    ("API writes by kind", "A"): positive("kind", {"apply", "revert", "status", "event"}),
    ("Managed workloads by profile", "A"): managed_by_profile_and_kind,
    ("Workloads at risk by finding", "A"): at_risk_by_finding,
    ("ShutdownProfile Ready", "A"): equals(
        "profile", {"obs-cycle": 0, "obs-web": 1, "obs-frozen": 1, "nginx": 1}
    ),
    ("Recent warnings by reason", "A"): positive("reason", REASONS),
    ("Warnings over time by reason", "A"): positive("reason", REASONS),
    ("CPU", "A"): finite("pod", {"podgrace-local"}),
    ("Memory", "A"): positive("pod", {"podgrace-local"}),
    ("Memory", "B"): positive("pod", {"podgrace-local"}),
    ("Open file descriptors / restarts", "A"): positive("pod", {"podgrace-local"}),
    ("Open file descriptors / restarts", "B"): scalar(lambda v: v == 0, "0 (no restart yet)"),
}

# Alert → check of its expression's result while podgrace runs (None: the condition does not hold).
ALERTS: dict[str, Callable[[Result], None] | None] = {
    "PodgraceOperatorDown": None,
    "PodgraceReconcileErrors": positive("controller", {"deployment", "shutdownprofile"}),
    "PodgraceWorkloadsAtRisk": has_at_least("finding", {"NoPreStop": 2}),
    "PodgraceProfileNotReady": equals("profile", {"obs-cycle": 0}),
}


def evaluate(obs: Observed, query: PanelQuery) -> tuple[str, Result]:
    expr = substitute(query.expr, obs.variables)
    return expr, obs.prom.query(expr)


def summary(name: str, result: Result) -> str:
    shown = ", ".join(
        "{" + ",".join(f"{k}={v}" for k, v in sorted(r["metric"].items())) + "} " + r["value"][1]
        for r in result[:8]
    )
    return f"{name}: {len(result)} series  {shown}{' ...' if len(result) > 8 else ''}"


# --- the tests ---------------------------------------------------------------------------------------------


def test_promtool_accepts_the_rendered_rules(observed: Observed) -> None:
    found = find_prometheus()
    assert found is not None
    proc = subprocess.run(
        [found[1], "check", "rules", str(observed.prom.rules_path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "4 rules found" in proc.stdout, proc.stdout


def test_prometheus_scrapes_podgrace_and_loads_every_alert(observed: Observed) -> None:
    targets = observed.prom.api("targets")["activeTargets"]
    assert [(t["labels"]["job"], t["health"]) for t in targets] == [(observed.labels["job"], "up")], targets
    rules = {r["name"]: r for r in observed.prom.rules()}
    assert set(rules) == set(observed.monitoring.alerts()) == set(ALERTS)
    assert {n: (r["health"], r.get("lastError", "")) for n, r in rules.items()} == {
        n: ("ok", "") for n in ALERTS
    }
    # The dashboard's variables find the labels the rules select by.
    variables = {v["name"]: v for v in observed.monitoring.dashboard["templating"]["list"]}
    assert variables["job"]["definition"] == "label_values(podgrace_build_info, job)"
    assert observed.prom.label_values("job", "podgrace_build_info") == [observed.labels["job"]]
    match = f'podgrace_build_info{{job=~"{observed.labels["job"]}"}}'
    assert variables["namespace"]["definition"] == 'label_values(podgrace_build_info{job=~"$job"}, namespace)'
    assert observed.prom.label_values("namespace", match) == [observed.labels["namespace"]]


def test_every_dashboard_query_returns_what_the_scenario_produced(observed: Observed) -> None:
    queries = dashboard_queries(observed.monitoring.dashboard)
    assert {(q.panel, q.ref) for q in queries} == set(PANELS), "a panel without an expectation here"
    problems, report = [], []
    for query in queries:
        try:
            expr, result = evaluate(observed, query)
        except AssertionError as error:
            problems.append(f"{query.name}: {error}")
            continue
        report.append(summary(query.name, result))
        if not result:
            problems.append(f"{query.name}: no series for {expr}")
            continue
        try:
            PANELS[(query.panel, query.ref)](result)
        except AssertionError as error:
            problems.append(f"{query.name}: {error}\n    {expr}")
    print("\n[e2e] dashboard queries:\n" + "\n".join(report))
    assert not problems, "\n".join(problems)


def test_every_alert_expression_holds_where_the_scenario_makes_it_hold(observed: Observed) -> None:
    problems, report = [], []
    for alert, expr in observed.monitoring.alerts().items():
        result = observed.prom.query(expr)
        report.append(summary(alert, result))
        check = ALERTS[alert]
        try:
            if check is None:
                assert result == [], f"expected no series while podgrace is up, got {result}"
            else:
                assert result, "no series"
                check(result)
                assert {r["metric"].get("namespace") for r in result} == {NAMESPACE}, result
        except AssertionError as error:
            problems.append(f"{alert}: {error}\n    {expr}")
    print("\n[e2e] alert expressions:\n" + "\n".join(report))
    assert not problems, "\n".join(problems)

    def states() -> dict[str, str]:
        return {r["name"]: r["state"] for r in observed.prom.rules()}

    firing = {a: ("inactive" if c is None else "firing") for a, c in ALERTS.items()}
    wait_until(f"alert states {firing}", lambda: states() == firing, timeout=20)


def test_operator_down_and_restarted(observed: Observed) -> None:
    obs, prom = observed, observed.prom
    panels = {q.name: q for q in dashboard_queries(obs.monitoring.dashboard)}
    up_panel, restarts_panel = panels["Operator up [A]"], panels["Open file descriptors / restarts [B]"]
    down_expr = obs.monitoring.alerts()["PodgraceOperatorDown"]

    obs.op.stop()
    wait_until("Prometheus to see the target down", lambda: obs.scraped("up") == 0, timeout=20)
    assert single(evaluate(obs, up_panel)[1]) == 0
    # absent() of an expression that is not a plain selector has no labels to copy; the rule adds
    # `namespace` itself so that the alert can still be routed by namespace.
    down = prom.query(down_expr)
    assert [(r["metric"], r["value"][1]) for r in down] == [({}, "1")], down

    def firing_down() -> list[dict[str, Any]]:
        alerts: list[dict[str, Any]] = prom.api("alerts")["alerts"]
        return [
            a for a in alerts if a["labels"]["alertname"] == "PodgraceOperatorDown" and a["state"] == "firing"
        ]

    fired = wait_until("PodgraceOperatorDown firing", firing_down, timeout=20)
    assert fired[0]["labels"]["namespace"] == NAMESPACE, fired

    obs.op.start()
    wait_until("Prometheus to see the target up again", lambda: obs.scraped("up") == 1, timeout=20)
    obs.scrapes(2)
    assert prom.query(down_expr) == []
    assert single(evaluate(obs, restarts_panel)[1]) >= 1
