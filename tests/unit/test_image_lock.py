"""The image's lock files (image/requirements.lock, image/build-requirements.lock) cover what pyproject.toml
asks for, pin every package to one version with sha256 hashes, and the Dockerfile installs them with
--require-hashes, wheels only; its base is a build argument."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
RUNTIME_LOCK = REPO / "image" / "requirements.lock"
BUILD_LOCK = REPO / "image" / "build-requirements.lock"
DOCKERFILE = (REPO / "Dockerfile").read_text()
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)")


def parse_lock(path: Path) -> dict[str, tuple[Version, list[str]]]:
    """name -> (pinned version, its sha256 hashes). Fails on a line that is neither a pin, a hash
    continuation nor a comment."""
    locked: dict[str, tuple[Version, list[str]]] = {}
    current: str | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            current = None if not line else current
            continue
        m = PIN.match(line)
        if m:
            current = canonicalize_name(m.group(1))
            assert current not in locked, f"{path.name}: {current} pinned twice"
            locked[current] = (Version(m.group(2)), [])
            continue
        h = re.fullmatch(r"--hash=sha256:([0-9a-f]{64})\s*\\?", line)
        assert h and current, f"{path.name}: unexpected line {raw!r}"
        locked[current][1].append(h.group(1))
    return locked


RUNTIME = parse_lock(RUNTIME_LOCK)
BUILD = parse_lock(BUILD_LOCK)


@pytest.mark.parametrize("lock", [RUNTIME, BUILD], ids=["runtime", "build"])
def test_every_pin_has_hashes(lock: dict[str, tuple[Version, list[str]]]) -> None:
    assert lock
    unhashed = [name for name, (_, hashes) in lock.items() if not hashes]
    assert not unhashed, f"pins without --hash: {unhashed}"


@pytest.mark.parametrize("requirement", PYPROJECT["project"]["dependencies"])
def test_runtime_lock_satisfies_pyproject(requirement: str) -> None:
    req = Requirement(requirement)
    if req.marker is not None and not req.marker.evaluate(
        {"python_version": "3.11", "sys_platform": "linux"}
    ):
        pytest.skip(f"{requirement} does not apply to Python 3.11 on Linux")
    name = canonicalize_name(req.name)
    assert name in RUNTIME, (
        f"{req.name} (pyproject.toml) is not in {RUNTIME_LOCK.name}: run python3 -m tests.image.lock"
    )
    version = RUNTIME[name][0]
    assert req.specifier.contains(version, prereleases=True), (
        f"{RUNTIME_LOCK.name} pins {req.name}=={version}, pyproject.toml wants {req.specifier}"
    )


@pytest.mark.parametrize("requirement", PYPROJECT["build-system"]["requires"])
def test_build_lock_satisfies_build_system(requirement: str) -> None:
    req = Requirement(requirement)
    name = canonicalize_name(req.name)
    assert name in BUILD, f"{req.name} ([build-system]) is not in {BUILD_LOCK.name}"
    assert req.specifier.contains(BUILD[name][0], prereleases=True)


def test_runtime_lock_holds_no_dev_or_build_tool() -> None:
    dev = {
        canonicalize_name(Requirement(r).name) for r in PYPROJECT["project"]["optional-dependencies"]["dev"]
    }
    runtime_direct = {canonicalize_name(Requirement(r).name) for r in PYPROJECT["project"]["dependencies"]}
    assert not (dev - runtime_direct) & {"pytest", "mypy", "ruff", "hypothesis"} & set(RUNTIME)
    assert "setuptools" not in RUNTIME and "pip" not in RUNTIME


def test_dockerfile_installs_the_locks_with_hashes_wheels_only() -> None:
    for lock in ("image/requirements.lock", "image/build-requirements.lock"):
        install = re.search(rf"pip install (?P<opts>[^\n]*?)\\\s*\n\s*-r /src/{lock}", DOCKERFILE)
        assert install, f"the Dockerfile does not pip install -r /src/{lock}"
        assert "--require-hashes" in install.group("opts") and "--only-binary=:all:" in install.group("opts")
    # podgrace itself: no build isolation (which would fetch unlocked build requirements), no index.
    assert "--no-build-isolation --no-index" in DOCKERFILE


def test_dockerfile_base_is_an_argument_used_by_every_stage() -> None:
    assert re.search(r"^ARG BASE=\S+", DOCKERFILE, re.M)
    froms = re.findall(r"^FROM (\S+)", DOCKERFILE, re.M)
    assert froms and all(f == "${BASE}" for f in froms), froms
    assert re.search(r"^USER 65532:65532$", DOCKERFILE, re.M)
