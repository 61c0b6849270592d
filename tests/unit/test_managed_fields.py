"""metadata.managedFields: who owns the fields podgrace injects; podgrace's write (core/write_patch.py):
what it changes, whether it is a no-op, and the revert.

The managedFields entries are written the way the API server records them: fieldsV1 with `f:` fields,
`k:{"name":...}` list-map keys, `.` for maps a manager created (client-side apply) and `f:name` for the key.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from podgrace.core import apply_body, managed_fields, planner, workload_parser
from podgrace.core.capabilities import Capabilities, from_description
from podgrace.core.constants import ANN_MODE, FIELD_MANAGER
from podgrace.core.models import GRACE_FIELD as GRACE
from podgrace.core.models import Ownership, ShutdownProfile
from podgrace.core.planner import Outcome
from podgrace.core.write_patch import write_patch

TIME = "2026-11-20T10:00:00Z"


def key(name: str) -> str:
    return 'k:{"name":' + json.dumps(name) + "}"


def entry(manager: str, fields: dict[str, Any], operation: str = "Apply", **extra: Any) -> dict[str, Any]:
    return {
        "manager": manager,
        "operation": operation,
        "apiVersion": "apps/v1",
        "time": TIME,
        "fieldsType": "FieldsV1",
        "fieldsV1": fields,
        **extra,
    }


def fields_of(value: Any, *, dots: bool = False) -> dict[str, Any]:
    """fieldsV1 for an applied configuration (dots=True: as a client-side Update records new maps)."""
    if not isinstance(value, dict):
        return {}
    out: dict[str, Any] = {".": {}} if dots else {}
    for k, v in value.items():
        if k == "containers" and isinstance(v, list):
            out["f:containers"] = {key(c["name"]): {".": {}, **fields_of(c, dots=dots)} for c in v}
        else:
            out[f"f:{k}"] = fields_of(v, dots=dots)
    return out


# The entry of the brief, verbatim: podgrace owns nginx's native preStop sleep and the grace period.
PODGRACE_SLEEP_AND_GRACE = json.loads(
    '{"f:spec":{"f:template":{"f:spec":{"f:containers":{"k:{\\"name\\":\\"nginx\\"}":{".":{},'
    '"f:lifecycle":{"f:preStop":{"f:sleep":{"f:seconds":{}}}},"f:name":{}}},'
    '"f:terminationGracePeriodSeconds":{}}}}}'
)

# What `kubectl apply` (client-side) records for the user's manifest: image, ports, the seed article's hook.
KUBECTL_USER = {
    "f:metadata": {
        "f:annotations": {".": {}, "f:podgrace.dev/profile": {}},
        "f:labels": {".": {}, "f:app": {}},
    },
    "f:spec": {
        "f:replicas": {},
        "f:selector": {},
        "f:template": {
            "f:metadata": {"f:labels": {".": {}, "f:app": {}}},
            "f:spec": {
                "f:containers": {
                    key("nginx"): {".": {}, "f:image": {}, "f:name": {}},
                    key("php-fpm"): {
                        ".": {},
                        "f:image": {},
                        "f:name": {},
                        "f:lifecycle": {
                            ".": {},
                            "f:preStop": {".": {}, "f:exec": {".": {}, "f:command": {}}},
                        },
                    },
                },
                "f:terminationGracePeriodSeconds": {},
            },
        },
    },
}
ARGOCD_STOP_SIGNAL = {
    "f:spec": {
        "f:template": {
            "f:spec": {
                "f:containers": {key("nginx"): {".": {}, "f:lifecycle": {"f:stopSignal": {}}, "f:name": {}}},
                "f:os": {"f:name": {}},
            }
        }
    }
}


def live(
    deployment: Any,
    *,
    nginx_lifecycle: dict[str, Any] | None = None,
    grace: int | None = 40,
    entries: list[dict[str, Any]],
) -> dict[str, Any]:
    nginx: dict[str, Any] = {"name": "nginx", "image": "nginx:1.27"}
    if nginx_lifecycle is not None:
        nginx["lifecycle"] = nginx_lifecycle
    return deployment([nginx], grace=grace, managed_fields=entries)


# --- ownership ----------------------------------------------------------------------------------------------


def test_container_key_matches_the_api_server() -> None:
    assert managed_fields.container_key("nginx") == 'k:{"name":"nginx"}'
    assert managed_fields.container_key("php-fpm") == key("php-fpm")


def test_ownership_of_podgraces_fields() -> None:
    ours = entry(FIELD_MANAGER, {"f:spec": fields_of(_nginx_gate_body()["spec"])})
    assert managed_fields.ownership([ours]) == Ownership(
        known=True,
        podgrace_pre_stop=frozenset({"nginx"}),
        podgrace_stop_signal=frozenset({"nginx"}),
    )


def test_ownership_of_the_brief_entry() -> None:
    assert managed_fields.ownership([entry("podgrace", PODGRACE_SLEEP_AND_GRACE)]) == Ownership(
        known=True, podgrace_pre_stop=frozenset({"nginx"})
    )


def test_ownership_of_user_managers() -> None:
    entries = [
        entry("kubectl-client-side-apply", KUBECTL_USER, operation="Update"),
        entry("argocd-controller", ARGOCD_STOP_SIGNAL),
        entry("podgrace", PODGRACE_SLEEP_AND_GRACE),
    ]
    assert managed_fields.ownership(entries) == Ownership(
        known=True,
        podgrace_pre_stop=frozenset({"nginx"}),
        foreign_pre_stop=frozenset({"php-fpm"}),
        foreign_stop_signal=frozenset({"nginx"}),
        foreign_grace=True,
        # who holds each contested field, and which of them by server-side apply (issue 12)
        owners=(
            ("containers[nginx].lifecycle.stopSignal", "argocd-controller"),
            ("containers[php-fpm].lifecycle.preStop", "kubectl-client-side-apply"),
            ("os.name", "argocd-controller"),
            ("terminationGracePeriodSeconds", "kubectl-client-side-apply"),
        ),
        applied=frozenset({"containers[nginx].lifecycle.stopSignal", "os.name"}),
        last_writer="kubectl-client-side-apply",
    )


def test_ownership_without_managed_fields() -> None:
    assert managed_fields.ownership([]) == Ownership(known=True)


def test_ownership_ignores_other_field_types_and_lifecycle_elsewhere() -> None:
    entries = [
        {"manager": "legacy", "operation": "Update", "fieldsType": "Other", "fieldsV1": KUBECTL_USER},
        entry(
            "kube-controller-manager",
            {"f:status": {"f:replicas": {}}},
            operation="Update",
            subresource="status",
        ),
        # postStart is not preStop; an image-only owner owns no lifecycle
        entry(
            "helm",
            {
                "f:spec": {
                    "f:template": {
                        "f:spec": {
                            "f:containers": {
                                key("nginx"): {
                                    ".": {},
                                    "f:image": {},
                                    "f:lifecycle": {"f:postStart": {"f:exec": {"f:command": {}}}},
                                }
                            }
                        }
                    }
                }
            },
        ),
    ]
    assert managed_fields.ownership(entries) == Ownership(known=True, last_writer="kube-controller-manager")


def test_from_object_reads_ownership_only_when_asked(deployment: Any) -> None:
    obj = live(
        deployment,
        nginx_lifecycle={"preStop": {"sleep": {"seconds": 5}}},
        entries=[entry("podgrace", PODGRACE_SLEEP_AND_GRACE)],
    )
    assert workload_parser.from_object(obj, with_ownership=True).ownership.podgrace_pre_stop == {"nginx"}
    assert workload_parser.from_object(obj, with_ownership=False).ownership == Ownership()


def test_container_names_needing_json_escapes() -> None:
    fields = {
        "f:spec": {
            "f:template": {
                "f:spec": {"f:containers": {key('we"ird'): {"f:lifecycle": {"f:preStop": {"f:sleep": {}}}}}}
            }
        }
    }
    assert managed_fields.ownership([entry("x", fields)]).foreign_pre_stop == {'we"ird'}


# --- desired leaves -----------------------------------------------------------------------------------------


def _nginx_gate_body() -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "shop", "namespace": "default"},
        "spec": {
            "template": {
                "spec": {
                    "terminationGracePeriodSeconds": 40,
                    "os": {"name": "linux"},
                    "containers": [
                        {
                            "name": "nginx",
                            "lifecycle": {"preStop": {"sleep": {"seconds": 5}}, "stopSignal": "SIGQUIT"},
                        }
                    ],
                }
            }
        },
    }


def test_desired_leaves() -> None:
    base = ("f:spec", "f:template", "f:spec")
    nginx = (*base, "f:containers", 'k:{"name":"nginx"}')
    assert managed_fields.desired_leaves(_nginx_gate_body()["spec"], ("f:spec",)) == {
        (*base, "f:terminationGracePeriodSeconds"): 40,
        (*base, "f:os", "f:name"): "linux",
        (*nginx, "f:name"): "nginx",
        (*nginx, "f:lifecycle", "f:preStop", "f:sleep", "f:seconds"): 5,
        (*nginx, "f:lifecycle", "f:stopSignal"): "SIGQUIT",
    }


def test_exec_command_is_one_atomic_leaf() -> None:
    command = ["/bin/sh", "-c", "sleep 5"]
    leaves = managed_fields.desired_leaves({"preStop": {"exec": {"command": command}}})
    assert leaves == {("f:preStop", "f:exec", "f:command"): command}


# --- write_patch (the zero-write skip, was apply_is_noop) -----------------------------------------------

SLEEP_5 = {"preStop": {"sleep": {"seconds": 5}}}
WEB_BODY = {  # what podgrace applies for a generic container named nginx (profile web, 1.34)
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "shop", "namespace": "default"},
    "spec": {
        "template": {
            "spec": {
                "terminationGracePeriodSeconds": 40,
                "containers": [{"name": "nginx", "lifecycle": {"preStop": {"sleep": {"seconds": 5}}}}],
            }
        }
    },
}
REVERT_BODY = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "shop", "namespace": "default"},
}
USER = entry("kubectl-client-side-apply", KUBECTL_USER, operation="Update")
ARGO = entry("argocd-controller", ARGOCD_STOP_SIGNAL)


WEB = WEB_BODY["spec"]["template"]["spec"]  # type: ignore[index]


def noop(obj: dict[str, Any], pod_spec: dict[str, Any]) -> bool:
    return write_patch(obj, pod_spec, None) is None


def test_noop_when_podgrace_owns_exactly_the_desired_fields(deployment: Any) -> None:
    obj = live(
        deployment, nginx_lifecycle=SLEEP_5, entries=[USER, entry("podgrace", PODGRACE_SLEEP_AND_GRACE)]
    )
    assert noop(obj, WEB)


def test_noop_is_indifferent_to_dots_and_operation(deployment: Any) -> None:
    fields = {"f:spec": fields_of(WEB_BODY["spec"], dots=True)}
    obj = live(deployment, nginx_lifecycle=SLEEP_5, entries=[entry("podgrace", fields, operation="Update")])
    assert noop(obj, WEB)


@pytest.mark.parametrize(
    ("nginx_lifecycle", "grace", "patch"),
    [
        (
            {"preStop": {"sleep": {"seconds": 3}}},
            40,
            {"containers": [{"name": "nginx", "lifecycle": SLEEP_5}]},
        ),
        (SLEEP_5, 30, {GRACE: 40}),
        (SLEEP_5, None, {GRACE: 40}),
        (  # a hook replaced whole: the exec handler is nulled, not merged with the sleep
            {"preStop": {"exec": {"command": ["sh", "-c", "sleep 3"]}}},
            40,
            {
                "containers": [
                    {"name": "nginx", "lifecycle": {"preStop": {"exec": None, "sleep": {"seconds": 5}}}}
                ]
            },
        ),
    ],
    ids=["sleep-differs", "grace-differs", "grace-missing", "exec-becomes-sleep"],
)
def test_a_differing_value_is_patched_alone(
    deployment: Any, nginx_lifecycle: dict[str, Any], grace: int | None, patch: dict[str, Any]
) -> None:
    obj = live(
        deployment,
        nginx_lifecycle=nginx_lifecycle,
        grace=grace,
        entries=[entry("podgrace", PODGRACE_SLEEP_AND_GRACE)],
    )
    obj["metadata"]["resourceVersion"] = "17"
    assert write_patch(obj, WEB, None) == {
        "metadata": {"resourceVersion": "17"},  # a change since podgrace read it: 409, not overwritten
        "spec": {"template": {"spec": patch}},
    }


def test_a_field_podgrace_alone_owns_and_no_longer_wants_is_released(deployment: Any) -> None:
    extra = json.loads(json.dumps(PODGRACE_SLEEP_AND_GRACE))
    extra["f:spec"]["f:template"]["f:spec"]["f:containers"][key("nginx")]["f:lifecycle"]["f:stopSignal"] = {}
    obj = live(
        deployment, nginx_lifecycle={**SLEEP_5, "stopSignal": "SIGQUIT"}, entries=[entry("podgrace", extra)]
    )
    patch = write_patch(obj, WEB, None)
    assert patch is not None
    assert patch["spec"] == {
        "template": {"spec": {"containers": [{"name": "nginx", "lifecycle": {"stopSignal": None}}]}}
    }


@pytest.mark.parametrize(
    "user",
    [
        entry(
            "kubectl-client-side-apply",
            {"f:spec": fields_of(WEB_BODY["spec"], dots=True)},
            operation="Update",
        ),
        entry("argocd-controller", {"f:spec": fields_of(WEB_BODY["spec"])}),
    ],
    ids=["update-owner", "apply-owner"],
)
def test_values_already_there_are_not_written_again(deployment: Any, user: dict[str, Any]) -> None:
    """An Update only takes the fields whose value it changes: writing the same value again would be a
    write on every resync that changes nothing, so it is not sent (podgrace does not own these)."""
    obj = live(deployment, nginx_lifecycle=SLEEP_5, entries=[user])
    assert noop(obj, WEB)


def test_a_field_shared_with_another_owner_is_left_to_it(deployment: Any) -> None:
    """The revert: the owner holds the same values; they stay, only podgrace's claims go (metadata only)."""
    argo = entry("argocd-controller", {"f:spec": fields_of(WEB_BODY["spec"])})
    ours = entry("podgrace", {"f:spec": fields_of(WEB_BODY["spec"])}, operation="Update")
    for item in ours["fieldsV1"]["f:spec"]["f:template"]["f:spec"]["f:containers"].values():
        del item["."], item["f:name"]  # an Update does not take a container's key it did not change
    obj = live(deployment, nginx_lifecycle=SLEEP_5, entries=[argo, ours])
    obj["metadata"]["resourceVersion"] = "9"
    assert write_patch(obj, {}, None) == {"metadata": {"managedFields": [argo], "resourceVersion": "9"}}


