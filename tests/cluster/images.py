"""Container images without a registry: a Debian root filesystem from Debian packages
(``mmdebstrap --variant=minbase``) or a handful of files, wrapped as an OCI image-layout tar written
here, cached by everything that goes into it, and imported into containerd with ``ctr images import``.

    spec = ImageSpec("podgrace.local/nginx", packages=("nginx",), cmd=("nginx", "-g", "daemon off;"))
    image = build_image(spec)              # cold ~40 s (mmdebstrap), warm: a cache hit (~0.1 s)
    image.ref                              # "podgrace.local/nginx:<12 hex of the cache key>"
    import_image(image, ctr=..., address=...)   # or Node.import_image(image)

Pods then use ``image: <image.ref>`` with ``imagePullPolicy: Never``.

Cache: ``${PODGRACE_CACHE:-~/.cache/podgrace}/images/layers/<layer key>.tar`` (the root filesystem)
and ``images/<image key>.tar`` (the archive ctr imports). The layer key hashes the suite, the mirrors,
the package list, the host apt's candidate version of each listed package (so a Debian update of nginx
makes a new layer; updates of its dependencies alone do not), the hooks, the files and RECIPE; the
image key adds the name and the config (Cmd, Env, ...), so changing only those reuses the layer.
Building needs root (mmdebstrap's root mode, run inside a private mount namespace so that its
/proc, /sys and /dev mounts never show on the host).

CLI::

    python tests/cluster/images.py build --name podgrace.local/nginx --package nginx \\
        --cmd nginx -g 'daemon off;'
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

RECIPE = 1  # bump when the image format written here changes
DEFAULT_SUITE = "bookworm"
DEFAULT_MIRRORS = (
    "deb http://deb.debian.org/debian {suite} main",
    "deb http://deb.debian.org/debian {suite}-updates main",
    "deb http://deb.debian.org/debian-security {suite}-security main",
)
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Leave documentation and translations out of the image (smaller layer, faster import).
SLIM_DPKG_OPTS = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/doc/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/doc/*/copyright",
)
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar"


class ImageError(RuntimeError):
    pass


def cache_dir() -> Path:
    root = Path(os.environ.get("PODGRACE_CACHE") or Path.home() / ".cache" / "podgrace")
    return root / "images"


@dataclasses.dataclass(frozen=True)
class ImageSpec:
    """What goes into an image. ``packages`` empty = no Debian rootfs, only ``files``.

    ``files`` maps an absolute path in the image to a host file (copied, mode kept) or to bytes
    (mode 0644, or 0755 when the path is listed in ``executables``). ``customize`` are shell
    snippets given to mmdebstrap's ``--customize-hook`` (``$1`` is the root directory), e.g.
    ``'chroot "$1" ln -sf /dev/stdout /var/log/nginx/access.log'``.
    """

    name: str
    packages: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    workdir: str = "/"
    user: str = ""
    stop_signal: str = ""
    exposed_ports: tuple[str, ...] = ()  # "80/tcp"
    labels: tuple[tuple[str, str], ...] = ()
    files: tuple[tuple[str, Path | bytes], ...] = ()
    executables: tuple[str, ...] = ()
    customize: tuple[str, ...] = ()
    suite: str = DEFAULT_SUITE
    mirrors: tuple[str, ...] = DEFAULT_MIRRORS
    variant: str = "minbase"
    slim: bool = True
    tag: str = ""  # default: the first 12 hex digits of the cache key

    @classmethod
    def make(
        cls,
        name: str,
        *,
        packages: Iterable[str] = (),
        cmd: Sequence[str] = (),
        entrypoint: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        files: Mapping[str, Path | bytes] | None = None,
        labels: Mapping[str, str] | None = None,
        **kw: Any,
    ) -> ImageSpec:
        """Keyword-friendly constructor (lists and dicts instead of tuples)."""
        return cls(
            name=name,
            packages=tuple(packages),
            cmd=tuple(cmd),
            entrypoint=tuple(entrypoint),
            env=tuple(sorted((env or {}).items())),
            files=tuple(sorted((files or {}).items())),
            labels=tuple(sorted((labels or {}).items())),
            **{k: tuple(v) if isinstance(v, list) else v for k, v in kw.items()},
        )

    def config(self) -> dict[str, Any]:
        env = dict(self.env)
        env.setdefault("PATH", DEFAULT_PATH)
        cfg: dict[str, Any] = {"Env": [f"{k}={v}" for k, v in env.items()], "WorkingDir": self.workdir}
        if self.cmd:
            cfg["Cmd"] = list(self.cmd)
        if self.entrypoint:
            cfg["Entrypoint"] = list(self.entrypoint)
        if self.user:
            cfg["User"] = self.user
        if self.stop_signal:
            cfg["StopSignal"] = self.stop_signal
        if self.exposed_ports:
            cfg["ExposedPorts"] = {p: {} for p in self.exposed_ports}
        if self.labels:
            cfg["Labels"] = dict(self.labels)
        return cfg


@dataclasses.dataclass(frozen=True)
class Image:
    ref: str  # name:tag, as pods refer to it
    path: Path  # the OCI image-layout tar
    key: str
    built_seconds: float  # 0.0 on a cache hit
    cached: bool


def candidate_versions(packages: Iterable[str]) -> dict[str, str]:
    """The host apt's candidate version of each package ('' if apt does not know it)."""
    out: dict[str, str] = {}
    for pkg in packages:
        proc = subprocess.run(
            ["apt-cache", "policy", pkg], capture_output=True, text=True, check=False, env=_c_env()
        )
        version = ""
        for line in proc.stdout.splitlines():
            line = line.strip()
            if line.startswith("Candidate:"):
                version = line.split(":", 1)[1].strip()
                break
        out[pkg] = "" if version == "(none)" else version
    return out


