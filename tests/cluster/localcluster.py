"""A real Kubernetes control plane on loopback, without Docker: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler and kwok (fake nodes that "run" pods).

Used by the e2e pytest fixtures (tests/e2e/conftest.py) and by hand::

    python tests/cluster/localcluster.py up [--stop-signals]

The binaries come from tests/cluster/build.sh (built from Go modules and cached).
Only the Python standard library and ``cryptography`` are needed.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import dataclasses
import datetime as dt
import functools
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

HERE = Path(__file__).resolve().parent
BUILD_SH = HERE / "build.sh"

ADMIN_USER = "podgrace-admin"
WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})
KWOK_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
SERVICE_CIDR = "10.96.0.0/16"
STOP_SIGNALS_GATES: Mapping[str, bool] = {"ContainerStopSignals": True}

# The apiserver's own loopback reads are noise; everything else is logged at Metadata level
# (which keeps requestURI, so dry-run requests stay recognisable by their ?dryRun=All).
AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived", "ResponseStarted"]
rules:
- level: None
  users: ["system:apiserver"]
  verbs: ["get", "list", "watch"]
- level: None
  nonResourceURLs: ["/healthz*", "/livez*", "/readyz*", "/version"]
- level: Metadata
"""


class ClusterError(RuntimeError):
    """The local cluster failed to build, start or answer."""


class KubectlError(ClusterError):
    def __init__(self, args: Sequence[str], proc: subprocess.CompletedProcess[str]) -> None:
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        super().__init__(f"kubectl {' '.join(args)} exited {proc.returncode}:\n{proc.stderr.strip()}")


# --------------------------------------------------------------------------------------------
# binaries


@dataclasses.dataclass(frozen=True)
class CachedBuild:
    """A build script that caches its binaries by version (build.sh, build-node.sh): ``--print-dir`` names
    the directory, ``--check`` says whether it is complete, a bare run builds what is missing. The
    environment variable ``override_env`` names a directory of ready binaries instead."""

    script: Path
    override_env: str
    binaries: tuple[str, ...]  # what must be in an override directory
    cold: str  # how long a cold build takes, for the log line
    error: type[Exception]

    def bin_dir(self) -> Path:
        override = os.environ.get(self.override_env)
        if override:
            return Path(override)
        out = subprocess.run(
            ["bash", str(self.script), "--print-dir"], check=True, capture_output=True, text=True
        ).stdout
        return Path(out.strip().splitlines()[-1])

    def ready(self) -> bool:
        override = os.environ.get(self.override_env)
        if override:
            return all((Path(override) / b).exists() for b in self.binaries)
        return subprocess.run(["bash", str(self.script), "--check"], check=False).returncode == 0

    def ensure(self, log: Callable[[str], None] = print) -> Path:
        """Run the script unless the cached binaries are complete; return the bin dir."""
        if not self.ready():
            log(f"building the binaries with {self.script} (cold: {self.cold}, then cached) ...")
            proc = subprocess.run(["bash", str(self.script)], check=False)
            if proc.returncode != 0:
                raise self.error(f"{self.script} failed with exit code {proc.returncode}")
        return self.bin_dir()


CLUSTER_BUILD = CachedBuild(
    BUILD_SH, "PODGRACE_BIN_DIR", ("etcd", "kube-apiserver", "kwok"), "~20 min", ClusterError
)
bin_dir = CLUSTER_BUILD.bin_dir
binaries_ready = CLUSTER_BUILD.ready
ensure_binaries = CLUSTER_BUILD.ensure


# --------------------------------------------------------------------------------------------
# audit log


