"""Shared fixtures for the unit tests of podgrace's pure core (no cluster, no I/O beyond tmp files).

Builders are exposed as session-scoped fixtures (plain functions) so that hypothesis tests can use them too.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from podgrace.cli import main as cli
from podgrace.core import hook_intent, overrides, profiles
from podgrace.core.constants import ANN_PROFILE
from podgrace.core.models import ContainerView, Ownership, PreStop, ShutdownProfile, Workload
from podgrace.core.planner import ContainerSettings

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def builtin_profiles() -> dict[str, ShutdownProfile]:
    return profiles.builtin()


def _container(
    name: str,
    image: str = "",
    *,
    pre_stop: Mapping[str, Any] | None = None,
    stop_signal: str | None = None,
) -> ContainerView:
    lifecycle = {"preStop": dict(pre_stop)} if pre_stop is not None else None
    return ContainerView(
        name=name, image=image, pre_stop=PreStop.from_api(lifecycle), stop_signal=stop_signal
    )


def _workload(
    *containers: ContainerView,
    annotations: Mapping[str, str] | None = None,
    profile: str | None = None,
    grace: int | None = None,
    os_name: str | None = None,
    ownership: Ownership | None = None,
    name: str = "shop",
    namespace: str = "default",
) -> Workload:
    ann = dict(annotations or {})
    if profile is not None:
        ann[ANN_PROFILE] = profile
    return Workload(
        namespace=namespace,
        name=name,
        overrides=overrides.parse(ann),
        containers=tuple(containers),
        termination_grace_period_seconds=grace,
        os_name=os_name,
        ownership=ownership or Ownership(),
    )


def _deployment(
    containers: Iterable[Mapping[str, Any]],
    *,
    annotations: Mapping[str, str] | None = None,
    profile: str | None = None,
    grace: int | None = None,
    name: str = "shop",
    namespace: str = "default",
    managed_fields: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A Deployment manifest (apps/v1) as a plain dict, the way a YAML file or the API gives it."""
    ann = dict(annotations or {})
    if profile is not None:
        ann["podgrace.dev/profile"] = profile
    metadata: dict[str, Any] = {"name": name, "namespace": namespace, "labels": {"app": name}}
    if ann:
        metadata["annotations"] = ann
    if managed_fields is not None:
        metadata["managedFields"] = managed_fields
    pod_spec: dict[str, Any] = {"containers": [copy.deepcopy(dict(c)) for c in containers]}
    if grace is not None:
        pod_spec["terminationGracePeriodSeconds"] = grace
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": pod_spec},
        },
    }


@pytest.fixture(scope="session")
def container() -> Callable[..., ContainerView]:
    return _container


@pytest.fixture(scope="session")
def workload() -> Callable[..., Workload]:
    return _workload


@pytest.fixture(scope="session")
def deployment() -> Callable[..., dict[str, Any]]:
    return _deployment


def _handler(settings: ContainerSettings) -> dict[str, Any] | None:
    return None if settings.pre_stop is None else hook_intent.render(settings.pre_stop)


@pytest.fixture(scope="session")
def handler() -> Callable[[ContainerSettings], dict[str, Any] | None]:
    """The preStop handler podgrace writes for a container's settings (None: it leaves preStop alone)."""
    return _handler


@pytest.fixture
def yaml_file(tmp_path: Path) -> Callable[..., str]:
    """Write YAML documents (or raw text) to a fresh file and return its path."""
    counter = iter(range(1_000_000))

    def write(*documents: Any, text: str | None = None, name: str | None = None) -> str:
        path = tmp_path / (name or f"input-{next(counter)}.yaml")
        if text is None:
            text = yaml.safe_dump_all(list(documents), sort_keys=False)
        path.write_text(text, encoding="utf-8")
        return str(path)

    return write


@dataclass(frozen=True)
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """Run `podgrace ARGV...` in-process; argparse's SystemExit is turned into an exit code."""

    def run(*argv: str) -> CliResult:
        capsys.readouterr()  # drop anything printed before
        try:
            code = cli.main(list(argv))
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 2
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run
