"""Build podgrace's image from the repository's Dockerfile with buildah, on a base made from Debian packages.

    image = build_operator_image()     # cold ~4 min (mmdebstrap base + buildah bud), warm: a cache hit
    image.ref                           # "localhost/podgrace:<12 hex of the cache key>"
    image.path                          # docker-archive tar, for `ctr -n k8s.io images import`

1. The base: ``mmdebstrap --variant=minbase`` (python3, python3-venv, ca-certificates from Debian 12, whose
   python3 is 3.11) in a private mount namespace, its tarball committed by buildah as
   ``localhost/podgrace-base:<base key>``. The Dockerfile gets it as ``--build-arg BASE=...@sha256:<digest>``,
   pinned by the digest buildah reports.
2. ``buildah bud --isolation chroot --pull=never`` builds the Dockerfile. RUN steps run chroot'ed in
   buildah's own cgroups (the caller's): chroot isolation creates no cgroup (checked after every build:
   a new cgroup outside the caller's own fails the build, see ``new_cgroups``). RUN steps reach PyPI over
   the host network; the host's CA bundle is passed as the optional ``ca-bundle`` build secret (this
   machine's egress proxy re-signs TLS with its own CA).
3. ``buildah push`` writes a docker-archive named ``localhost/podgrace:<key>``.

Cache (``${PODGRACE_CACHE:-~/.cache/podgrace}``): buildah's storage in ``buildah/`` (its own, not
/var/lib/containers), images in ``images/podgrace-<key>.tar`` + ``.json``. The base key hashes the recipe
and the host apt's candidate version of each base package; the image key hashes the base digest, the
Dockerfile, .dockerignore and every file the build copies (pyproject.toml, README.md, operator/,
image/*.lock) and buildah's version. Needs root, buildah and mmdebstrap (``apt-get install buildah
mmdebstrap``; ``ensure_tools()`` does it).

CLI: ``python3 -m tests.image.build [--force] [--json] [--tools-only]``
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
RECIPE = 1  # bump when the recipe below changes in a way the key does not see
SUITE = "bookworm"
MIRRORS = (
    f"deb http://deb.debian.org/debian {SUITE} main",
    f"deb http://deb.debian.org/debian {SUITE}-updates main",
    f"deb http://deb.debian.org/debian-security {SUITE}-security main",
)
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
# Packages whose Debian version decides the base (a python3.11 security update makes a new base).
BASE_VERSIONED = (*BASE_PACKAGES, "python3.11", "libpython3.11-stdlib", "libc6", "libssl3")
SLIM_DPKG_OPTS = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/doc/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/doc/*/copyright",
)
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BASE_NAME = "localhost/podgrace-base"
IMAGE_NAME = "localhost/podgrace"
# What the Dockerfile copies from the context (.dockerignore keeps everything else out).
CONTEXT_PATHS = (
    "pyproject.toml",
    "README.md",
    "operator",
    "image/requirements.lock",
    "image/build-requirements.lock",
)
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
APT_PACKAGES = ("buildah", "mmdebstrap")
KEEP_ARCHIVES = 3


class BuildError(RuntimeError):
    pass


@dataclasses.dataclass(frozen=True)
class BuiltImage:
    ref: str  # localhost/podgrace:<tag>, as the chart's image.repository:image.tag
    path: Path  # docker-archive tar
    key: str
    image_id: str  # sha256 of the config (buildah's image ID)
    base_ref: str  # localhost/podgrace-base@sha256:... as passed to the Dockerfile
    config: dict[str, Any]  # the OCI config's "config" (User, Entrypoint, Env, ...)
    build_seconds: float  # 0.0 on a cache hit
    base_seconds: float  # 0.0 when the base was cached
    cached: bool

    @property
    def repository(self) -> str:
        return self.ref.rsplit(":", 1)[0]

    @property
    def tag(self) -> str:
        return self.ref.rsplit(":", 1)[1]


def cache_root() -> Path:
    return Path(os.environ.get("PODGRACE_CACHE") or Path.home() / ".cache" / "podgrace")


def storage_args() -> list[str]:
    root = cache_root() / "buildah"
    return ["--root", str(root / "storage"), "--runroot", str(root / "run"), "--storage-driver", "overlay"]


def ensure_tools() -> None:
    """apt-get install buildah and mmdebstrap when missing (root; Debian 12)."""
    missing = [p for p in APT_PACKAGES if shutil.which(p) is None]
    if not missing:
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )


def run(cmd: Sequence[str], *, log: Path | None = None, timeout: float = 1200.0, **kw: Any) -> str:
    """Run ``cmd`` in its own process group; on timeout (or any exception) stop that group by its PID.
    Output goes to ``log`` (appended) if given, else it is captured and returned."""
    out_fh = log.open("ab") if log is not None else None
    try:
        proc = subprocess.Popen(
            list(cmd),
            stdout=out_fh if out_fh is not None else subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **kw,
        )
        try:
            stdout, _ = proc.communicate(timeout=timeout)
        except BaseException:
            _kill_group(proc)
            raise
    finally:
        if out_fh is not None:
            out_fh.close()
    text = stdout.decode(errors="replace") if stdout is not None else ""
    if proc.returncode != 0:
        tail = text[-4000:] if log is None else log.read_text(errors="replace")[-4000:]
        raise BuildError(f"{' '.join(cmd[:4])} ... failed ({proc.returncode}):\n{tail}")
    return text


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def buildah(*args: str, log: Path | None = None, timeout: float = 1200.0, cwd: Path | None = None) -> str:
    return run(["buildah", *storage_args(), *args], log=log, timeout=timeout, cwd=cwd)


# ---- cgroups ------------------------------------------------------------------------------------------


def own_cgroups() -> dict[str, str]:
    """Hierarchy mount dir -> this process's cgroup path in it (v1 controllers and the v2 unified tree)."""
    mounts: dict[str, str] = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fstype, _, opts = right.split(" ", 2)
        if fstype not in ("cgroup", "cgroup2"):
            continue
        mount_point = left.split(" ")[4]
        if fstype == "cgroup2":
            mounts["0:"] = mount_point
        else:
            for opt in opts.split(" ")[-1].split(","):
                if opt in ("rw", "ro") or opt.startswith(("relatime", "nosuid", "nodev", "noexec")):
                    continue
                mounts.setdefault(opt, mount_point)
    own: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        hid, controllers, path = line.split(":", 2)
        key = "0:" if hid == "0" else (controllers.split(",")[0] if controllers else "")
        mount = mounts.get(key)
        if mount:
            own[mount] = path
    return own


