"""podgrace's fallback hook on a real kubelet (issue 14): no FailedPreStopHook, no dropped request.

Without ContainerStopSignals podgrace delivers the graceful signal from an exec preStop hook. The kubelet
posts a Warning FailedPreStopHook when that hook is still running as the container's PID 1 exits (the
kernel kills it: exit 137). Here nginx, nginx + php-fpm and Apache (Debian's packages,
tests/cluster/images.py web_servers_image) run as pods whose spec `podgrace render` wrote, and are
deleted under open-loop load (bench/termination/load.py) aimed at the pod IP; the load stops 3 s after
the deletion, as if the load balancer had dropped the endpoint then (inside the 5 s preStop wait). Every
request is 4 s long, so requests are in flight when the hook signals the server.

- podgrace's pod: every request answered in full, no FailedPreStopHook Event and no "PreStop hook failed"
  in the kubelet's log, and some requests completed after the hook's graceful signal (the drain was used).
- the original pod (no hook, SIGTERM at once): requests fail, so the test can tell the difference.

A generic server with a graceful signal other than SIGTERM is the documented exception: its hook signals
PID 1 and is ended with it (FailedPreStopHook, the drain complete), which podgrace announces beforehand
(test_generic_signal_hook_drains_and_posts_the_announced_warning).
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from bench.termination.load import LoadGenerator, Result
from bench.termination.plan import OK, make_body
from tests.cluster.images import Image, build_image, web_servers_image
from tests.support.podgrace_env import generic_profile, wait_until
from tests.support.realnode_env import NodeCluster

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "bench" / "termination" / "app" / "app.php"
NS = "default"
RATE = 5.0  # requests per second
REQUEST_MS = 4000  # each request's length (nginx alone: its rate limit makes the static body last as long)
WARMUP = 3.0  # seconds of load before the deletion
LB_DELAY = 3.0  # the load stops this long after the deletion (< the profiles' 5 s preStop wait)


def nginx_conf(location: str) -> str:
    return f"""user www-data;
worker_processes 2;
pid /run/nginx.pid;
error_log stderr notice;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    keepalive_timeout 5s;
    server {{
        listen 80;
        {location}
    }}
}}
"""


# a 2048-byte body at 512 bytes/s: each request lasts ~4 s
NGINX_STATIC = nginx_conf(
    "location / { root /lab; sendfile off; limit_rate 512; default_type text/plain; try_files /body =404; }"
)
NGINX_FASTCGI = nginx_conf(
    "location ~ \\.php$ { include /etc/nginx/fastcgi_params; fastcgi_param SCRIPT_FILENAME /lab/app.php; "
    "fastcgi_pass 127.0.0.1:9000; fastcgi_read_timeout 120s; }"
)
PHP_FPM = """[global]
pid = /run/php-fpm.pid
error_log = /proc/self/fd/2
log_level = notice
daemonize = no
[www]
user = www-data
group = www-data
listen = 127.0.0.1:9000
listen.backlog = 511
pm = static
pm.max_children = 32
request_terminate_timeout = 0
catch_workers_output = yes
php_admin_value[max_execution_time] = 0
"""
APACHE = """ServerRoot /etc/apache2
ServerName fallback.test
DefaultRuntimeDir /tmp
PidFile /tmp/apache2.pid
Mutex file:/tmp default
LoadModule mpm_prefork_module /usr/lib/apache2/modules/mod_mpm_prefork.so
LoadModule authz_core_module /usr/lib/apache2/modules/mod_authz_core.so
LoadModule mime_module /usr/lib/apache2/modules/mod_mime.so
LoadModule php_module /usr/lib/apache2/modules/libphp8.2.so
User www-data
Group www-data
Listen 80
ListenBacklog 511
ErrorLog /proc/self/fd/2
LogLevel notice
KeepAlive Off
Timeout 120
StartServers 32
MinSpareServers 1
MaxSpareServers 32
ServerLimit 32
MaxRequestWorkers 32
TypesConfig /etc/mime.types
DocumentRoot /lab
<Directory />
    Require all granted
</Directory>
<FilesMatch "\\.php$">
    SetHandler application/x-httpd-php
