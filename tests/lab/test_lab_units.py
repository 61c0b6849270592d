"""Fast unit tests of the termination lab's pure parts (bench/termination/plan.py and friends): no servers."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench.termination import plan as P
from bench.termination import ports as ports_mod
from bench.termination.matrix import CELLS, Row, full_rows, markdown, short_rows, verdict
from bench.termination.ports import BLOCK, MAX_PODS, ROLE_OFFSET, Ports
from bench.termination.servers import ContainerSpec, haproxy_conf, parse_haproxy_log, sandbox_argv

ROOT = Path(__file__).resolve().parents[2]

MANIFESTS = ROOT / "bench" / "termination" / "manifests"

# The shapes `podgrace render` produces (native stop signal / fallback hook), as documented for the lab.
NATIVE = """
apiVersion: apps/v1
kind: Deployment
metadata:
  name: shop
  annotations:
    podgrace.dev/profile: nginx-php-fpm
    podgrace.dev/prestop-sleep-seconds: '3'
    podgrace.dev/drain-seconds: '8'
spec:
  template:
    spec:
      os: {name: linux}
      terminationGracePeriodSeconds: 30
      containers:
      - name: nginx
        image: nginx:1.22
        lifecycle:
          preStop: {sleep: {seconds: 3}}
          stopSignal: SIGQUIT
      - name: php-fpm
        image: php:8.2-fpm
        lifecycle:
          preStop: {sleep: {seconds: 11}}
          stopSignal: SIGQUIT
"""

FALLBACK = """
---
apiVersion: v1
kind: Service
metadata: {name: shop}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: shop
spec:
  template:
    spec:
      terminationGracePeriodSeconds: 30
      containers:
      - name: nginx
        image: registry.example.com/shop/nginx-sigterm:1.22
        lifecycle:
          preStop:
            exec:
              command:
              - /bin/sh
              - -c
              - |-
                # podgrace graceful stop
                sleep 3
                kill -QUIT 1
                i=0
                while kill -0 1 2>/dev/null && [ "$i" -lt 8 ]; do sleep 1; i=$((i+1)); done