def cgroup_dirs() -> set[str]:
    dirs: set[str] = set()
    for mount in own_cgroups():
        for root, subdirs, _ in os.walk(mount):
            dirs.update(os.path.join(root, d) for d in subdirs)
    return dirs


# Names of the cgroups an OCI runtime or buildah itself would create (runc/crun under buildah's
# "--isolation oci" make "buildah-<id>" / "libpod_parent/..." ones).
BUILDER_CGROUP_MARKERS = ("buildah", "libpod", "runc", "crun", "conmon")


def new_cgroups(before: set[str], after: set[str]) -> list[str]:
    """New cgroups named like a builder's or a runtime's, anywhere. (Other new cgroups are not flagged:
    other processes of the machine make and remove cgroups while a build runs, e.g. siblings of ours.
    That RUN steps stay in the caller's own cgroups is checked by :func:`run_step_cgroups`.)"""
    return sorted(d for d in after - before if any(m in os.path.basename(d) for m in BUILDER_CGROUP_MARKERS))


def run_step_cgroups(base_ref: str) -> str:
    """/proc/self/cgroup as a RUN step sees it, from a throwaway build on ``base_ref`` with the same
    isolation as the image build (compare with this process's own)."""
    with tempfile.TemporaryDirectory(prefix="podgrace-cgcheck-") as tmp:
        Path(tmp, "Dockerfile").write_text(
            "ARG BASE\nFROM ${BASE}\nRUN echo '<<<' && cat /proc/self/cgroup && echo '>>>'\n"
        )
        out = buildah(
            "bud",
            "--isolation=chroot",
            "--pull=never",
            f"--build-arg=BASE={base_ref}",
            "--layers=false",
            "--tag=localhost/podgrace-cgcheck:latest",
            tmp,
            timeout=300,
        )
        subprocess.run(
            ["buildah", *storage_args(), "rmi", "localhost/podgrace-cgcheck:latest"],
            check=False,
            capture_output=True,
        )
    return out.split("<<<\n", 1)[1].split(">>>", 1)[0]


# ---- the base -----------------------------------------------------------------------------------------


def candidate_versions(packages: Iterable[str]) -> dict[str, str]:
    """The host apt's candidate version of each package ('' if apt does not know it); one apt-cache call."""
    pkgs = list(packages)
    text = subprocess.run(
        ["apt-cache", "policy", *pkgs],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "LC_ALL": "C"},
    ).stdout
    out = dict.fromkeys(pkgs, "")
    current = ""
    for line in text.splitlines():
        if line and not line[0].isspace() and line.endswith(":"):
            current = line[:-1]
        elif line.strip().startswith("Candidate:") and current in out:
            version = line.split(":", 1)[1].strip()
            out[current] = "" if version == "(none)" else version
    return out


