"""Poison records for the mapper's and the writer's input topics: what a stranger or a
broken producer can put on a topic, built on each topic's good message so that only the
one flaw makes it undecodable. Shared by tests/e2e/test_poison_mix.py and bench/poison.py.
"""

from __future__ import annotations

import json
from typing import Any, Final

__all__ = ["CHANGE", "COMMAND", "HUGE", "HUGE_EVERY", "poison"]

HUGE: Final = b"\xff" * 900_000
"""Not JSON, and each byte becomes a 3-byte U+FFFD when quoted: an error record quoting it
whole would be 2.7 MB, over the broker's 1 MB limit."""
HUGE_EVERY: Final = 200
"""One poison record in this many is :data:`HUGE` (each is 0.9 MB on the broker)."""

CHANGE: Final[dict[str, Any]] = {
    "type": "directory.change.v1", "source": "hr", "object_type": "user", "object_id": "POISON",
    "operation": "upsert", "change_id": "c", "observed_at": "2026-12-04T10:00:00Z"}
"""A good directory.changes message (the mapper's input) to spoil."""
COMMAND: Final[dict[str, Any]] = {
    "type": "provisioning.command.v1", "app": "app", "object_type": "user", "source": "hr",
    "source_id": "POISON", "operation": "upsert", "reason": "in scope",
    "observed_at": "2026-12-04T10:00:00Z", "change_id": "c"}
"""A good provisioning.commands message (the writer's input) to spoil."""


def poison(template: dict[str, Any], i: int) -> bytes | None:
    """The ``i``-th poison record built on a topic's good ``template`` (the kinds in turn,
    every :data:`HUGE_EVERY`-th one :data:`HUGE`)."""
    if i % HUGE_EVERY == HUGE_EVERY - 1:
        return HUGE
    good = json.dumps(template).encode()
    kinds: list[bytes | None] = [
        None,  # a tombstone: no value at all
        good.replace(b'"POISON"', b'"\xff\xfeP"'),  # invalid UTF-8 in a known field
        json.dumps({**template, "object_type": 5}).encode(),  # a known field of the wrong type
        json.dumps({**template, "observed_at": ["yesterday"]}).encode(),
        good[: len(good) // 2],  # truncated JSON
        b"[1, 2, 3]",  # JSON, not an object
        json.dumps({**template, "type": "directory.nonsense.v9"}).encode(),  # an unknown tag
        b"",  # an empty value (not null)
    ]
    return kinds[i % len(kinds)]