def _c_env() -> dict[str, str]:
    return {**os.environ, "LC_ALL": "C"}


def _file_digest(data: Path | bytes) -> str:
    h = hashlib.sha256()
    if isinstance(data, bytes):
        h.update(data)
    else:
        with data.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        h.update(f":{data.stat().st_mode & 0o7777:o}".encode())
    return h.hexdigest()


def layer_key(spec: ImageSpec) -> str:
    """Hash of everything that goes into the (single) layer: the expensive, mmdebstrap part."""
    doc = {
        "recipe": RECIPE,
        "suite": spec.suite if spec.packages else "",
        "mirrors": [m.format(suite=spec.suite) for m in spec.mirrors] if spec.packages else [],
        "variant": spec.variant if spec.packages else "",
        "slim": spec.slim if spec.packages else False,
        "packages": candidate_versions(sorted(spec.packages)),
        "customize": list(spec.customize),
        "files": {path: _file_digest(data) for path, data in spec.files},
        "executables": sorted(spec.executables),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def cache_key(spec: ImageSpec, layer: str | None = None) -> str:
    """Hash of the whole image: its layer plus name and config (a config change reuses the layer)."""
    doc = {"layer": layer or layer_key(spec), "name": spec.name, "config": spec.config()}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def image_ref(spec: ImageSpec, key: str) -> str:
    return f"{spec.name}:{spec.tag or key[:12]}"


def build_image(spec: ImageSpec, *, log: Any = None, force: bool = False) -> Image:
    """Build (or take from the cache) the OCI image-layout tar for ``spec``."""
    lkey = layer_key(spec)
    key = cache_key(spec, lkey)
    ref = image_ref(spec, key)
    out = cache_dir() / f"{key}.tar"
    if out.exists() and not force:
        return Image(ref=ref, path=out, key=key, built_seconds=0.0, cached=True)
    layers = cache_dir() / "layers"
    layers.mkdir(parents=True, exist_ok=True)
    layer = layers / f"{lkey}.tar"
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="podgrace-image-", dir=out.parent) as tmp:
        if force or not layer.exists():
            partial_layer = Path(tmp) / "layer.tar"
            if spec.packages:
                _debian_rootfs(spec, partial_layer, log=log)
                if spec.files:
                    _append_files(partial_layer, spec)
            else:
                _files_layer(spec, partial_layer)
            os.replace(partial_layer, layer)
        partial = Path(tmp) / "image.tar"
        _write_oci_archive(spec, ref, layer, partial)
        os.replace(partial, out)
    return Image(ref=ref, path=out, key=key, built_seconds=time.monotonic() - t0, cached=False)


