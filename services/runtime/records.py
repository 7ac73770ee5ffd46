"""Building ErrorRecords that every service emits the same way."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from schemas import ErrorRecord, Origin

__all__ = ["error_record", "malformed_message"]


def error_record(service: Any, code: str, reason: str, action: str, **context: Any) -> ErrorRecord:
    """A new ErrorRecord (fresh id, now); ``context`` fills the optional fields
    (app, object_type, source_id, change_id, cycle_id, attempts, target_status, ...)."""
    return ErrorRecord(id=str(uuid.uuid4()), at=datetime.now(UTC), service=service,
                       error_code=code, reason=reason, recommended_action=action, **context)


def malformed_message(service: Any, event: Any, reason: str) -> ErrorRecord:
    """An ErrorRecord for a message that could not be decoded, with where it came from."""
    msg = event.message
    return error_record(
        service, "MalformedMessage", reason,
        "Fix the producer of this message; the pipeline skipped it and went on.",
        origin=Origin(topic=msg.topic, partition=msg.partition, offset=msg.offset),
        payload=bytes(event.value or b"").decode("utf-8", "replace"),
    )
