"""The writer's pure parts for references, groups, retries and escrow."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from schemas import ManagedObject, ProvisioningCommand
from schemas.codecs import encode
from services.runtime.config import Retries
from services.runtime.errors import TransientError
from services.writer.decide import decide, desired_state
from services.writer.escrow import EscrowStore
from services.writer.groups import current_members, member_delta, written_members
from services.writer.links import Deferrals, LinkIndex, resolve
from services.writer.retry import escrow_interval, retry_delay, should_escrow

NOW = datetime.now(UTC)
MANAGER = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager"
ALL = frozenset({"create", "update", "delete"})


def cmd(source_id: str = "u1", object_type: Any = "user", **fields: Any) -> ProvisioningCommand:
    return ProvisioningCommand(app="a", object_type=object_type, source="s", source_id=source_id,
                               operation=fields.pop("operation", "upsert"), reason="in scope",
                               change_id="c", observed_at=NOW, **fields)


def state(source_id: str, target_id: str, object_type: Any = "user", **attrs: Any) -> ManagedObject:
    return ManagedObject(app="a", object_type=object_type, source_id=source_id, target_id=target_id,
                         attributes=attrs, origin="created", created_at=NOW, updated_at=NOW)


# -- link index and resolution -------------------------------------------------------------

def test_changelog_records_link_and_tombstones_unlink() -> None:
    links = LinkIndex()
    assert links.apply(b"a/u2", encode(state("u2", "T2"))) == ("a", "u2")
    assert links.apply(b"a/u2", encode(state("u2", "T2"))) is None  # same link: nothing new
    assert links.target_id("a", "u2") == "T2"
    assert links.apply(b"a/u2", None) is None
    assert links.target_id("a", "u2") is None
    assert links.apply(b"a/u3", b"not json") is None and len(links) == 0


def test_reference_resolves_to_target_id_or_is_left_out_and_missing() -> None:
    links = LinkIndex()
    report = cmd(attributes={"userName": "r", MANAGER: "u9"}, references={MANAGER: "u9"})
    first = resolve(report, links)
    assert MANAGER not in first.command.attributes and first.missing == ["u9"]
    links.set(state("u9", "T9"))
    second = resolve(report, links)
    assert second.command.attributes[MANAGER] == "T9" and second.missing == []


def test_group_members_resolve_to_linked_target_ids_only() -> None:
    links = LinkIndex()
    links.set(state("u1", "T1"))
    links.set(state("u3", "T3"))
    group = resolve(cmd("g1", "group", members=["u3", "u1", "u2"]), links)
    assert group.members == ["T1", "T3"] and group.missing == ["u2"]


def test_deferral_names_waiting_objects_and_a_newer_command_replaces_it() -> None:
    deferrals = Deferrals()
    old = cmd("g1", "group", members=["u1", "u2"])
    deferrals.defer(b"a/g1", old, ["u1", "u2"])
    assert deferrals.waiting_for("a", "u2") == [b"a/g1"]
    newer = cmd("g1", "group", members=["u1"])
    deferrals.defer(b"a/g1", newer, ["u1"])
    assert deferrals.waiting_for("a", "u2") == []
    assert deferrals.command(b"a/g1") is newer
    deferrals.defer(b"a/g1", newer, [])
    assert deferrals.command(b"a/g1") is None and len(deferrals) == 0


# -- groups ----------------------------------------------------------------------------------

def test_member_delta_sends_only_the_difference() -> None:
    delta = member_delta({"T1", "T2", "T3"}, ["T2", "T3", "T4", "T5"])
    assert (delta.add, delta.remove) == (["T4", "T5"], ["T1"])
    assert not member_delta({"T1"}, ["T1"])


def test_members_written_and_found() -> None:
    assert written_members(state("g", "G", "group", members=["T2", "T1"])) == {"T1", "T2"}
    assert written_members(None) == set()
    assert current_members({"members": [{"value": "T1"}, {"display": "x"}, "junk"]}) == {"T1"}


def test_group_has_no_active_and_no_soft_delete() -> None:
    group = cmd("g1", "group", attributes={"displayName": "G"})
    assert desired_state(group) == {"displayName": "G"}
    managed = state("g1", "G1", "group", displayName="G")
    gone = cmd("g1", "group", operation="deprovision")
    assert decide(gone, managed, ALL).action == "delete"
    kept = decide(gone, managed, frozenset({"create", "update"}))
    assert kept.action == "skip" and "no soft delete" in kept.reason


# -- retries and escrow -----------------------------------------------------------------------

def test_backoff_grows_with_jitter_and_respects_retry_after_and_cap() -> None:
    retries = Retries(initial_wait=1.0, max_wait=8.0, escrow_after=3)
    assert retry_delay(1, retries, rand=lambda: 0.0) == 0.5
    assert retry_delay(1, retries, rand=lambda: 1.0) == 1.0
    assert retry_delay(3, retries, rand=lambda: 1.0) == 4.0
    assert retry_delay(10, retries, rand=lambda: 1.0) == 8.0
    assert retry_delay(1, retries, retry_after=30.0) == 30.0  # the target's word is a floor
    assert not should_escrow(2, retries) and should_escrow(3, retries)
    assert escrow_interval(retries) == 8.0
    with pytest.raises(ValueError, match="counts from 1"):
        retry_delay(0, retries)


def test_escrow_keeps_first_time_and_is_due_after_interval() -> None:
    table: dict[bytes, bytes] = {}
    store = EscrowStore(table)
    exc = TransientError("POST /Users -> 503", status=503)
    assert store.put(b"a/u1", cmd(), 5, exc, now=NOW) is True
    assert store.put(b"a/u1", cmd(), 6, exc, now=NOW + timedelta(seconds=10)) is False
    entry = store.get(b"a/u1")
    assert entry is not None and entry.attempts == 6 and entry.escrowed_at == NOW
    assert store.due(NOW + timedelta(seconds=15), lambda app: 10.0) == []
    assert [k for k, _ in store.due(NOW + timedelta(seconds=20), lambda app: 10.0)] == [b"a/u1"]
    assert store.counts() == {"a": 1}
    assert store.forget_app("a") == 1 and table == {}
    assert store.drop(b"a/u1") is False
