"""The operator image built from the Dockerfile by buildah (tests/image/build.py): its config, the archive
the node imports, what runs inside it, the cache, and the cgroup rule for RUN steps."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.image import build
from tests.image.build import BuiltImage


def test_config_runs_podgrace_as_65532(operator_image: BuiltImage) -> None:
    cfg = operator_image.config
    assert cfg["User"] == "65532:65532"
    assert cfg["Entrypoint"] == ["podgrace"]
    assert cfg["Cmd"] == ["run", "--all-namespaces"]
    env = dict(e.split("=", 1) for e in cfg["Env"])
    assert env["PATH"].split(":")[0] == "/opt/podgrace/bin"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert set(cfg["ExposedPorts"]) == {"8080/tcp", "9090/tcp"}


def test_base_is_pinned_by_digest(operator_image: BuiltImage) -> None:
    assert re.fullmatch(r"localhost/podgrace-base@sha256:[0-9a-f]{64}", operator_image.base_ref)
    assert re.fullmatch(r"localhost/podgrace:[0-9a-f]{12}", operator_image.ref)


def test_archive_is_a_docker_archive_of_the_ref(operator_image: BuiltImage) -> None:
    with tarfile.open(operator_image.path) as tar:
        member = tar.extractfile("manifest.json")
        assert member is not None
        manifest = json.load(member)
        assert len(manifest) == 1
        assert manifest[0]["RepoTags"] == [operator_image.ref]
        config_file = tar.extractfile(manifest[0]["Config"])
        assert config_file is not None
        config = json.load(config_file)
    assert config["config"]["User"] == "65532:65532"
    # the base's layer + one for the runtime stage (buildah --layers=false commits a stage's steps as one
    # layer; the build stage leaves nothing behind)
    assert len(manifest[0]["Layers"]) == 2
    assert len(config["rootfs"]["diff_ids"]) == 2


@pytest.fixture
def container(operator_image: BuiltImage) -> Iterator[str]:
    name = build.buildah("from", "--pull=never", operator_image.ref).strip()
    try:
        yield name
    finally:
        subprocess.run(["buildah", *build.storage_args(), "rm", name], check=False, capture_output=True)


def run_in(container: str, *cmd: str) -> str:
    return build.buildah("run", "--isolation=chroot", container, "--", *cmd, timeout=120)


def test_podgrace_runs_in_the_image_as_65532_without_new_cgroups(container: str) -> None:
    before = build.cgroup_dirs()
    assert run_in(container, "id", "-u").strip() == "65532"
    assert run_in(container, "id", "-g").strip() == "65532"
    # Kopf's identity comes from getpass.getuser(): the UID needs a passwd entry
    assert (
        run_in(container, "python3", "-c", "import getpass; print(getpass.getuser())").strip() == "podgrace"
    )
    out = run_in(
        container,
        "python3",
        "-c",
        "import sys, podgrace, kopf, pydantic, aiohttp, orjson, yaml, prometheus_client; "
        "print(sys.version_info[:2], sys.prefix, podgrace.__file__)",
    )
    assert out.startswith("(3, 11) /opt/podgrace /opt/podgrace/lib/python3.11/site-packages/podgrace/"), out
    assert "usage: podgrace" in run_in(container, "podgrace", "--help")
    # the venv has no build tools or installer (they stayed in the build stage)
    for module in ("setuptools", "pip", "wheel"):
        out = run_in(container, "sh", "-c", f"python3 -c 'import {module}' 2>&1 || true")
        assert f"No module named '{module}'" in out, out
    assert build.new_cgroups(before, build.cgroup_dirs()) == []


def test_warm_build_is_a_cache_hit(operator_image: BuiltImage) -> None:
    again = build.build_operator_image()
    assert again.cached
    assert (again.ref, again.image_id, again.base_ref) == (
        operator_image.ref,
        operator_image.image_id,
        operator_image.base_ref,
    )


def test_a_cached_image_missing_from_the_storage_is_restored_from_its_archive(
    operator_image: BuiltImage,
) -> None:
    # What a build of another key (another checkout sharing the cache) does to this one: it prunes the
    # image from buildah's storage and keeps its archive. The cache hit must put it back: the tests
    # above run it from the storage (CI, 2026-11-30: "image not known").
    build.buildah("rmi", "-f", operator_image.ref)
    assert build._image_id(operator_image.ref) is None
    again = build.build_operator_image()
    assert again.cached
    assert build._image_id(again.ref) == operator_image.image_id


def _context_copy(tmp: Path) -> Path:
    repo = tmp / "repo"
    for rel in ("Dockerfile", ".dockerignore", *build.CONTEXT_PATHS):
        src = build.REPO / rel
        dst = repo / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, dst)
    return repo


def test_image_key_follows_the_build_inputs_only(tmp_path: Path) -> None:
    repo = _context_copy(tmp_path)
    base = "localhost/podgrace-base@sha256:" + "0" * 64
    key = build.image_key(base, repo)
    assert build.image_key(base, repo) == key
    (repo / "tests").mkdir()
    (repo / "tests" / "test_x.py").write_text("# not in the build context\n")
    (repo / "operator" / "podgrace" / "__pycache__").mkdir(exist_ok=True)
    (repo / "operator" / "podgrace" / "__pycache__" / "x.pyc").write_bytes(b"\0")
    assert build.image_key(base, repo) == key
    assert build.image_key(base.replace("0" * 64, "1" * 64), repo) != key
    for rel in ("operator/podgrace/__init__.py", "image/requirements.lock", "Dockerfile", "pyproject.toml"):
        path = repo / rel
        original = path.read_bytes()
        path.write_bytes(original + b"\n# changed\n")
        assert build.image_key(base, repo) != key, rel
        path.write_bytes(original)
    assert build.image_key(base, repo) == key


def test_new_cgroups_flags_builder_and_runtime_cgroups() -> None:
    for mount, path in build.own_cgroups().items():
        mine = f"{mount.rstrip('/')}/{path.strip('/')}".rstrip("/")
        assert build.new_cgroups(set(), {f"{mine}/podgrace-test-child"}) == []
        assert build.new_cgroups(set(), {f"{mine}/buildah-3f2a"}) == [f"{mine}/buildah-3f2a"]
        assert build.new_cgroups(set(), {f"{mount}/libpod_parent"}) == [f"{mount}/libpod_parent"]
        assert build.new_cgroups({f"{mount}/runc-x"}, {f"{mount}/runc-x"}) == []


def test_run_steps_stay_in_our_own_cgroups(operator_image: BuiltImage) -> None:
    """A RUN step (chroot isolation, as in the image build) sees exactly this process's cgroups: it was
    given no cgroup of its own in any hierarchy (this machine has cgroup v1 hierarchies, in one of which
    we sit below the root, and the v2 unified one)."""
    before = build.cgroup_dirs()
    seen = build.run_step_cgroups(operator_image.base_ref)
    assert sorted(seen.split()) == sorted(Path("/proc/self/cgroup").read_text().split())
    assert build.new_cgroups(before, build.cgroup_dirs()) == []
