"""A real Kubernetes node for the local control plane: kubelet + containerd v2 + runc + CNI bridge.

    with LocalCluster(nodes=0, feature_gates=STOP_SIGNALS_GATES) as cluster:
        with RealNode(cluster) as node:          # ~3-5 s warm; kubelet gates = the cluster's
            node.import_image(build_image(nginx_image()))
            cluster.kubectl("apply", "-f", "-", input=pod_yaml)  # imagePullPolicy: Never

What it touches on the host, and how it gives it back (also when a start fails half-way):

- Processes: a mount-namespace holder (``unshare --mount --propagation private sleep``), containerd and
  the kubelet (started with ``nsenter`` into that namespace, so their PIDs are known), the runc shims
  containerd starts (found by their mount namespace) and the containers' processes (found in the node's
  cgroups). :meth:`RealNode.stop` ends each of them by PID: SIGTERM, then SIGKILL.
- Mounts: none on the host. Everything is mounted inside the private mount namespace: a tmpfs over
  /run (containerd's hard-coded shim socket dir /run/containerd/s, runc's state), over /var/lib
  (libcni's cache /var/lib/cni) and over /var/log (the kubelet's /var/log/containers symlinks), the
  sysctl files below, the kubelet's volume tmpfs mounts, the overlay
  snapshots and the pods' network-namespace files. They vanish with the namespace's last process.
- Host sysctls: never written. The kubelet checks six kernel tunables at start (``protectKernelDefaults:
  true`` makes it refuse instead of rewriting them); those that differ on the host are bind-mounted
  inside the namespace from files that hold the value the kubelet wants.
- cgroups (v1 hierarchies and the v2 ``unified`` one): ``cgroupRoot`` is a new child of this process's
  own cgroup (the deepest of its per-hierarchy cgroups; every other one is an ancestor of it), created
  in every hierarchy beforehand (cpuset.cpus/mems copied down), and removed bottom-up with everything the
  kubelet and runc created below it.
- Network: one Linux bridge ``pgn<N>`` with ``10.213.<N>.1/24`` (kubelet ``--node-ip``); the CNI
  ``bridge`` plugin attaches pods to it with ``isGateway: false``, ``ipMasq: false`` and no routes, so
  pods reach only that /24, ip_forward and iptables are never touched and no pod packet can leave the
  machine. The kubelet's iptables chains are off (``makeIPTablesUtilChains: false``).
  10.213.0.0/16 was picked because no route of this host covers it (checked at start: a
  subnet that overlaps any route or address is skipped). The bridge (and so its connected route) is
  deleted at the end; the pods' veths die with their network namespaces.

A test process that is SIGKILLed cannot stop its node: the holder, kubelet and containerd die with it
(PR_SET_PDEATHSIG), the shims, containers, cgroups and the bridge stay. Each node records what to undo in
``/run/podgrace-nodes/<name>-<pid>-<rand>.json``; :func:`cleanup_stale` (run before the tests/node
fixtures start a node, or ``python -m tests.cluster.node cleanup``) undoes the nodes whose owner died.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import dataclasses
import datetime as dt
import errno
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Protocol

from tests.cluster import images as _images
from tests.cluster.localcluster import CachedBuild, LoggedProcess

HERE = Path(__file__).resolve().parent
BUILD_NODE_SH = HERE / "build-node.sh"
CGROUP_FS = Path("/sys/fs/cgroup")
CNI_BIN_DIRS = ("/usr/lib/cni", "/opt/cni/bin")
SUBNET_POOL = ipaddress.ip_network("10.213.0.0/16")
CLUSTER_DNS = "10.96.0.10"  # inside the cluster's Service CIDR; nothing answers (pods have no route)
REAL_NODE_LABEL = "podgrace.dev/real-node"
# One JSON file per running node (what to undo); cleanup_stale() reads those whose process died.
STATE_DIR = Path(os.environ.get("PODGRACE_NODE_STATE_DIR", "/run/podgrace-nodes"))
# LocalCluster(extra_apiserver_args=APISERVER_ARGS): the apiserver reaches the kubelet (logs, exec,
# port-forward) on the node's InternalIP; the node's Hostname address is its name, which no DNS knows.
APISERVER_ARGS: tuple[str, ...] = ("--kubelet-preferred-address-types=InternalIP",)

# What the kubelet's setupKernelTunables wants (pkg/kubelet/cm/container_manager_linux.go).
KUBELET_SYSCTLS: Mapping[str, int] = {
    "vm/overcommit_memory": 1,
    "vm/panic_on_oom": 0,
    "kernel/panic": 10,
    "kernel/panic_on_oops": 1,
    "kernel/keys/root_maxkeys": 1000000,
    "kernel/keys/root_maxbytes": 25000000,
}


class NodeError(RuntimeError):
    """The real node failed to build, start or stop cleanly."""


class ClusterLike(Protocol):
    """What RealNode needs of tests/cluster/localcluster.py's LocalCluster."""

    server: str
    pki: Path
    log_dir: Path
    feature_gates: dict[str, bool]

    def request(self, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]: ...


