"""The writer's decisions: idempotent updates, soft deletes, and never touching the unmanaged."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from schemas import ManagedObject, ProvisioningCommand
from services.writer.decide import after_lookup, decide

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


def read(resource: dict[str, Any], path: str) -> Any:
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
