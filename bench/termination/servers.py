"""Configs and container commands for the real servers, and HAProxy in front of the pods.

Ports (all on 127.0.0.1): a block each run claims (ports.py): the load balancer, the shared upstream of
nginx-only pods (the "slow backend" outside the pod, as in the article) and each pod's servers.

Every container runs as PID 1 of its own PID + mount namespace:
    unshare --pid --fork --mount-proc --kill-child -- /bin/sh -c '<mount tmpfs /run, bind configs>; exec "$@"'
except in a pod with shareProcessNamespace: true, whose containers join the PID namespace of the pod's pause
process (sandbox_argv, join_argv) with a mount namespace (and /proc) of their own.
The config is bind-mounted over the server's standard path (/etc/nginx/nginx.conf, ...), /run is a private
tmpfs, so hooks such as `nginx -s quit` find the config and pid file exactly as in a container image.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bench.termination.ports import Ports

# which container of a pod the load balancer sends HTTP to (first present wins); a php-fpm-only pod is
# reached over FastCGI (HAProxy fcgi-app), like an ingress with backend-protocol FCGI.
FRONT_ORDER = ("nginx", "apache", "generic", "php-fpm")

LAB_DIR = Path(__file__).resolve().parent
APP_DIR = LAB_DIR / "app"

NGINX_BIN = "/usr/sbin/nginx"
PHP_FPM_BIN = "/usr/sbin/php-fpm8.2"
APACHE_BIN = "/usr/sbin/apache2"
HAPROXY_BIN = "/usr/sbin/haproxy"
APACHE_MODULES = "/usr/lib/apache2/modules"


@dataclass(frozen=True)
class Site:
    """Where a server's config points. The emulated lab: loopback ports of pod ``index`` and host paths
    (``lab_site``); the real-node lab: a pod's ports, the ConfigMap-mounted app, logs to stderr."""

    pod: str
    listen: str  # nginx `listen`, Apache `Listen`: "127.0.0.1:18000" or "80"
    php_fpm: str  # php-fpm's listen address, nginx's fastcgi_pass
    upstream: str  # nginx's proxy_pass target when there is no php-fpm in the pod
    app_dir: str
    log_dir: str | None  # None: the container's stderr

    def log(self, name: str) -> str:
        return f"{self.log_dir}/{self.pod}-{name}.log" if self.log_dir else "/proc/self/fd/2"


def lab_site(pod: str, index: int, workdir: Path, front: str, ports: Ports) -> Site:
    return Site(
        pod=pod,
        listen=f"127.0.0.1:{ports.server(front, index)}",
        php_fpm=f"127.0.0.1:{ports.server('php-fpm', index)}",
        upstream=f"127.0.0.1:{ports.upstream}",
        app_dir=str(APP_DIR),
        log_dir=str(workdir),
    )


def front_runtime(runtimes: list[str]) -> str:
    for r in FRONT_ORDER:
        if r in runtimes:
            return r
    raise ValueError(f"no servable container among {runtimes}")


@dataclass
class ContainerSpec:
    pod: str
    name: str
    runtime: str
    port: int
    argv: list[str]  # the server command (PID 1 of the container)
    binds: list[tuple[str, str]] = field(default_factory=list)  # (host file, path inside the container)
    env: dict[str, str] = field(default_factory=dict)
    log: Path | None = None

    def _setup(self, mount_proc: bool) -> list[str]:
        """`sh -c` script and its arguments: the container's mounts, then exec of the server."""
        steps = ["set -e"]
        if mount_proc:  # a container of a shared PID namespace sees that namespace's processes
            steps.append("mount -t proc proc /proc")
        steps += ["mount -t tmpfs -o mode=0755 tmpfs /run", "mkdir -p /run/apache2 /run/lock"]
        steps += [f"mount --bind {shlex.quote(src)} {shlex.quote(dst)}" for src, dst in self.binds]
        steps.append('exec "$@"')
        return ["/bin/sh", "-c", "; ".join(steps), f"{self.pod}-{self.name}", *self.argv]

    def unshare_argv(self) -> list[str]:
        """The container in its own PID namespace: the server (or its init) is PID 1."""
        return ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", "--", *self._setup(False)]

    def join_argv(self, sandbox_pid: int) -> list[str]:
        """The container in the PID namespace of the pod's pause process (host PID `sandbox_pid`), with its
        own mount namespace, as a runtime starts it for shareProcessNamespace: true. nsenter forks the
        server into that namespace and waits for it, so the server's parent is outside the namespace
        (its PPID reads 0 there, as under runc) and the nsenter process lives exactly as long as it."""
        join = ["nsenter", "--target", str(sandbox_pid), "--pid", "--"]
        return [*join, "unshare", "--mount", "--", *self._setup(True)]


