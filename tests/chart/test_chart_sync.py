"""The chart's copies of the CRD and the built-in ShutdownProfiles equal the canonical files.

Fix a failure with hack/chart/sync.sh.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "podgrace"
SYNC = ROOT / "hack" / "chart" / "sync.sh"
CANONICAL_PROFILES = ROOT / "operator" / "podgrace" / "core" / "builtin" / "profiles.yaml"
CHART_PROFILES = CHART / "files" / "builtin-profiles.yaml"
HINT = "run hack/chart/sync.sh"


def _pairs() -> list[tuple[Path, Path]]:
    pairs = [(CANONICAL_PROFILES, CHART_PROFILES)]
    pairs += [(crd, CHART / "crds" / crd.name) for crd in sorted((ROOT / "crds").glob("*.yaml"))]
    return pairs


@pytest.mark.parametrize(("source", "copy"), _pairs(), ids=lambda p: str(p.relative_to(ROOT)))
def test_chart_copy_is_identical_to_the_canonical_file(source: Path, copy: Path) -> None:
    assert copy.exists(), f"{copy.relative_to(ROOT)} is missing: {HINT}"
    assert copy.read_bytes() == source.read_bytes(), (
        f"{copy.relative_to(ROOT)} differs from {source.relative_to(ROOT)}: {HINT}"
    )


def test_chart_has_no_crd_without_a_canonical_source() -> None:
    canonical = {p.name for p in (ROOT / "crds").glob("*.yaml")}
    extra = sorted(p.name for p in (CHART / "crds").glob("*.yaml") if p.name not in canonical)
    assert not extra, f"charts/podgrace/crds has CRDs that crds/ does not: {extra}: {HINT}"


def test_sync_script_check_mode_agrees() -> None:
    proc = subprocess.run(["bash", str(SYNC), "--check"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_crd_carries_the_platform_as_code_annotations_of_the_man_configmap() -> None:
    crd = yaml.safe_load((CHART / "crds" / "shutdownprofiles.podgrace.dev.yaml").read_text())
    annotations = crd["metadata"]["annotations"]
    assert annotations["platform-as-code/man"] == "podgrace-man"
    assert "Deployment" in annotations["platform-as-code/composition"]
    template = (CHART / "templates" / "man-configmap.yaml").read_text()
    assert "name: podgrace-man" in template
    assert '.Files.Get "files/man.txt"' in template


def test_builtin_profile_values_and_schema_name_exactly_the_files_profiles() -> None:
    names = [d["metadata"]["name"] for d in yaml.safe_load_all(CHART_PROFILES.read_text()) if d]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert list(values["builtinProfiles"]) == names
    assert all(v == {"enabled": True, "spec": {}} for v in values["builtinProfiles"].values())
    assert list(schema["properties"]["builtinProfiles"]["properties"]) == names
