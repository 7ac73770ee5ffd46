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

from schemas import ActivityRecord, DirectoryChange, ErrorRecord, Origin
from schemas.codecs import encode

__all__ = ["MAX_RECORD_BYTES", "PAYLOAD_PREFIX", "MalformedError", "bounded", "decode_message",
           "error_record", "malformed_message", "too_large", "truncated"]

MAX_RECORD_BYTES: Final = 256 * 1024
"""Largest encoded activity or error record: a quarter of Kafka's default message limit,
so a record never fails to publish, with room for headers and a batch."""
PAYLOAD_PREFIX: Final = 4096
"""Characters of a malformed message kept in its error record."""
_VALUE_LIMITS: Final = (65536, 8192, 1024, 128)
"""Longest string value kept whole, tried in turn until the record fits."""

R = TypeVar("R", ActivityRecord, ErrorRecord)
T = TypeVar("T")


class MalformedError(ValueError):
    """A message that is not one of the topic's types; ``str()`` says why, for its error record."""


def decode_message(decoder: msgspec.json.Decoder[T], value: bytes | None) -> T:
    """``value`` decoded, or MalformedError for anything a stranger can put on a topic: a
    null value, bytes that are not JSON or not UTF-8, JSON of the wrong shape."""
    if value is None:
        raise MalformedError("the message has no value (null)")
    try:
        return decoder.decode(value)
    except UnicodeDecodeError as exc:
        raise MalformedError(f"not UTF-8: byte 0x{value[exc.start]:02x} at offset {exc.start}") from None
    except (msgspec.DecodeError, msgspec.ValidationError, TypeError) as exc:
        raise MalformedError(str(exc)) from None


def error_record(service: Any, code: str, reason: str, action: str, **context: Any) -> ErrorRecord:
    """A new ErrorRecord (fresh id, now); ``context`` fills the optional fields
    (app, object_type, source_id, change_id, cycle_id, attempts, target_status, ...)."""
    return ErrorRecord(id=str(uuid.uuid4()), at=datetime.now(UTC), service=service,
                       error_code=code, reason=reason, recommended_action=action, **context)


def malformed_message(service: Any, event: Any, reason: str, *,
                      code: str = "MalformedMessage") -> ErrorRecord:
    """An ErrorRecord for a message that could not be decoded (or, with another ``code``,
    processed), with where it came from: its first :data:`PAYLOAD_PREFIX` characters, and
    its size and hash when it is longer."""
    msg = event.message
    raw = bytes(event.value or b"")
    action = ("Fix the producer of this message; the pipeline skipped it and went on."
              if code == "MalformedMessage" else
              "A bug in scimflow: report it with this record. The pipeline skipped the message "
              "and went on; the next full scan retries the object.")
    return error_record(
        service, code, truncated(reason, PAYLOAD_PREFIX), action,
        origin=Origin(topic=msg.topic, partition=msg.partition, offset=msg.offset),
        payload=_payload(raw),
    )


def too_large(change: DirectoryChange, size: int, limit: int, *, app: str | None = None) -> ErrorRecord:
    """The error record of a source object (or, with ``app``, its command) over the message
    limit, naming the object, its size, the limit and its largest attributes."""
    biggest = sorted(((len(encode(v)), k) for k, v in change.attributes.items()), reverse=True)[:3]
    named = ", ".join(f"{k} ({n:,} bytes)" for n, k in biggest) or "no attributes"
    what = "its provisioning command" if app else "it"
    return error_record(
        "mapper" if app else "ingest", "ObjectTooLarge",
        f"{change.object_type} {change.object_id} from source {change.source} is {size:,} bytes "
        f"encoded, over the limit of {limit:,} (SCIMFLOW_MAX_MESSAGE_BYTES); {what} was not "
        f"published. Largest attributes: {named}.",
        "Leave the oversized attribute (often a photo or a certificate) out of the source's "
        "attributes or mappings, or raise SCIMFLOW_MAX_MESSAGE_BYTES with the topic's "
        "max.message.bytes. Every other object went on.",
        app=app, object_type=change.object_type, source_id=change.object_id,
        change_id=change.change_id, cycle_id=change.cycle_id,
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