# --------------------------------------------------------------------------------------------
# binaries


NODE_BUILD = CachedBuild(BUILD_NODE_SH, "PODGRACE_NODE_BIN_DIR", ("kubelet",), "a few minutes", NodeError)
node_bin_dir = NODE_BUILD.bin_dir
node_binaries_ready = NODE_BUILD.ready
ensure_node_binaries = NODE_BUILD.ensure


def missing_prerequisites() -> list[str]:
    """What the host lacks for a real node (empty = fine). Tests skip with this list."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root")
    for tool in ("runc", "unshare", "nsenter", "ip", "mount"):
        if shutil.which(tool) is None:
            missing.append(tool)
    if cni_bin_dir() is None:
        missing.append("CNI plugins bridge/host-local/loopback (Debian: containernetworking-plugins)")
    if not (CGROUP_FS / "memory").is_dir() and not (CGROUP_FS / "cgroup.controllers").exists():
        missing.append("cgroups")
    return missing


def cni_bin_dir() -> Path | None:
    for d in CNI_BIN_DIRS:
        if all((Path(d) / p).exists() for p in ("bridge", "host-local", "loopback")):
            return Path(d)
    return None


# --------------------------------------------------------------------------------------------
# cgroups


@dataclasses.dataclass(frozen=True)
class Hierarchy:
    mountpoint: Path
    own: str  # this process's cgroup path in it ("/" or "/a/b")
    controllers: tuple[str, ...]

    def dir(self, cgroup_path: str) -> Path:
        return self.mountpoint / cgroup_path.strip("/")


def cgroup_hierarchies() -> list[Hierarchy]:
    """Every mounted cgroup hierarchy (v1 and v2) with this process's own cgroup in it."""
    own: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        hid, ctrls, path = line.split(":", 2)
        own["" if hid == "0" else ctrls] = path
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        fstype, root, mnt = rfields[0], fields[3], fields[4]
        if fstype == "cgroup2":
            path = own.get("")
            ctrls: tuple[str, ...] = ()
        elif fstype == "cgroup":
            opts = rfields[2].split(",")
            ctrls = tuple(
                o for o in opts if (o not in ("rw", "ro") and "=" not in o) or o.startswith("name=")
            )
            key = next((k for k in own if k and set(k.split(",")) == set(ctrls)), None)
            path = own.get(key) if key is not None else None
        else:
            continue
        if path is None:
            continue
        if root != "/":  # a cgroup namespace or a bind mount of a subtree
            if not (path == root or path.startswith(root.rstrip("/") + "/")):
                continue
            path = "/" + path[len(root) :].lstrip("/")
        out.append(Hierarchy(Path(mnt), path, ctrls))
    return out


def node_cgroup_parent(hierarchies: Sequence[Hierarchy]) -> str:
    """The deepest own cgroup, checked to be a descendant-or-self of the own cgroup in every hierarchy."""
    deepest = max((h.own for h in hierarchies), key=lambda p: len(p.strip("/").split("/")))
    for h in hierarchies:
        o = h.own.rstrip("/")
        if not (deepest.rstrip("/") == o or deepest.startswith(o + "/") or o == ""):
            raise NodeError(
                f"own cgroups are not nested ({h.mountpoint}: {h.own} vs {deepest}): no cgroupRoot "
                "can be a descendant of all of them"
            )
    return deepest


def _make_cgroup(h: Hierarchy, path: str, created: list[Path]) -> None:
    """mkdir every missing level of ``path`` below ``h.own`` (never above it); record what was made."""
    own = h.own.rstrip("/")
    rel = path[len(own) :].strip("/") if own else path.strip("/")
    cur = own
    for part in rel.split("/"):
        cur = f"{cur}/{part}"
        d = h.dir(cur)
        try:
            d.mkdir()
        except FileExistsError:
            continue
        created.append(d)
        if "cpuset" in h.controllers:  # a new v1 cpuset starts empty: copy the parent's
            for f in ("cpuset.cpus", "cpuset.mems"):
                (d / f).write_text((d.parent / f).read_text().strip() or "\n")


def cgroup_procs(root: Path) -> set[int]:
    pids: set[int] = set()
    if not root.is_dir():
        return pids
    for dirpath, _dirs, files in os.walk(root):
        if "cgroup.procs" in files:
            with contextlib.suppress(OSError):
                pids.update(int(x) for x in Path(dirpath, "cgroup.procs").read_text().split())
    return pids