</FilesMatch>
"""


@dataclass(frozen=True)
class Case:
    name: str
    profile: str
    containers: tuple[tuple[str, tuple[str, ...]], ...]  # (container name = the profile's, command)


CASES = [
    Case("nginx", "nginx", (("nginx", ("nginx", "-c", "/lab/nginx-static.conf", "-g", "daemon off;")),)),
    Case(
        "nginx-php-fpm",
        "nginx-php-fpm",
        (
            ("nginx", ("nginx", "-c", "/lab/nginx-fastcgi.conf", "-g", "daemon off;")),
            ("php-fpm", ("php-fpm8.2", "-F", "-y", "/lab/php-fpm.conf")),
        ),
    ),
    Case("apache", "apache", (("apache", ("apache2", "-f", "/lab/apache2.conf", "-DFOREGROUND")),)),
]


class PodLoad(LoadGenerator):
    """The lab's load generator aimed at a pod IP on this test's own node bridge (the lab's own use is
    loopback only)."""

    def __init__(self, subnet: ipaddress.IPv4Network, ip: str, **kw: Any) -> None:
        if ipaddress.ip_address(ip) not in subnet:
            raise ValueError(f"{ip} is not on the test node's bridge {subnet}")
        super().__init__("127.0.0.1", 80, **kw)
        self.host = ip


@pytest.fixture(scope="module")
def servers(node_cluster: NodeCluster) -> Image:
    image = build_image(web_servers_image())
    node_cluster.node.import_image(image)
    config = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "fallback-lab", "namespace": NS},
        "data": {
            "nginx-static.conf": NGINX_STATIC,
            "nginx-fastcgi.conf": NGINX_FASTCGI,
            "php-fpm.conf": PHP_FPM,
            "apache2.conf": APACHE,
            "app.php": APP.read_text(),
            "body": make_body("static", REQUEST_MS).decode(),
        },
    }
    node_cluster.cluster.kubectl("apply", "-f", "-", input=json.dumps(config))
    return image


def deployment(case: Case, image: str) -> dict[str, Any]:
    containers = [
        {
            "name": name,
            "image": image,
            "imagePullPolicy": "Never",
            "command": list(command),
            "volumeMounts": [{"name": "lab", "mountPath": "/lab"}],
        }
        for name, command in case.containers
    ]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": case.name,
            "namespace": NS,
            "annotations": {"podgrace.dev/profile": case.profile},
        },
        "spec": {
            "selector": {"matchLabels": {"app": case.name}},
            "template": {
                "metadata": {"labels": {"app": case.name}},
                "spec": {
                    "containers": containers,
                    "volumes": [{"name": "lab", "configMap": {"name": "fallback-lab"}}],
                },
            },
        },
    }


def rendered(obj: dict[str, Any], *args: str) -> tuple[dict[str, Any], str]:
    """`podgrace render` (the default target: Kubernetes 1.34 without ContainerStopSignals: the fallback):
    the object it writes, and what it says on stderr (its notes and warnings)."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump(obj, f)
        f.flush()
        out = subprocess.run(
            [sys.executable, "-c", "import sys; from podgrace.cli.main import main; sys.exit(main())",
             "render", "-f", f.name, *args],
            capture_output=True, text=True, check=True, cwd=REPO,
        )  # fmt: skip
    result: dict[str, Any] = yaml.safe_load(out.stdout)
    return result, out.stderr


def pod_of(obj: dict[str, Any], name: str) -> dict[str, Any]:
    template = obj["spec"]["template"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": template["metadata"]["labels"]},
        "spec": template["spec"],
    }


