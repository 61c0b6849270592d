"""A real node (kubelet + containerd v2 + runc + CNI bridge) runs a real nginx: Ready, reachable from
the host on its pod IP, listed in an EndpointSlice; graceful deletion with a preStop sleep posts no
Warning; the exec fallback's kill of PID 1 does (FailedPreStopHook); with ContainerStopSignals the
stop signal reaches nginx and shows in the container status; a stopped node leaves nothing behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.cluster.localcluster import LocalCluster
from tests.cluster.node import (
    APISERVER_ARGS,
    KUBELET_SYSCTLS,
    STATE_DIR,
    RealNode,
    cgroup_hierarchies,
    cleanup_stale,
    link_exists,
    link_ifindex,
    node_cgroup_parent,
    pids_in_mount_ns,
)
from tests.support.podgrace_env import wait_until
from tests.support.realnode_env import NodeCluster


def nginx_pod(
    name: str,
    image: str,
    *,
    lifecycle: dict[str, Any] | None = None,
    os_name: bool = False,
    grace: int = 30,
    probe: bool = False,
) -> dict[str, Any]:
    """An nginx pod. ``probe``: an httpGet readiness probe. Off for the termination tests: the kubelet
    keeps probing a terminating pod, and once nginx closes its listener (SIGQUIT: at once, then it
    drains) the probe's "connection refused" is a Warning ``Unhealthy`` event (seen with SIGQUIT);
    a probe that fails once before nginx listens posts one too."""
    container: dict[str, Any] = {
        "name": "nginx",
        "image": image,
        "imagePullPolicy": "Never",
        "ports": [{"containerPort": 80, "name": "http"}],
    }
    if probe:
        container["readinessProbe"] = {"httpGet": {"path": "/", "port": 80}, "periodSeconds": 1}
    if lifecycle:
        container["lifecycle"] = lifecycle
    spec: dict[str, Any] = {"containers": [container], "terminationGracePeriodSeconds": grace}
    if os_name:
        spec["os"] = {"name": "linux"}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
        "spec": spec,
    }


def apply(cluster: LocalCluster, *objs: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objs}))


def ready_pod(cluster: LocalCluster, name: str, timeout: float = 90.0) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        pod: dict[str, Any] = cluster.kubectl_json("get", "pod", name, "-n", "default")
        conds = pod.get("status", {}).get("conditions", [])
        ok = any(c["type"] == "Ready" and c["status"] == "True" for c in conds)
        return pod if ok and pod["status"].get("podIP") else None

    return wait_until(f"pod {name} Ready", ready, timeout)


def events_for(cluster: LocalCluster, name: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.kubectl_json(
        "get", "events", "-n", "default", "--field-selector", f"involvedObject.name={name}"
    )["items"]
    return items


def delete_and_follow_logs(cluster: LocalCluster, name: str) -> tuple[float, str]:
    """Delete the pod while ``kubectl logs -f`` follows its container; return (seconds, log)."""
    follow = subprocess.Popen(
        [
            str(cluster.bin("kubectl")),
            f"--kubeconfig={cluster.kubeconfig}",
            "logs",
            "-f",
            name,
            "-n",
            "default",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=cluster.env(),
    )
    try:
        time.sleep(1.0)  # let the stream attach
        t0 = time.monotonic()
        cluster.kubectl("delete", "pod", name, "-n", "default", "--wait=true", timeout=120)
        seconds = time.monotonic() - t0
        out, _ = follow.communicate(timeout=30)
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait()
    return seconds, out.decode(errors="replace")


def http_get(ip: str, timeout: float = 5.0) -> tuple[int, str]:
    with urllib.request.urlopen(f"http://{ip}:80/", timeout=timeout) as resp:
        return int(resp.status), resp.read().decode(errors="replace")


# --------------------------------------------------------------------------------------------


def test_nginx_runs_ready_reachable_and_in_endpointslice(node_cluster: NodeCluster) -> None:
    cluster, node = node_cluster.cluster, node_cluster.node
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]},
    }
    apply(cluster, nginx_pod("web", node_cluster.nginx.ref, probe=True), service)
    pod = ready_pod(cluster, "web")
    assert pod["spec"]["nodeName"] == node.name
    ip = pod["status"]["podIP"]
    assert node.subnet is not None and node.subnet.overlaps(type(node.subnet)(f"{ip}/32"))
    status, body = http_get(ip)
    assert status == 200 and "Welcome to nginx!" in body
    # the real kubelet reports the real container
    (cs,) = pod["status"]["containerStatuses"]
    assert cs["ready"] is True and cs["containerID"].startswith("containerd://")
    assert cs["image"] == node_cluster.nginx.ref

    def slice_lists_pod() -> list[str] | None:
        slices = cluster.kubectl_json(
            "get", "endpointslices", "-n", "default", "-l", "kubernetes.io/service-name=web"
        )["items"]
        addrs = [
            a
            for s in slices
            for e in s.get("endpoints") or []
            if (e.get("conditions") or {}).get("ready")
            for a in e["addresses"]
        ]
        return addrs or None

    assert wait_until("EndpointSlice with the pod", slice_lists_pod) == [ip]
    # projected ServiceAccount token volume has content inside the container (kubelet's tmpfs mount
    # and runc's bind mount happen in the same mount namespace)
    token = cluster.kubectl(
        "exec", "web", "-n", "default", "--", "cat", "/var/run/secrets/kubernetes.io/serviceaccount/token"
    ).stdout
    assert token.count(".") == 2 and len(token) > 100
    # the container's processes live in cgroups below the node's cgroupRoot
    assert any(p for d in node.cgroup_dirs() for p in d.rglob("cgroup.procs") if p.read_text().strip())
    cluster.kubectl("delete", "pod", "web", "-n", "default", "--wait=true", timeout=120)
    cluster.kubectl("delete", "service", "web", "-n", "default")


def test_prestop_sleep_then_sigterm_without_warning(node_cluster: NodeCluster) -> None:
    cluster = node_cluster.cluster
    apply(
        cluster, nginx_pod("sleepy", node_cluster.nginx.ref, lifecycle={"preStop": {"sleep": {"seconds": 3}}})
    )
    ready_pod(cluster, "sleepy")
    seconds, log = delete_and_follow_logs(cluster, "sleepy")
    assert seconds >= 3.0, f"deleted after {seconds:.1f}s, before the 3 s preStop sleep ended"
    assert seconds < 25.0, f"took {seconds:.1f}s: nginx did not stop on SIGTERM after the hook"
    assert "signal 15 (SIGTERM) received" in log, log[-2000:]
    warnings = [e for e in events_for(cluster, "sleepy") if e["type"] == "Warning"]
    assert warnings == [], [(e["reason"], e["message"]) for e in warnings]


def test_exec_fallback_killing_pid1_posts_failed_prestop_hook(node_cluster: NodeCluster) -> None:
    """The other side: an exec hook that makes nginx quit gracefully kills itself with PID 1 (137),
    and the kubelet posts Warning FailedPreStopHook. Shows the warning check above can fail."""
    cluster = node_cluster.cluster
    hook = {
        "preStop": {"exec": {"command": ["sh", "-c", "kill -QUIT 1; while kill -0 1; do sleep 0.2; done"]}}
    }
    apply(cluster, nginx_pod("fallback", node_cluster.nginx.ref, lifecycle=hook))
    ready_pod(cluster, "fallback")
    seconds, log = delete_and_follow_logs(cluster, "fallback")
    assert "signal 3 (SIGQUIT) received" in log, log[-2000:]
    assert seconds < 25.0

    def failed_hook() -> list[dict[str, Any]] | None:
        evs = [e for e in events_for(cluster, "fallback") if e["reason"] == "FailedPreStopHook"]
        return evs or None

    (ev,) = wait_until("FailedPreStopHook event", failed_hook, timeout=30)
    assert ev["type"] == "Warning" and "PreStopHook failed" in ev["message"], ev
    # the kubelet's log has the why: the hook was killed with PID 1's PID namespace (128 + SIGKILL)
    kubelet_log = node_cluster.node.logs()["kubelet"].read_text(errors="replace")
    assert "kill -QUIT 1; while kill -0 1; do sleep 0.2; done' exited with 137" in kubelet_log


def test_stop_signal_dropped_without_gate(node_cluster: NodeCluster) -> None:
    cluster = node_cluster.cluster
    apply(
        cluster,
        nginx_pod("nogate", node_cluster.nginx.ref, lifecycle={"stopSignal": "SIGQUIT"}, os_name=True),
    )
    pod = ready_pod(cluster, "nogate")
    assert "stopSignal" not in (pod["spec"]["containers"][0].get("lifecycle") or {})
    (cs,) = pod["status"]["containerStatuses"]
    assert "stopSignal" not in cs
    _, log = delete_and_follow_logs(cluster, "nogate")
    assert "signal 15 (SIGTERM) received" in log, log[-2000:]


def test_stop_signal_reaches_nginx_with_gate(node_cluster_stopsignals: NodeCluster) -> None:
    cluster = node_cluster_stopsignals.cluster
    pod_obj = nginx_pod(
        "quitter",
        node_cluster_stopsignals.nginx.ref,
        lifecycle={"stopSignal": "SIGQUIT", "preStop": {"sleep": {"seconds": 1}}},
        os_name=True,
    )
    apply(cluster, pod_obj)
    pod = ready_pod(cluster, "quitter")
    (cs,) = pod["status"]["containerStatuses"]
    assert cs.get("stopSignal") == "SIGQUIT", cs
    seconds, log = delete_and_follow_logs(cluster, "quitter")
    assert "signal 3 (SIGQUIT) received" in log, log[-2000:]
    assert "SIGTERM" not in log
    assert 1.0 <= seconds < 25.0
    warnings = [e for e in events_for(cluster, "quitter") if e["type"] == "Warning"]
    assert warnings == [], [(e["reason"], e["message"]) for e in warnings]


HOST_PATHS = ("/var/lib/kubelet", "/var/log/pods", "/var/log/containers", "/var/lib/cni", "/run/containerd",
              "/var/lib/containerd", "/run/runc", "/etc/kubernetes", "/usr/libexec/kubernetes")  # fmt: skip


def _sysctls() -> dict[str, str]:
    keys = [*KUBELET_SYSCTLS, "net/ipv4/ip_forward"]
    return {k: Path("/proc/sys", k).read_text().strip() for k in keys}


def _host_state() -> dict[str, Any]:
    """Host sysctls, iptables/ip6tables rules and chains (without counters), the kubelet's and
    containerd's default paths: a node must change none of them."""
    state: dict[str, Any] = {"sysctl": _sysctls()}
    for tool in ("iptables-save", "ip6tables-save"):
        proc = subprocess.run([tool], capture_output=True, text=True, check=False)
        state[tool] = sorted(
            line.split(" [")[0] for line in proc.stdout.splitlines() if line and not line.startswith("#")
        )
    state["paths"] = sorted(p for p in HOST_PATHS if Path(p).exists())
    return state


