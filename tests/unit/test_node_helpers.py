"""Pure parts of the real-node helpers (tests/cluster/node.py, images.py): the OCI archive ctr imports,
cache keys, the cgroupRoot choice, taints. No root, no network, no containerd."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

import pytest
from tests.cluster import images
from tests.cluster.node import Hierarchy, NodeError, _taint, node_cgroup_parent


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PODGRACE_CACHE", str(tmp_path))
    return tmp_path / "images"


def test_files_image_is_a_valid_oci_layout(cache: Path, tmp_path: Path) -> None:
    binary = tmp_path / "pause"
    binary.write_bytes(b"\x7fELF fake")
    binary.chmod(0o755)
    spec = images.ImageSpec.make("podgrace.local/pause", files={"/pause": binary}, entrypoint=["/pause"])
    image = images.build_image(spec)
    assert not image.cached and image.path.parent == cache
    assert image.ref == f"podgrace.local/pause:{image.key[:12]}"
    with tarfile.open(image.path) as tar:
        blobs = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
    assert json.loads(blobs["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads(blobs["index.json"])
    (desc,) = index["manifests"]
    assert desc["annotations"]["io.containerd.image.name"] == image.ref

    def blob(digest: str) -> bytes:
        raw = blobs[f"blobs/sha256/{digest.removeprefix('sha256:')}"]
        assert "sha256:" + hashlib.sha256(raw).hexdigest() == digest  # content-addressed
        return raw

    manifest = json.loads(blob(desc["digest"]))
    config = json.loads(blob(manifest["config"]["digest"]))
    (layer_desc,) = manifest["layers"]
    layer = blob(layer_desc["digest"])
    assert layer_desc["size"] == len(layer)
    assert config["rootfs"]["diff_ids"] == [layer_desc["digest"]]  # uncompressed layer
    assert config["config"]["Entrypoint"] == ["/pause"]
    with tarfile.open(fileobj=__import__("io").BytesIO(layer)) as lt:
        member = lt.getmember("./pause")
        assert member.mode == 0o755 and lt.extractfile(member).read() == b"\x7fELF fake"  # type: ignore[union-attr]
    # warm: the same spec is a cache hit, a config change reuses the layer but makes a new image
    assert images.build_image(spec).cached
    other = images.build_image(images.ImageSpec.make("podgrace.local/pause", files={"/pause": binary}))
    assert other.key != image.key and not other.cached
    assert len(list((cache / "layers").iterdir())) == 1


def test_cgroup_parent_is_the_deepest_own_cgroup() -> None:
    hs = [
        Hierarchy(Path("/sys/fs/cgroup/cpu"), "/", ("cpu",)),
        Hierarchy(Path("/sys/fs/cgroup/memory"), "/process_api/abc", ("memory",)),
        Hierarchy(Path("/sys/fs/cgroup/unified"), "/", ()),
    ]
    assert node_cgroup_parent(hs) == "/process_api/abc"
    assert hs[0].dir("/process_api/abc/n") == Path("/sys/fs/cgroup/cpu/process_api/abc/n")


def test_cgroup_parent_refuses_unrelated_own_cgroups() -> None:
    hs = [
        Hierarchy(Path("/sys/fs/cgroup/cpu"), "/a", ("cpu",)),
        Hierarchy(Path("/sys/fs/cgroup/memory"), "/b/c", ("memory",)),
    ]
    with pytest.raises(NodeError, match="not nested"):
        node_cgroup_parent(hs)


def test_taint_spec() -> None:
    assert _taint("podgrace.dev/real-node=true:NoSchedule") == {
        "key": "podgrace.dev/real-node",
        "value": "true",
        "effect": "NoSchedule",
    }
    assert _taint("dedicated") == {"key": "dedicated", "effect": "NoSchedule"}


def test_ci_builds_every_image_the_node_tests_build() -> None:
    """.ci/run builds the node tests' Debian-package images before pytest (else they are built cold inside
    the node worker): nginx (tests/node/conftest.py), web-servers (test_fallback_hook.py) and every image of
    the real-node lab's short form (test_realnode_lab.py: the nginx-php-fpm workload)."""
    from bench.termination.realnode import workloads

    ci = (Path(__file__).parents[2] / ".ci" / "run").read_text()
    (line,) = [ln for ln in ci.splitlines() if "tests/cluster/images.py named" in ln]
    built = {images.NAMED[name] for name in line.split("named", 1)[1].split()}
    lab = workloads.load_workload("nginx-php-fpm")
    needed = {images.nginx_image, images.web_servers_image} | {
        workloads.IMAGES[runtime] for runtime in lab.runtimes.values()
    }
    assert needed <= built, sorted(f.__name__ for f in needed - built)


def test_cli_pause_builds_the_sandbox_image_the_node_uses(
    cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    binary = tmp_path / "pause"
    binary.write_bytes(b"\x7fELF fake")
    binary.chmod(0o755)
    assert images.main(["pause", str(binary)]) == 0
    ref, path, how = capsys.readouterr().out.split(" ", 2)
    assert how.startswith("(built in")
    again = images.build_image(images.pause_image(binary))  # what tests/cluster/node.py asks for
    assert again.cached and (again.ref, str(again.path)) == (ref, path)