def _debian_rootfs(spec: ImageSpec, out: Path, *, log: Any = None) -> None:
    for tool in ("mmdebstrap", "unshare"):
        if shutil.which(tool) is None:
            raise ImageError(f"{tool} is not installed (tests/cluster/build-node.sh --apt installs it)")
    if os.geteuid() != 0:
        raise ImageError("building a Debian image needs root (mmdebstrap --mode=root)")
    argv = [
        # a private mount namespace: mmdebstrap's /proc, /sys, /dev mounts in the chroot stay in it
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "mmdebstrap",
        "--mode=root",
        f"--variant={spec.variant}",
        "--format=tar",
        "--quiet",
        "--include=" + ",".join(spec.packages),
    ]
    if spec.slim:
        argv += [f"--dpkgopt={opt}" for opt in SLIM_DPKG_OPTS]
        argv.append('--customize-hook=rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/*')
    argv += [f"--customize-hook={hook}" for hook in spec.customize]
    argv += [spec.suite, str(out)]
    argv += [m.format(suite=spec.suite) for m in spec.mirrors]
    if log is not None:
        log(f"images: mmdebstrap {spec.suite} +{','.join(spec.packages)} -> {out}")
    proc = subprocess.run(
        argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False, env=_c_env()
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).splitlines()[-40:])
        raise ImageError(f"mmdebstrap failed ({proc.returncode}):\n{tail}")


def _file_member(path: str, data: Path | bytes, executable: bool) -> tuple[tarfile.TarInfo, bytes]:
    raw = data if isinstance(data, bytes) else data.read_bytes()
    info = tarfile.TarInfo("./" + path.lstrip("/"))
    info.size = len(raw)
    if isinstance(data, bytes):
        info.mode = 0o755 if executable else 0o644
    else:
        info.mode = data.stat().st_mode & 0o7777
    info.mtime = 0
    return info, raw


def _dir_members(paths: Iterable[str]) -> list[tarfile.TarInfo]:
    dirs: set[str] = set()
    for p in paths:
        parts = p.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]))
    out = []
    for d in sorted(dirs):
        info = tarfile.TarInfo("./" + d)
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        info.mtime = 0
        out.append(info)
    return out


def _files_layer(spec: ImageSpec, out: Path) -> None:
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for d in _dir_members(p for p, _ in spec.files):
            tar.addfile(d)
        for path, data in spec.files:
            info, raw = _file_member(path, data, path in spec.executables)
            tar.addfile(info, io.BytesIO(raw))