def test_what_the_release_of_the_grace_period_leaves_to_podgrace_is_given_up(deployment: Any) -> None:
    """Released (null), the grace period is the API server's default 30, and an Update owns what the server
    defaulted in it (seen on the real API server): not written again (that would be a write on every
    reconcile), podgrace's claim goes; the user's claims stay as they are."""
    grace = {"f:spec": {"f:template": {"f:spec": {"f:terminationGracePeriodSeconds": {}}}}}
    ours = entry("podgrace", grace, operation="Update")
    obj = live(deployment, grace=30, entries=[USER, ours])
    obj["metadata"]["resourceVersion"] = "9"
    assert write_patch(obj, {}, None) == {"metadata": {"managedFields": [USER], "resourceVersion": "9"}}
    obj["metadata"]["managedFields"] = [USER]
    assert noop(obj, {})


def test_first_write(deployment: Any) -> None:
    obj = live(deployment, grace=None, entries=[USER])
    assert write_patch(obj, WEB, None) == {
        "metadata": {"resourceVersion": None},
        "spec": {"template": {"spec": WEB}},
    }


def test_a_container_the_owner_removed_is_never_named(deployment: Any) -> None:
    """The list merges by name: naming a container the live object lacks would add it back, imageless."""
    obj = live(deployment, nginx_lifecycle=SLEEP_5, entries=[USER])
    obj["spec"]["template"]["spec"]["containers"][0]["name"] = "web"
    pod_spec = {
        **WEB,
        "containers": [{"name": "nginx", "lifecycle": SLEEP_5}, {"name": "gone", "lifecycle": SLEEP_5}],
    }
    assert noop(obj, pod_spec)