def test_stopped_node_leaves_nothing_behind(node_binaries: tuple[Path, Path], nginx: Any) -> None:
    """A node of its own with a running pod; after stop(): no process, cgroup, link, mount or file."""
    before = _host_state()
    with LocalCluster(
        binaries=node_binaries[0], nodes=0, name="cleanup", extra_apiserver_args=APISERVER_ARGS
    ) as cluster:
        node = RealNode(cluster, binaries=node_binaries[1], name="cleanup-node")
        try:
            node.start()
            node.import_image(nginx)
            apply(cluster, nginx_pod("left", nginx.ref, grace=60, probe=True))
            pod = ready_pod(cluster, "left")
            http_get(pod["status"]["podIP"])
            pids = set(node.pids().values())
            ports = node.bridge_ports()
            assert ports, "the pod's veth should be on the node's bridge"
            cgroup_dirs = node.cgroup_dirs()
            assert cgroup_dirs and all(d.is_dir() for d in cgroup_dirs)
            container_pids = {
                int(x) for d in cgroup_dirs for p in d.rglob("cgroup.procs") for x in p.read_text().split()
            }
            assert container_pids
            mount_ns, workdir, bridge = node.mount_ns, node.workdir, node.bridge
            assert _host_state() == before, "the running node changed host sysctls, iptables or paths"
        finally:
            # stop with the pod still running (the node has to kill it itself)
            report = node.stop()
    assert report.clean, report
    assert not any(Path(f"/proc/{p}").exists() and _alive(p) for p in pids | container_pids)
    assert pids_in_mount_ns(mount_ns) == set()
    assert not any(d.exists() for d in cgroup_dirs)
    # every hierarchy: nothing named after the node anywhere under this process's own cgroup
    for h in cgroup_hierarchies():
        assert not list(h.dir(h.own).rglob("cleanup-node*")), h
    assert not link_exists(bridge) and not any(link_exists(p) for p in ports)
    assert not any(str(workdir) in line for line in Path("/proc/self/mountinfo").read_text().splitlines())
    assert not workdir.exists()
    assert _host_state() == before


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


