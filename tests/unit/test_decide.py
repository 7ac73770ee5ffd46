"""The writer's decisions: idempotent updates, soft deletes, and never touching the unmanaged."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest

from schemas import ManagedObject, ProvisioningCommand
from services.writer.decide import ABSENT, UNKNOWN, after_lookup, case_exact_default, decide, same_value
from services.writer.groups import member_delta

ALL = frozenset({"create", "update", "delete"})
NOW = datetime.now(UTC)


def cmd(op: Any = "upsert", reason: str = "in scope", **attrs: Any) -> ProvisioningCommand:
    return ProvisioningCommand(app="a", object_type="user", source="s", source_id="u1", operation=op,
                               reason=reason, attributes=attrs, change_id="c", observed_at=NOW)


def managed(active: bool = True, **attrs: Any) -> ManagedObject:
    return ManagedObject(app="a", object_type="user", source_id="u1", target_id="t1",
                         attributes={"active": active, **attrs}, active=active, origin="created",
                         created_at=NOW, updated_at=NOW)


def test_unmanaged_upsert_looks_up_first() -> None:
    assert decide(cmd(userName="x"), None, ALL).action == "lookup"


def test_unchanged_object_needs_no_call() -> None:
    assert decide(cmd(userName="x", title="T"), managed(userName="x", title="T"), ALL).action == "noop"


def test_only_changed_attributes_are_written() -> None:
    d = decide(cmd(userName="x", title="New"), managed(userName="x", title="Old"), ALL)
    assert (d.action, d.changes) == ("update", {"title": "New"})


def test_back_in_scope_reenables() -> None:
    d = decide(cmd(userName="x"), managed(active=False, userName="x"), ALL)
    assert (d.action, d.changes) == ("update", {"active": True})


def test_deprovision_disables_once() -> None:
    d = decide(cmd("deprovision", "not assigned"), managed(), ALL)
    assert (d.action, d.changes) == ("disable", {"active": False})
    assert decide(cmd("deprovision", "not assigned"), managed(active=False), ALL).action == "noop"


def test_unmanaged_objects_are_never_touched() -> None:
    for op in ("deprovision", "delete"):
        d = decide(cmd(op), None, ALL)
        assert d.action == "skip"
        assert "not managed" in d.reason


def test_delete_respects_the_delete_action() -> None:
    assert decide(cmd("delete"), managed(), ALL).action == "delete"
    d = decide(cmd("delete"), managed(), frozenset({"create", "update"}))
    assert (d.action, d.changes) == ("disable", {"active": False})


def test_skip_out_of_scope_deletions_still_disables_disabled_users() -> None:
    assert decide(cmd("deprovision", "not assigned"), managed(), ALL,
                  skip_out_of_scope_deletions=True).action == "skip"
    assert decide(cmd("deprovision", "disabled in source"), managed(), ALL,
                  skip_out_of_scope_deletions=True).action == "disable"


def read(resource: Mapping[str, Any], path: str) -> Any:
    return resource.get(path)


def test_adopt_writes_only_the_difference() -> None:
    found = {"userName": "x", "title": "Old", "active": True}
    d = after_lookup(cmd(userName="x", title="T"), found, ALL, read)
    assert (d.action, d.changes) == ("adopt", {"title": "T"})


def test_create_includes_create_only_values_and_honours_create_action() -> None:
    c = ProvisioningCommand(app="a", object_type="user", source="s", source_id="u1", operation="upsert",
                            reason="r", attributes={"userName": "x"}, create_only={"lang": "en"},
                            change_id="c", observed_at=NOW)
    d = after_lookup(c, None, ALL, read)
    assert (d.action, d.changes) == ("create", {"lang": "en", "userName": "x", "active": True})
    assert after_lookup(c, None, frozenset({"update"}), read).action == "skip"


def test_adoption_of_an_account_that_already_agrees_writes_nothing() -> None:
    # The target normalised the case of a caseExact=false attribute: no write for that.
    found = {"userName": "ADA@example.com", "title": "T", "active": True}
    d = after_lookup(cmd(userName="ada@example.com", title="T"), found, ALL, read)
    assert (d.action, d.changes) == ("adopt", {})


@pytest.mark.parametrize(("path", "exact"), [
    ("userName", False), ("displayName", False), ('emails[type eq "work"].value', False),
    ("externalId", True), ("id", True),
    ("urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber", False),
    ("urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager", True),
])
def test_case_exactness_follows_rfc_7643(path: str, exact: bool) -> None:
    assert case_exact_default(path) is exact


def test_values_compare_in_nfc_and_by_case_rule() -> None:
    nfd, composed = "Jose\u0301", "Jos\u00e9"
    assert same_value(nfd, composed)
    assert not same_value("Ada", "ada") and same_value("Ada", "ada", case_exact=False)
    assert not same_value(True, 1) and not same_value(None, "")


def test_drift_in_a_mapped_attribute_is_repaired_and_named() -> None:
    d = decide(cmd(userName="x", title="T"), managed(userName="x", title="T"), ALL,
               target={"userName": "x", "title": "Edited", "active": True}, drift="repair", read=read)
    assert (d.action, d.changes, d.repair) == ("update", {"title": "T"}, True)
    assert d.drift == {"title": "Edited"} and "changed directly in the target (title)" in d.reason


def test_a_user_disabled_in_the_target_is_enabled_again() -> None:
    d = decide(cmd(userName="x"), managed(userName="x"), ALL,
               target={"userName": "x", "active": False}, drift="repair", read=read)
    assert (d.action, d.changes, d.repair) == ("update", {"active": True}, True)


def test_drift_report_only_reports_and_ignore_does_not_look() -> None:
    target = {"userName": "x", "title": "Edited", "active": True}
    reported = decide(cmd(userName="x", title="T"), managed(userName="x", title="T"), ALL,
                      target=target, drift="report", read=read)
    assert (reported.action, reported.changes, reported.repair) == ("skip", {}, True)
    ignored = decide(cmd(userName="x", title="T"), managed(userName="x", title="T"), ALL,
                     target=target, drift="ignore", read=read)
    assert ignored.action == "noop"


def test_a_managed_object_deleted_in_the_target_is_recreated_or_reported() -> None:
    repaired = decide(cmd(userName="x"), managed(userName="x"), ALL, target=ABSENT, drift="repair", read=read)
    assert (repaired.action, repaired.repair) == ("lookup", True)
    reported = decide(cmd(userName="x"), managed(userName="x"), ALL, target=ABSENT, drift="report", read=read)
    assert (reported.action, reported.repair) == ("skip", True)


def test_a_source_change_the_target_already_has_is_not_written() -> None:
    d = decide(cmd(userName="x", title="New"), managed(userName="x", title="Old"), ALL,
               target={"userName": "x", "title": "New", "active": True}, drift="repair", read=read)
    assert d.action == "noop"


def test_attributes_the_target_does_not_keep_are_not_drift() -> None:
    state = ManagedObject(app="a", object_type="user", source_id="u1", target_id="t1",
                          attributes={"active": True, "userName": "x", "nickName": "N"}, active=True,
                          origin="created", created_at=NOW, updated_at=NOW, unstored=["nickName"])
    d = decide(cmd(userName="x", nickName="N"), state, ALL, target={"userName": "x", "active": True},
               drift="repair", read=read)
    assert d.action == "noop"


def test_member_deltas_against_the_target_never_add_twice_nor_remove_the_unowned() -> None:
    delta = member_delta({"a", "b"}, {"a", "c"}, actual={"a", "c", "x", "b", "m"}, owned=lambda t: t == "m")
    # c already there: not added; b was ours: removed; m is a managed account: removed; x not ours: kept.
    assert (delta.add, delta.remove) == ([], ["b", "m"])
    assert not member_delta({"a"}, {"a"}, actual={"a"})


def test_a_disabled_user_enabled_again_in_the_target_is_disabled_again() -> None:
    gone = cmd("deprovision", "not assigned", userName="x")
    target = {"userName": "x", "active": True}
    d = decide(gone, managed(active=False, userName="x"), ALL, target=target, drift="repair", read=read)
    assert (d.action, d.changes, d.repair) == ("disable", {"active": False}, True)
    reported = decide(gone, managed(active=False, userName="x"), ALL, target=target, drift="report",
                      read=read)
    assert (reported.action, reported.repair) == ("skip", True)
    still_off = decide(gone, managed(active=False, userName="x"), ALL, target={"active": False},
                       drift="repair", read=read)
    assert still_off.action == "noop"


def test_an_upsert_never_decides_a_removal() -> None:
    # The writer's deletion guard skips deciding upserts on that ground (AppState.stage_removal).
    targets: list[Any] = [UNKNOWN, ABSENT, {"userName": "x", "active": True},
                          {"userName": "x", "active": False}, {"userName": "y", "title": "Edited"}]
    states = [None, managed(userName="x"), managed(active=False, userName="x"),
              managed(userName="x", title="T")]
    for actions in (ALL, frozenset({"create", "update"}), frozenset()):
        for state in states:
            for target in targets:
                for drift in ("ignore", "report", "repair"):
                    for skip in (False, True):
                        d = decide(cmd(userName="x", title="T"), state, actions, target=target, drift=drift,
                                   read=read, skip_out_of_scope_deletions=skip)
                        assert d.action not in ("disable", "delete"), (state, target, drift, actions, d)
