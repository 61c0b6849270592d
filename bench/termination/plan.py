"""Pure parts of the lab: a Deployment manifest -> the termination plan the kubelet would execute.

No processes, no sockets: everything here is unit-tested in tests/lab/test_lab_units.py.

Runtime mapping (by container image, first match wins; case-insensitive on the image reference):

    image contains "fpm"  and "php"               -> php-fpm   (php:8.2-fpm, acme/php-fpm:1)
    image contains "nginx"                        -> nginx     (nginx:1.22, acme/nginx-sigterm)
    image contains "httpd" or "apache"            -> apache    (httpd:2.4, php:8.2-apache = Apache + mod_php)
    anything else                                 -> generic   (a Python HTTP server that drains on SIGTERM)

Image default stop signal (the Dockerfile's STOPSIGNAL; used when the container has no lifecycle.stopSignal).
It is a scenario input (`--image-stop-signal CONTAINER=SIG`); without it, the official images' values:

    nginx:*  (Docker official image)              -> SIGQUIT   (STOPSIGNAL SIGQUIT since nginx 1.19)
    php:*-fpm (Docker official image)             -> SIGQUIT
    httpd:*, php:*-apache (Docker official images)-> SIGWINCH
    anything else (a custom image)                -> SIGTERM   (no STOPSIGNAL: the runtime's default)
"""

from __future__ import annotations

import math
import re
import signal
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import yaml

KUBERNETES_DEFAULT_GRACE = 30
# kubelet: "always give containers a minimal shutdown window to avoid unnecessary SIGKILLs"
# (pkg/kubelet/kuberuntime/kuberuntime_container.go, minimumGracePeriodInSeconds).
MINIMUM_GRACE_AFTER_HOOK = 2

RUNTIMES = ("nginx", "php-fpm", "apache", "generic")

ANN_PROFILE = "podgrace.dev/profile"
ANN_SLEEP = "podgrace.dev/prestop-sleep-seconds"
ANN_DRAIN = "podgrace.dev/drain-seconds"


class ManifestError(ValueError):
    """The manifest cannot be turned into a termination plan."""


# ---------------------------------------------------------------------------------------------- mapping


def runtime_for_image(image: str) -> str:
    ref = image.lower()
    if "php" in ref and "fpm" in ref:
        return "php-fpm"
    if "nginx" in ref:
        return "nginx"
    if "httpd" in ref or "apache" in ref:
        return "apache"
    return "generic"


def _repository(image: str) -> str:
    without_digest = image.split("@", 1)[0]
    slash = without_digest.rfind("/")
    colon = without_digest.rfind(":")
    return without_digest[:colon] if colon > slash else without_digest


def _tag(image: str) -> str:
    without_digest = image.split("@", 1)[0]
    slash = without_digest.rfind("/")
    colon = without_digest.rfind(":")
    return without_digest[colon + 1 :] if colon > slash else "latest"


def is_official_image(image: str, name: str) -> bool:
    repo = _repository(image)
    return repo in (name, f"library/{name}", f"docker.io/{name}", f"docker.io/library/{name}")


def default_image_stop_signal(image: str) -> str:
    """The STOPSIGNAL of well-known official images; SIGTERM for anything else (see module docstring)."""
    tag = _tag(image)
    if is_official_image(image, "nginx"):
        return "SIGQUIT"
    if is_official_image(image, "httpd"):
        return "SIGWINCH"
    if is_official_image(image, "php"):
        if "fpm" in tag:
            return "SIGQUIT"
        if "apache" in tag:
            return "SIGWINCH"
    return "SIGTERM"


def normalize_signal(value: str | int) -> str:
    """'QUIT', 'sigquit', 'SIGQUIT', 3 -> 'SIGQUIT'. Raises ManifestError for unknown names."""
    if isinstance(value, int):
        try:
            return signal.Signals(value).name
        except ValueError as exc:
            raise ManifestError(f"unknown signal number {value}") from exc
    text = str(value).strip().upper()
    if text.isdigit():
        return normalize_signal(int(text))
    if not text.startswith("SIG"):
        text = "SIG" + text
    if text not in signal.Signals.__members__:
        raise ManifestError(f"unknown signal {value!r}")
    return text


def signal_number(name: str) -> int:
    return int(signal.Signals[normalize_signal(name)])


# ---------------------------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class Hook:
    kind: str  # "sleep" | "exec" | "httpGet" | "tcpSocket"
    seconds: float | None = None  # sleep
    command: tuple[str, ...] = ()  # exec

    def describe(self) -> str:
        if self.kind == "sleep":
            return f"sleep {self.seconds:g}s"
        if self.kind == "exec":
            text = " ".join(self.command)
            text = text.replace("\n", "; ")
            return "exec " + (text if len(text) <= 70 else text[:67] + "...")
        return self.kind


