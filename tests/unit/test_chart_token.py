"""The chart's serviceAccount.tokenExpirationSeconds (a projected token of that lifetime in place of the
automounted one) and hostAliases, rendered by helm; the schema's bounds. The pod running with them on a
real node: tests/node/test_operator_pod.py."""

from __future__ import annotations

from typing import Any

import pytest
from hack.chart import helmchart

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


@pytest.fixture(scope="module")
def helm() -> str:
    found = helmchart.find_helm()
    if not found:
        pytest.skip(helmchart.helm_missing_reason())
    return found


def pod_spec(helm: str, *values: str) -> dict[str, Any]:
    docs = helmchart.render(helm, set_values=list(values), show_only=["templates/deployment.yaml"])
    spec: dict[str, Any] = helmchart.one(docs, "Deployment")["spec"]["template"]["spec"]
    return spec


def test_default_is_the_automounted_token(helm: str) -> None:
    spec = pod_spec(helm)
    assert spec["automountServiceAccountToken"] is True
    assert [v["name"] for v in spec["volumes"]] == ["tmp"]
    assert [m["mountPath"] for m in spec["containers"][0]["volumeMounts"]] == ["/tmp"]
    assert "hostAliases" not in spec


def test_token_lifetime_mounts_a_projected_token(helm: str) -> None:
    spec = pod_spec(helm, "serviceAccount.tokenExpirationSeconds=600")
    assert spec["automountServiceAccountToken"] is False
    volume = next(v for v in spec["volumes"] if v["name"] == "kube-api-access")
    sources = volume["projected"]["sources"]
    assert sources[0] == {"serviceAccountToken": {"path": "token", "expirationSeconds": 600}}
    assert sources[1]["configMap"] == {
        "name": "kube-root-ca.crt",
        "items": [{"key": "ca.crt", "path": "ca.crt"}],
    }
    assert sources[2]["downwardAPI"]["items"] == [
        {"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}
    ]
    mount = next(m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "kube-api-access")
    assert mount == {"name": "kube-api-access", "mountPath": SA_DIR, "readOnly": True}


@pytest.mark.parametrize("seconds", ["1", "599", "-5"])
def test_schema_rejects_a_lifetime_below_the_api_minimum(helm: str, seconds: str) -> None:
    with pytest.raises(helmchart.HelmError, match="tokenExpirationSeconds"):
        pod_spec(helm, f"serviceAccount.tokenExpirationSeconds={seconds}")


def test_host_aliases(helm: str) -> None:
    spec = pod_spec(helm, "hostAliases[0].ip=10.1.2.3", "hostAliases[0].hostnames[0]=kubernetes.default.svc")
    assert spec["hostAliases"] == [{"ip": "10.1.2.3", "hostnames": ["kubernetes.default.svc"]}]
    with pytest.raises(helmchart.HelmError, match="hostAliases"):
        pod_spec(helm, "hostAliases[0].ip=10.1.2.3")  # no hostnames
