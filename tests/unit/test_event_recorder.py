"""Event de-duplication holds a bounded digest, never what users wrote, and survives restarts."""

from __future__ import annotations

import gc
import tracemalloc
from typing import Any

from fake_api import FakeApi
from prometheus_client import CollectorRegistry

from podgrace.controller import event_recorder
from podgrace.controller.event_recorder import WARNING, EventRecorder
from podgrace.controller.metrics import Metrics
from podgrace.core import overrides
from podgrace.core.constants import ANN_DRAIN, ANN_PROFILE, MAX_ANNOTATION_VALUE


def deployment(uid: str = "uid-web") -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop", "uid": uid},
    }


def recorder(api: FakeApi) -> EventRecorder:
    return EventRecorder(api, Metrics(CollectorRegistry()))


async def test_a_long_warning_is_not_posted_again_after_a_restart() -> None:
    api = FakeApi()
    message = "InvalidAnnotation: " + "x" * 5000
    await recorder(api).post(deployment(), WARNING, "InvalidAnnotation", message)
    assert len(api.events) == 1
    assert len(api.events[0]["message"]) <= event_recorder.MAX_MESSAGE
    await recorder(api).post(deployment(), WARNING, "InvalidAnnotation", message)  # a new process
    assert len(api.events) == 1


async def test_a_warning_differing_only_after_the_cut_is_the_same_event() -> None:
    api = FakeApi()
    events = recorder(api)
    base = "y" * event_recorder.MAX_MESSAGE
    await events.post(deployment(), WARNING, "InvalidAnnotation", base + "first")
    await events.post(deployment(), WARNING, "InvalidAnnotation", base + "second")
    assert len(api.events) == 1


class Forgetful(FakeApi):
    """Drops what it is sent: only the recorder's own memory is measured."""

    async def create_event(self, namespace: str, event: dict[str, Any]) -> None:
        pass

    async def get_event(self, namespace: str, name: str) -> dict[str, Any] | None:
        return None


async def test_memory_does_not_grow_with_the_messages_users_cause() -> None:
    events = recorder(Forgetful())
    big = "z" * 100_000
    await events.post(deployment(), WARNING, "InvalidAnnotation", "warm-up " + big)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(300):  # 300 distinct 100 KB messages: 30 MB if they were kept
            await events.post(deployment(), WARNING, "InvalidAnnotation", f"{i} {big}")
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 300 * 1_000, grown  # a digest and a dict entry each, not the message


def test_annotation_values_are_capped_and_quoted_briefly() -> None:
    huge = "5" * (MAX_ANNOTATION_VALUE + 1)
    parsed = overrides.parse({ANN_PROFILE: "nginx", ANN_DRAIN: huge})
    assert parsed.drain_seconds is None
    assert parsed.errors == (f"{ANN_DRAIN}: the value is {len(huge)} characters long, more than 1024",)
    parsed = overrides.parse({ANN_PROFILE: "nginx", ANN_DRAIN: "s" * 1000})
    (error,) = parsed.errors
    assert len(error) < 200 and "(1000 characters)" in error


def test_an_overlong_profile_value_is_an_invalid_opt_in_not_an_opt_out() -> None:
    parsed = overrides.parse({ANN_PROFILE: "a" * 5000})
    assert parsed.profile is not None and len(parsed.profile) <= 64
    assert parsed.errors and "5000 characters long" in parsed.errors[0]


def test_thousands_of_unknown_annotations_are_one_bounded_error_list() -> None:
    parsed = overrides.parse({ANN_PROFILE: "nginx", **{f"podgrace.dev/x{i}": "1" for i in range(3000)}})
    assert len(parsed.errors) == 6
    assert parsed.errors[-1] == "2995 more unknown podgrace annotations"


class Counting(FakeApi):
    def __init__(self) -> None:
        super().__init__()
        self.creates = 0

    async def create_event(self, namespace: str, event: dict[str, Any]) -> None:
        self.creates += 1
        await super().create_event(namespace, event)


async def test_a_restarted_process_finds_a_posted_warning_with_one_read_and_no_write() -> None:
    api = Counting()
    for i in range(50):  # many Warnings on one Deployment (a user's edits)
        await recorder(api).post(deployment(), WARNING, "InvalidAnnotation", f"bad value {i}")
    assert len(api.events) == 50 and api.creates == 50 and api.event_reads == 50
    await recorder(api).post(deployment(), WARNING, "InvalidAnnotation", "bad value 7")  # a new process
    assert len(api.events) == 50 and api.event_reads == 51 and api.creates == 50  # one GET, no write
