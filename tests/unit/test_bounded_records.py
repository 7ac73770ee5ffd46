"""Report records always fit on the topic: long values are cut with their size and hash."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from types import SimpleNamespace

from schemas import ActivityRecord, ErrorRecord
from schemas.codecs import encode
from schemas.messages import ModifiedProperty, Step
from services.runtime.records import (
    MAX_RECORD_BYTES,
    PAYLOAD_PREFIX,
    bounded,
    error_record,
    malformed_message,
)

NOW = datetime(2026, 12, 4, tzinfo=UTC)


def activity(**fields: object) -> ActivityRecord:
    base: dict[str, object] = {"id": "a1", "at": NOW, "app": "crm", "object_type": "user",
                               "action": "update", "status": "success", "source": "hr", "source_id": "u1"}
    return ActivityRecord(**(base | fields))  # type: ignore[arg-type]


def test_a_small_record_is_returned_as_it_is() -> None:
    record = activity(modified_properties=[ModifiedProperty(name="title", old_value="a", new_value="b")])
    assert bounded(record) is record


def test_an_update_of_a_700_kb_attribute_fits_and_says_what_was_cut() -> None:
    old, new = "o" * 700_000, "n" * 700_000
    record = activity(modified_properties=[
        ModifiedProperty(name="photo", old_value=old, new_value=new),
        ModifiedProperty(name="title", old_value="Engineer", new_value="Manager")])
    assert len(encode(record)) > 1_000_000
    cut = bounded(record)
    assert len(encode(cut)) <= MAX_RECORD_BYTES
    photo, title = cut.modified_properties
    assert photo.name == "photo"
    assert photo.new_value.startswith("nnnn")
    assert photo.new_value.endswith(
        f"…[truncated: 700,000 bytes, sha256 {hashlib.sha256(new.encode()).hexdigest()}]")
    assert (title.old_value, title.new_value) == ("Engineer", "Manager")  # short values stay whole
    assert cut.id == record.id and cut.action == "update"


def test_a_huge_multi_valued_value_is_cut_as_its_json() -> None:
    emails = [{"value": f"user{i}@example.com", "type": "work"} for i in range(40_000)]
    cut = bounded(activity(modified_properties=[ModifiedProperty(name="emails", new_value=emails)]))
    assert len(encode(cut)) <= MAX_RECORD_BYTES
    value = cut.modified_properties[0].new_value
    assert isinstance(value, str) and value.startswith('[{"value": "user0@example.com"')
    assert "…[truncated: " in value


def test_long_step_details_and_reason_are_cut_too() -> None:
    record = activity(reason="r" * 600_000,
                      steps=[Step(name="export", status="failure", detail="d" * 600_000)])
    cut = bounded(record)
    assert len(encode(cut)) <= MAX_RECORD_BYTES
    assert cut.reason is not None and "…[truncated: 600,000 bytes" in cut.reason
    assert "…[truncated: 600,000 bytes" in cut.steps[0].detail


def test_an_error_record_quoting_a_big_payload_fits() -> None:
    record = error_record("writer", "RequestRejected", "x" * 2_000_000, "Fix it.", payload="p" * 2_000_000)
    cut = bounded(record)
    assert isinstance(cut, ErrorRecord)
    assert len(encode(cut)) <= MAX_RECORD_BYTES
    assert cut.error_code == "RequestRejected" and cut.recommended_action == "Fix it."


def test_a_malformed_message_keeps_a_prefix_with_the_size_and_hash_of_the_whole() -> None:
    raw = b'{"type": "directory.change.v1", "attributes": {"photo": "' + b"A" * 1_500_000 + b'"}'
    event = SimpleNamespace(value=raw, message=SimpleNamespace(topic="t", partition=0, offset=7))
    record = malformed_message("mapper", event, "Input data was truncated")
    assert record.payload is not None
    assert record.payload.startswith('{"type": "directory.change.v1"')
    assert record.payload.endswith(
        f"…[truncated: {len(raw):,} bytes, sha256 {hashlib.sha256(raw).hexdigest()}]")
    assert len(record.payload) < PAYLOAD_PREFIX + 120
    assert len(encode(record)) < 10_000


def test_a_short_malformed_message_is_quoted_whole() -> None:
    where = SimpleNamespace(topic="t", partition=1, offset=2)
    event = SimpleNamespace(value=b"\xff\xfenot json", message=where)
    assert malformed_message("writer", event, "bad").payload == "\ufffd\ufffdnot json"