def serving(ip: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{ip}/app.php?ms=1", timeout=10) as r:
            return int(r.status) == 200
    except OSError:
        return False


@dataclass
class Run:
    results: list[Result]
    deleted_at: float  # monotonic
    events: list[dict[str, Any]]
    hook_failures: list[str]  # the kubelet's log lines about this pod's failed hooks

    @property
    def failed(self) -> Counter[str]:
        return Counter(r.outcome for r in self.results if r.outcome != OK)


def run(node_cluster: NodeCluster, pod: dict[str, Any]) -> Run:
    """Start the pod, load it, delete it 3 s into the load, stop the load 3 s later; wait until it is gone."""
    cluster, node = node_cluster.cluster, node_cluster.node
    name = pod["metadata"]["name"]
    cluster.kubectl("apply", "-f", "-", input=json.dumps(pod))
    ip = wait_until(
        f"pod {name}'s IP",
        lambda: cluster.kubectl_json("get", "pod", name, "-n", NS).get("status", {}).get("podIP"),
        timeout=90,
    )
    wait_until(f"{name} serving", lambda: serving(ip), timeout=90, interval=0.5)
    assert node.subnet is not None
    load = PodLoad(node.subnet, ip, rate=RATE, request_ms=REQUEST_MS, timeout_s=60.0)
    start = time.monotonic() + 0.2
    load.start(start, start + WARMUP + LB_DELAY)
    time.sleep(max(0.0, start + WARMUP - time.monotonic()))
    deleted_at = time.monotonic()
    cluster.kubectl("delete", "pod", name, "-n", NS, "--wait=false")
    grace = int(pod["spec"].get("terminationGracePeriodSeconds", 30))
    gone = f"--timeout={grace + 60}s"
    cluster.kubectl("wait", "--for=delete", f"pod/{name}", "-n", NS, gone, timeout=grace + 90)
    load.join(120)
    time.sleep(3)  # the kubelet posts its Events asynchronously
    about = f"involvedObject.name={name}"
    events = cluster.kubectl_json("get", "events", "-n", NS, "--field-selector", about)
    return Run(load.results, deleted_at, events["items"], failed_hooks(node.logs()["kubelet"], name))


def failed_hooks(kubelet_log: Path, pod: str) -> list[str]:
    """The kubelet's "PreStop hook failed" entries for `pod`: the entry spans lines (the hook's script), its
    last one (" > pod=...") names the pod; the first line says how the hook ended ("exited with 137")."""
    lines = kubelet_log.read_text(errors="replace").splitlines()
    found = []
    for i, line in enumerate(lines):
        if "PreStop hook failed" not in line:
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith(" > ")), i)
        if f'pod="{NS}/{pod}"' in lines[end]:
            found.append(next((ln for ln in lines[i:end] if "exited with" in ln), line).strip())
    return found


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fallback_hook_drains_without_failed_prestop_hook(
    node_cluster: NodeCluster, servers: Image, case: Case
) -> None:
    original = deployment(case, servers.ref)
    podgrace, _ = rendered(original)
    spec = podgrace["spec"]["template"]["spec"]
    hooks = [c["lifecycle"]["preStop"]["exec"]["command"][2] for c in spec["containers"]]
    assert all("podgrace graceful stop" in h and "kill -" in h for h in hooks), hooks  # the fallback form
    assert not any("stopSignal" in c["lifecycle"] for c in spec["containers"])
    first_signal = min(int(h.split("\nsleep ", 1)[1].split("\n", 1)[0]) for h in hooks)

    before = run(node_cluster, pod_of(original, f"{case.name}-original"))
    # SIGTERM right away: nginx's, php-fpm's and Apache's fast stop cut what is in flight.
    assert before.failed, f"the original pod dropped nothing: the test would prove nothing ({case.name})"

    after = run(node_cluster, pod_of(podgrace, f"{case.name}-podgrace"))
    warnings = [(e["reason"], e["message"]) for e in after.events if e["type"] == "Warning"]
    print(
        f"\n[fallback-hook] {case.name}: original {dict(before.failed)} of {len(before.results)} failed; "
        f"podgrace {sum(after.failed.values())} of {len(after.results)} failed, Warnings {warnings}, "
        f"failed hooks in the kubelet's log {after.hook_failures}"
    )
    assert after.results and not after.failed, (after.failed, len(after.results))
    # the drain was used: requests were answered after the hook had signalled the server
    signalled = after.deleted_at + first_signal
    assert any(r.t_send < signalled < r.t_end for r in after.results), "nothing was in flight at the signal"
    assert not [w for w in warnings if w[0] == "FailedPreStopHook"], (warnings, after.hook_failures)
    assert after.hook_failures == []


# A generic rule with a graceful signal other than SIGTERM (nginx stands in for any server that drains on
# SIGQUIT): podgrace's hook has no process name to watch, so it signals PID 1 and waits for it to exit.
GENERIC_QUIT = Case(
    "generic-quit", "generic-quit", (("app", ("nginx", "-c", "/lab/nginx-static.conf", "-g", "daemon off;")),)
)
GENERIC_QUIT_PROFILE = generic_profile("generic-quit", "SIGQUIT", {"containerNames": ["app"]})


@pytest.mark.slow
def test_generic_signal_hook_drains_and_posts_the_announced_warning(
    node_cluster: NodeCluster, servers: Image, tmp_path: Path
) -> None:
    """The documented limit (README, the fallback hooks): the drain completes, the kernel ends the hook with
    PID 1, the kubelet posts FailedPreStopHook, and podgrace announced it (FallbackHookEndsWithServer)."""
    profile = tmp_path / "generic-quit.yaml"
    profile.write_text(yaml.safe_dump(GENERIC_QUIT_PROFILE))
    podgrace, said = rendered(deployment(GENERIC_QUIT, servers.ref), "--profiles", str(profile))
    hook = podgrace["spec"]["template"]["spec"]["containers"][0]["lifecycle"]["preStop"]["exec"]["command"][2]
    assert "\nkill -QUIT 1\n" in hook and "while kill -0 1 " in hook, hook
    assert "note:" in said and "FailedPreStopHook" in said and "PID 1" in said, said

    after = run(node_cluster, pod_of(podgrace, "generic-quit-podgrace"))
    warnings = [(e["reason"], e["message"]) for e in after.events if e["type"] == "Warning"]
    print(
        f"\n[fallback-hook] generic-quit: podgrace {sum(after.failed.values())} of {len(after.results)} "
        f"failed, Warnings {warnings}, failed hooks in the kubelet's log {after.hook_failures}"
    )
    assert after.results and not after.failed, (after.failed, len(after.results))
    signalled = after.deleted_at + 5
    assert any(r.t_send < signalled < r.t_end for r in after.results), "nothing was in flight at the signal"
    assert [w for w in warnings if w[0] == "FailedPreStopHook"], (warnings, after.hook_failures)
    assert after.hook_failures and all("137" in f for f in after.hook_failures), after.hook_failures