@dataclasses.dataclass(frozen=True)
class AuditEvent:
    verb: str
    user: str
    groups: tuple[str, ...]
    request_uri: str
    resource: str
    subresource: str
    namespace: str
    name: str
    api_group: str
    code: int
    dry_run: bool
    user_agent: str
    received: dt.datetime
    raw: Mapping[str, Any]

    @property
    def is_write(self) -> bool:
        return self.verb in WRITE_VERBS

    @property
    def full_resource(self) -> str:
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource

    @classmethod
    def from_json(cls, ev: Mapping[str, Any]) -> AuditEvent:
        ref = ev.get("objectRef") or {}
        user = ev.get("user") or {}
        uri = ev.get("requestURI", "")
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(uri).query)
        return cls(
            verb=ev.get("verb", ""),
            user=user.get("username", ""),
            groups=tuple(user.get("groups") or ()),
            request_uri=uri,
            resource=ref.get("resource", ""),
            subresource=ref.get("subresource", ""),
            namespace=ref.get("namespace", ""),
            name=ref.get("name", ""),
            api_group=ref.get("apiGroup", ""),
            code=int((ev.get("responseStatus") or {}).get("code", 0)),
            dry_run="dryRun" in query,
            user_agent=ev.get("userAgent", ""),
            received=_parse_ts(ev.get("requestReceivedTimestamp", "")),
            raw=ev,
        )


def _parse_ts(value: str) -> dt.datetime:
    if not value:
        return dt.datetime.min.replace(tzinfo=dt.UTC)
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def _as_datetime(since: float | dt.datetime | None) -> dt.datetime | None:
    if since is None or isinstance(since, dt.datetime):
        return since
    return dt.datetime.fromtimestamp(since, tz=dt.UTC)


def _resource_matches(ev: AuditEvent, resource: str | None) -> bool:
    """``"pods"`` = the pods resource itself, ``"pods/status"`` = that subresource, ``"pods/*"`` = any."""
    if resource is None:
        return True
    base, _, sub = resource.partition("/")
    if ev.resource != base:
        return False
    return sub == "*" or ev.subresource == sub


def read_audit_log(path: Path) -> Iterator[AuditEvent]:
    if not path.exists():
        return
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            with contextlib.suppress(json.JSONDecodeError):  # a line being written right now
                yield AuditEvent.from_json(json.loads(line))


# --------------------------------------------------------------------------------------------
# certificates


def _write_pki(d: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    later = now + dt.timedelta(days=30)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "podgrace-local-ca")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(later)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    srv_key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [
        x509.DNSName(n)
        for n in (
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        )
    ]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ("127.0.0.1", "10.96.0.1")]
    srv = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_name)
        .public_key(srv_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(later)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    sa_key = ec.generate_private_key(ec.SECP256R1())
    (d / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (d / "ca.key").write_bytes(pem_key(ca_key))
    (d / "apiserver.crt").write_bytes(srv.public_bytes(serialization.Encoding.PEM))
    (d / "apiserver.key").write_bytes(pem_key(srv_key))
    (d / "sa.key").write_bytes(pem_key(sa_key))
    (d / "sa.pub").write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    for key in ("ca.key", "apiserver.key", "sa.key"):
        (d / key).chmod(0o600)


# --------------------------------------------------------------------------------------------
# processes


def free_port() -> int:
    """A free TCP port on 127.0.0.1, picked below the kernel's ephemeral range (32768+) so that
    outgoing connections of other processes cannot take it between now and the bind."""
    for _ in range(200):
        port = 20000 + secrets.randbelow(12000)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _set_parent_death_signal(sig: int) -> None:  # pragma: no cover - in the child between fork and exec
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, sig)  # PR_SET_PDEATHSIG


def die_with_parent(sig: int = signal.SIGKILL) -> Callable[[], None] | None:
    """A Popen preexec_fn that sends the child `sig` when this process dies (a SIGTERMed or SIGKILLed
    pytest runs no finalizer; SIGTERM for a child that cleans up after itself). PR_SET_PDEATHSIG fires
    when the *thread* that forked exits, so it is only set from the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return functools.partial(_set_parent_death_signal, sig)


@dataclasses.dataclass
class LoggedProcess:
    """A component process of a test cluster or node: its own session, its output appended to ``log``,
    stopped by its PID (SIGTERM, then SIGKILL after a grace)."""

    name: str
    argv: list[str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None
    _logfh: IO[bytes] | None = None

    def start(self, env: Mapping[str, str] | None = None) -> None:
        self._logfh = self.log.open("ab")
        self._logfh.write(f"\n=== {time.strftime('%H:%M:%S')} {' '.join(self.argv)}\n".encode())
        self._logfh.flush()
        self.popen = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._logfh,
            stderr=subprocess.STDOUT,
            env=dict(env if env is not None else os.environ),
            start_new_session=True,
            preexec_fn=die_with_parent(),
        )

    @property
    def pid(self) -> int:
        """The process's PID, 0 before it started."""
        return self.popen.pid if self.popen else 0

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive() and self.popen is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.popen.pid, sig)

    def wait(self, timeout: float) -> bool:
        if self.popen is None:
            return True
        try:
            self.popen.wait(timeout=max(timeout, 0.0))
            return True
        except subprocess.TimeoutExpired:
            return False

    def stop(self, grace: float) -> None:
        stop_processes([self], grace)

    def close(self) -> None:
        if self._logfh is not None:
            self._logfh.close()
            self._logfh = None

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def stop_processes(procs: Iterable[LoggedProcess], grace: float = 10.0) -> None:
    """SIGTERM to all at once, then SIGKILL to any still running after ``grace`` seconds."""
    procs = [p for p in procs if p.popen is not None]
    for p in procs:
        p.signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        if not p.wait(deadline - time.monotonic()):
            p.signal(signal.SIGKILL)
            p.wait(5.0)
        p.close()