@dataclass(frozen=True)
class ContainerPlan:
    name: str
    image: str
    runtime: str
    stop_signal: str
    stop_signal_source: str  # "lifecycle.stopSignal" | "image"
    pre_stop: Hook | None = None
    init: tuple[str, ...] = ()  # an init that runs the server as its child: ("/usr/bin/tini", "--")


# Inits the lab runs in front of the server when the container's command starts with one (the rest of the
# command is not used: the runtime decides what runs).
INITS = {"tini": ("/usr/bin/tini", "--")}


def init_for(command: object) -> tuple[str, ...]:
    if isinstance(command, list) and command and isinstance(command[0], str):
        return INITS.get(command[0].rsplit("/", 1)[-1], ())
    return ()


@dataclass(frozen=True)
class PodPlan:
    deployment: str
    grace_seconds: int
    grace_source: str  # "spec" | "default"
    containers: tuple[ContainerPlan, ...]
    annotations: Mapping[str, str] = field(default_factory=dict)
    os_name: str | None = None
    warnings: tuple[str, ...] = ()
    # spec.shareProcessNamespace: the pod's containers share one PID namespace whose PID 1 is pause
    share_process_namespace: bool = False

    @property
    def profile(self) -> str | None:
        return self.annotations.get(ANN_PROFILE)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["annotations"] = dict(self.annotations)
        return data


def load_documents(text: str) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for doc in yaml.safe_load_all(text):
        if not isinstance(doc, dict):
            continue
        if doc.get("kind") == "List" and isinstance(doc.get("items"), list):
            docs.extend(item for item in doc["items"] if isinstance(item, dict))
        else:
            docs.append(doc)
    return docs


def find_deployment(docs: Iterable[Mapping[str, Any]], name: str | None = None) -> Mapping[str, Any]:
    found = [d for d in docs if d.get("kind") == "Deployment"]
    if name is not None:
        found = [d for d in found if (d.get("metadata") or {}).get("name") == name]
    if not found:
        raise ManifestError("no Deployment" + (f" named {name!r}" if name else "") + " in the manifest")
    if len(found) > 1:
        names = ", ".join(str((d.get("metadata") or {}).get("name")) for d in found)
        raise ManifestError(f"several Deployments ({names}); pick one with --deployment")
    return found[0]


def parse_hook(pre_stop: Mapping[str, Any] | None) -> Hook | None:
    if not pre_stop:
        return None
    if "sleep" in pre_stop:
        seconds = (pre_stop["sleep"] or {}).get("seconds")
        if not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds < 0:
            raise ManifestError(f"preStop.sleep.seconds must be a non-negative number, got {seconds!r}")
        return Hook("sleep", seconds=float(seconds))
    if "exec" in pre_stop:
        command = (pre_stop["exec"] or {}).get("command")
        if not isinstance(command, list) or not command or not all(isinstance(c, str) for c in command):
            raise ManifestError(f"preStop.exec.command must be a non-empty list of strings, got {command!r}")
        return Hook("exec", command=tuple(command))
    for kind in ("httpGet", "tcpSocket"):
        if kind in pre_stop:
            return Hook(kind)
    raise ManifestError(f"unknown preStop handler {sorted(pre_stop)}")