@pytest.mark.parametrize(
    ("entries", "lifecycle", "noop_"),
    [
        ([], SLEEP_5, True),
        ([USER, ARGO], SLEEP_5, True),
        ([entry("podgrace", {"f:metadata": {"f:labels": {"f:x": {}}}})], SLEEP_5, True),  # only its fields
        ([USER, entry("podgrace", PODGRACE_SLEEP_AND_GRACE)], SLEEP_5, False),
        ([entry("podgrace", ARGOCD_STOP_SIGNAL)], {"stopSignal": "SIGQUIT"}, False),
    ],
    ids=["no-managers", "users-only", "podgrace-metadata-only", "podgrace-owns-spec", "podgrace-owns-signal"],
)
def test_revert_is_noop_only_when_podgrace_owns_nothing(
    deployment: Any, entries: list[dict[str, Any]], lifecycle: dict[str, Any], noop_: bool
) -> None:
    obj = live(deployment, nginx_lifecycle=lifecycle, entries=entries)
    assert noop(obj, {}) is noop_


@pytest.mark.parametrize(
    ("entries", "pod_patch"),
    [
        (
            [entry("podgrace", PODGRACE_SLEEP_AND_GRACE)],
            {GRACE: None, "containers": [{"name": "nginx", "lifecycle": None}]},
        ),
        # the user's client-side apply holds the grace period too (same value): it stays, theirs
        (
            [USER, entry("podgrace", PODGRACE_SLEEP_AND_GRACE)],
            {"containers": [{"name": "nginx", "lifecycle": None}]},
        ),
    ],
    ids=["podgrace-alone", "grace-shared"],
)
def test_revert_releases_what_only_podgrace_holds_and_leaves_no_empty_lifecycle(
    deployment: Any, entries: list[dict[str, Any]], pod_patch: dict[str, Any]
) -> None:
    obj = live(deployment, nginx_lifecycle=SLEEP_5, entries=entries)
    patch = write_patch(obj, {}, None)
    assert patch is not None
    assert patch["spec"]["template"]["spec"] == pod_patch