def remove_cgroup_tree(root: Path) -> list[Path]:
    """rmdir ``root`` and everything below it, deepest first. Returns what could not be removed."""
    if not root.is_dir():
        return []
    left = []
    for dirpath, _dirs, _files in sorted(os.walk(root), key=lambda t: -len(Path(t[0]).parts)):
        for attempt in range(50):
            try:
                os.rmdir(dirpath)
                break
            except FileNotFoundError:
                break
            except OSError as err:
                if err.errno != errno.EBUSY or attempt == 49:
                    left.append(Path(dirpath))
                    break
                time.sleep(0.1)
    return left


# --------------------------------------------------------------------------------------------
# processes


def _pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _kill_pids(pids: Iterable[int], grace: float) -> None:
    pids = [p for p in pids if p > 1 and p != os.getpid()]
    for p in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGTERM if grace > 0 else signal.SIGKILL)
    deadline = time.monotonic() + grace
    while grace > 0 and time.monotonic() < deadline and any(_pid_alive(p) for p in pids):
        time.sleep(0.05)
    for p in pids:
        if _pid_alive(p):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)


def _ns_inode(pid: int, ns: str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/{ns}").st_ino
    except OSError:
        return None


def pids_in_mount_ns(inode: int) -> set[int]:
    out = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _ns_inode(int(entry), "mnt") == inode:
            out.add(int(entry))
    return out


# --------------------------------------------------------------------------------------------
# network


def _routes_and_addrs() -> list[ipaddress.IPv4Network]:
    nets: list[ipaddress.IPv4Network] = []
    for argv in (["ip", "-j", "-4", "route", "show", "table", "all"], ["ip", "-j", "-4", "addr"]):
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        for item in json.loads(out or "[]"):
            if "dst" in item:
                dst = item["dst"]
                if dst == "default":
                    continue
                with contextlib.suppress(ValueError):
                    nets.append(ipaddress.IPv4Network(dst if "/" in dst else f"{dst}/32", strict=False))
            for a in item.get("addr_info", []):
                with contextlib.suppress(ValueError, KeyError):
                    nets.append(ipaddress.IPv4Network(f"{a['local']}/{a['prefixlen']}", strict=False))
    return nets


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise NodeError(f"ip {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


def link_exists(name: str) -> bool:
    return _ip("link", "show", "dev", name, check=False).returncode == 0


def link_ifindex(name: str) -> int:
    """The link's interface index (0: no such link). Indexes are not reused until the counter wraps, so
    (name, index) tells this node's bridge from a later one of the same name."""
    try:
        return int(Path(f"/sys/class/net/{name}/ifindex").read_text())
    except (OSError, ValueError):
        return 0


def claim_bridge() -> tuple[str, ipaddress.IPv4Network]:
    """Create bridge pgn<N> for the first 10.213.<N>.0/24 that no route/address of the host overlaps.
    ``ip link add`` is atomic, so two nodes started at once never share a bridge."""
    used = _routes_and_addrs()
    for n in range(1, 255):
        net = ipaddress.IPv4Network(f"{SUBNET_POOL.network_address + 256 * n}/24")
        if any(net.overlaps(u) for u in used if u.prefixlen > 0):
            continue
        name = f"pgn{n}"
        if _ip("link", "add", name, "type", "bridge", check=False).returncode != 0:
            continue  # taken by another node (or an unrelated link of that name)
        return name, net
    raise NodeError(f"no free /24 in {SUBNET_POOL} for a node bridge")


# --------------------------------------------------------------------------------------------
# the node


def _kubelet_client_cert(pki: Path, node: str, out_dir: Path) -> tuple[Path, Path]:
    """A client certificate for system:node:<node> (group system:nodes), signed by the cluster CA:
    the kubelet authenticates with it (Node authorizer) and no token file has to change."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), None)
    ca = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:nodes"),
                    x509.NameAttribute(NameOID.COMMON_NAME, f"system:node:{node}"),
                ]
            )
        )
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    crt_path, key_path = out_dir / "kubelet-client.crt", out_dir / "kubelet-client.key"
    crt_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key_path.chmod(0o600)
    return crt_path, key_path


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclasses.dataclass
class CleanupReport:
    """What :meth:`RealNode.stop` found left over (all empty = clean)."""

    processes: list[int] = dataclasses.field(default_factory=list)
    cgroups: list[Path] = dataclasses.field(default_factory=list)
    links: list[str] = dataclasses.field(default_factory=list)
    mounts: list[str] = dataclasses.field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.processes or self.cgroups or self.links or self.mounts)


class RealNode:
    """kubelet + containerd on a CNI bridge, joined to ``cluster`` as node ``name``.

    ``feature_gates`` default to the cluster's (so ContainerStopSignals reaches the kubelet too).
    ``taints`` (e.g. ``["podgrace.dev/real-node=true:NoSchedule"]``) keep other pods off the node;
    the node always carries the label ``podgrace.dev/real-node=true``.
    """

    def __init__(
        self,
        cluster: ClusterLike,
        *,
        name: str | None = None,
        feature_gates: Mapping[str, bool] | None = None,
        binaries: Path | None = None,
        taints: Sequence[str] = (),
        labels: Mapping[str, str] | None = None,
        kubelet_config: Mapping[str, Any] | None = None,
        start_timeout: float = 90.0,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.cluster = cluster
        self.name = name or f"podgrace-node-{secrets.token_hex(3)}"
        self.feature_gates = dict(cluster.feature_gates if feature_gates is None else feature_gates)
        self._bin_dir = binaries
        self.taints = list(taints)
        self.labels = {REAL_NODE_LABEL: "true", **(labels or {})}
        self._kubelet_overrides = dict(kubelet_config or {})
        self.start_timeout = start_timeout
        self._log = log or (lambda m: print(f"[node] {m}", file=sys.stderr))
        self.workdir = Path(tempfile.mkdtemp(prefix="podgrace-node-"))
        self.log_dir = Path(cluster.log_dir)
        self.containerd_socket = self.workdir / "containerd.sock"
        self.bridge = ""
        self.bridge_ifindex = 0  # the bridge's identity: its name and address are reused by later nodes
        self.subnet: ipaddress.IPv4Network | None = None
        self.node_ip = ""
        self.cgroup_root = ""  # kubelet cgroupRoot (same path in every hierarchy)
        self.timings: dict[str, float] = {}
        self.start_seconds = 0.0
        self.mount_ns = 0  # inode of the private mount namespace
        self.last_cleanup: CleanupReport | None = None
        self._hierarchies: list[Hierarchy] = []
        self._created_cgroups: list[Path] = []
        self._procs: dict[str, LoggedProcess] = {}
        self._seen_pids: set[int] = set()
        self._started = False
        self._stopped = False
        self._pause: _images.Image | None = None
        self._state_file = STATE_DIR / f"{self.name}-{os.getpid()}-{secrets.token_hex(2)}.json"

    # ---------------------------------------------------------------- public

    def bin(self, name: str) -> Path:
        if self._bin_dir is None:
            self._bin_dir = node_bin_dir()
        path = self._bin_dir / name
        if not path.exists():
            raise NodeError(f"binary {path} is missing: run {BUILD_NODE_SH}")
        return path

    def __enter__(self) -> RealNode:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is not None:
            self.print_logs_hint(sys.stderr)
        self.stop()

    def start(self) -> RealNode:
        if self._started:
            return self
        missing = missing_prerequisites()
        if missing:
            raise NodeError(f"a real node needs: {', '.join(missing)}")
        t0 = time.monotonic()
        try:
            self._start()
        except BaseException:
            self.print_logs_hint(sys.stderr)
            self.stop()
            raise
        self.start_seconds = time.monotonic() - t0
        self._started = True
        atexit.register(self.stop)  # in case nobody calls stop()
        return self

    def stop(self) -> CleanupReport:
        """Stop everything by PID, remove cgroups, the bridge and the work dir; report leftovers."""
        if self._stopped and self.last_cleanup is not None:
            return self.last_cleanup
        self._stopped = True
        atexit.unregister(self.stop)
        report = CleanupReport()
        kubelet = self._procs.get("kubelet")
        if kubelet is not None:
            kubelet.stop(grace=10.0)
        # the containers' processes: everything in the node's cgroups
        for _ in range(20):
            pids = self._cgroup_pids()
            if not pids:
                break
            self._seen_pids |= pids
            _kill_pids(pids, grace=0)
            time.sleep(0.1)
        containerd = self._procs.get("containerd")
        if containerd is not None:
            containerd.stop(grace=10.0)
        # shims and anything else still in the node's mount namespace (the holder last)
        if self.mount_ns:
            rest = pids_in_mount_ns(self.mount_ns) - {os.getpid()}
            self._seen_pids |= rest
            _kill_pids(rest, grace=5.0)
        holder = self._procs.get("mount-ns")
        if holder is not None:
            holder.stop(grace=2.0)
        for p in self._procs.values():
            p.stop(grace=2.0)
        self._seen_pids |= {p.pid for p in self._procs.values() if p.pid}
        # wait for the kernel to finish tearing the processes down before rmdir'ing their cgroups
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_pid_alive(p) for p in self._seen_pids):
            time.sleep(0.05)
        report.processes = sorted(p for p in self._seen_pids if _pid_alive(p))
        if self.mount_ns:
            report.processes += sorted(pids_in_mount_ns(self.mount_ns) - set(report.processes))
        # cgroups: the node's subtree, then the intermediate levels this node created (if empty)
        for h in self._hierarchies:
            if self.cgroup_root:
                report.cgroups += remove_cgroup_tree(h.dir(self.cgroup_root))
        for d in reversed(self._created_cgroups):
            try:
                os.rmdir(d)
            except FileNotFoundError:
                pass
            except OSError as err:
                # EBUSY on a shared intermediate level (another node's cgroups below it) is fine
                if err.errno != errno.EBUSY or d.name == self.name:
                    report.cgroups.append(d)
        # network
        if self.bridge:
            veths = self.bridge_ports()
            _ip("link", "del", self.bridge, check=False)
            # a pod's veth goes when the kernel frees its network namespace (asynchronously, once the
            # mount namespace holding the netns file is gone); delete what is still there after 10 s
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and any(link_exists(v) for v in veths):
                time.sleep(0.1)
            for v in veths:
                if link_exists(v):
                    _ip("link", "del", v, check=False)
            report.links = [n for n in [self.bridge, *veths] if link_exists(n)]
        # mounts: none should ever have reached the host's mount namespace
        report.mounts = [m for m in _host_mounts() if str(self.workdir) in m]
        # the work dir (overlay snapshots, kubelet root dir, containerd state)
        if not report.mounts and not report.processes:
            shutil.rmtree(self.workdir, ignore_errors=True)
        self._delete_node_object()
        self.last_cleanup = report
        if report.clean:
            self._state_file.unlink(missing_ok=True)
        if not report.clean:
            self._log(f"cleanup left: {report}")
        return report

    def import_image(self, image: _images.Image) -> float:
        """``ctr images import`` into the node's containerd (namespace k8s.io); returns seconds."""
        return _images.import_image(image, ctr=self.bin("ctr"), address=self.containerd_socket)

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(self.bin("ctr")), f"--address={self.containerd_socket}", "--namespace=k8s.io", *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        if check and proc.returncode != 0:
            raise NodeError(f"ctr {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc

    def bridge_ports(self) -> list[str]:
        if not self.bridge:
            return []
        out = _ip("-j", "link", "show", "master", self.bridge, check=False).stdout
        with contextlib.suppress(ValueError):
            return [i["ifname"] for i in json.loads(out or "[]")]
        return []

    def pids(self) -> dict[str, int]:
        return {n: p.pid for n, p in self._procs.items() if p.alive()}

    def logs(self) -> dict[str, Path]:
        return {n: p.log for n, p in self._procs.items()}

    def cgroup_dirs(self) -> list[Path]:
        return [h.dir(self.cgroup_root) for h in self._hierarchies] if self.cgroup_root else []

    def print_logs_hint(self, stream: IO[str]) -> None:
        for name, proc in self._procs.items():
            if name == "mount-ns":
                continue
            state = "running" if proc.alive() else f"exited {proc.popen.returncode if proc.popen else '-'}"
            print(f"[node] {name} ({state}), log {proc.log}; last lines:\n{proc.tail()}", file=stream)

    # ---------------------------------------------------------------- start

    def _step(self, what: str, fn: Callable[[], None]) -> None:
        t0 = time.monotonic()
        try:
            fn()
        finally:
            self._write_state()
        self.timings[what] = round(time.monotonic() - t0, 3)

    def _write_state(self) -> None:
        """What cleanup_stale() needs to undo this node if this process dies without stop()."""
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        state = {
            "owner": os.getpid(),
            "owner_start": _start_time(os.getpid()),
            "name": self.name,
            "cgroup_parent": self.cgroup_root.rsplit("/", 1)[0],
            "workdir": str(self.workdir),
            "mount_ns": self.mount_ns,
            "cgroup_dirs": [str(d) for d in self.cgroup_dirs()],
            "created_cgroups": [str(d) for d in self._created_cgroups],
            "bridge": self.bridge,
            "bridge_ifindex": self.bridge_ifindex,
            "node_ip": self.node_ip,
            "bin_dir": str(self._bin_dir or ""),
        }
        tmp = self._state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, self._state_file)

    def _start(self) -> None:
        for b in ("kubelet", "containerd", "containerd-shim-runc-v2", "ctr", "pause"):
            self.bin(b)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._step("cgroups", self._setup_cgroups)
        self._step("bridge", self._setup_bridge)
        self._step("mount namespace", self._setup_mount_ns)
        self._step("containerd", self._start_containerd)
        self._step("pause image", self._import_pause)
        self._step("kubelet", self._start_kubelet)

    def _setup_cgroups(self) -> None:
        self._hierarchies = cgroup_hierarchies()
        if not self._hierarchies:
            raise NodeError("no cgroup hierarchy is mounted")
        parent = node_cgroup_parent(self._hierarchies).rstrip("/")
        # The process id in the name: two test sessions in one cgroup (each with a node named after its
        # cluster) never share a cgroupRoot.
        self.cgroup_root = f"{parent}/{self.name}-{os.getpid()}"
        for h in self._hierarchies:
            _make_cgroup(h, self.cgroup_root, self._created_cgroups)

    def _setup_bridge(self) -> None:
        self.bridge, self.subnet = claim_bridge()
        self.bridge_ifindex = link_ifindex(self.bridge)
        self.node_ip = str(self.subnet.network_address + 1)
        _ip("addr", "add", f"{self.node_ip}/{self.subnet.prefixlen}", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")

    def _setup_mount_ns(self) -> None:
        holder = self._spawn(
            "mount-ns", ["unshare", "--mount", "--propagation", "private", "sleep", "infinity"]
        )
        deadline = time.monotonic() + 10
        own = _ns_inode(os.getpid(), "mnt")
        while time.monotonic() < deadline:
            ino = _ns_inode(holder.pid, "mnt")
            if (
                ino is not None
                and ino != own
                and Path(f"/proc/{holder.pid}/comm").read_text().strip() == "sleep"
            ):
                self.mount_ns = ino
                break
            if not holder.alive():
                raise NodeError(f"unshare --mount failed:\n{holder.tail()}")
            time.sleep(0.02)
        else:
            raise NodeError("the mount namespace holder did not start")
        sysctl_dir = self.workdir / "sysctl"
        sysctl_dir.mkdir()
        lines = [
            "set -eu",
            # containerd hard-codes /run/containerd/s for shim sockets; runc keeps state in /run
            "mount -t tmpfs -o mode=0755,size=64m podgrace-run /run",
            # libcni caches results in /var/lib/cni
            "mount -t tmpfs -o mode=0755,size=16m podgrace-varlib /var/lib",
            # the kubelet hard-codes /var/log/containers for its log symlinks
            "mount -t tmpfs -o mode=0755,size=16m podgrace-varlog /var/log",
        ]
        for key, want in KUBELET_SYSCTLS.items():
            host = int(Path("/proc/sys", key).read_text().split()[0])
            if host != want:
                f = sysctl_dir / key.replace("/", ".")
                f.write_text(f"{want}\n")
                lines.append(f"mount --bind -o ro {f} /proc/sys/{key}")
        self._nsenter_sh("\n".join(lines))

    def _nsenter_sh(self, script: str) -> None:
        holder = self._procs["mount-ns"]
        proc = subprocess.run(
            ["nsenter", f"--target={holder.pid}", "--mount", "--", "sh", "-c", script],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        if proc.returncode != 0:
            raise NodeError(f"setting up the mount namespace failed: {proc.stderr.strip()}\n{script}")

    def _spawn(
        self, name: str, argv: list[str], *, in_ns: bool = False, path: str | None = None
    ) -> LoggedProcess:
        if in_ns:
            argv = ["nsenter", f"--target={self._procs['mount-ns'].pid}", "--mount", "--", *argv]
        proc = LoggedProcess(name, argv, self.log_dir / f"{self.name}-{name}.log")
        self._procs[name] = proc
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBECONFIG", "CONTAINERD"))}
        if path is not None:
            env["PATH"] = path
        proc.start(env)
        self._seen_pids.add(proc.pid)
        return proc

    def _wait(self, what: str, cond: Callable[[], bool], timeout: float, interval: float = 0.1) -> None:
        deadline = time.monotonic() + timeout
        while True:
            for n, p in self._procs.items():
                if p.popen is not None and not p.alive():
                    raise NodeError(
                        f"{n} exited ({p.popen.returncode}) while waiting for {what}:\n{p.tail()}"
                    )
            if cond():
                return
            if time.monotonic() > deadline:
                raise NodeError(f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(interval)

    def containerd_config(self) -> str:
        cni = cni_bin_dir()
        cd = self.workdir / "containerd"
        pause = self._pause_image().ref
        return f"""\
version = 3
root = "{cd / "root"}"
state = "{cd / "state"}"

[grpc]
  address = "{self.containerd_socket}"

[ttrpc]
  address = "{self.containerd_socket}.ttrpc"

[debug]
  level = "info"

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "{pause}"

[plugins.'io.containerd.cri.v1.runtime']
  # the processes lack CAP_SYS_RESOURCE: runc cannot lower oom_score_adj below containerd's own
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_unprivileged_ports = true
  enable_unprivileged_icmp = false
  cdi_spec_dirs = []
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "{shutil.which("runc")}"
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["{cni}"]
    conf_dir = "{self.workdir / "cni"}"
    max_conf_num = 1

[plugins.'io.containerd.grpc.v1.cri']
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[plugins.'io.containerd.nri.v1.nri']
  disable = true
"""

    def cni_config(self) -> dict[str, Any]:
        assert self.subnet is not None
        net = self.subnet.network_address
        return {
            "cniVersion": "1.0.0",
            "name": "podgrace",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": False,  # leaves the bridge address and ip_forward alone
                    "ipMasq": False,  # no iptables rules
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [
                            [
                                {
                                    "subnet": str(self.subnet),
                                    "rangeStart": str(net + 10),
                                    "rangeEnd": str(net + 250),
                                }
                            ]
                        ],
                        "dataDir": str(self.workdir / "cni-ipam"),
                        # no "routes": pods reach only the bridge's /24, so no packet can leave the machine
                    },
                }
            ],
        }

    def _pause_image(self) -> _images.Image:
        if self._pause is None:
            self._pause = _images.build_image(_images.pause_image(self.bin("pause")))
        return self._pause

    def _start_containerd(self) -> None:
        (self.workdir / "cni").mkdir()
        (self.workdir / "cni" / "10-podgrace.conflist").write_text(json.dumps(self.cni_config(), indent=2))
        cfg = self.workdir / "containerd.toml"
        cfg.write_text(self.containerd_config())
        # containerd looks the shim up on its PATH: the bin dir first (runc comes from Debian's /usr/sbin)
        path = f"{self.bin('containerd').parent}:{os.environ.get('PATH', '')}:/usr/sbin:/usr/bin:/sbin:/bin"
        self._spawn("containerd", [str(self.bin("containerd")), f"--config={cfg}"], in_ns=True, path=path)
        self._wait(
            "containerd",
            lambda: self.containerd_socket.exists() and self.ctr("version", check=False).returncode == 0,
            30.0,
        )

    def _import_pause(self) -> None:
        self.import_image(self._pause_image())

    def kubelet_config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": self.node_ip,
            "port": _free_port(self.node_ip),
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": _free_port("127.0.0.1"),
            # only the apiserver reaches the kubelet's port (on the node's own bridge address)
            "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
            "authorization": {"mode": "AlwaysAllow"},
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": self.cgroup_root,
            "cgroupsPerQOS": True,
            "enforceNodeAllocatable": ["pods"],
            "failCgroupV1": False,
            "failSwapOn": False,
            "protectKernelDefaults": True,
            "clusterDNS": [CLUSTER_DNS],
            "clusterDomain": "cluster.local",
            "podLogsDir": str(self.workdir / "pod-logs"),
            "volumePluginDir": str(self.workdir / "volume-plugins"),
            "hairpinMode": "none",
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "imageMinimumGCAge": "24h",
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "nodefs.inodesFree": "1%",
                "imagefs.available": "1%",
                "imagefs.inodesFree": "1%",
            },
            # no KUBE-FIREWALL / KUBE-IPTABLES-HINT / canary chains in the host's iptables
            "makeIPTablesUtilChains": False,
            "serializeImagePulls": False,
            "registerNode": True,
            "registerWithTaints": [_taint(t) for t in self.taints],
            "featureGates": dict(self.feature_gates),
            "nodeStatusReportFrequency": "10s",
            "syncFrequency": "10s",
            "fileCheckFrequency": "20s",
            "runtimeRequestTimeout": "2m",
            "kernelMemcgNotification": False,
            "localStorageCapacityIsolation": True,
        }
        if not cfg["registerWithTaints"]:
            del cfg["registerWithTaints"]
        cfg.update(self._kubelet_overrides)
        return cfg

    def _start_kubelet(self) -> None:
        pki = self.workdir / "pki"
        pki.mkdir()
        crt, key = _kubelet_client_cert(Path(self.cluster.pki), self.name, pki)
        ca = base64.b64encode((Path(self.cluster.pki) / "ca.crt").read_bytes()).decode()
        kubeconfig = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "local",
                    "cluster": {"server": self.cluster.server, "certificate-authority-data": ca},
                }
            ],
            "users": [{"name": "kubelet", "user": {"client-certificate": str(crt), "client-key": str(key)}}],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": "kubelet"}}],
            "current-context": "local",
        }
        kc = self.workdir / "kubelet.kubeconfig"
        kc.write_text(json.dumps(kubeconfig, indent=2))
        kc.chmod(0o600)
        cfg = self.workdir / "kubelet.yaml"
        cfg.write_text(json.dumps(self.kubelet_config(), indent=2))  # JSON is YAML
        labels = ",".join(f"{k}={v}" for k, v in sorted(self.labels.items()))
        self._spawn(
            "kubelet",
            [
                str(self.bin("kubelet")),
                f"--config={cfg}",
                f"--kubeconfig={kc}",
                f"--root-dir={self.workdir / 'kubelet'}",
                f"--cert-dir={pki}",
                f"--hostname-override={self.name}",
                f"--node-ip={self.node_ip}",
                f"--node-labels={labels}",
                "--v=2",
            ],
            in_ns=True,
        )
        self._wait("the node Ready", self.ready, self.start_timeout, interval=0.2)

    def ready(self) -> bool:
        status, body = self.cluster.request("GET", f"/api/v1/nodes/{self.name}", timeout=2.0)
        if status != 200 or not isinstance(body, dict):
            return False
        return any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in body.get("status", {}).get("conditions", [])
        )

    # ---------------------------------------------------------------- stop helpers

    def _cgroup_pids(self) -> set[int]:
        pids: set[int] = set()
        for d in self.cgroup_dirs():
            pids |= cgroup_procs(d)
        return pids

    def _delete_node_object(self) -> None:
        with contextlib.suppress(Exception):
            self.cluster.request("DELETE", f"/api/v1/nodes/{self.name}", timeout=5.0)