KILLED_OWNER = """
import json, sys, time
from pathlib import Path
from tests.cluster.localcluster import LocalCluster
from tests.cluster.node import APISERVER_ARGS, RealNode
img = json.loads(sys.argv[1])
cluster = LocalCluster(
    binaries=Path(sys.argv[2]), nodes=0, name="killed", extra_apiserver_args=APISERVER_ARGS
).start()
node = RealNode(cluster, binaries=Path(sys.argv[3]), name="killed-node").start()
node.ctr("images", "import", "--platform=linux/amd64", img["path"])
cluster.kubectl("run", "orphan", f"--image={img['ref']}", "--image-pull-policy=Never")
cluster.kubectl("wait", "pod/orphan", "--for=condition=Ready", "--timeout=120s", timeout=150)
print(json.dumps({"bridge": node.bridge, "cgroups": [str(d) for d in node.cgroup_dirs()],
                  "mount_ns": node.mount_ns, "workdir": str(node.workdir),
                  "state": str(node._state_file), "cluster": str(cluster.workdir)}), flush=True)
time.sleep(600)
"""


def test_node_of_a_killed_process_is_cleaned_up(node_binaries: tuple[Path, Path], nginx: Any) -> None:
    """SIGKILL the process that owns a node with a running pod: nothing can run its stop(). Its
    kubelet, containerd and holder die with it (PDEATHSIG); cleanup_stale() removes the rest."""
    img = json.dumps({"ref": nginx.ref, "path": str(nginx.path)})
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_OWNER, img, str(node_binaries[0]), str(node_binaries[1])],
        cwd=repo,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, "the owner process died before its node ran a pod"
        info = json.loads(line)
        state = Path(info["state"])
        assert state.parent == STATE_DIR and state.exists()
        assert link_exists(info["bridge"]) and pids_in_mount_ns(info["mount_ns"])
        assert cleanup_stale(log=lambda m: None) == [], "a live owner's node is not stale"
    finally:
        proc.kill()
        proc.wait()
    time.sleep(1.0)
    assert "killed-node" in cleanup_stale(log=lambda m: None)
    assert not state.exists()
    assert pids_in_mount_ns(info["mount_ns"]) == set()
    assert not any(Path(d).exists() for d in info["cgroups"])
    assert not link_exists(info["bridge"])
    assert not Path(info["workdir"]).exists()
    shutil.rmtree(info["cluster"], ignore_errors=True)  # the dead LocalCluster's temp dir


