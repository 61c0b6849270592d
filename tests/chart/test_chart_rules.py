"""The chart's PrometheusRule: `promtool check rules` passes on the rendered rules, and `promtool test rules`
shows each alert fires on the series it is about (and stays quiet otherwise).

promtool comes from Debian's `prometheus` package (apt-get install -y prometheus); helm is found like in
the other chart tests (PODGRACE_HELM, $HOME/.cache/podgrace/bin/*/helm, PATH).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from hack.chart import helmchart

NS = helmchart.NAMESPACE
ALERTS = {
    "PodgraceOperatorDown",
    "PodgraceReconcileErrors",
    "PodgraceWorkloadsAtRisk",
    "PodgraceProfileNotReady",
}


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if not found:
        pytest.skip(
            "promtool is not installed (Debian: apt-get install -y prometheus, which ships /usr/bin/promtool)"
        )
    return found


def _rule_spec(helm: str, values: list[Path], set_values: list[str]) -> dict[str, Any]:
    docs = helmchart.render(helm, values, ["prometheusRule.enabled=true", *set_values])
    spec: dict[str, Any] = helmchart.one(docs, "PrometheusRule")["spec"]
    return spec


def _promtool(promtool: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


CASES = {
    "default values": ([], []),
    "all-on values": ([helmchart.ALL_ON_VALUES], []),
    "namespaced values": ([helmchart.CHART / "ci" / "namespaced-values.yaml"], []),
    "custom job, no namespace matcher": (
        [],
        ["prometheusRule.job=kubernetes-pods", "prometheusRule.matchNamespace=false"],
    ),
}


@pytest.mark.parametrize(("values", "set_values"), list(CASES.values()), ids=list(CASES))
def test_promtool_check_rules_passes(
    helm: str, promtool: str, tmp_path: Path, values: list[Path], set_values: list[str]
) -> None:
    spec = _rule_spec(helm, values, set_values)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    proc = _promtool(promtool, "check", "rules", "rules.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    alerts = {r["alert"] for g in spec["groups"] for r in g["rules"] if "alert" in r}
    assert alerts == ALERTS


def test_disabling_every_alert_still_gives_valid_rules(helm: str, promtool: str, tmp_path: Path) -> None:
    off = [
        f"prometheusRule.alerts.{a}.enabled=false"
        for a in ("operatorDown", "reconcileErrors", "workloadsAtRisk", "profileNotReady")
    ]
    spec = _rule_spec(helm, [], off)
    assert spec["groups"][0]["rules"] == []
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(spec))
    proc = _promtool(promtool, "check", "rules", "rules.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _unit_tests(sel: dict[str, str], extra_labels: dict[str, str], ns_label: bool) -> list[dict[str, Any]]:
    """promtool unit tests: each alert fires on its condition (after its `for`) and not otherwise."""

    def series(name: str, **labels: str) -> str:
        merged = {**sel, **labels}
        return name + "{" + ",".join(f'{k}="{v}"' for k, v in merged.items()) + "}"

    def labels(severity: str, **more: str) -> dict[str, str]:
        out = {"severity": severity, **extra_labels, **more}
        if ns_label and "namespace" not in out:
            out["namespace"] = NS
        return out

    ns = {"namespace": NS} if ns_label else {}
    return [
        {  # the operator's target is down: fires once `for` (5m) has passed
            "interval": "1m",
            "input_series": [{"series": series("up"), "values": "0x15"}],
            "alert_rule_test": [
                {"eval_time": "4m", "alertname": "PodgraceOperatorDown", "exp_alerts": []},
                {
                    "eval_time": "10m",
                    "alertname": "PodgraceOperatorDown",
                    "exp_alerts": [{"exp_labels": labels("critical", namespace=NS)}],
                },
            ],
        },
        {  # no podgrace target at all (only somebody else's): absent() fires
            "interval": "1m",
            "input_series": [{"series": 'up{job="someone-else",namespace="other"}', "values": "1x15"}],
            "alert_rule_test": [
                {
                    "eval_time": "10m",
                    "alertname": "PodgraceOperatorDown",
                    "exp_alerts": [{"exp_labels": labels("critical", namespace=NS)}],
                },
            ],
        },
        {  # healthy: the operator is up, reconciles succeed, nothing at risk, profiles Ready
            "interval": "1m",
            "input_series": [
                {"series": series("up"), "values": "1x90"},
                {
                    "series": series("podgrace_reconcile_errors_total", controller="deployment"),
                    "values": "3x90",
                },
                {"series": series("podgrace_workloads_at_risk", finding="NoPreStop"), "values": "0x90"},
                {"series": series("podgrace_profile_ready", profile="nginx"), "values": "1x90"},
            ],
            "alert_rule_test": [
                {"eval_time": "80m", "alertname": a, "exp_alerts": []} for a in sorted(ALERTS)
            ],
        },
        {  # errors keep coming: fires after 15m of a non-zero error rate
            "interval": "1m",
            "input_series": [
                {"series": series("up"), "values": "1x40"},
                {
                    "series": series("podgrace_reconcile_errors_total", controller="deployment"),
                    "values": "0+2x40",
                },
            ],
            "alert_rule_test": [
                {"eval_time": "10m", "alertname": "PodgraceReconcileErrors", "exp_alerts": []},
                {
                    "eval_time": "30m",
                    "alertname": "PodgraceReconcileErrors",
                    "exp_alerts": [{"exp_labels": labels("warning", controller="deployment", **ns)}],
                },
            ],
        },
        {  # workloads at risk for longer than 1h
            "interval": "5m",
            "input_series": [
                {"series": series("up"), "values": "1x30"},
                {"series": series("podgrace_workloads_at_risk", finding="NoPreStop"), "values": "2x30"},
                {"series": series("podgrace_workloads_at_risk", finding="FastStopSignal"), "values": "0x30"},
            ],
            "alert_rule_test": [
                {"eval_time": "30m", "alertname": "PodgraceWorkloadsAtRisk", "exp_alerts": []},
                {
                    "eval_time": "90m",
                    "alertname": "PodgraceWorkloadsAtRisk",
                    "exp_alerts": [{"exp_labels": labels("warning", finding="NoPreStop", **ns)}],
                },
            ],
        },
        {  # a profile not Ready for 10m
            "interval": "1m",
            "input_series": [
                {"series": series("up"), "values": "1x30"},
                {"series": series("podgrace_profile_ready", profile="shop"), "values": "0x30"},
                {"series": series("podgrace_profile_ready", profile="nginx"), "values": "1x30"},
            ],
            "alert_rule_test": [
                {"eval_time": "5m", "alertname": "PodgraceProfileNotReady", "exp_alerts": []},
                {
                    "eval_time": "20m",
                    "alertname": "PodgraceProfileNotReady",
                    "exp_alerts": [{"exp_labels": labels("warning", profile="shop", **ns)}],
                },
            ],
        },
    ]


UNIT_CASES = {
    "default values": ([], [], {"job": "podgrace", "namespace": NS}, {}, True),
    "all-on values": (
        [helmchart.ALL_ON_VALUES],
        [],
        {"job": "podgrace", "namespace": NS},
        {"team": "platform"},
        True,
    ),
    "custom job, no namespace matcher": (
        [],
        ["prometheusRule.job=kubernetes-pods", "prometheusRule.matchNamespace=false"],
        {"job": "kubernetes-pods"},
        {},
        False,
    ),
}


@pytest.mark.parametrize(
    ("values", "set_values", "sel", "extra_labels", "ns_label"),
    list(UNIT_CASES.values()),
    ids=list(UNIT_CASES),
)
def test_alerts_fire_on_their_condition_only(
    helm: str,
    promtool: str,
    tmp_path: Path,
    values: list[Path],
    set_values: list[str],
    sel: dict[str, str],
    extra_labels: dict[str, str],
    ns_label: bool,
) -> None:
    spec = _rule_spec(helm, values, set_values)
    # Annotations are templated per alert; `check rules` validates them. Here only expr/for/labels count.
    for group in spec["groups"]:
        group["rules"] = [
            {k: v for k, v in r.items() if k != "annotations"} for r in group["rules"] if "alert" in r
        ]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(spec))
    tests = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": _unit_tests(sel, extra_labels, ns_label),
    }
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests, sort_keys=False))
    proc = _promtool(promtool, "test", "rules", "tests.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_alert_annotations_explain_and_link_runbooks(helm: str) -> None:
    spec = _rule_spec(helm, [helmchart.ALL_ON_VALUES], [])
    for rule in spec["groups"][0]["rules"]:
        if "alert" not in rule:
            continue
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"]
        assert annotations["runbook_url"] == f"https://runbooks.example.com/podgrace#{rule['alert']}"
    plain = _rule_spec(helm, [], [])
    assert all("runbook_url" not in r["annotations"] for r in plain["groups"][0]["rules"])
