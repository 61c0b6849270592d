"""values.schema.json and `helm lint --strict`: good values pass, bad values fail with a message that names
the field (both `helm lint` and `helm template` refuse them).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hack.chart import helmchart

LINT_VALUES = {"default": None, **{f.name: f for f in helmchart.CI_VALUES}}


def test_ci_values_files_exist() -> None:
    names = {f.name for f in helmchart.CI_VALUES}
    assert {"all-on-values.yaml", "namespaced-values.yaml"} <= names


@pytest.mark.parametrize("values", list(LINT_VALUES.values()), ids=list(LINT_VALUES))
def test_helm_lint_strict_passes(helm: str, values: Path | None) -> None:
    args = ["lint", "--strict", str(helmchart.CHART), "--namespace", helmchart.NAMESPACE]
    if values:
        args += ["--values", str(values)]
    proc = helmchart.run_helm(helm, *args, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout, proc.stdout


def test_all_on_values_turn_every_toggle_on() -> None:
    values = yaml.safe_load(helmchart.ALL_ON_VALUES.read_text())
    sections = ("serviceMonitor", "prometheusRule", "dashboard", "manConfigMap", "tests", "admissionPolicy")
    for section in (*sections, "networkPolicy"):
        assert values[section]["enabled"] is True, section
    assert values["readinessProbe"]["enabled"] is True
    assert values["rbac"] == {"create": True, "clusterWide": True}
    assert values["serviceAccount"]["create"] is True
    assert values["operator"]["verbose"] is True
    assert values["extraProfiles"] and values["extraArgs"] and values["extraEnv"]


# name -> (values YAML, text the error must contain: the field's path)
BAD_VALUES: dict[str, tuple[str, str]] = {
    "unknown top-level key": ("replicaCount: 2\n", "'replicaCount' not allowed"),
    "typo in a nested key": ("serviceMonitor:\n  enable: true\n", "'enable' not allowed"),
    "pull policy": ("image:\n  pullPolicy: Sometimes\n", "/image/pullPolicy"),
    "unquoted numeric tag": ("image:\n  tag: 1.0\n", "/image/tag"),
    "tag in the repository": ("image:\n  repository: ghcr.io/podgrace/podgrace:1.0\n", "/image/repository"),
    "digest": ("image:\n  digest: latest\n", "/image/digest"),
    "workers": ("operator:\n  workers: 0\n", "/operator/workers"),
    "negative resync": ("operator:\n  resyncSeconds: -1\n", "/operator/resyncSeconds"),
    "metrics port": ("operator:\n  metricsPort: 70000\n", "/operator/metricsPort"),
    "namespace name": ("watchNamespaces: [Shop_1]\n", "/watchNamespaces/0"),
    "duplicate namespaces": ("watchNamespaces: [shop, shop]\n", "/watchNamespaces"),
    "namespaced RBAC without namespaces": ("rbac:\n  clusterWide: false\n", "/watchNamespaces"),
    "toggle is not a boolean": ('dashboard:\n  enabled: "yes"\n', "/dashboard/enabled"),
    "sidecar label value not a string": ("dashboard:\n  labelValue: 1\n", "/dashboard/labelValue"),
    "scrape interval": ("serviceMonitor:\n  interval: 30\n", "/serviceMonitor/interval"),
    "alert for": (
        "prometheusRule:\n  alerts:\n    operatorDown:\n      for: soon\n",
        "/prometheusRule/alerts/operatorDown/for",
    ),
    "unknown built-in profile": ("builtinProfiles:\n  nginxx:\n    enabled: false\n", "'nginxx' not allowed"),
    "built-in profile spec not a map": (
        "builtinProfiles:\n  nginx:\n    spec: []\n",
        "/builtinProfiles/nginx/spec",
    ),
    "extra profile without spec": ("extraProfiles:\n  - name: mine\n", "/extraProfiles/0"),
    "extra profile name": ("extraProfiles:\n  - name: My_Profile\n    spec: {}\n", "/extraProfiles/0/name"),
    "service type": ("service:\n  type: ExternalName\n", "/service/type"),
    "pod label value": ('podLabels:\n  team: "platform team"\n', "/podLabels/team"),
    "runbook url": (
        "prometheusRule:\n  runbookBaseUrl: runbooks.example.com\n",
        "/prometheusRule/runbookBaseUrl",
    ),
    "validation action": (
        "admissionPolicy:\n  validationActions: [Block]\n",
        "/admissionPolicy/validationActions/0",
    ),
    "Deny with Warn": (
        "admissionPolicy:\n  validationActions: [Deny, Warn]\n",
        "/admissionPolicy/validationActions",
    ),
    "no validation action": (
        "admissionPolicy:\n  validationActions: []\n",
        "/admissionPolicy/validationActions",
    ),
    "API server CIDR": (
        "networkPolicy:\n  apiServer:\n    cidrs: [10.0.0.1]\n",
        "/networkPolicy/apiServer/cidrs/0",
    ),
    "API server port": ("networkPolicy:\n  apiServer:\n    ports: [0]\n", "/networkPolicy/apiServer/ports/0"),
    "peer with a typo": (
        "networkPolicy:\n  metrics:\n    from:\n      - namespaceSelecter: {}\n",
        "/networkPolicy/metrics/from/0",
    ),
    "extra rule without alert or record": (
        "prometheusRule:\n  extraRules:\n    - expr: up\n",
        "/prometheusRule/extraRules/0",
    ),
}


@pytest.mark.parametrize(("text", "expected"), list(BAD_VALUES.values()), ids=list(BAD_VALUES))
@pytest.mark.parametrize("command", ["lint", "template"])
def test_bad_values_fail_naming_the_field(
    helm: str, tmp_path: Path, command: str, text: str, expected: str
) -> None:
    bad = tmp_path / "bad-values.yaml"
    bad.write_text(text)
    if command == "lint":
        args = ["lint", "--strict", str(helmchart.CHART), "--values", str(bad)]
    else:
        args = helmchart.template_args([bad])
    proc = helmchart.run_helm(helm, *args, check=False)
    assert proc.returncode != 0, f"helm {command} accepted {text!r}"
    assert expected in proc.stdout + proc.stderr, proc.stdout + proc.stderr


# Mistakes the schema cannot see (they need the values together); the templates fail with a message.
TEMPLATE_ERRORS: dict[str, tuple[list[str], str]] = {
    "same port twice": (
        ["operator.livenessPort=9090"],
        "operator.livenessPort and operator.metricsPort must differ",
    ),
    "extra profile shadows a built-in": (
        ["extraProfiles[0].name=nginx", "extraProfiles[0].spec.containers=null"],
        'extraProfiles[0].name: "nginx" is a built-in ShutdownProfile',
    ),
    "extra profile twice": (
        [
            "extraProfiles[0].name=a",
            "extraProfiles[0].spec.x=1",
            "extraProfiles[1].name=a",
            "extraProfiles[1].spec.x=1",
        ],
        'extraProfiles[1].name: "a" is listed twice',
    ),
    "existing service account without a name": (
        ["serviceAccount.create=false"],
        "serviceAccount.name is required",
    ),
}


@pytest.mark.parametrize(
    ("set_values", "expected"), list(TEMPLATE_ERRORS.values()), ids=list(TEMPLATE_ERRORS)
)
def test_inconsistent_values_fail_with_a_clear_message(
    helm: str, set_values: list[str], expected: str
) -> None:
    proc = helmchart.run_helm(helm, *helmchart.template_args(set_values=set_values), check=False)
    assert proc.returncode != 0
    assert expected in proc.stderr, proc.stderr


def test_namespaced_rbac_check_also_holds_without_the_schema(helm: str) -> None:
    args = helmchart.template_args(set_values=["rbac.clusterWide=false"], extra=["--skip-schema-validation"])
    proc = helmchart.run_helm(helm, *args, check=False)
    assert proc.returncode != 0
    assert "rbac.clusterWide=false needs watchNamespaces" in proc.stderr


GOOD_VALUES = {
    "quoted numeric tag and digest": 'image:\n  tag: "1.0"\n  digest: sha256:' + "a" * 64 + "\n",
    "registry with port": "image:\n  repository: registry.local:5000/podgrace/podgrace\n",
    "namespaced": "rbac:\n  clusterWide: false\nwatchNamespaces: [shop, blog]\n",
    "no rbac, namespaced watch": "rbac:\n  create: false\n  clusterWide: false\nwatchNamespaces: [shop]\n",
    "resources with integer cpu": "resources:\n  requests:\n    cpu: 1\n    memory: 64Mi\n",
    "everything off": (
        "manConfigMap:\n  enabled: false\ntests:\n  enabled: false\nreadinessProbe:\n  enabled: false\n"
        "builtinProfiles:\n"
        + "".join(
            f"  {n}:\n    enabled: false\n" for n in ("nginx", "php-fpm", "nginx-php-fpm", "apache", "web")
        )
    ),
    "global from a parent chart": "global:\n  imageRegistry: example.com\n",
    "network policy, admission policy audit only": (
        "networkPolicy:\n  enabled: true\n  dns: true\n  metrics:\n    from:\n      - podSelector: {}\n"
        "admissionPolicy:\n  validationActions: [Audit]\n"
    ),
}


@pytest.mark.parametrize("text", list(GOOD_VALUES.values()), ids=list(GOOD_VALUES))
def test_good_values_render(helm: str, tmp_path: Path, text: str) -> None:
    good = tmp_path / "good-values.yaml"
    good.write_text(text)
    proc = helmchart.run_helm(helm, *helmchart.template_args([good]), check=False)
    assert proc.returncode == 0, proc.stderr
    proc = helmchart.run_helm(
        helm, "lint", "--strict", str(helmchart.CHART), "--values", str(good), check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
