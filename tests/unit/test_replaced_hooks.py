"""A hook podgrace replaced is remembered on the Deployment and given back to its manager on opt-out."""

from __future__ import annotations

import json
from typing import Any

from podgrace.core import replaced_hooks
from podgrace.core.constants import ANN_REPLACED_PRESTOP
from podgrace.core.hook_intent import ExecSleep
from podgrace.core.models import Ownership, Role
from podgrace.core.planner import ContainerSettings, Outcome, Plan

USER_HOOK = {"exec": {"command": ["sh", "-c", "sleep 3"]}}
KEY = "containers[nginx].lifecycle.preStop"


def _deployment(hook: dict[str, Any], annotation: str | None = None, podgrace_owns: bool = False) -> Any:
    managed = []
    if podgrace_owns:
        managed.append({
            "manager": "podgrace", "operation": "Apply", "fieldsType": "FieldsV1",
            "fieldsV1": {"f:metadata": {"f:annotations": {f"f:{ANN_REPLACED_PRESTOP}": {}}},
                         "f:spec": {"f:template": {"f:spec": {"f:containers": {'k:{"name":"nginx"}': {
                             ".": {}, "f:lifecycle": {"f:preStop": {"f:exec": {"f:command": {}}}}}}}}}},
        })  # fmt: skip
    annotations = {ANN_REPLACED_PRESTOP: annotation} if annotation else {}
    return {
        "metadata": {"annotations": annotations, "managedFields": managed},
        "spec": {"template": {"spec": {"containers": [{"name": "nginx", "lifecycle": {"preStop": hook}}]}}},
    }


def _plan(replaces: bool) -> Plan:
    hook = ExecSleep(5)
    s = ContainerSettings("nginx", "r", Role.NGINX, 5, 30, pre_stop=hook, replaces_users_hook=replaces)
    return Plan("ns/app", Outcome.MANAGED, profile="p", containers=(s,))


def test_the_replacing_apply_records_the_users_hook_and_its_manager() -> None:
    ownership = Ownership(known=True, owners=((KEY, "kubectl-create"),))
    found = replaced_hooks.annotation(_deployment(USER_HOOK), _plan(True), ownership)
    assert found is not None
    assert json.loads(found) == {"nginx": {"manager": "kubectl-create", "preStop": USER_HOOK}}
    # later applies (podgrace's hook in place) keep the record while podgrace holds the hook
    live = _deployment({"exec": {"command": ["x"]}}, found, podgrace_owns=True)
    assert replaced_hooks.annotation(live, _plan(False), Ownership(known=True)) == found
    assert replaced_hooks.owned_annotation(live)
    # nothing replaced, nothing recorded
    assert replaced_hooks.annotation(_deployment(USER_HOOK), _plan(False), ownership) is None


def test_opt_out_gives_the_hook_back_under_its_managers_name() -> None:
    record = json.dumps({"nginx": {"manager": "kubectl-create", "preStop": USER_HOOK}})
    live = _deployment({"exec": {"command": ["x"]}}, record, podgrace_owns=True)
    assert replaced_hooks.restore_patches(live) == [
        ("kubectl-create", {"spec": {"template": {"spec": {"containers": [
            {"name": "nginx", "lifecycle": {"preStop": {"$patch": "replace", **USER_HOOK}}}
        ]}}}}),
    ]  # fmt: skip
    # the owner took it back meanwhile (podgrace no longer owns it): nothing to restore
    assert replaced_hooks.restore_patches(_deployment(USER_HOOK, record)) == []
    # a broken annotation is ignored, never a crash
    assert replaced_hooks.restore_patches(_deployment(USER_HOOK, "{not json", podgrace_owns=True)) == []
