"""Building ErrorRecords that every service emits the same way."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from schemas import ErrorRecord, Origin

__all__ = ["malformed_message"]


def malformed_message(service: Any, event: Any, reason: str) -> ErrorRecord:
    """An ErrorRecord for a message that could not be decoded, with where it came from."""
    msg = event.message
    return ErrorRecord(
        id=str(uuid.uuid4()),
        at=datetime.now(UTC),
        service=service,
        error_code="MalformedMessage",
        reason=reason,
        recommended_action="Fix the producer of this message; the pipeline skipped it and went on.",
        origin=Origin(topic=msg.topic, partition=msg.partition, offset=msg.offset),
        payload=bytes(event.value or b"").decode("utf-8", "replace"),
    )