@pytest.mark.parametrize("annotations", [{}, {ANN_MODE: "audit"}], ids=["annotation-removed", "mode-audit"])
def test_revert_plan_gives_up_every_field(
    builtin_profiles: dict[str, ShutdownProfile], deployment: Any, annotations: dict[str, str]
) -> None:
    """A Deployment that was managed (podgrace owns sleep + grace) and is no longer: podgrace wants no
    fields, so its patch removes all of its own, and it is not skipped as a no-op."""
    ann = {"podgrace.dev/profile": "nginx", **annotations} if annotations else {}
    obj = deployment(
        [{"name": "nginx", "image": "nginx:1.27", "lifecycle": SLEEP_5}],
        annotations=ann,
        grace=40,
        managed_fields=[entry("podgrace", PODGRACE_SLEEP_AND_GRACE)],
    )
    result = planner.plan(
        workload_parser.from_object(obj, with_ownership=True), builtin_profiles, _caps("1.34")
    )
    assert result.outcome in (Outcome.NOT_OPTED_IN, Outcome.AUDIT)
    body = apply_body.apply_body("default", "shop", result)
    assert "spec" not in body
    assert body == REVERT_BODY
    assert not noop(obj, apply_body.pod_spec_fields(result))
    reverted = {**obj, "metadata": {**obj["metadata"], "managedFields": []}}
    assert noop(reverted, apply_body.pod_spec_fields(result))