# --------------------------------------------------------------------------------------------
# the cluster


class LocalCluster:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler + kwok on 127.0.0.1.

    Use as a context manager (or call :meth:`start` / :meth:`stop`). Attributes once started:
    ``kubeconfig`` (admin kubeconfig path), ``server`` (https URL), ``admin_token``, ``workdir``,
    ``audit_log``, ``nodes`` (fake node names), ``feature_gates``.
    """

    def __init__(
        self,
        *,
        feature_gates: Mapping[str, bool] | None = None,
        nodes: int = 3,
        binaries: Path | None = None,
        workdir: Path | None = None,
        keep_workdir: bool | None = None,
        start_timeout: float = 120.0,
        kwok_stages: Sequence[Path] | None = None,
        extra_apiserver_args: Sequence[str] = (),
        name: str = "podgrace",
    ) -> None:
        self.feature_gates: dict[str, bool] = dict(feature_gates or {})
        self.node_count = nodes
        self._bin_dir = binaries
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix=f"{name}-cluster-"))
        if keep_workdir is None:
            keep_workdir = os.environ.get("PODGRACE_KEEP_CLUSTER_DIR", "") not in ("", "0")
        self.keep_workdir = keep_workdir
        self.keep_logs = False  # set on failure: keep the workdir minus the etcd data (~65 MB)
        self.start_timeout = start_timeout
        self._kwok_stages = list(kwok_stages) if kwok_stages is not None else None
        self._extra_apiserver_args = list(extra_apiserver_args)
        self.name = name

        self.admin_token = secrets.token_hex(16)
        self._component_tokens = {
            "kube-controller-manager": secrets.token_hex(16),
            "kube-scheduler": secrets.token_hex(16),
            "kwok": secrets.token_hex(16),
        }
        self.pki = self.workdir / "pki"
        self.log_dir = self.workdir / "logs"
        self.audit_log = self.log_dir / "audit.jsonl"
        self.kubeconfig = self.workdir / "admin.kubeconfig"
        self.etcd_port = 0
        self.port = 0
        self.server = ""
        self.nodes: list[str] = [f"kwok-node-{i}" for i in range(nodes)]
        self.start_seconds = 0.0
        self._procs: dict[str, LoggedProcess] = {}
        self._ssl: ssl.SSLContext | None = None
        self._started = False
        self._lock = threading.RLock()

    # ---------------------------------------------------------------- public helpers

    def bin(self, name: str) -> Path:
        if self._bin_dir is None:
            self._bin_dir = bin_dir()
        path = self._bin_dir / name
        if not path.exists():
            raise ClusterError(f"binary {path} is missing: run {BUILD_SH}")
        return path

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for a subprocess that should talk to this cluster (kubectl, helm, the operator)."""
        env = dict(os.environ)
        env.update(
            KUBECONFIG=str(self.kubeconfig),
            KUBECACHEDIR=str(self.workdir / "kubecache"),
            HELM_CACHE_HOME=str(self.workdir / "helm" / "cache"),
            HELM_CONFIG_HOME=str(self.workdir / "helm" / "config"),
            HELM_DATA_HOME=str(self.workdir / "helm" / "data"),
            PATH=f"{self.bin('kubectl').parent}{os.pathsep}{env.get('PATH', '')}",
        )
        env.update(extra)
        return env

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 120.0,
        token: str | None = None,
        kubeconfig: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this cluster (as admin unless ``token``/``kubeconfig`` is given)."""
        argv = [str(self.bin("kubectl")), f"--kubeconfig={kubeconfig or self.kubeconfig}"]
        if token is not None:
            argv.append(f"--token={token}")
        argv += list(args)
        proc = subprocess.run(
            argv, input=input, capture_output=True, text=True, timeout=timeout, env=self.env(), check=False
        )
        if check and proc.returncode != 0:
            raise KubectlError(args, proc)
        return proc

    def kubectl_json(self, *args: str, **kwargs: Any) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json", **kwargs).stdout)

    def helm(
        self, *args: str, check: bool = True, timeout: float = 300.0
    ) -> subprocess.CompletedProcess[str]:
        argv = [str(self.bin("helm")), f"--kubeconfig={self.kubeconfig}", *args]
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, env=self.env(), check=False
        )
        if check and proc.returncode != 0:
            raise ClusterError(f"helm {' '.join(args)} exited {proc.returncode}:\n{proc.stderr.strip()}")
        return proc

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = None,
        content_type: str = "application/json",
        timeout: float = 10.0,
    ) -> tuple[int, Any]:
        """Raw HTTPS call to the apiserver; returns (status, decoded JSON or text). Status 0 = no answer."""
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {token if token is not None else self.admin_token}")
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, context=self._ssl_context(), timeout=timeout) as resp:
                status, raw = int(resp.status), resp.read()
        except urllib.error.HTTPError as err:
            status, raw = int(err.code), err.read()
        except (urllib.error.URLError, OSError):
            return 0, None
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode(errors="replace")

    def write_kubeconfig(
        self, path: Path, *, token: str, user: str = "user", namespace: str = "default"
    ) -> Path:
        """A kubeconfig for this cluster that authenticates with ``token`` (e.g. a ServiceAccount's)."""
        ca = base64.b64encode((self.pki / "ca.crt").read_bytes()).decode()
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": self.name, "cluster": {"server": self.server, "certificate-authority-data": ca}}
            ],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [
                {"name": self.name, "context": {"cluster": self.name, "user": user, "namespace": namespace}}
            ],
            "current-context": self.name,
        }
        path.write_text(json.dumps(cfg, indent=2) + "\n")
        path.chmod(0o600)
        return path

    def create_token(self, service_account: str, namespace: str = "default", duration: str = "1h") -> str:
        """Mint a ServiceAccount token (``kubectl create token``)."""
        return self.kubectl(
            "create", "token", service_account, "-n", namespace, f"--duration={duration}"
        ).stdout.strip()

    # ---------------------------------------------------------------- audit

    def audit_events(
        self,
        since: float | dt.datetime | None = None,
        *,
        user: str | None = None,
        verb: str | None = None,
        resource: str | None = None,
        namespace: str | None = None,
        name: str | None = None,
        include_dry_run: bool = False,
    ) -> list[AuditEvent]:
        """Parsed audit events (Metadata level, ResponseComplete stage), oldest first.

        ``since`` is a ``time.time()`` value or an aware datetime (request received at or after it).
        ``resource``: ``"deployments"``, ``"pods/status"`` or ``"pods/*"`` (resource plus any subresource).
        Dry-run requests (``?dryRun=All``) are left out unless ``include_dry_run``.
        """
        after = _as_datetime(since)
        out = []
        for ev in read_audit_log(self.audit_log):
            if after is not None and ev.received < after:
                continue
            if ev.dry_run and not include_dry_run:
                continue
            if user is not None and ev.user != user:
                continue
            if verb is not None and ev.verb != verb:
                continue
            if namespace is not None and ev.namespace != namespace:
                continue
            if name is not None and ev.name != name:
                continue
            if not _resource_matches(ev, resource):
                continue
            out.append(ev)
        return out

    def write_events(
        self,
        *,
        user: str | None = None,
        resource: str | None = None,
        since: float | dt.datetime | None = None,
        namespace: str | None = None,
        verb: str | None = None,
    ) -> list[AuditEvent]:
        """Real (not dry-run) create/update/patch/delete/deletecollection requests."""
        events = self.audit_events(since, user=user, resource=resource, namespace=namespace, verb=verb)
        return [ev for ev in events if ev.is_write]

    def count_writes(
        self,
        *,
        user: str | None = None,
        resource: str | None = None,
        since: float | dt.datetime | None = None,
        namespace: str | None = None,
        verb: str | None = None,
    ) -> int:
        return len(
            self.write_events(user=user, resource=resource, since=since, namespace=namespace, verb=verb)
        )

    # ---------------------------------------------------------------- lifecycle

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is not None and not isinstance(exc, KeyboardInterrupt):
            self.print_logs_hint(sys.stderr)
        self.stop()

    def start(self) -> LocalCluster:
        if self._started:
            return self
        t0 = time.monotonic()
        for attempt in range(1, 4):
            try:
                self._start()
                break
            except ClusterError as err:
                # Another process may grab a port between free_port() and the bind: retry then.
                if attempt < 3 and self._port_clash():
                    print(f"[localcluster] port clash, retrying ({err})".splitlines()[0], file=sys.stderr)
                    self._stop_processes()
                    continue
                self.print_logs_hint(sys.stderr)
                self.stop()
                raise
            except BaseException:
                self.print_logs_hint(sys.stderr)
                self.stop()
                raise
        self.start_seconds = time.monotonic() - t0
        atexit.register(self.stop)  # in case nobody calls stop(): no orphans, no temp dir left
        return self

    def stop(self) -> None:
        """Stop every process (SIGTERM, then SIGKILL after 10 s) and remove the temp dir."""
        atexit.unregister(self.stop)
        with self._lock:
            self._stop_processes()
            if self._own_workdir and self.keep_logs and not self.keep_workdir:
                shutil.rmtree(self.workdir / "etcd", ignore_errors=True)
            elif self._own_workdir and not self.keep_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)

    def _stop_processes(self) -> None:
        # Clients first: kube-apiserver's graceful shutdown waits while they hold connections open.
        stages = [["kwok", "kube-scheduler", "kube-controller-manager"], ["kube-apiserver"], ["etcd"]]
        for names in stages:
            stop_processes([self._procs[n] for n in names if n in self._procs])
        self._procs.clear()
        self._started = False

    def _port_clash(self) -> bool:
        return any("address already in use" in p.tail(40) for p in self._procs.values())

    def restart_apiserver(self, down_seconds: float = 0.0, *, kill: bool = False) -> None:
        """Stop kube-apiserver (gracefully, or SIGKILL if ``kill``), stay down ``down_seconds``,
        start it again on the same port and etcd, and wait for /readyz. Takes ~4-6 s."""
        self._restart("kube-apiserver", down_seconds, kill=kill)

    def restart_etcd(self, down_seconds: float = 0.0, *, kill: bool = False) -> None:
        """Stop etcd (gracefully, or SIGKILL if ``kill``), stay down ``down_seconds``, start it again on
        the same ports and data directory, and wait until kube-apiserver is ready again (it reconnects by
        itself; meanwhile it answers with errors and its watches end)."""
        self._restart("etcd", down_seconds, kill=kill)  # /readyz includes kube-apiserver's etcd check

    def _restart(self, name: str, down_seconds: float, *, kill: bool) -> None:
        with self._lock:
            proc = self._procs[name]
            if kill:
                proc.signal(signal.SIGKILL)
            stop_processes([proc])
            if down_seconds:
                time.sleep(down_seconds)
            self._start_proc(name, proc.argv)
            # 60 s is plenty on an idle machine; a loaded 2-core one has taken 60 s for /readyz alone
            self._wait("kube-apiserver /readyz", self._apiserver_ready, 180.0)

    def logs(self) -> dict[str, Path]:
        return {name: p.log for name, p in self._procs.items()} | {"audit": self.audit_log}

    def pids(self) -> dict[str, int]:
        return {name: p.pid for name, p in self._procs.items() if p.alive()}

    def print_logs_hint(self, stream: IO[str]) -> None:
        if not self.log_dir.exists():
            return
        self.keep_logs = True  # keep the logs for a post-mortem
        print(f"\n[localcluster] logs kept in {self.log_dir}:", file=stream)
        for p in sorted(self.log_dir.iterdir()):
            print(f"[localcluster]   {p}", file=stream)
        for name, proc in self._procs.items():
            if proc.popen is not None and not proc.alive():
                print(
                    f"[localcluster] {name} exited {proc.popen.returncode}; last lines:\n{proc.tail()}",
                    file=stream,
                )

    # ---------------------------------------------------------------- internals

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        return self._ssl

    def _start_proc(self, name: str, argv: list[str]) -> LoggedProcess:
        proc = LoggedProcess(name, argv, self.log_dir / f"{name}.log")
        self._procs[name] = proc
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBECONFIG", "ETCD"))}
        proc.start(env)
        return proc

    def _wait(self, what: str, cond: Callable[[], bool], timeout: float, interval: float = 0.2) -> None:
        deadline = time.monotonic() + timeout
        while True:
            dead = [(n, p) for n, p in self._procs.items() if p.popen is not None and not p.alive()]
            if dead:
                n, p = dead[0]
                code = p.popen.returncode if p.popen else None
                raise ClusterError(f"{n} exited ({code}) while waiting for {what}; log {p.log}:\n{p.tail()}")
            if cond():
                return
            if time.monotonic() > deadline:
                raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(interval)

    def _component_kubeconfig(self, component: str) -> Path:
        return self.write_kubeconfig(
            self.workdir / f"{component}.kubeconfig", token=self._component_tokens[component], user=component
        )

    def _gates_flag(self) -> list[str]:
        if not self.feature_gates:
            return []
        return [
            "--feature-gates="
            + ",".join(f"{k}={str(v).lower()}" for k, v in sorted(self.feature_gates.items()))
        ]

    def _start(self) -> None:
        bins = {
            n: str(self.bin(n))
            for n in (
                "etcd",
                "kube-apiserver",
                "kube-controller-manager",
                "kube-scheduler",
                "kwok",
                "kubectl",
            )
        }
        self.workdir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.workdir / "etcd", ignore_errors=True)  # a retried start begins afresh
        for d in (self.pki, self.log_dir, self.workdir / "etcd"):
            d.mkdir(parents=True, exist_ok=True)
        (self.workdir / "etcd").chmod(0o700)
        _write_pki(self.pki)
        self.etcd_port, peer_port, self.port = free_port(), free_port(), free_port()
        self.server = f"https://127.0.0.1:{self.port}"

        # --- etcd
        etcd_url = f"http://127.0.0.1:{self.etcd_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        self._start_proc(
            "etcd",
            [
                bins["etcd"],
                "--name=default",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=default={peer_url}",
                "--unsafe-no-fsync",
                "--log-level=warn",
                "--quota-backend-bytes=2147483648",
            ],
        )

        # --- kube-apiserver
        tokens = [f'{self.admin_token},{ADMIN_USER},{ADMIN_USER},"system:masters"']
        tokens.append(
            f"{self._component_tokens['kube-controller-manager']},system:kube-controller-manager,"
            "system:kube-controller-manager"
        )
        tokens.append(
            f"{self._component_tokens['kube-scheduler']},system:kube-scheduler,system:kube-scheduler"
        )
        tokens.append(f'{self._component_tokens["kwok"]},kwok,kwok,"system:masters"')
        (self.pki / "tokens.csv").write_text("\n".join(tokens) + "\n")
        (self.pki / "tokens.csv").chmod(0o600)
        (self.workdir / "audit-policy.yaml").write_text(AUDIT_POLICY)
        self.write_kubeconfig(self.kubeconfig, token=self.admin_token, user=ADMIN_USER)
        self._start_proc(
            "kube-apiserver",
            [
                bins["kube-apiserver"],
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.port}",
                f"--tls-cert-file={self.pki / 'apiserver.crt'}",
                f"--tls-private-key-file={self.pki / 'apiserver.key'}",
                f"--client-ca-file={self.pki / 'ca.crt'}",
                f"--token-auth-file={self.pki / 'tokens.csv'}",
                "--authorization-mode=Node,RBAC",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={self.pki / 'sa.pub'}",
                f"--service-account-signing-key-file={self.pki / 'sa.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                # 127.0.0.1 is not a valid Endpoints address; nobody needs the kubernetes Service here.
                "--endpoint-reconciler-type=none",
                # close watches on SIGTERM instead of waiting for clients (a restart takes ~1 s, not 10)
                "--shutdown-watch-termination-grace-period=2s",
                f"--audit-policy-file={self.workdir / 'audit-policy.yaml'}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-format=json",
                "--audit-log-mode=blocking",
                "--audit-log-maxsize=0",
                "--audit-log-maxbackup=0",
                "--allow-privileged=true",
                "--profiling=false",
                "--v=1",
                *self._gates_flag(),
                *self._extra_apiserver_args,
            ],
        )
        self._wait("etcd /health", lambda: _http_ok(f"{etcd_url}/health"), 30.0)
        self._wait("kube-apiserver /readyz", self._apiserver_ready, 60.0)

        # --- controllers, scheduler, kwok (in parallel)
        self._start_proc(
            "kube-controller-manager",
            [
                bins["kube-controller-manager"],
                f"--kubeconfig={self._component_kubeconfig('kube-controller-manager')}",
                "--secure-port=0",  # no health/metrics endpoint: one port less to race for
                "--leader-elect=false",
                "--use-service-account-credentials=true",
                "--controllers=*,-service-lb-controller,-node-route-controller,-cloud-node-lifecycle-controller",
                f"--service-account-private-key-file={self.pki / 'sa.key'}",
                f"--root-ca-file={self.pki / 'ca.crt'}",
                f"--cluster-signing-cert-file={self.pki / 'ca.crt'}",
                f"--cluster-signing-key-file={self.pki / 'ca.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--profiling=false",
                "--v=1",
                *self._gates_flag(),
            ],
        )
        self._start_proc(
            "kube-scheduler",
            [
                bins["kube-scheduler"],
                f"--kubeconfig={self._component_kubeconfig('kube-scheduler')}",
                "--secure-port=0",
                "--leader-elect=false",
                "--profiling=false",
                "--v=1",
                *self._gates_flag(),
            ],
        )
        stages = self._write_kwok_config()
        key, value = KWOK_NODE_ANNOTATION
        self._start_proc(
            "kwok",
            [
                bins["kwok"],
                f"--kubeconfig={self._component_kubeconfig('kwok')}",
                f"--config={stages}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={key}={value}",
                "--node-ip=127.0.0.1",  # no --server-address/--node-port: kwok serves nothing
                "--v=INFO",
            ],
        )
        for node in self.nodes:
            # created as "kwok" so that the admin user's audit trail starts empty
            status, body = self.request(
                "POST", "/api/v1/nodes", _node_manifest(node), token=self._component_tokens["kwok"]
            )
            if status not in (201, 409):
                raise ClusterError(f"creating node {node} failed: {status} {body}")

        self._wait("the default ServiceAccount", self._default_sa_exists, self.start_timeout)
        self._wait("kwok nodes Ready", self._nodes_ready, self.start_timeout)
        self._started = True

    def _write_kwok_config(self) -> Path:
        files = self._kwok_stages
        if files is None:
            files = sorted(self.bin("kwok").parent.joinpath("kwok-stages").glob("*.yaml"))
        if not files:
            raise ClusterError("no kwok stage files found (did build.sh finish?)")
        docs = [p.read_text().strip() for p in files]
        if self.feature_gates.get("ContainerStopSignals"):
            docs = [_with_stop_signal_status(doc) for doc in docs]
        path = self.workdir / "kwok-stages.yaml"
        path.write_text("\n---\n".join(docs) + "\n")
        return path

    def _apiserver_ready(self) -> bool:
        status, body = self.request("GET", "/readyz", timeout=2.0)
        return status == 200 and str(body).strip() == "ok"

    def _default_sa_exists(self) -> bool:
        status, _ = self.request("GET", "/api/v1/namespaces/default/serviceaccounts/default", timeout=2.0)
        return status == 200

    def _nodes_ready(self) -> bool:
        status, body = self.request("GET", "/api/v1/nodes", timeout=2.0)
        if status != 200 or not isinstance(body, dict):
            return False
        ready = {
            item["metadata"]["name"]
            for item in body.get("items", [])
            if any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in item.get("status", {}).get("conditions", [])
            )
        }
        return set(self.nodes) <= ready


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2.0) as resp:
            return int(resp.status) == 200
    except (urllib.error.URLError, OSError):
        return False


