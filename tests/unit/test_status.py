"""Sync details from topic contents: counts, cycles, progress, status and quarantine, escrow,
last error (the topic reads are replaced by fixed records; the real reads are exercised by
the e2e tests)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from schemas import (
    ActivityRecord,
    CycleMarker,
    DirectoryChange,
    ErrorRecord,
    ManagedObject,
    ProvisioningCommand,
)
from schemas.codecs import encode
from schemas.control import AllowDeletes, AppCapabilities, AppHealth, AppStatus
from services.admin import status
from services.runtime.config import load_config
from services.runtime.topics import Topics

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class Rec:
    value: bytes


def _managed(app: str, sid: str, kind: str = "user", active: bool = True) -> bytes:
    return encode(ManagedObject(app=app, object_type=kind, source_id=sid, target_id=f"t-{sid}",  # type: ignore[arg-type]
                                active=active, origin="created", created_at=T0, updated_at=T0))


def _marker(cycle: str, phase: str, at: datetime, total: int | None = None) -> Rec:
    return Rec(encode(CycleMarker(source="hr", cycle_id=cycle, phase=phase, total=total, at=at)))  # type: ignore[arg-type]


def _change(oid: str, cycle: str | None) -> Rec:
    return Rec(encode(DirectoryChange(source="hr", object_type="user", object_id=oid, operation="upsert",
                                      change_id=oid, cycle_id=cycle, observed_at=T0)))


def _activity(app: str, sid: str, action: str, status_: str = "success") -> Rec:
    return Rec(encode(ActivityRecord(id=sid + action, at=T0, app=app, object_type="user", action=action,  # type: ignore[arg-type]
                                     status=status_, source="hr", source_id=sid)))  # type: ignore[arg-type]


@pytest.fixture
def loaded(tmp_path: Path) -> Any:
    app = {"target": {"base_url": "https://x.example/scim", "token": "env:NOPE"},
           "mappings": {"user": {"attributes": [{"target": "userName", "source": "upn", "matching": 1}]}}}
    config = {"sources": [{"name": "hr", "type": "file", "path": "d.yaml"}],
              "applications": [{"name": "crm", **app}, {"name": "wiki", "dry_run": True, **app}]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    return load_config(tmp_path / "c.yaml", resolve_secrets=False)


def _reports(monkeypatch: pytest.MonkeyPatch, loaded: Any, **data: Any) -> dict[str, status.AppStatusReport]:
    topics: dict[str, Any] = {"state": {}, "escrow": {}, "control": {},
                              "changes": [], "activity": [], "errors": []}
    topics.update(data)
    monkeypatch.setattr(status, "_read_topics", lambda bootstrap, t: topics)
    return {r.app: r for r in status.read_status(loaded, "unused:9092", Topics())}


def test_counts_come_from_the_latest_state_and_escrow(monkeypatch: pytest.MonkeyPatch, loaded: Any) -> None:
    state = {b"crm/u1": _managed("crm", "u1"), b"crm/u2": _managed("crm", "u2", active=False),
             b"crm/g1": _managed("crm", "g1", kind="group"), b"wiki/u1": _managed("wiki", "u1"),
             b"other/u1": _managed("other", "u1"), b"crm/bad": b"{not json"}
    command = ProvisioningCommand(app="crm", object_type="user", source="hr", source_id="u3",
                                  operation="upsert", reason="in scope", change_id="c", observed_at=T0)
    escrow = {b"crm/u3": encode(command), b"wiki/u9": b'{"some": "other shape"}', b"nokey": b"{}"}
    r = _reports(monkeypatch, loaded, state=state, escrow=escrow)
    assert (r["crm"].managed_users, r["crm"].disabled_users, r["crm"].managed_groups) == (2, 1, 1)
    assert (r["wiki"].managed_users, r["wiki"].managed_groups) == (1, 0)
    assert (r["crm"].escrowed, r["wiki"].escrowed) == (1, 1)
    assert r["wiki"].dry_run and not r["crm"].dry_run


def test_cycles_and_the_running_cycle_progress(monkeypatch: pytest.MonkeyPatch, loaded: Any) -> None:
    changes = [
        _marker("c1", "start", T0), _marker("c1", "start", T0 + timedelta(seconds=1)),  # one per partition
        _change("u1", "c1"), _change("u2", "c1"),
        _marker("c1", "end", T0 + timedelta(seconds=8), total=2),
        _marker("c1", "end", T0 + timedelta(seconds=9)),
        _marker("c2", "start", T0 + timedelta(minutes=10)),
        _change("u1", "c2"), _change("u2", "c2"), _change("u2", "c2"), _change("u3", None),
        Rec(b"garbage"),
    ]
    r = _reports(monkeypatch, loaded, changes=changes)["crm"]
    assert r.first_cycle_start == T0
    assert r.last_cycle_start == T0 + timedelta(minutes=10)
    assert r.last_cycle_end == T0 + timedelta(seconds=9)
    assert r.last_cycle_seconds == 9.0
    assert r.cycle_running
    assert r.progress == status.CycleProgress("c2", done=2, total=None)


def test_status_from_control_with_quarantine_and_why(monkeypatch: pytest.MonkeyPatch, loaded: Any) -> None:
    control = {
        b"crm/status": encode(AppStatus(app="crm", status="off", by="alice", at=T0)),
        b"crm/health": encode(AppHealth(app="crm", quarantined=True, reason="credentials", at=T0)),
        b"wiki/health": encode(AppHealth(app="wiki", quarantined=True, reason="failure ratio 0.9",
                                         since=T0, next_probe=T0 + timedelta(seconds=5), at=T0)),
        b"wiki/allow-deletes": encode(AllowDeletes(app="wiki", before=T0, by="bob")),
        b"junk": b"[]",
    }
    r = _reports(monkeypatch, loaded, control=control)
    assert (r["crm"].status, r["crm"].status_by, r["crm"].status_at) == ("off", "alice", T0)
    assert (r["wiki"].status, r["wiki"].status_reason) == ("quarantined", "failure ratio 0.9")
    assert r["wiki"].next_probe == T0 + timedelta(seconds=5)


def test_sync_details_show_what_the_target_declares(monkeypatch: pytest.MonkeyPatch, loaded: Any) -> None:
    declared = {"patch": False, "bulk": True, "bulk_max_operations": 1000, "etag": True}
    problem = "c.yaml:7: crm: user mapping 'nickname': the target declares no attribute 'nickname'"
    control = {b"crm/capabilities": encode(AppCapabilities(app="crm", capabilities=declared,
                                                            problems=[problem], at=T0))}
    r = _reports(monkeypatch, loaded, control=control)
    assert r["crm"].capabilities == declared and r["crm"].mapping_problems == [problem]
    assert r["wiki"].capabilities is None and r["wiki"].mapping_problems == []


def test_outcomes_held_removals_and_last_error(monkeypatch: pytest.MonkeyPatch, loaded: Any) -> None:
    activity = [_activity("crm", "u1", "create"), _activity("crm", "u2", "create", "failure"),
                _activity("crm", "u3", "stagedDelete", "skipped"),
                _activity("crm", "u4", "stagedDelete", "skipped"),
                _activity("crm", "u4", "disable"), _activity("wiki", "u1", "create", "dryRun")]
    errors = [Rec(encode(ErrorRecord(id=str(i), at=T0 + timedelta(seconds=i), service="writer",
                                     error_code=code, reason="why", recommended_action="act", app="crm")))
              for i, code in enumerate(["TransientTargetError", "RequestRejected"])]
    r = _reports(monkeypatch, loaded, activity=activity, errors=errors)
    assert r["crm"].outcomes == {"create/success": 1, "create/failure": 1, "stagedDelete/skipped": 2,
                                 "disable/success": 1}
    assert r["crm"].held_removals == 1
    assert r["wiki"].outcomes == {"create/dryRun": 1}
    assert r["crm"].last_error == "RequestRejected: why"
    assert r["wiki"].last_error is None