# --- cluster mode, end to end over the pure core ------------------------------------------------------------


CAPS: dict[str, Capabilities] = {
    "1.29": from_description((1, 29), {}),
    "1.34": from_description((1, 34), {}),
    "1.34+gate": from_description((1, 34), {"ContainerStopSignals": True}),
    "1.35+gate": from_description((1, 35), {"ContainerStopSignals": True}),
}


def _caps(name: str) -> Capabilities:
    return CAPS[name]


PODS = {
    "nginx": [{"name": "nginx", "image": "nginx:1.27"}],
    "php-fpm": [{"name": "php-fpm", "image": "php:8.3-fpm"}],
    "nginx-php-fpm": [{"name": "nginx", "image": "nginx:1.27"}, {"name": "php-fpm", "image": "php:8.3-fpm"}],
    "apache": [{"name": "httpd", "image": "httpd:2.4"}],
    "web": [{"name": "app", "image": "ghcr.io/acme/shop:1"}],
}
CASES = [(p, c) for p in PODS for c in ("1.29", "1.34", "1.34+gate", "1.35+gate")]


@pytest.mark.parametrize(("profile", "caps"), CASES, ids=[f"{p}@{c}" for p, c in CASES])
def test_after_apply_a_resync_is_a_noop(
    builtin_profiles: dict[str, ShutdownProfile], deployment: Any, profile: str, caps: str
) -> None:
    manifest = deployment(PODS[profile], profile=profile)
    user_fields = fields_of({k: v for k, v in manifest.items() if k in ("metadata", "spec")}, dots=True)
    manifest["metadata"]["managedFields"] = [
        entry("kubectl-client-side-apply", user_fields, operation="Update")
    ]

    first = planner.plan(
        workload_parser.from_object(manifest, with_ownership=True), builtin_profiles, _caps(caps)
    )
    body = apply_body.apply_body("default", "shop", first)
    assert not noop(manifest, body["spec"]["template"]["spec"])

    # the object as the API server has it after podgrace's apply
    after = apply_body.merge_into_manifest(manifest, first)
    after["metadata"]["managedFields"] = [
        *manifest["metadata"]["managedFields"],
        entry("podgrace", {"f:spec": fields_of(body["spec"])}, operation="Update"),
    ]
    assert noop(after, body["spec"]["template"]["spec"])

    second = planner.plan(
        workload_parser.from_object(after, with_ownership=True), builtin_profiles, _caps(caps)
    )
    assert second.decisions == ()
    assert second.findings_before == ()
    assert apply_body.apply_body("default", "shop", second) == body