def sandbox_argv(pause_binary: Path) -> list[str]:
    """The pod's sandbox for shareProcessNamespace: true: pause as PID 1 of a new PID namespace. When it
    exits, the kernel kills every process of that namespace, every container of the pod."""
    return ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", "--", str(pause_binary)]


def build_pause(workdir: Path) -> Path:
    """Compile the lab's pause stand-in (app/pause.c) into the scenario's directory."""
    out = workdir / "pause"
    subprocess.run(
        ["gcc", "-O2", "-Wall", "-Werror", "-o", str(out), str(APP_DIR / "pause.c")],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return out


# ------------------------------------------------------------------------------------------------ nginx


def nginx_conf(site: Site, upstream: str) -> str:
    """upstream: 'fastcgi' (php-fpm in the same pod) or 'proxy' (the shared slow backend)."""
    pod = site.pod
    if upstream == "fastcgi":
        location = f"""
        location ~ \\.php$ {{
            include /etc/nginx/fastcgi_params;
            fastcgi_param SCRIPT_FILENAME {site.app_dir}/app.php;
            fastcgi_param POD_NAME {pod};
            fastcgi_pass {site.php_fpm};
            fastcgi_read_timeout 120s;
        }}"""
    else:
        location = f"""
        location / {{
            proxy_pass http://{site.upstream};
            proxy_read_timeout 120s;
            proxy_set_header X-Pod {pod};
        }}"""
    return f"""# podgrace lab: nginx of {pod}
user www-data;
worker_processes 2;
pid /run/nginx.pid;
error_log {site.log("nginx-error")} notice;
events {{ worker_connections 2048; }}
http {{
    access_log off;
    keepalive_timeout 5s;
    server {{
        listen {site.listen} backlog=511;
        server_name {pod};
        add_header X-Pod {pod} always;{location}
    }}
}}
"""


def nginx_container(
    pod: str, name: str, index: int, workdir: Path, upstream: str, ports: Ports
) -> ContainerSpec:
    conf = workdir / f"{pod}-{name}-nginx.conf"
    conf.write_text(nginx_conf(lab_site(pod, index, workdir, "nginx", ports), upstream))
    return ContainerSpec(
        pod,
        name,
        "nginx",
        ports.server("nginx", index),
        [NGINX_BIN, "-g", "daemon off;"],
        binds=[(str(conf), "/etc/nginx/nginx.conf")],
        log=workdir / f"{pod}-nginx-error.log",
    )


# ------------------------------------------------------------------------------------------------ php-fpm


def php_fpm_conf(site: Site, workers: int, process_control_timeout: int) -> str:
    pod = site.pod
    pct = (
        f"process_control_timeout = {process_control_timeout}\n"
        if process_control_timeout > 0
        else "; process_control_timeout unset (0): QUIT is followed at once by TERM of busy workers\n"
    )
    return f"""; podgrace lab: php-fpm of {pod}
[global]
pid = /run/php-fpm.pid
error_log = {site.log("php-fpm")}
log_level = notice
daemonize = no
{pct}
[www]
user = www-data
group = www-data
listen = {site.php_fpm}
listen.backlog = 511
pm = static
pm.max_children = {workers}
request_terminate_timeout = 0
catch_workers_output = yes
clear_env = yes
env[POD_NAME] = {pod}
php_admin_value[max_execution_time] = 0
"""


def php_fpm_container(
    pod: str,
    name: str,
    index: int,
    workdir: Path,
    workers: int,
    process_control_timeout: int,
    ports: Ports,
) -> ContainerSpec:
    conf = workdir / f"{pod}-{name}-php-fpm.conf"
    site = lab_site(pod, index, workdir, "php-fpm", ports)
    conf.write_text(php_fpm_conf(site, workers, process_control_timeout))
    return ContainerSpec(
        pod,
        name,
        "php-fpm",
        ports.server("php-fpm", index),
        [PHP_FPM_BIN, "-F"],
        binds=[(str(conf), "/etc/php/8.2/fpm/php-fpm.conf")],
        log=workdir / f"{pod}-php-fpm.log",
    )


# ------------------------------------------------------------------------------------------------ apache

# what Debian's apache2ctl exports from /etc/apache2/envvars (APACHE_LOG_DIR is set per use)
APACHE_ENV = {
    "APACHE_RUN_USER": "www-data",
    "APACHE_RUN_GROUP": "www-data",
    "APACHE_RUN_DIR": "/run/apache2",
    "APACHE_PID_FILE": "/run/apache2/apache2.pid",
    "APACHE_LOCK_DIR": "/run/lock",
    "APACHE_CONFDIR": "/etc/apache2",
    "LANG": "C",
}


def apache_conf(site: Site, workers: int) -> str:
    pod = site.pod
    mods = ["mpm_prefork", "authz_core", "mime", "dir", "env", "headers"]
    loads = "\n".join(f"LoadModule {m}_module {APACHE_MODULES}/mod_{m}.so" for m in mods)
    return f"""# podgrace lab: Apache (prefork + mod_php) of {pod}
ServerRoot /etc/apache2
ServerName {pod}.lab
DefaultRuntimeDir /run/apache2
PidFile /run/apache2/apache2.pid
Mutex file:/run/apache2 default
{loads}
LoadModule php_module {APACHE_MODULES}/libphp8.2.so
User www-data
Group www-data
Listen {site.listen}
ListenBacklog 511
ErrorLog {site.log("apache-error")}
LogLevel notice
KeepAlive Off
Timeout 120
StartServers {workers}
MinSpareServers 1
MaxSpareServers {workers}
ServerLimit {workers}
MaxRequestWorkers {workers}
MaxConnectionsPerChild 0
TypesConfig /etc/mime.types
DocumentRoot {site.app_dir}
SetEnv POD_NAME {pod}
Header always set X-Pod {pod}
<Directory />
    Require all denied
</Directory>
<Directory {site.app_dir}>
    Require all granted
</Directory>
<FilesMatch "\\.php$">
    SetHandler application/x-httpd-php
</FilesMatch>
"""


def apache_container(
    pod: str, name: str, index: int, workdir: Path, workers: int, ports: Ports
) -> ContainerSpec:
    conf = workdir / f"{pod}-{name}-apache2.conf"
    conf.write_text(apache_conf(lab_site(pod, index, workdir, "apache", ports), workers))
    env = {**APACHE_ENV, "APACHE_LOG_DIR": str(workdir)}
    return ContainerSpec(
        pod,
        name,
        "apache",
        ports.server("apache", index),
        [APACHE_BIN, "-DFOREGROUND"],
        binds=[(str(conf), "/etc/apache2/apache2.conf")],
        env=env,
        log=workdir / f"{pod}-apache-error.log",
    )


# ------------------------------------------------------------------------------------------------ generic


def generic_container(pod: str, name: str, index: int, workdir: Path, ports: Ports) -> ContainerSpec:
    port = ports.server("generic", index)
    return ContainerSpec(
        pod,
        name,
        "generic",
        port,
        [sys.executable, "-u", str(APP_DIR / "generic_server.py"), "--port", str(port), "--pod", pod],
        log=workdir / f"{pod}-{name}-generic.log",
    )


def upstream_argv(port: int) -> list[str]:
    return [
        sys.executable,
        "-u",
        str(APP_DIR / "generic_server.py"),
        "--port",
        str(port),
        "--pod",
        "upstream",
    ]


# ------------------------------------------------------------------------------------------------ haproxy


def haproxy_conf(workdir: Path, servers: list[tuple[str, int]], fastcgi: bool, lb_port: int) -> str:
    """No retries, no redispatch, no health checks: every failure reaches the client."""
    lines = [
        "global",
        "    maxconn 8192",
        f"    stats socket {workdir}/haproxy.sock mode 600 level admin",
        "    log stdout format raw local0",
        "",
        "defaults",
        "    mode http",
        "    log global",
        "    retries 0",
        "    option http-server-close",
        "    http-reuse never",
        "    timeout connect 3s",
        "    timeout client 120s",
        "    timeout server 120s",
        "    timeout queue 5s",
        "",
    ]
    if fastcgi:
        lines += [
            "fcgi-app php",
            f"    docroot {APP_DIR}",
            "    index app.php",
            "",
        ]
    lines += [
        "frontend fe",
        f"    bind 127.0.0.1:{lb_port}",
        "    capture request header X-Req len 24",
        '    log-format "REQ %[capture.req.hdr(0)] %s %ST %tsc %Tc %Tr %Ta"',
        "    default_backend pods",
        "",
        "backend pods",
        "    balance roundrobin",
    ]
    if fastcgi:
        lines.append("    use-fcgi-app php")
    for name, port in servers:
        proto = " proto fcgi" if fastcgi else ""
        lines.append(f"    server {name} 127.0.0.1:{port}{proto}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class LbRecord:
    req: str
    server: str
    status: int
    term: str  # HAProxy termination state, e.g. "----", "SC--", "SH--"


def parse_haproxy_log(text: str) -> dict[str, LbRecord]:
    out: dict[str, LbRecord] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 5 or parts[0] != "REQ":
            continue
        req = parts[1].strip("{}")
        try:
            status = int(parts[3])
        except ValueError:
            status = -1
        out[req] = LbRecord(req, parts[2], status, parts[4])
    return out
