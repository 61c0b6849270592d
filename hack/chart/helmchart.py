"""Helpers for the chart tests (tests/chart/test_chart*.py, tests/e2e/test_chart_schema.py): find helm,
render charts/podgrace, and pick objects out of the rendered stream.

Only the standard library and PyYAML.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "podgrace"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
ALL_ON_VALUES = CHART / "ci" / "all-on-values.yaml"
RELEASE = "podgrace"
NAMESPACE = "podgrace-system"
# The API the admission policy template needs. `helm template` knows only group/versions, so it renders the
# policy only when told: --api-versions with this (what `helm install` learns from the cluster's discovery).
VAP_API = "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy"
WITH_VAP = ("--api-versions", VAP_API)

Manifest = dict[str, Any]


class HelmError(RuntimeError):
    def __init__(self, argv: Sequence[str], proc: subprocess.CompletedProcess[str]) -> None:
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        super().__init__(f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stderr.strip()}")


def cache_root() -> Path:
    return Path(os.environ.get("PODGRACE_CACHE") or Path.home() / ".cache" / "podgrace")


def find_helm() -> str | None:
    """$PODGRACE_HELM, else the newest complete Helm 4 of tests/cluster/build.sh (bin/k8s-*/helm),
    else `helm` on PATH. Only build.sh's directories count: tests/cluster/build-helm3.sh caches a Helm 3 named
    `helm` too (its field manager), and Helm 3 renders for Kubernetes 1.20, which the chart refuses."""
    explicit = os.environ.get("PODGRACE_HELM")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    built = [
        Path(p)
        for p in glob.glob(str(cache_root() / "bin" / "k8s-*" / "helm"))
        if not p.split(os.sep)[-2].endswith(".partial") and os.access(p, os.X_OK)
    ]
    if built:
        # Prefer the build.sh output that is complete (has its stamp), newest first.
        built.sort(key=lambda p: ((p.parent / ".complete").exists(), p.stat().st_mtime), reverse=True)
        return str(built[0])
    return shutil.which("helm")


HELM_MISSING = (
    "no helm binary: set PODGRACE_HELM, run tests/cluster/build.sh (it builds helm into "
    "$HOME/.cache/podgrace/bin/<version>/), or put helm on PATH"
)


def helm_missing_reason() -> str:
    explicit = os.environ.get("PODGRACE_HELM")
    if explicit:
        return f"PODGRACE_HELM={explicit} is not an executable helm binary"
    return HELM_MISSING


def helm_env(home: Path | None = None) -> dict[str, str]:
    """An environment that keeps helm away from the user's repositories, plugins and kubeconfig."""
    env = dict(os.environ)
    base = home or Path(os.environ.get("TMPDIR", "/tmp")) / "podgrace-helm-home"
    for var, sub in (
        ("HELM_CACHE_HOME", "cache"),
        ("HELM_CONFIG_HOME", "config"),
        ("HELM_DATA_HOME", "data"),
    ):
        env.setdefault(var, str(base / sub))
    return env


def run_helm(
    helm: str, *args: str, check: bool = True, timeout: float = 120.0, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    argv = [helm, *args]
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, env=dict(env or helm_env()), check=False
    )
    if check and proc.returncode != 0:
        raise HelmError(argv, proc)
    return proc


def template_args(
    values_files: Iterable[Path | str] = (),
    set_values: Mapping[str, str] | Iterable[str] = (),
    *,
    release: str = RELEASE,
    namespace: str = NAMESPACE,
    show_only: Sequence[str] = (),
    include_crds: bool = False,
    extra: Sequence[str] = (),
) -> list[str]:
    args = ["template", release, str(CHART), "--namespace", namespace]
    for f in values_files:
        args += ["--values", str(f)]
    items = (
        [f"{k}={v}" for k, v in set_values.items()] if isinstance(set_values, Mapping) else list(set_values)
    )
    for item in items:
        args += ["--set", item]
    for s in show_only:
        args += ["--show-only", s]
    if include_crds:
        args.append("--include-crds")
    return args + list(extra)


def render_text(helm: str, *args: Any, **kwargs: Any) -> str:
    return run_helm(helm, *template_args(*args, **kwargs)).stdout


def parse_stream(text: str) -> list[Manifest]:
    return [d for d in yaml.safe_load_all(text) if d]


def render(helm: str, *args: Any, **kwargs: Any) -> list[Manifest]:
    """`helm template` → the list of rendered objects (tests' Pods included)."""
    return parse_stream(render_text(helm, *args, **kwargs))


def of_kind(docs: Iterable[Manifest], kind: str) -> list[Manifest]:
    return [d for d in docs if d.get("kind") == kind]


def one(docs: Iterable[Manifest], kind: str, name: str | None = None) -> Manifest:
    found = [d for d in of_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    if len(found) != 1:
        names = [d["metadata"]["name"] for d in of_kind(docs, kind)]
        raise AssertionError(f"expected one {kind} {name or ''}, found {len(found)} among {names}")
    return found[0]


def load_yaml_stream(path: Path) -> list[Manifest]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]