def base_key() -> str:
    doc = {
        "recipe": RECIPE,
        "suite": SUITE,
        "mirrors": MIRRORS,
        "packages": BASE_PACKAGES,
        "versions": candidate_versions(BASE_VERSIONED),
        "dpkg": SLIM_DPKG_OPTS,
        "path": BASE_PATH,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _stored_image(ref: str) -> dict[str, Any] | None:
    """What ``buildah images`` says of ``ref`` in buildah's storage, or None if it is not there."""
    try:
        text = buildah("images", "--json", "--no-trunc", ref)
    except BuildError:
        return None
    images = json.loads(text or "[]")
    return dict(images[0]) if images else None


def _image_digest(ref: str) -> str | None:
    """The manifest digest of ``ref`` in buildah's storage, or None if it is not there."""
    stored = _stored_image(ref)
    return str(stored["digest"]) if stored else None


def build_base(*, log: Path, force: bool = False) -> tuple[str, float]:
    """The base in buildah's storage; returns (``localhost/podgrace-base@sha256:...``, seconds spent)."""
    ref = f"{BASE_NAME}:{base_key()[:12]}"
    digest = None if force else _image_digest(ref)
    if digest:
        return f"{BASE_NAME}@{digest}", 0.0
    t0 = time.monotonic()
    log.write_bytes(b"")
    with tempfile.TemporaryDirectory(prefix="podgrace-base-") as tmp:
        rootfs = Path(tmp) / "rootfs.tar"
        cmd = [
            "unshare",
            "--mount",
            "--propagation=private",
            "mmdebstrap",
            "--mode=root",
            "--variant=minbase",
            "--format=tar",
            "--skip=output/dev",
            f"--include={','.join(BASE_PACKAGES)}",
            '--aptopt=Acquire::Retries "3"',
            *(f"--dpkgopt={opt}" for opt in SLIM_DPKG_OPTS),
            SUITE,
            str(rootfs),
            *MIRRORS,
        ]
        run(cmd, log=log, timeout=1200)
        container = buildah("from", "--pull=never", "scratch", log=None).strip()
        try:
            buildah("add", container, str(rootfs), "/", log=log)
            buildah(
                "config",
                f"--env=PATH={BASE_PATH}",
                "--cmd=python3",
                "--label=org.opencontainers.image.description="
                f"Debian {SUITE} minbase + {' '.join(BASE_PACKAGES)}",
                container,
                log=log,
            )
            buildah("commit", "--rm", container, ref, log=log)
        except BaseException:
            subprocess.run(["buildah", *storage_args(), "rm", container], check=False, capture_output=True)
            raise
    digest = _image_digest(ref)
    if not digest:
        raise BuildError(f"{ref} is not in buildah's storage after the commit")
    return f"{BASE_NAME}@{digest}", time.monotonic() - t0


# ---- the operator image -------------------------------------------------------------------------------


def context_files(repo: Path = REPO) -> list[Path]:
    files: list[Path] = []
    for rel in CONTEXT_PATHS:
        p = repo / rel
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            files.extend(
                f
                for f in sorted(p.rglob("*"))
                if f.is_file() and "__pycache__" not in f.parts and f.suffix != ".pyc"
            )
        else:
            raise BuildError(f"build context path {rel} is missing")
    return files


def buildah_version() -> str:
    return run(["buildah", "--version"]).strip()


def image_key(base_ref: str, repo: Path = REPO) -> str:
    h = hashlib.sha256()
    h.update(f"recipe={RECIPE}\nbase={base_ref}\nbuildah={buildah_version()}\n".encode())
    for f in [repo / "Dockerfile", repo / ".dockerignore", *context_files(repo)]:
        h.update(f"{f.relative_to(repo)}:{f.stat().st_mode & 0o111:o}\n".encode())
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


@contextlib.contextmanager
def _images_lock(out_dir: Path) -> Iterator[None]:
    """One build at a time per cache: two test workers, or two checkouts sharing the cache, would otherwise
    tag, push and prune the same storage at once."""
    with (out_dir / "build.lock").open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _image_id(ref: str) -> str | None:
    """The image ID (``sha256:<config digest>``) of ``ref`` in buildah's storage, or None."""
    stored = _stored_image(ref)
    return str(stored["id"]) if stored else None


def _restore_from_archive(ref: str, archive: Path, image_id: str) -> bool:
    """Put a cached image back into buildah's storage from its archive (~3 s) when it is missing there:
    a build of another key (another checkout sharing the cache) prunes it from the storage but keeps
    the archive, and the image tests run it from the storage. False if that did not give ``image_id``."""
    if _image_id(ref) == image_id:
        return True
    try:
        buildah("pull", "--quiet", f"docker-archive:{archive}")
    except BuildError:
        return False
    return _image_id(ref) == image_id


def build_operator_image(*, force: bool = False, repo: Path = REPO, log: Path | None = None) -> BuiltImage:
    """Build (or take from the cache) the operator image; see the module docstring."""
    ensure_tools()
    out_dir = cache_root() / "images"
    out_dir.mkdir(parents=True, exist_ok=True)
    with _images_lock(out_dir):
        return _build_operator_image(
            out_dir, force=force, repo=repo, log=log or out_dir / "podgrace-build.log"
        )


def _build_operator_image(out_dir: Path, *, force: bool, repo: Path, log: Path) -> BuiltImage:
    base_ref, base_seconds = build_base(log=log, force=force)
    key = image_key(base_ref, repo)
    tag = key[:12]
    ref = f"{IMAGE_NAME}:{tag}"
    archive = out_dir / f"podgrace-{tag}.tar"
    meta_path = out_dir / f"podgrace-{tag}.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else None
    if not force and archive.is_file() and meta and _restore_from_archive(ref, archive, meta["image_id"]):
        return BuiltImage(
            ref=ref,
            path=archive,
            key=key,
            image_id=meta["image_id"],
            base_ref=base_ref,
            config=meta["config"],
            build_seconds=0.0,
            base_seconds=base_seconds,
            cached=True,
        )
    t0 = time.monotonic()
    if not base_seconds:
        log.write_bytes(b"")  # else it holds the base's build, and this one is appended
    before = cgroup_dirs()
    args = [
        "bud",
        "--isolation=chroot",
        "--pull=never",
        "--layers=false",
        f"--build-arg=BASE={base_ref}",
        f"--tag={ref}",
        "--file=Dockerfile",
    ]
    if HOST_CA_BUNDLE.is_file():
        args.append(f"--secret=id=ca-bundle,src={HOST_CA_BUNDLE}")
    try:
        buildah(*args, str(repo), log=log, cwd=repo, timeout=1800)
    finally:
        leaked = new_cgroups(before, cgroup_dirs())
    if leaked:
        raise BuildError(f"the build created cgroups: {leaked}")
    inspect = json.loads(buildah("inspect", "--type=image", ref))
    image_id = "sha256:" + str(inspect["FromImageID"])
    config = dict(inspect["OCIv1"].get("config") or {})
    tmp_archive = archive.with_suffix(".tar.tmp")
    tmp_archive.unlink(missing_ok=True)
    buildah("push", ref, f"docker-archive:{tmp_archive}:{ref}", log=log)
    tmp_archive.rename(archive)
    meta_path.write_text(json.dumps({"ref": ref, "image_id": image_id, "base": base_ref, "config": config}))
    _prune(keep=ref)
    _prune_archives(out_dir, keep=KEEP_ARCHIVES)
    return BuiltImage(
        ref=ref,
        path=archive,
        key=key,
        image_id=image_id,
        base_ref=base_ref,
        config=config,
        build_seconds=time.monotonic() - t0,
        base_seconds=base_seconds,
        cached=False,
    )


def _prune_archives(out_dir: Path, *, keep: int) -> None:
    """Keep the ``keep`` newest image archives (~230 MB each): other checkouts may use other keys."""
    archives = sorted(out_dir.glob("podgrace-*.tar"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in archives[keep:]:
        old.unlink(missing_ok=True)
        old.with_suffix(".json").unlink(missing_ok=True)


def _prune(*, keep: str) -> None:
    """Drop older podgrace images and the build stage's dangling image from buildah's storage (the
    archives in the cache stay)."""
    images = json.loads(buildah("images", "--json") or "[]")
    for img in images:
        names = img.get("names") or []
        if names and (keep in names or any(n.startswith(BASE_NAME + ":") for n in names)):
            continue
        if names and not any(n.startswith(IMAGE_NAME + ":") for n in names):
            continue
        subprocess.run(["buildah", *storage_args(), "rmi", "-f", img["id"]], check=False, capture_output=True)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m tests.image.build", description=__doc__.split("\n")[0])
    ap.add_argument("--force", action="store_true", help="rebuild the base and the image")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    ap.add_argument("--tools-only", action="store_true", help="only apt-get install buildah and mmdebstrap")
    args = ap.parse_args(argv)
    if args.tools_only:
        ensure_tools()
        return 0
    image = build_operator_image(force=args.force)
    doc = {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(image).items()}
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        built = "cached" if image.cached else f"built in {image.build_seconds:.0f} s"
        base = f" built in {image.base_seconds:.0f} s" if image.base_seconds else ""
        print(f"{image.ref} ({built}; base {image.base_ref}{base})")
        print(image.path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