def build_plan(
    deployment: Mapping[str, Any],
    image_stop_signals: Mapping[str, str] | None = None,
) -> PodPlan:
    """The kubelet's view of one pod of this Deployment.

    image_stop_signals: container name -> the image's STOPSIGNAL (scenario input); containers not named
    get default_image_stop_signal(image).
    """
    image_stop_signals = image_stop_signals or {}
    meta = deployment.get("metadata") or {}
    spec = ((deployment.get("spec") or {}).get("template") or {}).get("spec") or {}
    containers = spec.get("containers") or []
    if not containers:
        raise ManifestError("the pod template has no containers")
    warnings: list[str] = []
    grace_raw = spec.get("terminationGracePeriodSeconds")
    if grace_raw is None:
        grace, grace_source = KUBERNETES_DEFAULT_GRACE, "default"
    else:
        if not isinstance(grace_raw, int) or isinstance(grace_raw, bool) or grace_raw < 0:
            raise ManifestError(
                f"terminationGracePeriodSeconds must be a non-negative integer, got {grace_raw!r}"
            )
        grace, grace_source = grace_raw, "spec"
    os_name = (spec.get("os") or {}).get("name")
    plans: list[ContainerPlan] = []
    unknown = set(image_stop_signals) - {c.get("name") for c in containers}
    if unknown:
        raise ManifestError(f"--image-stop-signal names unknown containers: {sorted(unknown)}")
    for c in containers:
        name = c.get("name")
        image = c.get("image") or ""
        if not name:
            raise ManifestError("a container has no name")
        lifecycle = c.get("lifecycle") or {}
        hook = parse_hook(lifecycle.get("preStop"))
        if hook is not None and hook.kind in ("httpGet", "tcpSocket"):
            raise ManifestError(f"container {name}: preStop {hook.kind} is not modelled by the lab")
        if hook is not None and hook.kind == "sleep" and hook.seconds is not None and hook.seconds > grace:
            warnings.append(
                f"container {name}: preStop sleep {hook.seconds:g}s > terminationGracePeriodSeconds {grace}"
                " (the API server rejects this)"
            )
        if lifecycle.get("stopSignal") is not None:
            stop_signal = normalize_signal(lifecycle["stopSignal"])
            source = "lifecycle.stopSignal"
            if os_name != "linux":
                warnings.append(
                    f"container {name}: lifecycle.stopSignal needs spec.os.name=linux (the API server rejects"
                    " the pod without it)"
                )
        else:
            stop_signal = normalize_signal(image_stop_signals.get(name) or default_image_stop_signal(image))
            source = "image"
        runtime = runtime_for_image(image)
        init = init_for(c.get("command"))
        plans.append(ContainerPlan(name, image, runtime, stop_signal, source, hook, init))
    annotations = {str(k): str(v) for k, v in (meta.get("annotations") or {}).items()}
    return PodPlan(
        deployment=str(meta.get("name") or "deployment"),
        grace_seconds=grace,
        grace_source=grace_source,
        containers=tuple(plans),
        annotations=annotations,
        os_name=os_name,
        warnings=tuple(warnings),
        share_process_namespace=spec.get("shareProcessNamespace") is True,
    )


def plan_from_text(
    text: str, image_stop_signals: Mapping[str, str] | None = None, name: str | None = None
) -> PodPlan:
    return build_plan(find_deployment(load_documents(text), name), image_stop_signals)


# ---------------------------------------------------------------------------------------------- kubelet


def stop_timeout_after_hook(grace: int, hook_elapsed: float | None) -> int:
    """Seconds the runtime waits between the stop signal and SIGKILL, as the kubelet computes it.

    killContainer: gracePeriod -= executePreStopHook(...)  (whole seconds elapsed, truncated)
                   if gracePeriod < minimumGracePeriodInSeconds: gracePeriod = 2
    Without a hook the same 2 s floor applies.
    """
    remaining = grace if hook_elapsed is None else grace - int(max(0.0, hook_elapsed))
    return max(MINIMUM_GRACE_AFTER_HOOK, remaining)


def hook_deadline(grace: int) -> float:
    """The kubelet waits for a preStop hook at most the grace period, then proceeds with the stop."""
    return float(grace)


def kill_time(grace: int, hook_elapsed: float | None) -> float:
    """Seconds after deletion at which SIGKILL follows, given how long the preStop hook took."""
    hook_part = 0.0 if hook_elapsed is None else min(hook_elapsed, hook_deadline(grace))
    return hook_part + stop_timeout_after_hook(grace, hook_part if hook_elapsed is not None else None)


# ---------------------------------------------------------------------------------------------- outcomes

OK = "ok"
FAILURE_KINDS = ("5xx", "reset", "refused", "timeout", "incomplete", "other")

BODY_BEGIN = b"PODGRACE-BEGIN "
BODY_END = b" PODGRACE-END\n"
BODY_SIZE = 2048


def make_body(pod: str, ms: int) -> bytes:
    """The body every lab app returns: fixed size, a marker at each end."""
    head = BODY_BEGIN + f"pod={pod} ms={ms} ".encode()
    pad = BODY_SIZE - len(head) - len(BODY_END)
    return head + b"x" * max(0, pad) + BODY_END


def body_complete(body: bytes) -> bool:
    return len(body) == BODY_SIZE and body.startswith(BODY_BEGIN) and body.endswith(BODY_END)


def _dechunk(data: bytes) -> bytes | None:
    out = bytearray()
    pos = 0
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            return None
        size_text = data[pos:eol].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            return None
        pos = eol + 2
        if size == 0:
            return bytes(out)
        if len(data) < pos + size + 2:
            return None
        out += data[pos : pos + size]
        pos += size + 2


@dataclass(frozen=True)
class Parsed:
    status: int | None
    headers: Mapping[str, str]
    body: bytes | None  # None: framing incomplete


