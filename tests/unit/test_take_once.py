"""Take once, never fight (issue 12): the pure decision and the controller's memory of it."""

from __future__ import annotations

from typing import Any

import pytest

from podgrace.controller.field_memory import FieldMemory
from podgrace.core.take_once import (
    Taken,
    Verdict,
    contested_values,
    decide,
    inputs_key,
    metric_label,
    podgrace_owned,
)

GRACE = "terminationGracePeriodSeconds"

# One row per case: what podgrace took (None: nothing), live value, podgrace owns it now, inputs -> verdict
DECIDE_TABLE = [
    ("never-taken", None, 30, False, "a", Verdict.FREE),
    ("still-podgraces", Taken(70, "a"), 70, True, "a", Verdict.FREE),
    ("owner-set-it-back", Taken(70, "a"), 30, False, "a", Verdict.RECLAIMED),
    ("owner-removed-it", Taken({"sleep": {"seconds": 5}}, "a"), None, False, "a", Verdict.RECLAIMED),
    ("same-value-other-owner", Taken(70, "a"), 70, False, "a", Verdict.FREE),
    ("annotation-or-profile-changed", Taken(70, "a"), 30, False, "b", Verdict.FREE),
    ("backed-off-owner-holds", Taken(70, "a", owner_value=30), 30, False, "a", Verdict.BACKED_OFF),
    ("backed-off-owner-changed-value", Taken(70, "a", owner_value=30), 45, False, "a", Verdict.FREE),
]


@pytest.mark.parametrize(
    ("taken", "live", "owns", "inputs", "verdict"),
    [r[1:] for r in DECIDE_TABLE],
    ids=[r[0] for r in DECIDE_TABLE],
)
def test_decide(taken: Taken | None, live: Any, owns: bool, inputs: str, verdict: Verdict) -> None:
    assert decide(taken, live, owns, inputs) is verdict


def test_memory_backs_off_once_and_forgets_on_change() -> None:
    memory = FieldMemory()
    memory.wrote(("n", "d"), "u", {GRACE: 70}, "a")
    assert memory.verdicts(("n", "d"), "u", {GRACE: 70}, {GRACE}, "a") == {}
    assert memory.verdicts(("n", "d"), "u", {GRACE: 30}, set(), "a") == {GRACE: Verdict.RECLAIMED}
    # every later look: still backed off, RECLAIMED (Warning, metric) only once
    for _ in range(3):
        assert memory.verdicts(("n", "d"), "u", {GRACE: 30}, set(), "a") == {GRACE: Verdict.BACKED_OFF}
    # the owner's value changes: podgrace may take it once more
    assert memory.verdicts(("n", "d"), "u", {GRACE: 45}, set(), "a") == {}
    assert memory.verdicts(("n", "d"), "u", {GRACE: 30}, set(), "a") == {}
    memory.wrote(("n", "d"), "u", {GRACE: 70}, "a")
    assert memory.verdicts(("n", "d"), "u", {GRACE: 30}, set(), "b") == {}  # the annotations changed
    memory.wrote(("n", "d"), "u", {GRACE: 70}, "a")
    memory.forget(("n", "d"))
    assert memory.verdicts(("n", "d"), "u", {GRACE: 30}, set(), "a") == {}


def test_a_field_of_a_container_that_is_gone_was_not_taken_back() -> None:
    """An owner renamed or removed the container: no OwnerReclaimed, no metric (seen in e2e: counted, with
    no Warning), and nothing remembered of it."""
    hook = "containers[nginx].lifecycle.preStop"
    memory = FieldMemory()
    memory.wrote(("n", "d"), "u", {hook: {"sleep": {"seconds": 5}}, GRACE: 70}, "a")
    live = {GRACE: 70, "containers[web].lifecycle.preStop": None}
    assert memory.verdicts(("n", "d"), "u", live, {GRACE}, "a") == {}
    live["containers[nginx].lifecycle.preStop"] = None  # a container of that name again: a new one
    assert memory.verdicts(("n", "d"), "u", live, {GRACE}, "a") == {}


def test_inputs_key_sees_podgrace_annotations_and_the_profile_only() -> None:
    base = inputs_key({"podgrace.dev/profile": "nginx", "other": "1"}, {"rules": []})
    assert base == inputs_key({"podgrace.dev/profile": "nginx", "other": "2"}, {"rules": []})
    assert base != inputs_key(
        {"podgrace.dev/profile": "nginx", "podgrace.dev/drain-seconds": "9"}, {"rules": []}
    )
    assert base != inputs_key({"podgrace.dev/profile": "nginx"}, {"rules": [1]})


def test_contested_values_and_podgraces_ownership_from_managed_fields() -> None:
    deployment = {
        "metadata": {
            "managedFields": [
                {
                    "manager": "podgrace",
                    "operation": "Update",
                    "fieldsType": "FieldsV1",
                    "fieldsV1": {
                        "f:spec": {"f:template": {"f:spec": {
                            "f:os": {".": {}, "f:name": {}},
                            "f:containers": {'k:{"name":"nginx"}': {
                                "f:lifecycle": {".": {}, "f:preStop": {"f:sleep": {"f:seconds": {}}},
                                                "f:stopSignal": {}}
                            }},
                        }}}
                    },
                },
                {
                    "manager": "helm",
                    "operation": "Update",
                    "fieldsType": "FieldsV1",
                    "fieldsV1": {
                        "f:spec": {"f:template": {"f:spec": {"f:terminationGracePeriodSeconds": {}}}}
                    },
                },
            ]
        },
        "spec": {"template": {"spec": {
            "terminationGracePeriodSeconds": 30,
            "os": {"name": "linux"},
            "containers": [
                {"name": "nginx",
                 "lifecycle": {"preStop": {"sleep": {"seconds": 5}}, "stopSignal": "SIGQUIT"}},
                {"name": "php-fpm"},
            ],
        }}},
    }  # fmt: skip
    assert contested_values(deployment) == {
        GRACE: 30,
        "os.name": "linux",
        "containers[nginx].lifecycle.preStop": {"sleep": {"seconds": 5}},
        "containers[nginx].lifecycle.stopSignal": "SIGQUIT",
        "containers[php-fpm].lifecycle.preStop": None,
        "containers[php-fpm].lifecycle.stopSignal": None,
    }
    assert podgrace_owned(deployment) == {
        "os.name",
        "containers[nginx].lifecycle.preStop",
        "containers[nginx].lifecycle.stopSignal",
    }


@pytest.mark.parametrize(
    ("key", "label"),
    [
        (GRACE, GRACE),
        ("os.name", "os.name"),
        ("containers[nginx].lifecycle.preStop", "preStop"),
        ("containers[a.b].lifecycle.stopSignal", "stopSignal"),  # no container name: a bounded label
    ],
)
def test_metric_label(key: str, label: str) -> None:
    assert metric_label(key) == label