"""


# ------------------------------------------------------------------------------------------------ mapping


@pytest.mark.parametrize(
    ("image", "runtime"),
    [
        ("nginx:1.22", "nginx"),
        ("registry.example.com/shop/nginx-sigterm:1.22", "nginx"),
        ("php:8.2-fpm", "php-fpm"),
        ("acme/php-fpm:7", "php-fpm"),
        ("php:8.2-fpm-alpine", "php-fpm"),
        ("php:8.2-apache", "apache"),
        ("httpd:2.4", "apache"),
        ("registry.example.com/shop/web:2.3", "generic"),
        ("python:3.12-slim", "generic"),
    ],
)
def test_runtime_for_image(image: str, runtime: str) -> None:
    assert P.runtime_for_image(image) == runtime


@pytest.mark.parametrize(
    ("image", "sig"),
    [
        ("nginx:1.22", "SIGQUIT"),
        ("docker.io/library/nginx:1.27", "SIGQUIT"),
        ("php:8.2-fpm", "SIGQUIT"),
        ("php:8.2-apache", "SIGWINCH"),
        ("httpd:2.4", "SIGWINCH"),
        ("php:8.2-cli", "SIGTERM"),
        ("registry.example.com/shop/nginx-sigterm:1.22", "SIGTERM"),
        ("bitnami/nginx:1.25", "SIGTERM"),
    ],
)
def test_default_image_stop_signal(image: str, sig: str) -> None:
    assert P.default_image_stop_signal(image) == sig


@pytest.mark.parametrize(
    ("given", "name"), [("QUIT", "SIGQUIT"), ("sigwinch", "SIGWINCH"), (15, "SIGTERM"), ("3", "SIGQUIT")]
)
def test_normalize_signal(given: str | int, name: str) -> None:
    assert P.normalize_signal(given) == name


def test_normalize_signal_rejects_unknown() -> None:
    with pytest.raises(P.ManifestError):
        P.normalize_signal("SIGBOGUS")


# ----------------------------------------------------------------------------------------- manifest -> plan


def test_native_render_plan() -> None:
    plan = P.plan_from_text(NATIVE)
    assert plan.deployment == "shop"
    assert plan.grace_seconds == 30 and plan.grace_source == "spec"
    assert plan.os_name == "linux"
    assert plan.profile == "nginx-php-fpm"
    nginx, php = plan.containers
    assert (nginx.runtime, nginx.stop_signal, nginx.stop_signal_source) == (
        "nginx",
        "SIGQUIT",
        "lifecycle.stopSignal",
    )
    assert nginx.pre_stop == P.Hook("sleep", seconds=3.0)
    assert php.runtime == "php-fpm" and php.pre_stop is not None and php.pre_stop.seconds == 11.0
    assert plan.warnings == ()


def test_fallback_render_plan_skips_other_documents() -> None:
    plan = P.plan_from_text(FALLBACK)
    (nginx,) = plan.containers
    assert nginx.stop_signal == "SIGTERM" and nginx.stop_signal_source == "image"
    assert nginx.pre_stop is not None and nginx.pre_stop.kind == "exec"
    assert nginx.pre_stop.command[:2] == ("/bin/sh", "-c")
    assert "kill -QUIT 1" in nginx.pre_stop.command[2]


def test_image_stop_signal_override_and_default_grace() -> None:
    text = (MANIFESTS / "nginx.yaml").read_text()
    assert P.plan_from_text(text).containers[0].stop_signal == "SIGTERM"
    plan = P.plan_from_text(text, {"nginx": "QUIT"})
    assert plan.containers[0].stop_signal == "SIGQUIT"
    assert plan.grace_seconds == 30 and plan.grace_source == "default"
    with pytest.raises(P.ManifestError, match="unknown containers"):
        P.plan_from_text(text, {"nope": "SIGQUIT"})


def test_lifecycle_stop_signal_beats_image_signal() -> None:
    plan = P.plan_from_text(NATIVE, {"nginx": "SIGTERM"})
    assert plan.containers[0].stop_signal == "SIGQUIT"


def test_stop_signal_without_os_linux_is_flagged() -> None:
    text = NATIVE.replace("      os: {name: linux}\n", "")
    plan = P.plan_from_text(text)
    assert any("spec.os.name=linux" in w for w in plan.warnings)


def test_sleep_longer_than_grace_is_flagged() -> None:
    text = NATIVE.replace("terminationGracePeriodSeconds: 30", "terminationGracePeriodSeconds: 10")
    assert any("sleep 11s > terminationGracePeriodSeconds 10" in w for w in P.plan_from_text(text).warnings)


def test_list_kind_and_named_deployment() -> None:
    text = """
