"""Provision on demand's trace assembly: which message fills which step, when a trace is
complete, and a group bringing up to five members along (pure: messages are fed by hand)."""

from __future__ import annotations

from datetime import UTC, datetime

from schemas import ActivityRecord, DirectoryChange, ErrorRecord, ProvisioningCommand, Step
from schemas.codecs import encode
from schemas.control import ProvisionRequest
from services.admin.provision import MAX_MEMBERS, _Run

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _run() -> tuple[_Run, list[ProvisionRequest]]:
    sent: list[ProvisionRequest] = []
    return _Run("crm", "ops", sent.append), sent


def _change(oid: str, change_id: str, kind: str = "user", members: list[str] | None = None) -> bytes:
    return encode(DirectoryChange(source="hr", object_type=kind, object_id=oid, operation="upsert",  # type: ignore[arg-type]
                                  attributes={"upn": f"{oid}@x"}, members=members or [],
                                  change_id=change_id, observed_at=NOW))


def _command(oid: str, change_id: str, app: str = "crm") -> bytes:
    return encode(ProvisioningCommand(app=app, object_type="user", source="hr", source_id=oid,
                                      operation="upsert", reason="assigned through group g-all",
                                      change_id=change_id, observed_at=NOW))


def _activity(oid: str, change_id: str) -> bytes:
    steps = [Step(name=n, status="success", detail=f"writer {n}")
             for n in ("import", "scope", "match", "action", "export")]
    return encode(ActivityRecord(id="a", at=NOW, app="crm", object_type="user", action="create",
                                 status="success", source="hr", source_id=oid, target_id="t-1",
                                 change_id=change_id, reason="created", steps=steps))


def test_a_user_trace_has_every_step_in_order() -> None:
    run, sent = _run()
    trace = run.request("u1", "user")
    assert [(r.app, r.object_id, r.object_type, r.by, r.request_id) for r in sent] == [
        ("crm", "u1", "user", "ops", trace.request_id)]
    run.take("directory.changes", _change("u1", trace.request_id))
    run.take("provisioning.commands", _command("u1", trace.request_id, app="other"))  # another app's
    run.take("provisioning.commands", _command("u1", "someone-else"))
    assert not trace.finished and trace.command is None
    run.take("provisioning.commands", _command("u1", trace.request_id))
    run.take("provisioning.activity", _activity("u1", trace.request_id))
    assert trace.finished
    report = trace.report(5)
    assert [s["name"] for s in report["steps"]] == ["import", "scope", "match", "action", "export"]
    assert report["steps"][1]["detail"] == "assigned through group g-all"
    assert (report["outcome"], report["action"], report["target_id"]) == ("success", "create", "t-1")
    assert report["source_attributes"] == {"upn": "u1@x"}


def test_object_not_found_ends_the_trace_with_a_clear_outcome() -> None:
    run, _ = _run()
    trace = run.request("nobody", "user")
    error = ErrorRecord(id="e", at=NOW, service="ingest", error_code="ObjectNotFound",
                        reason="no source has user nobody", recommended_action="check the id",
                        change_id=trace.request_id)
    run.take("provisioning.errors", encode(error))
    assert trace.finished
    report = trace.report(5)
    assert report["outcome"] == "notFound"
    assert report["message"] == "ObjectNotFound: no source has user nobody"
    assert report["steps"] == [{"name": "import", "status": "failure", "detail": "no source has user nobody"}]


def test_a_missing_answer_says_which_stage_is_waited_for() -> None:
    run, _ = _run()
    trace = run.request("u1", "user")
    assert "waiting for ingest" in trace.report(5)["message"]
    run.take("directory.changes", _change("u1", trace.request_id))
    assert "waiting for the mapper" in trace.report(5)["message"]
    run.take("provisioning.commands", _command("u1", trace.request_id))
    assert trace.report(2.5)["message"].startswith("no outcome within 2.5 s: waiting for the writer")
    run.take("provisioning.activity", b"{garbage")
    assert trace.report(5)["outcome"] == "timeout"


def test_a_group_brings_up_to_five_members_along() -> None:
    run, sent = _run()
    group = run.request("g1", "group")
    members = [f"u{i}" for i in range(8)]
    run.take("directory.changes", _change("g1", group.request_id, kind="group", members=members))
    run.take("directory.changes", _change("g1", group.request_id, kind="group", members=members))  # replayed
    assert [r.object_id for r in sent[1:]] == members[:MAX_MEMBERS]
    assert all(r.object_type == "user" for r in sent[1:])
    run.take("provisioning.activity", _activity("g1", group.request_id))
    assert not group.finished  # its members are not done yet
    for member in group.members:
        run.take("provisioning.activity", _activity(member.object_id, member.request_id))
    assert group.finished
    assert [m["object_id"] for m in group.report(5)["members"]] == members[:MAX_MEMBERS]
