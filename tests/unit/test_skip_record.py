"""The record that decides which workload events need no reconcile (controller.skip_record)."""

from __future__ import annotations

from podgrace.controller.skip_record import SkipRecord
from podgrace.controller.workload_key import Key

KEY = Key("Deployment", "web", "shop")


def test_settled_holds_for_the_same_signature_under_the_same_profiles_only() -> None:
    record = SkipRecord()
    assert not record.is_settled(KEY, b"a")
    record.settle(KEY, b"a", record.profiles_version)
    assert record.is_settled(KEY, b"a")
    assert not record.is_settled(KEY, b"b")
    assert not record.is_settled(Key("Deployment", "web", "other"), b"a")
    record.profiles_changed()
    assert not record.is_settled(KEY, b"a")


def test_a_settlement_under_profiles_that_changed_during_the_reconcile_does_not_hold() -> None:
    record = SkipRecord()
    started = record.profiles_version
    record.profiles_changed()  # while the reconcile ran
    record.settle(KEY, b"a", started)
    assert not record.is_settled(KEY, b"a")


def test_an_event_older_than_podgraces_write_is_stale() -> None:
    record = SkipRecord()
    assert not record.is_stale(KEY, {"uid": "u1", "generation": 1})
    record.wrote(KEY, {"metadata": {"uid": "u1", "generation": 3}})
    assert record.is_stale(KEY, {"uid": "u1", "generation": 2})
    assert not record.is_stale(KEY, {"uid": "u1", "generation": 3})
    assert not record.is_stale(KEY, {"uid": "u2", "generation": 1})  # deleted and created again
    assert not record.is_stale(KEY, {"uid": "u1"})


def test_unsettle_keeps_the_write_and_forget_drops_both() -> None:
    record = SkipRecord()
    record.settle(KEY, b"a", record.profiles_version)
    record.wrote(KEY, {"metadata": {"uid": "u1", "generation": 3}})
    record.unsettle(KEY)
    assert not record.is_settled(KEY, b"a")
    assert record.is_stale(KEY, {"uid": "u1", "generation": 2})
    record.settle(KEY, b"a", record.profiles_version)
    record.forget(KEY)
    assert not record.is_settled(KEY, b"a")
    assert not record.is_stale(KEY, {"uid": "u1", "generation": 2})


def test_a_fresh_read_makes_older_events_stale_but_never_lowers_the_mark() -> None:
    record = SkipRecord()
    record.read(KEY, {"metadata": {"uid": "u1", "generation": 4}})
    assert record.is_stale(KEY, {"uid": "u1", "generation": 3})
    record.read(KEY, {"metadata": {"uid": "u1", "generation": 2}})  # an older read answered late
    assert record.is_stale(KEY, {"uid": "u1", "generation": 3})
    record.read(KEY, {"metadata": {"uid": "u2", "generation": 1}})  # deleted and created again
    assert not record.is_stale(KEY, {"uid": "u1", "generation": 3})
    assert not record.is_stale(KEY, {"uid": "u2", "generation": 1})
