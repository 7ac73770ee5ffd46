"""The decisions around a group's members (services/writer/decide.py): when the writer must
read the target's members first, what a member delta turns a decision into, and what a dry
run of a group reports. Decisions come from ``decide`` on real commands and managed state."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from schemas import ManagedObject, ProvisioningCommand
from services.writer.decide import (
    Decision,
    decide,
    dry_run,
    group_action,
    members_decision,
    must_read_members,
)
from services.writer.groups import MemberDelta, member_delta

ALL = frozenset({"create", "update", "delete"})
NOW = datetime.now(UTC)
NONE = MemberDelta([], [])


def group_cmd(op: Any = "upsert", *, members: list[str] | None = None, **attrs: Any) -> ProvisioningCommand:
    return ProvisioningCommand(app="a", object_type="group", source="s", source_id="g1", operation=op,
                               reason="in scope", attributes={"displayName": "Staff", **attrs},
                               members=members or [], change_id="c", observed_at=NOW)


def group(origin: Literal["created", "adopted"] = "created", members: list[str] | None = None,
          **attrs: Any) -> ManagedObject:
    return ManagedObject(app="a", object_type="group", source_id="g1", target_id="tg1",
                         attributes={"displayName": "Staff", "members": members or [], **attrs},
                         origin=origin, created_at=NOW, updated_at=NOW)


def in_sync() -> Decision:
    """The decision for a managed group whose attributes the target already has."""
    decision = decide(group_cmd(), group(), ALL)
    assert decision.action == "noop"
    return decision


# -- must_read_members ----------------------------------------------------------------------


def test_a_group_listed_by_a_full_scan_is_read_for_drift_unless_drift_is_ignored() -> None:
    created = group(members=["t1"])
    assert must_read_members(created, {"t1"}, {"t1"}, listed=True, drift="report")
    assert must_read_members(created, {"t1"}, {"t1"}, listed=True, drift="repair")
    assert not must_read_members(created, {"t1"}, {"t1"}, listed=True, drift="ignore")


def test_an_adopted_group_is_read_before_a_member_is_added_to_it() -> None:
    # The target may already hold the member: adding it blind could store it twice.
    assert must_read_members(group("adopted"), {"t1"}, {"t1", "t2"}, listed=False, drift="ignore")


def test_an_adopted_group_losing_members_only_is_not_read() -> None:
    assert not must_read_members(group("adopted"), {"t1", "t2"}, {"t1"}, listed=False, drift="ignore")


def test_a_created_group_is_written_from_what_scimflow_wrote() -> None:
    # scimflow wrote every member of a group it created: no read, even for additions.
    assert not must_read_members(group("created"), {"t1"}, {"t1", "t2"}, listed=False, drift="repair")


# -- members_decision -----------------------------------------------------------------------


def test_a_membership_change_turns_an_in_sync_group_into_an_update() -> None:
    delta = member_delta({"t1"}, {"t1", "t2", "t3"})
    decision = members_decision(in_sync(), delta, [], drifted=False, drift="ignore")
    assert (decision.action, decision.repair) == ("update", False)
    assert decision.reason == "membership changed (+2 -0 members)"


def test_members_waiting_in_a_bulk_request_count_as_additions() -> None:
    decision = members_decision(in_sync(), NONE, ["s9"], drifted=False, drift="ignore")
    assert decision.action == "update" and "+1 -0 members" in decision.reason


def test_members_changed_in_the_target_are_written_back_as_a_repair() -> None:
    delta = member_delta({"t1", "t2"}, {"t1", "t2"}, actual={"t1"})
    decision = members_decision(in_sync(), delta, [], drifted=True, drift="repair")
    assert (decision.action, decision.repair) == ("update", True)
    assert decision.reason.startswith("members changed directly in the target (+1 -0 members); written back")


def test_members_changed_in_the_target_are_only_reported_with_drift_report() -> None:
    delta = member_delta({"t1"}, {"t1"}, actual={"t1", "t9"}, owned=lambda m: True)
    decision = members_decision(in_sync(), delta, [], drifted=True, drift="report")
    assert (decision.action, decision.repair) == ("skip", True)
    assert "(+0 -1 members); reported only" in decision.reason


def test_no_member_change_leaves_the_decision_as_it_was() -> None:
    decision = in_sync()
    assert members_decision(decision, NONE, [], drifted=False, drift="repair") is decision


def test_an_attribute_update_is_kept_when_members_change_too() -> None:
    rename = decide(group_cmd(displayName="Everyone"), group(), ALL)
    decision = members_decision(rename, member_delta(set(), {"t1"}), [], drifted=False, drift="ignore")
    assert decision is rename and decision.changes == {"displayName": "Everyone"}


# -- group_action and dry_run ---------------------------------------------------------------


def test_members_alone_changing_is_reported_as_an_update_of_the_group() -> None:
    assert group_action(in_sync(), member_delta(set(), {"t1"})) == "update"
    assert group_action(in_sync(), NONE) == "skip"


def test_a_group_decision_keeps_its_own_action_whatever_the_members() -> None:
    removed = decide(group_cmd("delete"), group(), ALL)
    kept = decide(group_cmd("delete"), group(), frozenset({"create", "update"}))
    assert group_action(removed, member_delta({"t1"}, set())) == "delete"
    assert group_action(kept, member_delta(set(), {"t1"})) == "skip"


def test_a_dry_run_of_an_in_sync_group_reports_nothing_to_do() -> None:
    assert dry_run(in_sync(), {"t1"}, ["t1"]) == (None, NONE)


def test_a_dry_run_reports_the_member_delta_of_a_group() -> None:
    action, delta = dry_run(in_sync(), {"t1", "t2"}, ["t2", "t3"])
    assert action == "update" and delta == MemberDelta(add=["t3"], remove=["t1"])


def test_a_dry_run_of_a_user_reports_its_decision_without_members() -> None:
    user = ProvisioningCommand(app="a", object_type="user", source="s", source_id="u1", operation="upsert",
                               reason="in scope", attributes={"userName": "ada"}, change_id="c",
                               observed_at=NOW)
    assert dry_run(decide(user, None, ALL), set(), None) == ("lookup", NONE)