def _taint(spec: str) -> dict[str, str]:
    kv, _, effect = spec.partition(":")
    key, _, value = kv.partition("=")
    out = {"key": key, "effect": effect or "NoSchedule"}
    if value:
        out["value"] = value
    return out


def _start_time(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def cleanup_stale(log: Callable[[str], None] = print) -> list[str]:
    """Undo the nodes whose owning process died without stop() (SIGKILL, a killed pytest): the
    containers (PIDs in the node's cgroups), the shims (PIDs in the node's mount namespace whose
    executable is in the node's bin dir), the cgroups, the bridge, the work dir. Nodes of live
    processes are left alone, and so are nodes started from another cgroup (another user's session:
    not ours to end). Returns the names of the nodes cleaned up."""
    done = []
    try:
        parent = node_cgroup_parent(cgroup_hierarchies()).rstrip("/")
    except NodeError:
        return done
    for f in sorted(STATE_DIR.glob("*.json")) if STATE_DIR.is_dir() else []:
        try:
            st = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        owner = int(st.get("owner", 0))
        if owner and _pid_alive(owner) and _start_time(owner) == st.get("owner_start"):
            continue  # its process is alive: not stale
        if st.get("cgroup_parent", None) != parent:
            continue  # started from another cgroup
        dirs = [Path(d) for d in st.get("cgroup_dirs", [])]
        for _ in range(20):
            pids: set[int] = set()
            for d in dirs:
                pids |= cgroup_procs(d)
            if not pids:
                break
            _kill_pids(pids, grace=0)
            time.sleep(0.1)
        ns, bin_dir = int(st.get("mount_ns") or 0), st.get("bin_dir", "")
        if ns:
            ours = []
            for pid in pids_in_mount_ns(ns):
                with contextlib.suppress(OSError):
                    exe = os.readlink(f"/proc/{pid}/exe")
                    if (bin_dir and exe.startswith(bin_dir + "/")) or exe.endswith(("/sleep", "/runc")):
                        ours.append(pid)
            _kill_pids(ours, grace=2.0)
        left = []
        for d in dirs:
            left += remove_cgroup_tree(d)
        for c in reversed(st.get("created_cgroups", [])):
            with contextlib.suppress(OSError):
                os.rmdir(c)
        # only the very link this node created: a later node may have the same name and address
        bridge, index = st.get("bridge", ""), int(st.get("bridge_ifindex") or 0)
        if bridge and index and link_ifindex(bridge) == index:
            _ip("link", "del", bridge, check=False)
        workdir = Path(st.get("workdir", ""))
        if workdir.name.startswith("podgrace-node-") and not any(str(workdir) in m for m in _host_mounts()):
            shutil.rmtree(workdir, ignore_errors=True)
        if left:
            log(f"[node] stale node {st.get('name')}: cgroups left {left}")
        else:
            f.unlink(missing_ok=True)
        log(f"[node] cleaned up stale node {st.get('name')} (owner {owner} is gone)")
        done.append(str(st.get("name")))
    return done


def _host_mounts() -> list[str]:
    try:
        return Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []


@contextlib.contextmanager
def real_node(cluster: ClusterLike, **kw: Any) -> Iterator[RealNode]:
    node = RealNode(cluster, **kw)
    with node:
        yield node


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m tests.cluster.node", description="real test nodes")
    ap.add_argument("cmd", choices=["cleanup"], help="undo the nodes whose owning process died")
    ap.parse_args(argv)
    done = cleanup_stale()
    print(f"{len(done)} stale node(s) cleaned up" + (f": {', '.join(done)}" if done else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