def test_stale_state_never_removes_a_later_node_s_bridge_of_the_same_name() -> None:
    """A node whose stop() left something keeps its state file, naming its bridge pgn<N> and address; a
    later node may get that very name and address. cleanup_stale() then removes only the link whose
    interface index the dead node recorded. (Seen 2026-11-30: a node's bridge vanished while another
    session started a node.)"""
    name = f"pgt{os.getpid() % 100000}"
    subprocess.run(["ip", "link", "add", name, "type", "bridge"], check=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    state = STATE_DIR / f"stale-bridge-test-{os.getpid()}.json"
    try:
        now = link_ifindex(name)
        assert now > 0
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        base = {
            "owner": dead.pid, "owner_start": 0, "name": "stale-bridge-test",
            "cgroup_parent": node_cgroup_parent(cgroup_hierarchies()).rstrip("/"),
            "workdir": "", "mount_ns": 0, "cgroup_dirs": [], "created_cgroups": [], "bin_dir": "",
            "bridge": name, "node_ip": "10.213.254.1",
        }  # fmt: skip
        state.write_text(json.dumps({**base, "bridge_ifindex": now + 100000}))  # an earlier link's
        assert "stale-bridge-test" in cleanup_stale(log=lambda m: None)
        assert link_ifindex(name) == now, "another node's bridge of the same name was removed"
        state.write_text(json.dumps({**base, "bridge_ifindex": now}))  # this very link: the dead node's
        assert "stale-bridge-test" in cleanup_stale(log=lambda m: None)
        assert not link_exists(name) and not state.exists()
    finally:
        state.unlink(missing_ok=True)
        subprocess.run(["ip", "link", "del", name], check=False, capture_output=True)
