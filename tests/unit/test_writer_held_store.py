"""The held store: one entry per object, the latest held command, readable after a restart."""

from __future__ import annotations

from datetime import UTC, datetime

from schemas import ProvisioningCommand
from services.writer.held import HeldStore

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def command(app: str, sid: str, operation: str = "upsert") -> ProvisioningCommand:
    return ProvisioningCommand(app=app, object_type="user", source="s", source_id=sid,
                               operation=operation, reason="r", change_id="c", observed_at=T0)  # type: ignore[arg-type]


def test_an_object_holds_its_latest_command_and_a_report_is_remembered() -> None:
    table: dict[bytes, bytes] = {}
    store = HeldStore(table)
    store.put(b"a/u1", command("a", "u1"), "off", T0)
    store.put(b"a/u1", command("a", "u1", "delete"), "removal", T0)
    store.reported(b"a/u1")
    again = HeldStore(table).get(b"a/u1")  # what a restarted writer reads
    assert again is not None and again.reason == "removal" and again.reported
    assert again.command.operation == "delete" and again.held_at == T0


def test_drop_and_forget_app_leave_other_apps_alone() -> None:
    store = HeldStore()
    for key, app in ((b"a/u1", "a"), (b"a/u2", "a"), (b"b/u1", "b")):
        store.put(key, command(app, key.decode().split("/")[1]), "off", T0)
    assert store.drop(b"a/u1") and not store.drop(b"a/u1")
    assert store.forget_app("a") == 1
    assert store.held_keys() == [b"b/u1"]


def test_an_unreadable_entry_reads_as_absent() -> None:
    store = HeldStore({b"a/u1": b"not json"})
    assert store.get(b"a/u1") is None
    assert list(store.entries([b"a/u1"])) == []