def parse_response(raw: bytes) -> Parsed:
    head_end = raw.find(b"\r\n\r\n")
    if head_end < 0:
        return Parsed(None, {}, None)
    lines = raw[:head_end].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    try:
        status = int(parts[1])
    except (IndexError, ValueError):
        return Parsed(None, {}, None)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    rest = raw[head_end + 4 :]
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = _dechunk(rest)
    elif "content-length" in headers:
        try:
            length = int(headers["content-length"])
        except ValueError:
            return Parsed(status, headers, None)
        body = rest[:length] if len(rest) >= length else None
    else:
        body = rest  # delimited by close
    return Parsed(status, headers, body)


def classify(raw: bytes, error: str | None = None) -> str:
    """One request's outcome from the bytes received and the error that ended the exchange, if any.

    error: None (EOF after a full exchange), "refused", "reset", "timeout", or another short text.
    Outcomes: ok | 5xx:<code> | reset | refused | timeout | incomplete | other:<what>
    """
    if error == "refused":
        return "refused"
    parsed = parse_response(raw)
    if parsed.status is not None and parsed.status >= 500:
        return f"5xx:{parsed.status}"
    if error in ("reset", "timeout"):
        complete = parsed.body is not None and body_complete(parsed.body)
        if parsed.status is not None and 200 <= parsed.status < 300 and complete:
            return OK
        if error == "timeout":
            return "timeout"
        return "reset" if not raw else ("incomplete" if parsed.status is not None else "reset")
    if error is not None:
        return f"other:{error}"
    if parsed.status is None:
        return "reset" if not raw else "incomplete"
    if not 200 <= parsed.status < 300:
        return f"other:{parsed.status}"
    if parsed.body is None or not body_complete(parsed.body):
        return "incomplete"
    return OK


# What the servers write to their error logs (notice level) when a stop signal arrives: nginx "signal 3
# (SIGQUIT) received from 12, shutting down", php-fpm "NOTICE: Finishing ..." (QUIT) / "NOTICE: Terminating
# ..." (TERM), Apache "AH00492: caught SIGWINCH, shutting down gracefully".
STOP_SIGNALS = ("SIGQUIT", "SIGTERM", "SIGINT", "SIGWINCH")
_LOGGED_SIGNAL = re.compile(
    r"signal \d+ \((SIG[A-Z]+)\) received|caught (SIG[A-Z]+)|NOTICE: (Finishing|Terminating) \.\.\."
)
_PHP_FPM_STATES = {"Finishing": "SIGQUIT", "Terminating": "SIGTERM"}


def logged_stop_signals(log_text: str) -> list[str]:
    """The stop signals a server's log says it received, in order (which signal really reached it)."""
    out: list[str] = []
    for found in _LOGGED_SIGNAL.finditer(log_text):
        name = found[1] or found[2] or _PHP_FPM_STATES[found[3]]
        if name in STOP_SIGNALS:
            out.append(name)
    return out


def is_failure(outcome: str) -> bool:
    return outcome != OK


def outcome_kind(outcome: str) -> str:
    return outcome.split(":", 1)[0]


# ---------------------------------------------------------------------------------------------- assumptions


@dataclass(frozen=True)
class Assumptions:
    prestop_sleep: float | None
    drain: float | None
    broken: tuple[str, ...]

    @property
    def hold(self) -> bool:
        return not self.broken


def profile_timings(annotations: Mapping[str, str]) -> tuple[float | None, float | None]:
    def num(key: str) -> float | None:
        try:
            return float(annotations[key])
        except (KeyError, ValueError):
            return None

    return num(ANN_SLEEP), num(ANN_DRAIN)


def check_assumptions(annotations: Mapping[str, str], endpoint_delay: float, request_s: float) -> Assumptions:
    """podgrace's profile assumptions vs the scenario: endpoint delay < preStop sleep, request < drain."""
    sleep, drain = profile_timings(annotations)
    broken: list[str] = []
    if sleep is not None and endpoint_delay >= sleep:
        broken.append(f"endpoint delay {endpoint_delay:g}s >= preStop sleep {sleep:g}s")
    if drain is not None and request_s >= drain:
        broken.append(f"request duration {request_s:g}s >= drain {drain:g}s")
    return Assumptions(sleep, drain, tuple(broken))


def workers_needed(rate: float, request_s: float, replicas: int) -> int:
    """Server workers per pod so that the pod itself never queues at the scenario's load."""
    return max(4, math.ceil(rate * (request_s + 0.2) / max(1, replicas) * 1.5) + 4)