kind: List
items:
- {kind: Deployment, metadata: {name: a}, spec: {template: {spec: {containers: [{name: x, image: nginx}]}}}}
- {kind: Deployment, metadata: {name: b}, spec: {template: {spec: {containers: [{name: y, image: httpd}]}}}}
"""
    with pytest.raises(P.ManifestError, match="several Deployments"):
        P.plan_from_text(text)
    assert P.plan_from_text(text, name="b").containers[0].runtime == "apache"


@pytest.mark.parametrize(
    ("pre_stop", "error"),
    [
        ({"sleep": {"seconds": -1}}, "non-negative"),
        ({"exec": {"command": "nginx -s quit"}}, "list of strings"),
        ({"grpc": {}}, "unknown preStop"),
    ],
)
def test_bad_hooks(pre_stop: dict[str, object], error: str) -> None:
    with pytest.raises(P.ManifestError, match=error):
        P.parse_hook(pre_stop)


def test_http_get_hook_is_not_modelled() -> None:
    d = {"kind": "Deployment", "spec": {"template": {"spec": {"containers": [
        {"name": "x", "image": "nginx", "lifecycle": {"preStop": {"httpGet": {"path": "/q", "port": 80}}}}
    ]}}}}  # fmt: skip
    with pytest.raises(P.ManifestError, match="not modelled"):
        P.build_plan(d)


def test_no_deployment() -> None:
    with pytest.raises(P.ManifestError, match="no Deployment"):
        P.plan_from_text("kind: Service\nmetadata: {name: x}\n")


def test_all_lab_manifests_parse() -> None:
    files = sorted(MANIFESTS.rglob("*.yaml"))
    assert len(files) >= 8
    for f in files:
        plan = P.plan_from_text(f.read_text())
        assert plan.containers, f


# ----------------------------------------------------------------------------------------- kubelet arithmetic


@pytest.mark.parametrize(
    ("grace", "elapsed", "timeout"),
    [
        (30, None, 30),  # no hook: the whole period
        (30, 3.0, 27),
        (30, 3.99, 27),  # whole seconds elapsed, truncated, as the kubelet does
        (30, 11.05, 19),
        (30, 29.5, 2),  # 30 - 29 = 1 -> raised to the 2 s minimum
        (30, 30.0, 2),  # the hook ate the period: 2 s extension
        (30, 45.0, 2),
        (1, None, 2),  # the floor applies without a hook too
        (0, None, 2),
    ],
)
def test_stop_timeout_after_hook(grace: int, elapsed: float | None, timeout: int) -> None:
    assert P.stop_timeout_after_hook(grace, elapsed) == timeout


def test_kill_time() -> None:
    assert P.kill_time(30, None) == 30
    assert P.kill_time(30, 3.2) == pytest.approx(30.2)  # 3.2 + (30 - 3)
    assert P.kill_time(30, 40.0) == pytest.approx(32.0)  # the kubelet stops waiting at 30, then 2 s
    assert P.kill_time(10, 9.5) == pytest.approx(11.5)  # 10 - 9 = 1 -> 2


# ------------------------------------------------------------------------------------------------ outcomes


def _resp(status: int = 200, body: bytes | None = None, headers: str | None = None) -> bytes:
    body = P.make_body("pod0", 300) if body is None else body
    headers = f"Content-Length: {len(body)}\r\n" if headers is None else headers
    return f"HTTP/1.1 {status} X\r\n{headers}Connection: close\r\n\r\n".encode() + body


def test_body_is_fixed_size_with_markers() -> None:
    body = P.make_body("pod12", 4000)
    assert len(body) == P.BODY_SIZE and P.body_complete(body)
    assert not P.body_complete(body[:-1])
    assert not P.body_complete(body[:100] + b"y" * (P.BODY_SIZE - 100))


@pytest.mark.parametrize(
    ("raw", "error", "outcome"),
    [
        (_resp(), None, "ok"),
        (_resp(), "reset", "ok"),  # a reset after the complete body costs the client nothing
        (_resp(502, b"bad gateway"), None, "5xx:502"),
        (_resp(503, b"no server"), "reset", "5xx:503"),
        (b"", "refused", "refused"),
        (b"", "reset", "reset"),
        (b"", None, "reset"),  # closed without a byte
        (b"", "timeout", "timeout"),
        (_resp()[:-10], "timeout", "timeout"),
        (_resp()[:-10], None, "incomplete"),  # Content-Length not reached
        (_resp()[:-10], "reset", "incomplete"),
        (b"HTTP/1.1 200 OK\r\nContent-Le", None, "incomplete"),
        (_resp(headers=""), None, "ok"),  # close-delimited body
        (_resp(body=b"x" * P.BODY_SIZE), None, "incomplete"),  # wrong body: no markers
        (_resp(404, b"nope"), None, "other:404"),
        (b"", "EHOSTUNREACH", "other:EHOSTUNREACH"),
    ],
)
def test_classify(raw: bytes, error: str | None, outcome: str) -> None:
    assert P.classify(raw, error) == outcome


def test_classify_chunked() -> None:
    body = P.make_body("pod0", 1)
    chunked = b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (1000, body[:1000], len(body) - 1000, body[1000:])
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked
    assert P.classify(raw) == "ok"
    assert P.classify(raw[:-5]) == "incomplete"


def test_outcome_helpers() -> None:
    assert not P.is_failure("ok") and P.is_failure("5xx:502") and P.outcome_kind("5xx:502") == "5xx"


# ------------------------------------------------------------------------------------------------ assumptions


def test_assumptions() -> None:
    ann = {P.ANN_SLEEP: "3", P.ANN_DRAIN: "8"}
    assert P.check_assumptions(ann, 2.0, 0.3).hold
    a = P.check_assumptions(ann, 5.0, 10.0)
    assert not a.hold and len(a.broken) == 2
    assert "endpoint delay 5s >= preStop sleep 3s" in a.broken[0]
    assert "request duration 10s >= drain 8s" in a.broken[1]
    assert P.check_assumptions({}, 9.0, 99.0).hold  # no podgrace timings: nothing to check


def test_workers_needed() -> None:
    assert P.workers_needed(40, 0.3, 2) >= 40 * 0.3 / 2
    assert P.workers_needed(20, 4.0, 2) >= 20 * 4.0 / 2
    assert P.workers_needed(1, 0.01, 2) == 4 or P.workers_needed(1, 0.01, 2) >= 4


# ------------------------------------------------------------------------------------------------ lb + matrix


def test_haproxy_conf_has_no_retries_and_no_checks() -> None:
    conf = haproxy_conf(Path("/tmp/x"), [("pod0", 18000), ("pod1", 18001)], fastcgi=False, lb_port=14500)
    assert "retries 0" in conf and "redispatch" not in conf and " check" not in conf
    assert "server pod1 127.0.0.1:18001\n" in conf and "bind 127.0.0.1:14500\n" in conf
    fcgi = haproxy_conf(Path("/tmp/x"), [("pod0", 19000)], fastcgi=True, lb_port=14000)
    assert "use-fcgi-app php" in fcgi and "proto fcgi" in fcgi
    assert all(
        "127.0.0.1" in line for line in conf.splitlines() if line.strip().startswith(("bind", "server"))
    )


def test_parse_haproxy_log() -> None:
    log = "REQ {17} pod0 503 SC-- 0 -1 0\nnoise\nREQ {18} pod1 200 ---- 0 301 301\n"
    parsed = parse_haproxy_log(log)
    assert parsed["17"].server == "pod0" and parsed["17"].status == 503 and parsed["17"].term == "SC--"
    assert parsed["18"].status == 200


def test_matrix_rows() -> None:
    short = short_rows()
    assert {r.profile for r in short} == {
        "nginx", "php-fpm", "nginx-php-fpm", "apache", "web", "nginx-tini",
        "nginx-php-fpm-shared-pid", "nginx-php-fpm-shared-pid-hook-pid1",
    }  # fmt: skip
    pid1_hook = [r for r in short if r.profile.endswith("hook-pid1")]
    assert [r.modes for r in pid1_hook] == [("original",)]
    assert all(r.modes == ("original", "native", "fallback") for r in short if r not in pid1_hook)
    assert len({r.key for r in short}) == len(short)
    full = full_rows()
    assert len({r.key for r in full}) == len(full)
    holds = [r for r in full if r.cell.endpoint_delay < 3 and r.cell.request_ms < 6000]
    broken = [r for r in full if r.cell.endpoint_delay >= 3 or r.cell.request_ms >= 6000]
    assert holds and broken


def test_a_command_starting_with_tini_runs_the_server_under_tini() -> None:
    text = (ROOT / "bench/termination/manifests/nginx-tini.yaml").read_text()
    (container,) = P.plan_from_text(text).containers
    assert container.init == ("/usr/bin/tini", "--") and container.runtime == "nginx"
    plain = (ROOT / "bench/termination/manifests/nginx.yaml").read_text()
    assert P.plan_from_text(plain).containers[0].init == ()


SHARED_PID = MANIFESTS / "nginx-php-fpm-shared-pid.yaml"


def test_a_pod_sharing_its_process_namespace_is_planned_as_such() -> None:
    plan = P.plan_from_text(SHARED_PID.read_text())
    assert plan.share_process_namespace
    assert [(c.runtime, c.stop_signal, c.init) for c in plan.containers] == [
        ("nginx", "SIGTERM", ()),
        ("php-fpm", "SIGTERM", ()),
    ]  # custom images: the kubelet's SIGTERM, no init (pause is the pod's, not the container's)
    hooked = P.plan_from_text((MANIFESTS / "nginx-php-fpm-shared-pid-hook-pid1.yaml").read_text())
    assert hooked.share_process_namespace
    hooks = [" ".join(c.pre_stop.command) for c in hooked.containers if c.pre_stop]
    assert len(hooks) == 2 and all("kill -QUIT 1" in h for h in hooks)
    assert not P.plan_from_text((MANIFESTS / "nginx-php-fpm.yaml").read_text()).share_process_namespace


def test_a_container_of_a_shared_pid_pod_joins_the_sandbox_with_its_own_mounts() -> None:
    binds = [("/w/n.conf", "/etc/n")]
    spec = ContainerSpec("pod0", "nginx", "nginx", 18000, ["/usr/sbin/nginx"], binds=binds)
    own = spec.unshare_argv()
    joined = spec.join_argv(4242)
    assert own[:6] == ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", "--"]
    # the PID namespace of pause (host PID 4242); a mount namespace and a /proc of its own
    assert joined[:8] == ["nsenter", "--target", "4242", "--pid", "--", "unshare", "--mount", "--"]
    assert joined[10].startswith("set -e; mount -t proc proc /proc; ") and "mount -t proc" not in own[8]
    assert own[-2:] == joined[-2:] == ["pod0-nginx", "/usr/sbin/nginx"]
    assert "mount --bind /w/n.conf /etc/n" in joined[10]
    assert sandbox_argv(Path("/w/pause"))[-2:] == ["--", "/w/pause"]


@pytest.mark.parametrize(
    ("log", "signals"),
    [
        (
            "2026/11/30 06:01:02 [notice] 7#7: signal 17 (SIGCHLD) received from 9\n"
            "2026/11/30 06:01:03 [notice] 7#7: signal 3 (SIGQUIT) received from 31, shutting down\n"
            "2026/11/30 06:01:09 [notice] 7#7: signal 15 (SIGTERM) received from 1, exiting\n",
            ["SIGQUIT", "SIGTERM"],
        ),
        ("[30-Nov-2026 06:01:02] NOTICE: Terminating ...\n[...] NOTICE: exiting, bye-bye!", ["SIGTERM"]),
        ("[30-Nov-2026 06:01:09] NOTICE: Finishing ...\n", ["SIGQUIT"]),
        ("[mpm_prefork:notice] [pid 7] AH00492: caught SIGWINCH, shutting down gracefully", ["SIGWINCH"]),
        ("[notice] 7#7: start worker process 9\n", []),
    ],
)  # fmt: skip
def test_the_stop_signals_a_server_logged(log: str, signals: list[str]) -> None:
    assert P.logged_stop_signals(log) == signals


def _res(failed: int, hold: bool = True) -> dict[str, object]:
    return {
        "failed": failed,
        "total": 100,
        "unattributed_failures": 0,
        "failed_by_server": {"pod0": failed} if failed else {},
        "failures": [{"server": "pod0", "outcome": "reset"}] * failed,
        "routed_after_removal": 0,
        "survivors_ok": True,
        "to_terminating_pod": 50,
        "assumptions": {"hold": hold, "broken": [] if hold else ["endpoint delay 5s >= preStop sleep 3s"]},
    }


def test_verdicts() -> None:
    row = Row("nginx", "nginx.yaml", CELLS["base"])
    assert verdict("original", row, _res(10))[0]
    assert not verdict("original", row, _res(0))[0]
    assert verdict("native", row, _res(0))[0]
    ok, text = verdict("native", row, _res(1))
    assert not ok and "assumptions hold" in text
    ok, text = verdict("fallback", row, _res(7, hold=False))
    assert ok and "assumption broken" in text
    lost = [{"server": "pod1", "outcome": "reset"}, {"server": "?", "outcome": "timeout"}]
    bad = {**_res(0), "unattributed_failures": 2, "failed_by_server": {"pod1": 1, "?": 1}, "failures": lost}
    ok, text = verdict("native", row, bad)
    assert not ok and "2 failures on pods that were not terminating" in text
    assert "{'pod1': 1, '?': 1}, {'reset': 1, 'timeout': 1})" in text
    zero = Row(
        "article", "article/sleep-both.yaml", CELLS["base"], modes=("original",), expect_original="zero"
    )
    assert verdict("original", zero, _res(0))[0] and not verdict("original", zero, _res(3))[0]
    assert not verdict("native", row, {"error": "boom"})[0]


def _signalled(*first: str) -> dict[str, object]:
    names = ("nginx", "php-fpm")[: len(first)]
    containers = [{"container": n, "server_signals": [s]} for n, s in zip(names, first, strict=True)]
    return {**_res(0), "containers": containers}


def test_verdict_checks_which_signal_reached_the_servers() -> None:
    row = Row("s", "s.yaml", CELLS["base"], expect_original="any", first_signals=("SIGTERM", "SIGQUIT"))
    assert verdict("original", row, _signalled("SIGTERM", "SIGTERM"))[0]
    assert verdict("fallback", row, _signalled("SIGQUIT", "SIGQUIT"))[0]
    ok, text = verdict("native", row, _signalled("SIGQUIT", "SIGTERM"))
    assert not ok and "'php-fpm': 'SIGTERM'" in text and "expected SIGQUIT" in text
    # the fallback hook signals the workers: php-fpm's are silent, its master logs the kubelet's TERM last
    assert verdict("fallback", row, _signalled("SIGQUIT", "SIGTERM"))[0]
    ok, text = verdict("fallback", row, _signalled("SIGTERM", "SIGTERM"))
    assert not ok and "'nginx': 'SIGTERM'" in text
    assert not verdict("original", row, {**_res(0), "containers": [{"container": "nginx"}]})[0]  # none logged
    assert not verdict("original", row, _res(0))[0]  # no container record at all


def test_markdown_report() -> None:
    base = {
        "profile": "nginx",
        "manifest": "nginx.yaml",
        "cell": "base",
        "endpoint_delay": 2.0,
        "request_ms": 300,
        "rate": 40,
        "process_control_timeout": 0,
        "image_signals": {},
        "row": "nginx-base",
        "note": "",
        "containers": [],
    }
    entries = [
        {
            **base,
            **_res(40),
            "mode": "original",
            "counts": {"ok": 60, "5xx:503": 40},
            "passed": True,
            "verdict": "ok",
        },
        {**base, **_res(0), "mode": "native", "counts": {"ok": 100}, "passed": True, "verdict": "ok"},
    ]
    md = markdown(
        {
            "kind": "short",
            "wall_s": 12.0,
            "podgrace_render": "podgrace render",
            "passed": True,
            "scenarios": entries,
        }
    )
    assert "| nginx | base: 2 s / 300 ms / 40/s |" in md
    assert "**40**/100 (503x40)" in md and "**0**/100" in md


# ------------------------------------------------------------------------------------------------ ports


def test_a_port_block_gives_each_role_and_pod_its_own_port() -> None:
    block = Ports(14500)
    ports = [block.lb, block.upstream] + [block.server(r, i) for r in ROLE_OFFSET for i in range(MAX_PODS)]
    assert len(set(ports)) == len(ports) and min(ports) == 14500 and max(ports) < 14500 + BLOCK
    with pytest.raises(ValueError, match="pod index 99"):
        block.server("nginx", MAX_PODS)


def test_claims_never_share_a_block_and_skip_one_in_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ports_mod, "LOCK_DIR", tmp_path)
    everything = lambda b: [b.lb, b.server("nginx", 0)]  # noqa: E731
    with ports_mod.claim(everything, lambda _p: False) as first:
        # a second run (another process would see the same flock) moves on; so does one finding a port taken
        busy = first.base + BLOCK + ROLE_OFFSET["nginx"]
        with ports_mod.claim(everything, lambda p: p == busy) as second:
            assert second.base == first.base + 2 * BLOCK
    with ports_mod.claim(everything, lambda _p: False) as again:
        assert again.base == first.base  # released when the run ended
    taken = ports_mod.claim(everything, lambda _p: True)
    with pytest.raises(ports_mod.PortsExhausted, match="in use"), taken:
        pass
