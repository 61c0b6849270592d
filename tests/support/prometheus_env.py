"""A real Prometheus (Debian's `prometheus` package) for the observability test, and the chart's monitoring
objects turned into what that Prometheus needs: a scrape config equivalent to the ServiceMonitor, the
PrometheusRule's groups as a rule file, and the dashboard's queries with Grafana's variables filled in.

Only the standard library and PyYAML.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.cluster.localcluster import die_with_parent
from tests.support.podgrace_env import free_port, wait_until


def find_prometheus() -> tuple[str, str] | None:
    """(prometheus, promtool) from PATH or /usr/bin (Debian installs both there)."""
    found = []
    for name in ("prometheus", "promtool"):
        path = shutil.which(name) or (f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK) else None)
        if path is None:
            return None
        found.append(path)
    return found[0], found[1]


# --- the chart's monitoring objects --------------------------------------------------------------------


def scrape_config(
    service_monitor: Mapping[str, Any], release_namespace: str, target: str, *, interval: str = "1s"
) -> dict[str, Any]:
    """A static scrape config giving the series the labels the ServiceMonitor gives them in a cluster.

    prometheus-operator sets `namespace`, `service`, `pod`, `container` and `endpoint` from the discovered
    endpoint and then applies the endpoint's relabelings; the chart's relabeling replaces `job`.
    """
    endpoint = service_monitor["spec"]["endpoints"][0]
    labels = {
        "namespace": release_namespace,
        "service": service_monitor["metadata"]["name"],
        "endpoint": endpoint["port"],
        "pod": f"{service_monitor['metadata']['name']}-local",
        "container": "podgrace",
        "job": service_monitor["metadata"]["name"],
    }
    for relabel in endpoint.get("relabelings") or []:
        if relabel.get("action", "replace") != "replace" or relabel.get("sourceLabels"):
            raise AssertionError(f"relabeling not supported by this test: {relabel}")
        labels[relabel["targetLabel"]] = relabel["replacement"]
    job = labels.pop("job")
    return {
        "job_name": job,
        "scrape_interval": interval,
        "scrape_timeout": interval,
        "metrics_path": endpoint.get("path", "/metrics"),
        "scheme": endpoint.get("scheme", "http"),
        "honor_labels": bool(endpoint.get("honorLabels", False)),
        "static_configs": [{"targets": [target], "labels": labels}],
    }


@dataclass(frozen=True)
class PanelQuery:
    panel: str
    ref: str
    expr: str
    instant: bool

    @property
    def name(self) -> str:
        return f"{self.panel} [{self.ref}]"


def dashboard_queries(dashboard: Mapping[str, Any]) -> list[PanelQuery]:
    """Every target of every panel (rows' nested panels included), in dashboard order."""

    def walk(panels: list[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
        for panel in panels:
            yield panel
            yield from walk(panel.get("panels") or [])

    return [
        PanelQuery(str(p.get("title")), str(t.get("refId")), str(t["expr"]), bool(t.get("instant")))
        for p in walk(dashboard.get("panels") or [])
        for t in p.get("targets") or []
        if t.get("expr")
    ]


_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


def substitute(expr: str, variables: Mapping[str, str]) -> str:
    """Grafana's variable syntaxes ($x, ${x}, ${x:fmt}, [[x]]); an unknown variable is an error."""

    def one(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g)
        if name not in variables:
            raise AssertionError(f"{expr!r}: no value for the Grafana variable ${name}")
        return variables[name]

    return _VARIABLE.sub(one, expr)


def grafana_duration(value: str) -> str:
    """The `from` of a dashboard time range (`now-6h`) as a Prometheus duration (`6h`)."""
    match = re.fullmatch(r"now-(\d+[smhdwy])", value)
    if not match:
        raise AssertionError(f"unsupported dashboard time range {value!r}")
    return match.group(1)


# --- the Prometheus process ----------------------------------------------------------------------------


class PrometheusError(AssertionError):
    pass


class Prometheus:
    """`prometheus` on 127.0.0.1:<free port> with temporary storage; stopped by its PID."""

    def __init__(self, binary: str, scrape_configs: list[dict[str, Any]], rules: dict[str, Any]) -> None:
        self.binary = binary
        self.workdir = Path(tempfile.mkdtemp(prefix="podgrace-prometheus-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.rules_path = self.workdir / "rules.yaml"
        self.rules_path.write_text(yaml.safe_dump(rules, sort_keys=False))
        self.config_path = self.workdir / "prometheus.yml"
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(self.rules_path)],
            "scrape_configs": scrape_configs,
        }
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.log_path = self.workdir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0

    def start(self) -> Prometheus:
        argv = [
            self.binary,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--storage.tsdb.retention.time=1h",
            "--log.level=warn",
        ]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )
        self.started = time.time()
        wait_until("Prometheus ready", self._ready, timeout=30)
        return self

    def _ready(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise PrometheusError(
                f"prometheus exited {self.proc and self.proc.returncode}:\n{self.log_tail()}"
            )
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # --- HTTP API

    def api(self, path: str, **params: Any) -> Any:
        """GET /api/v1/<path>; returns `data`. A failing query raises PrometheusError with its error."""
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None}, doseq=True)
        url = f"{self.url}/api/v1/{path}" + (f"?{query}" if query else "")
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as err:
            body = json.loads(err.read() or b"{}")
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        if body.get("warnings"):
            raise PrometheusError(f"{path} {params}: warnings {body['warnings']}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query: the result vector (a scalar becomes a one-element vector without labels)."""
        data = self.api("query", query=expr, time=at)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        if data["resultType"] != "vector":
            raise PrometheusError(f"{expr}: expected a vector, got {data['resultType']}")
        result: list[dict[str, Any]] = data["result"]
        return result

    def value(self, expr: str) -> float | None:
        """The value of a query that returns at most one series (None: no series)."""
        result = self.query(expr)
        if len(result) > 1:
            raise PrometheusError(f"{expr}: {len(result)} series, expected at most one")
        return float(result[0]["value"][1]) if result else None

    def label_values(self, label: str, match: str) -> list[str]:
        values: list[str] = self.api(f"label/{label}/values", **{"match[]": match})
        return values

    def rules(self) -> list[dict[str, Any]]:
        rules: list[dict[str, Any]] = [r for g in self.api("rules")["groups"] for r in g["rules"]]
        return rules

    def samples_of(self, selector: str) -> int:
        """How many samples of `selector` Prometheus holds since it started (scrapes that reached it)."""
        window = max(1, int(time.time() - self.started) + 1)
        result = self.query(f"count_over_time({selector}[{window}s])")
        return int(max((float(r["value"][1]) for r in result), default=0))