def _append_files(layer: Path, spec: ImageSpec) -> None:
    with tarfile.open(layer, "a", format=tarfile.PAX_FORMAT) as tar:
        for path, data in spec.files:
            info, raw = _file_member(path, data, path in spec.executables)
            tar.addfile(info, io.BytesIO(raw))


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_oci_archive(spec: ImageSpec, ref: str, layer: Path, out: Path) -> None:
    """An OCI image layout (oci-layout, index.json, blobs/sha256/...) as one uncompressed tar."""
    layer_digest = "sha256:" + _sha256_file(layer)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": spec.config(),
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "history": [
            {
                "created": "1970-01-01T00:00:00Z",
                "created_by": "podgrace tests/cluster/images.py: "
                + (f"mmdebstrap {spec.suite} {' '.join(spec.packages)}" if spec.packages else "files"),
            }
        ],
    }
    config_raw = json.dumps(config, sort_keys=True).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": {"mediaType": MT_CONFIG, "digest": _digest(config_raw), "size": len(config_raw)},
        "layers": [{"mediaType": MT_LAYER, "digest": layer_digest, "size": layer.stat().st_size}],
    }
    manifest_raw = json.dumps(manifest, sort_keys=True).encode()
    tag = ref.rsplit(":", 1)[1]
    index = {
        "schemaVersion": 2,
        "mediaType": MT_INDEX,
        "manifests": [
            {
                "mediaType": MT_MANIFEST,
                "digest": _digest(manifest_raw),
                "size": len(manifest_raw),
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {
                    "io.containerd.image.name": ref,
                    "org.opencontainers.image.ref.name": tag,
                },
            }
        ],
    }
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        _add_bytes(tar, "oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
        _add_bytes(tar, "index.json", json.dumps(index, sort_keys=True).encode())
        for d in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tar.addfile(info)
        _add_bytes(tar, f"blobs/sha256/{_digest(config_raw)[7:]}", config_raw)
        _add_bytes(tar, f"blobs/sha256/{_digest(manifest_raw)[7:]}", manifest_raw)
        tar.add(layer, arcname=f"blobs/sha256/{layer_digest[7:]}", recursive=False)


def _digest(raw: bytes) -> str:
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def _add_bytes(tar: tarfile.TarFile, name: str, raw: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(raw)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(raw))


def import_image(
    image: Image, *, ctr: Path, address: Path, namespace: str = "k8s.io", timeout: float = 300.0
) -> float:
    """``ctr images import`` the archive into containerd (unpacked for the default snapshotter).
    Returns the seconds it took."""
    t0 = time.monotonic()
    proc = subprocess.run(
        [
            str(ctr),
            f"--address={address}",
            f"--namespace={namespace}",
            "images",
            "import",
            "--platform=linux/amd64",
            str(image.path),
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise ImageError(f"ctr images import {image.path} failed ({proc.returncode}):\n{proc.stderr.strip()}")
    return time.monotonic() - t0


# --------------------------------------------------------------------------------------------
# images the node itself needs


def pause_image(pause_binary: Path) -> ImageSpec:
    """The sandbox image: only a static /pause (built by build-node.sh)."""
    return ImageSpec.make(
        "podgrace.local/pause", files={"/pause": pause_binary}, entrypoint=["/pause"], tag=""
    )


def nginx_image() -> ImageSpec:
    """Debian's nginx (default site on :80, /var/www/html) in the foreground; access log to stdout,
    error log to stderr at ``notice`` level, so the signal nginx got shows in the container log
    ("signal 3 (SIGQUIT) received" vs "signal 15 (SIGTERM) received"). No image STOPSIGNAL: the
    container gets SIGTERM unless the pod sets ``lifecycle.stopSignal``."""
    return ImageSpec.make(
        "podgrace.local/nginx",
        packages=["nginx"],
        cmd=["nginx", "-g", "daemon off; error_log stderr notice;"],
        exposed_ports=("80/tcp",),
        customize=(
            'ln -sf /dev/stdout "$1"/var/log/nginx/access.log',
            'ln -sf /dev/stderr "$1"/var/log/nginx/error.log',
        ),
    )


def web_servers_image() -> ImageSpec:
    """Debian's nginx, php-fpm 8.2 and Apache with mod_php (prefork) in one image, no command: each
    container names its server and a configuration (tests/node/test_fallback_hook.py mounts them from a
    ConfigMap). No STOPSIGNAL: the container gets SIGTERM unless something else delivers a graceful one."""
    return ImageSpec.make(
        "podgrace.local/web-servers",
        packages=["nginx", "php8.2-fpm", "apache2", "libapache2-mod-php8.2"],
        exposed_ports=("80/tcp",),
    )


def php_fpm_image() -> ImageSpec:
    """Debian's php-fpm 8.2 in the foreground. No image STOPSIGNAL (SIGTERM: php-fpm's fast stop). The
    config (/etc/php/8.2/fpm/php-fpm.conf) and the app come from the pod (the real-node lab mounts them)."""
    return ImageSpec.make(
        "podgrace.local/php-fpm",
        packages=["php8.2-fpm"],
        cmd=["php-fpm8.2", "-F"],
        exposed_ports=("9000/tcp",),
    )


def apache_image() -> ImageSpec:
    """Debian's Apache 2.4 (prefork) with mod_php 8.2 in the foreground. No image STOPSIGNAL (SIGTERM:
    Apache's immediate stop). The config (/etc/apache2/apache2.conf) and the APACHE_* environment that
    Debian's apache2ctl would set come from the pod."""
    return ImageSpec.make(
        "podgrace.local/apache",
        packages=["apache2", "libapache2-mod-php8.2"],
        cmd=["apache2", "-DFOREGROUND"],
        exposed_ports=("80/tcp",),
        customize=('mkdir -p "$1"/run/apache2 "$1"/run/lock',),
    )


def python_image() -> ImageSpec:
    """Debian's python3 (no server of its own: the pod gives the script, e.g. the lab's generic server)."""
    return ImageSpec.make("podgrace.local/python", packages=["python3"], cmd=["python3"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build (or take from the cache) an image; print its ref and path")
    b.add_argument("--name", required=True)
    b.add_argument("--package", action="append", default=[])
    b.add_argument("--suite", default=DEFAULT_SUITE)
    b.add_argument("--stop-signal", default="")
    b.add_argument("--customize", action="append", default=[])
    b.add_argument("--cmd", nargs=argparse.REMAINDER, default=[])
    sub.add_parser("nginx", help="build the nginx test image")
    args = parser.parse_args(argv)
    if args.cmd == "nginx":
        spec = nginx_image()
    else:
        spec = ImageSpec.make(
            args.name,
            packages=args.package,
            cmd=args.cmd,
            suite=args.suite,
            stop_signal=args.stop_signal,
            customize=tuple(args.customize),
        )
    image = build_image(spec, log=lambda m: print(m, file=sys.stderr))
    how = "cached" if image.cached else f"built in {image.built_seconds:.1f}s"
    print(f"{image.ref} {image.path} ({how}, {image.path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