def _node_manifest(name: str) -> dict[str, Any]:
    key, value = KWOK_NODE_ANNOTATION
    resources = {"cpu": "32", "memory": "256Gi", "pods": "110", "ephemeral-storage": "100Gi"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {key: value, "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "beta.kubernetes.io/arch": "amd64",
                "beta.kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/role": "agent",
                "node-role.kubernetes.io/agent": "",
                "type": "kwok",
            },
        },
        "spec": {},
        "status": {
            "allocatable": resources,
            "capacity": resources,
            "nodeInfo": {
                "architecture": "amd64",
                "kubeProxyVersion": "fake",
                "kubeletVersion": "fake",
                "operatingSystem": "linux",
            },
            "phase": "Running",
        },
    }


# --------------------------------------------------------------------------------------------
# CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start a cluster and keep it up until Ctrl-C / SIGTERM")
    up.add_argument(
        "--stop-signals", action="store_true", help="enable the ContainerStopSignals feature gate"
    )
    up.add_argument("--nodes", type=int, default=3)
    up.add_argument("--workdir", type=Path, help="use this directory (kept) instead of a temp dir")
    sub.add_parser("build", help="run build.sh (no-op when cached) and print the bin dir")
    args = parser.parse_args(argv)

    if args.cmd == "build":
        print(ensure_binaries())
        return 0

    ensure_binaries()
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    cluster = LocalCluster(
        feature_gates=STOP_SIGNALS_GATES if args.stop_signals else None,
        nodes=args.nodes,
        workdir=args.workdir,
    )
    with cluster:
        print(
            f"cluster up in {cluster.start_seconds:.1f}s: {cluster.server}"
            f"{' (ContainerStopSignals=true)' if args.stop_signals else ''}"
        )
        print(f"logs: {cluster.log_dir}  audit log: {cluster.audit_log}")
        print(f"export KUBECONFIG={cluster.kubeconfig}")
        print(f'export PATH="{cluster.bin("kubectl").parent}:$PATH"')
        print("Ctrl-C or SIGTERM to stop.", flush=True)
        while not stop.wait(1.0):
            dead = [n for n, p in cluster._procs.items() if not p.alive()]
            if dead:
                print(f"component(s) exited: {', '.join(dead)}", file=sys.stderr)
                cluster.print_logs_hint(sys.stderr)
                return 1
        print("stopping ...", flush=True)
    return 0


# A kubelet with ContainerStopSignals reports each running container's effective stop signal (its
# lifecycle.stopSignal, else the image's: SIGTERM for the test images); kwok's ready stage does it too, so
# that podgrace's check of it (controller/stop_signal_check.py) sees what a real node shows.
_KWOK_NAME_LINE = "        name: {{ $item.name | Quote }}\n"
_KWOK_STOP_SIGNAL = (
    '        stopSignal: {{ with $item.lifecycle }}{{ with .stopSignal }}{{ . | Quote }}{{ else }}"SIGTERM"'
    '{{ end }}{{ else }}"SIGTERM"{{ end }}\n'
)


def _with_stop_signal_status(stage: str) -> str:
    if "name: pod-ready" not in stage or "containerStatuses:" not in stage:
        return stage
    return stage.replace(_KWOK_NAME_LINE, _KWOK_NAME_LINE + _KWOK_STOP_SIGNAL, 1)


if __name__ == "__main__":
    sys.exit(main())
