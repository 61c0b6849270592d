"""The real-node lab's workloads: the emulated lab's manifests (bench/termination/manifests) made runnable
on the real node. Same Deployments, containers and podgrace annotations; only what a real pod needs is
added: the images from Debian packages (tests/cluster/images.py), the emulated lab's server configs
(bench/termination/servers.py, rendered for a pod) and PHP app in a ConfigMap, a readiness probe, a
Service and a PodDisruptionBudget (so that `kubectl drain` evicts one pod at a time, as production
drains do).

"original" is the manifest without any podgrace.dev/ annotation (podgrace leaves it alone); "podgrace" is
the manifest as is (opted in), which podgrace running in the cluster rewrites.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.termination import servers
from bench.termination.matrix import MANIFESTS
from bench.termination.plan import find_deployment, load_documents, runtime_for_image, workers_needed
from tests.cluster.images import ImageSpec, apache_image, nginx_image, php_fpm_image, python_image

APP_DIR = "/app"  # the ConfigMap with app.php and generic_server.py
GENERIC_PORT = 8080
FRONT_PORT = {"nginx": 80, "apache": 80, "generic": GENERIC_PORT}
CONFIG_PATHS = {  # runtime -> (ConfigMap key, path in the container)
    "nginx": ("nginx.conf", "/etc/nginx/nginx.conf"),
    "php-fpm": ("php-fpm.conf", "/etc/php/8.2/fpm/php-fpm.conf"),
    "apache": ("apache2.conf", "/etc/apache2/apache2.conf"),
}
IMAGES = {"nginx": nginx_image, "php-fpm": php_fpm_image, "apache": apache_image, "generic": python_image}
WORKLOADS = {  # name in the table -> manifest of the emulated lab
    "nginx-php-fpm": "nginx-php-fpm.yaml",
    "nginx": "nginx.yaml",
    "apache": "apache.yaml",
    "generic": "web.yaml",
}
MANIFEST_KINDS = ("original", "podgrace")
REPLICAS = 2


@dataclass(frozen=True)
class Workload:
    name: str
    deployment: dict[str, Any]  # as in the emulated lab's manifest
    runtimes: dict[str, str]  # container name -> runtime

    @property
    def front(self) -> str:
        return servers.front_runtime(list(self.runtimes.values()))

    @property
    def port(self) -> int:
        return FRONT_PORT[self.front]

    @property
    def app(self) -> str:
        return str(self.deployment["metadata"]["name"])

    def image_specs(self) -> list[ImageSpec]:
        return [IMAGES[r]() for r in dict.fromkeys(self.runtimes.values())]


def load_workload(name: str) -> Workload:
    dep = dict(find_deployment(load_documents((MANIFESTS / WORKLOADS[name]).read_text())))
    containers = dep["spec"]["template"]["spec"]["containers"]
    return Workload(name, dep, {c["name"]: runtime_for_image(c["image"]) for c in containers})


def site(upstream: str) -> servers.Site:
    return servers.Site(
        pod="realnode",
        listen="80",
        php_fpm="127.0.0.1:9000",
        upstream=upstream,
        app_dir=APP_DIR,
        log_dir=None,
    )


def config_data(w: Workload, upstream: str, workers: int) -> dict[str, str]:
    s = site(upstream)
    runtimes = set(w.runtimes.values())
    data = {
        "app.php": (servers.APP_DIR / "app.php").read_text(),
        "generic_server.py": (servers.APP_DIR / "generic_server.py").read_text(),
    }
    if "nginx" in runtimes:
        data["nginx.conf"] = servers.nginx_conf(s, "fastcgi" if "php-fpm" in runtimes else "proxy")
    if "php-fpm" in runtimes:
        data["php-fpm.conf"] = servers.php_fpm_conf(s, workers, process_control_timeout=0)
    if "apache" in runtimes:
        data["apache2.conf"] = servers.apache_conf(s, workers)
    return data


def _container(c: dict[str, Any], runtime: str, image: str, front: bool) -> dict[str, Any]:
    out = {**c, "image": image, "imagePullPolicy": "Never"}
    mounts = [{"name": "lab", "mountPath": APP_DIR, "readOnly": True}]
    if runtime in CONFIG_PATHS:
        key, path = CONFIG_PATHS[runtime]
        mounts.append({"name": "lab", "mountPath": path, "subPath": key, "readOnly": True})
    out["volumeMounts"] = mounts
    env = [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]
    if runtime == "apache":
        env += [{"name": k, "value": v} for k, v in {**servers.APACHE_ENV, "APACHE_LOG_DIR": "/tmp"}.items()]
        # Apache's DefaultRuntimeDir and lock dir; /run of the image comes empty
        mounts += [
            {"name": "apache-run", "mountPath": "/run/apache2"},
            {"name": "apache-run", "mountPath": "/run/lock"},
        ]
    if runtime == "generic":
        out["command"] = ["python3", "-u", f"{APP_DIR}/generic_server.py", "--host", "0.0.0.0"]
        out["args"] = ["--port", str(GENERIC_PORT)]
    out["env"] = env
    if front:  # the kubelet's probe decides readiness, so the EndpointSlice follows the real pod
        port = FRONT_PORT[runtime]
        out["readinessProbe"] = {"tcpSocket": {"port": port}, "periodSeconds": 1, "failureThreshold": 1}
    return out


def manifests(
    w: Workload,
    kind: str,
    ns: str,
    images: dict[str, str],
    upstream: str,
    rate: float,
    request_ms: int,
) -> list[dict[str, Any]]:
    """Namespace, ConfigMap, Deployment (0 replicas: scaled up once podgrace has written it), Service, PDB."""
    if kind not in MANIFEST_KINDS:
        raise ValueError(f"manifest kind {kind!r} not in {MANIFEST_KINDS}")
    dep = copy.deepcopy(w.deployment)
    meta = dep["metadata"]
    meta["namespace"] = ns
    if kind == "original":
        meta["annotations"] = {
            k: v for k, v in (meta.get("annotations") or {}).items() if not k.startswith("podgrace.dev/")
        }
    dep["spec"]["replicas"] = 0
    pod = dep["spec"]["template"]["spec"]
    pod["containers"] = [
        _container(c, w.runtimes[c["name"]], images[w.runtimes[c["name"]]], w.runtimes[c["name"]] == w.front)
        for c in pod["containers"]
    ]
    pod["volumes"] = [{"name": "lab", "configMap": {"name": "lab"}}]
    if "apache" in w.runtimes.values():
        pod["volumes"].append({"name": "apache-run", "emptyDir": {}})
    workers = workers_needed(rate, request_ms / 1000.0, REPLICAS)
    labels = dep["spec"]["selector"]["matchLabels"]
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "lab", "namespace": ns},
            "data": config_data(w, upstream, workers),
        },
        dep,
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": w.app, "namespace": ns},
            "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": w.port}]},
        },
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": {"name": w.app, "namespace": ns},
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": labels}},
        },
    ]


def manifest_path(name: str) -> Path:
    return MANIFESTS / WORKLOADS[name]
