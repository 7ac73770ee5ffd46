"""Building the ErrorRecords every service emits the same way, and keeping every report
record small enough to publish.

A record that cannot be produced is a lost report: an activity record carrying a 700 KB
attribute twice (old and new value), or an error record quoting a 1.5 MB poison message,
is over the broker's 1 MB limit. :func:`bounded` cuts the longest values of such a record
until it fits, each to a prefix followed by a marker with the value's full size and
SHA-256, so the record still says what happened and which value it was.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

import msgspec

from schemas import ActivityRecord, ErrorRecord, Origin
from schemas.codecs import encode

__all__ = ["MAX_RECORD_BYTES", "PAYLOAD_PREFIX", "bounded", "error_record", "malformed_message",
           "truncated"]

MAX_RECORD_BYTES: Final = 256 * 1024
"""Largest encoded activity or error record: a quarter of Kafka's default message limit,
so a record never fails to publish, with room for headers and a batch."""
PAYLOAD_PREFIX: Final = 4096
"""Characters of a malformed message kept in its error record."""
_VALUE_LIMITS: Final = (65536, 8192, 1024, 128)
"""Longest string value kept whole, tried in turn until the record fits."""

R = TypeVar("R", ActivityRecord, ErrorRecord)


def error_record(service: Any, code: str, reason: str, action: str, **context: Any) -> ErrorRecord:
    """A new ErrorRecord (fresh id, now); ``context`` fills the optional fields
    (app, object_type, source_id, change_id, cycle_id, attempts, target_status, ...)."""
    return ErrorRecord(id=str(uuid.uuid4()), at=datetime.now(UTC), service=service,
                       error_code=code, reason=reason, recommended_action=action, **context)


def malformed_message(service: Any, event: Any, reason: str) -> ErrorRecord:
    """An ErrorRecord for a message that could not be decoded, with where it came from: its
    first :data:`PAYLOAD_PREFIX` characters, and its size and hash when it is longer."""
    msg = event.message
    raw = bytes(event.value or b"")
    return error_record(
        service, "MalformedMessage", truncated(reason, PAYLOAD_PREFIX),
        "Fix the producer of this message; the pipeline skipped it and went on.",
        origin=Origin(topic=msg.topic, partition=msg.partition, offset=msg.offset),
        payload=_payload(raw),
    )


def bounded(record: R, limit: int = MAX_RECORD_BYTES) -> R:
    """``record`` if it encodes to at most ``limit`` bytes; else the same record with its
    long values cut by :func:`truncated`: the reason, step details, the payload, and the old
    and new values of modified properties (a large structured value as its JSON text)."""
    if len(encode(record)) <= limit:
        return record
    for keep in _VALUE_LIMITS:
        cut = _cut_record(record, keep)
        if len(encode(cut)) <= limit:
            break
    return cut  # at 128 characters a value, only a record of thousands of values is larger


def _cut_record(record: R, keep: int) -> R:
    if isinstance(record, ErrorRecord):
        return msgspec.structs.replace(
            record, reason=truncated(record.reason, keep),
            recommended_action=truncated(record.recommended_action, keep),
            payload=None if record.payload is None else truncated(record.payload, keep))
    return msgspec.structs.replace(
        record, reason=None if record.reason is None else truncated(record.reason, keep),
        steps=[msgspec.structs.replace(s, detail=truncated(s.detail, keep)) for s in record.steps],
        modified_properties=[msgspec.structs.replace(p, old_value=_cut_value(p.old_value, keep),
                                                     new_value=_cut_value(p.new_value, keep))
                             for p in record.modified_properties])


def _cut_value(value: Any, keep: int) -> Any:
    if isinstance(value, str):
        return truncated(value, keep)
    if isinstance(value, dict | list):
        text = json.dumps(value, ensure_ascii=False, default=str)
        return truncated(text, keep) if len(text) > keep else value
    return value


def truncated(text: str, keep: int) -> str:
    """``text`` if at most ``keep`` characters, else its first ``keep`` characters and a
    marker: ``…[truncated: 734,003 bytes, sha256 3f5a…]`` (size and hash of the whole)."""
    if len(text) <= keep:
        return text
    return text[:keep] + _marker(text.encode("utf-8", "surrogatepass"))


def _marker(raw: bytes) -> str:
    return f"…[truncated: {len(raw):,} bytes, sha256 {hashlib.sha256(raw).hexdigest()}]"


def _payload(raw: bytes) -> str:
    text = raw[:PAYLOAD_PREFIX * 4].decode("utf-8", "replace")
    if len(raw) <= PAYLOAD_PREFIX and len(text) <= PAYLOAD_PREFIX:
        return text
    return text[:PAYLOAD_PREFIX] + _marker(raw)
