"""Issue 12, "always a valid spec": podgrace never renders a Deployment the API server rejects.

A seeded sample of generated Deployments (the built-in profiles, podgrace's annotations, a grace period the
owner keeps, an existing user hook, a sidecar) is rendered by `podgrace render` (one process per batch) in
three capability modes and every result is sent to the real API server as a server-side dry-run apply:
Kubernetes 1.29 (exec sleep) and 1.34 without ContainerStopSignals (the fallback hook) to the plain API
server, 1.36 with ContainerStopSignals (preStop `sleep`, `lifecycle.stopSignal`) to the one with the gate on.

The inputs themselves are dry-run first (a rejected input is a bug of this generator, not podgrace's), and a
known-invalid control document must be rejected (the harness can see a rejection). A render refused with
exit 2 and a message naming the document is acceptable and counted separately.

PODGRACE_VALID_SPEC_CASES (inputs, default 128; each is rendered in all 3 modes) and PODGRACE_VALID_SPEC_SEED
widen or vary the sample.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import random
import re
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.slow

NAMESPACE = "valid-spec"
INPUTS = int(os.environ.get("PODGRACE_VALID_SPEC_CASES", "128"))
SEED = int(os.environ.get("PODGRACE_VALID_SPEC_SEED", "20261130"))
BATCH = 64
PODGRACE = [sys.executable, "-m", "podgrace.cli.main"]

PROFILE_CONTAINERS: dict[str, list[dict[str, Any]]] = {
    "nginx": [{"name": "nginx", "image": "nginx:1.27"}],
    "php-fpm": [{"name": "php-fpm", "image": "php:8.3-fpm"}],
    "nginx-php-fpm": [{"name": "nginx", "image": "nginx:1.27"}, {"name": "php-fpm", "image": "php:8.3-fpm"}],
    "apache": [{"name": "httpd", "image": "httpd:2.4"}],
    "web": [{"name": "web", "image": "registry.example/web:1"}],
}
USER_HOOKS: dict[str, dict[str, Any] | None] = {
    "none": None,
    "sleep": {"sleep": {"seconds": 3}},
    "exec": {"exec": {"command": ["sh", "-c", "sleep 3"]}},
    "http": {"httpGet": {"path": "/drain", "port": 8080}},
}
DIMENSIONS: dict[str, list[Any]] = {
    "profile": list(PROFILE_CONTAINERS),
    "prestop-sleep-seconds": [None, "0", "3", "20", "90"],
    "drain-seconds": [None, "0", "10", "120"],
    "termination-grace-period-seconds": [None, "10", "45", "300"],
    "existing-prestop": [None, "keep", "replace"],
    "owner_grace": [None, 10, 30, 300],  # terminationGracePeriodSeconds in the manifest: the owner's, kept
    "user_hook": list(USER_HOOKS),  # on the first container
    "sidecar": [False, True],  # an unmatched container with its own sleep hook
}
# (server version, ContainerStopSignals, cluster fixture)
MODES = [("1.29", False, "cluster"), ("1.34", False, "cluster"), ("1.36", True, "cluster_stopsignals")]
# Combinations the issue measured or that sit on an edge: always in the sample.
PINNED = [
    {"profile": "nginx-php-fpm", "owner_grace": 30},
    {"profile": "nginx-php-fpm", "owner_grace": 10, "user_hook": "sleep"},
    {"profile": "php-fpm", "termination-grace-period-seconds": "10"},
    {"profile": "nginx", "prestop-sleep-seconds": "90", "owner_grace": 30},
    {"profile": "nginx", "existing-prestop": "replace", "user_hook": "sleep", "owner_grace": 10},
    {"profile": "apache", "prestop-sleep-seconds": "0", "drain-seconds": "0"},
]


@dataclass
class Case:
    index: int
    choice: dict[str, Any]

    @property
    def name(self) -> str:
        return f"case-{self.index:04d}"

    def manifest(self) -> dict[str, Any]:
        c = self.choice
        containers = copy.deepcopy(PROFILE_CONTAINERS[c["profile"]])
        hook = USER_HOOKS[c["user_hook"]]
        if hook is not None:
            containers[0]["lifecycle"] = {"preStop": copy.deepcopy(hook)}
        if c["sidecar"]:
            containers.append(
                {
                    "name": "log-shipper",
                    "image": "busybox:1.36",
                    "lifecycle": {"preStop": {"sleep": {"seconds": 2}}},
                }
            )
        annotations = {"podgrace.dev/profile": c["profile"]}
        for key in (
            "prestop-sleep-seconds",
            "drain-seconds",
            "termination-grace-period-seconds",
            "existing-prestop",
        ):
            if c[key] is not None:
                annotations[f"podgrace.dev/{key}"] = c[key]
        pod: dict[str, Any] = {"containers": containers}
        if c["owner_grace"] is not None:
            pod["terminationGracePeriodSeconds"] = c["owner_grace"]
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": self.name, "namespace": NAMESPACE, "annotations": annotations},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": self.name}},
                "template": {"metadata": {"labels": {"app": self.name}}, "spec": pod},
            },
        }


def generate(count: int, seed: int) -> list[Case]:
    """The pinned combinations, then a seeded sample without repetition of the full product."""
    defaults = {key: values[0] for key, values in DIMENSIONS.items()}
    chosen = [{**defaults, **pinned} for pinned in PINNED]
    product = list(itertools.product(*DIMENSIONS.values()))
    rng = random.Random(seed)
    for values in rng.sample(product, min(max(count - len(chosen), 0), len(product))):
        choice = dict(zip(DIMENSIONS, values, strict=True))
        if choice not in chosen:
            chosen.append(choice)
    return [Case(i, c) for i, c in enumerate(chosen[:count])]


@dataclass
class Rendered:
    documents: dict[str, dict[str, Any]] = field(default_factory=dict)  # case name -> rendered Deployment
    refused: dict[str, str] = field(default_factory=dict)  # case name -> podgrace's message (exit 2)


def render(cases: list[Case], server_version: str, stop_signals: bool) -> Rendered:
    """`podgrace render` per batch; a refused batch is rendered case by case to find the refused ones."""
    out = Rendered()
    flags = [
        "--server-version",
        server_version,
        "--feature-gates",
        f"ContainerStopSignals={str(stop_signals).lower()}",
    ]
    for start in range(0, len(cases), BATCH):
        batch = cases[start : start + BATCH]
        proc = _render([c.manifest() for c in batch], flags)
        if proc.returncode == 0:
            docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
            assert [d["metadata"]["name"] for d in docs] == [c.name for c in batch], (
                "render changed the stream"
            )
            out.documents.update((d["metadata"]["name"], d) for d in docs)
            continue
        assert proc.returncode == 2, f"podgrace render exited {proc.returncode}:\n{proc.stderr}"
        for case in batch:
            single = _render([case.manifest()], flags)
            if single.returncode == 0:
                out.documents[case.name] = next(d for d in yaml.safe_load_all(single.stdout) if d)
            else:
                assert single.returncode == 2, (
                    f"{case.name}: render exited {single.returncode}:\n{single.stderr}"
                )
                assert single.stdout == "", f"{case.name}: a refused render printed a document"
                assert case.name in single.stderr, (
                    f"{case.name}: the message does not name it: {single.stderr}"
                )
                out.refused[case.name] = single.stderr.strip()
    return out


def _render(documents: list[dict[str, Any]], flags: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PODGRACE, "render", "-f", "-", *flags],
        input=yaml.safe_dump_all(documents, sort_keys=False),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


_NAME = re.compile(r'"(case-\d{4}|control-invalid)"')


def dry_run(cluster: Any, documents: list[dict[str, Any]]) -> dict[str, str]:
    """Server-side dry-run apply of each document (kubectl, one process per batch): rejected name -> error."""
    rejected: dict[str, str] = {}
    for start in range(0, len(documents), BATCH):
        batch = documents[start : start + BATCH]
        stream = "\n---\n".join(json.dumps(d) for d in batch)
        args = ["apply", "--server-side", "--dry-run=server", "--field-manager=valid-spec", "-o", "name"]
        proc = cluster.kubectl(*args, "-f", "-", input=stream, check=False, timeout=300)
        accepted = {line.rsplit("/", 1)[-1] for line in proc.stdout.split()}
        errors: dict[str, list[str]] = {}
        for line in proc.stderr.splitlines():
            for name in set(_NAME.findall(line)):
                errors.setdefault(name, []).append(line)
        for doc in batch:
            name = doc["metadata"]["name"]
            if name not in accepted:
                rejected[name] = "\n".join(errors.get(name, [])) or proc.stderr.strip()[-2000:]
    return rejected


@pytest.fixture(scope="module")
def cases() -> list[Case]:
    return generate(INPUTS, SEED)


def _namespace(cluster: Any) -> None:
    if cluster.kubectl("get", "namespace", NAMESPACE, check=False).returncode != 0:
        cluster.kubectl("create", "namespace", NAMESPACE)


CONTROL_INVALID = {  # a preStop sleep longer than the grace period: the API server must reject it
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "control-invalid", "namespace": NAMESPACE},
    "spec": {
        "selector": {"matchLabels": {"app": "control-invalid"}},
        "template": {
            "metadata": {"labels": {"app": "control-invalid"}},
            "spec": {
                "terminationGracePeriodSeconds": 30,
                "containers": [
                    {"name": "x", "image": "x", "lifecycle": {"preStop": {"sleep": {"seconds": 35}}}}
                ],
            },
        },
    },
}


def _mode_id(mode: tuple[str, bool, str]) -> str:
    return f"k8s{mode[0]}-stopsignals-{'on' if mode[1] else 'off'}"


@pytest.mark.parametrize("mode", MODES, ids=[_mode_id(m) for m in MODES])
def test_rendered_plans_are_accepted_by_the_api_server(
    request: pytest.FixtureRequest, cases: list[Case], mode: tuple[str, bool, str]
) -> None:
    server_version, stop_signals, fixture = mode
    cluster = request.getfixturevalue(fixture)
    _namespace(cluster)
    # The harness sees a rejection, and every generated input is itself valid.
    assert set(dry_run(cluster, [CONTROL_INVALID])) == {"control-invalid"}
    bad_inputs = dry_run(cluster, [c.manifest() for c in cases])
    assert bad_inputs == {}, f"the generator produced invalid inputs: {bad_inputs}"

    rendered = render(cases, server_version, stop_signals)
    assert len(rendered.documents) + len(rendered.refused) == len(cases)
    changed = sum(
        1 for c in cases if c.name in rendered.documents and rendered.documents[c.name] != c.manifest()
    )
    assert changed >= len(rendered.documents) // 2, (
        "podgrace changed too few documents for the test to mean much"
    )
    rejected = dry_run(cluster, list(rendered.documents.values()))

    by_case = {c.name: c for c in cases}
    report = [f"{len(cases)} cases, {len(rendered.refused)} refused by podgrace render (exit 2), "
              f"{len(rejected)} rendered specs rejected by the API server"]  # fmt: skip
    kinds = Counter(_error_kind(err) for err in rejected.values())
    report += [f"  {n:4d} x {kind}" for kind, n in kinds.most_common()]
    for name, err in list(rejected.items())[:8]:
        report.append(f"- {name} {json.dumps(by_case[name].choice)}:\n    {err[-600:]}")
    for name, msg in list(rendered.refused.items())[:3]:
        report.append(f"- refused {name} {json.dumps(by_case[name].choice)}: {msg[-300:]}")
    print("\n".join(report))
    assert rejected == {}, "\n".join(report)


def _error_kind(err: str) -> str:
    """The field and message of an API server rejection, without the values: groups alike rejections."""
    found = re.findall(r"(spec\.template\.spec\.[\w.\[\]]+): ([A-Za-z ]+): [^:]*: ([^,\]\n]+)", err)
    if not found:
        return err.strip().splitlines()[-1][:160] if err.strip() else "(no message)"
    index = re.compile(r"\[\d+\]")
    return "; ".join(sorted({f"{index.sub('[]', f)}: {kind}: {msg.strip()}" for f, kind, msg in found}))


def test_generator_covers_every_value_of_every_dimension(cases: list[Case]) -> None:
    for key, values in DIMENSIONS.items():
        seen = {json.dumps(c.choice[key]) for c in cases}
        assert seen == {json.dumps(v) for v in values}, f"{key}: only {sorted(seen)}"
