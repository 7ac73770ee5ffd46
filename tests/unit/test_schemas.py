"""The committed JSON Schemas are exactly what the Structs generate; codecs round-trip."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest

from schemas import CycleMarker, DirectoryChange, ErrorRecord
from schemas.codecs import TOPIC_TYPES, decoder, encode
from schemas.generate import JSON_DIR, render


@pytest.mark.parametrize("role", sorted(TOPIC_TYPES))
def test_committed_schema_matches_structs(role: str) -> None:
    committed = (JSON_DIR / f"{role}.schema.json").read_text(encoding="utf-8")
    assert committed == render(role), f"{role}.schema.json drifted: run `make schemas` and commit"


def test_every_schema_file_belongs_to_a_topic() -> None:
    files = {p.name.removesuffix(".schema.json") for p in Path(JSON_DIR).glob("*.schema.json")}
    assert files == set(TOPIC_TYPES)


def test_change_topic_decodes_both_message_kinds_by_tag() -> None:
    now = datetime.now(UTC)
    change = DirectoryChange(source="s", object_type="user", object_id="u1", operation="upsert",
                             attributes={"a": 1}, change_id="c1", observed_at=now)
    marker = CycleMarker(source="s", cycle_id="x", phase="start", total=3, at=now)
    dec = decoder("directory.changes")
    assert dec.decode(encode(change)) == change
    assert dec.decode(encode(marker)) == marker
    assert b'"type":"directory.change.v1"' in encode(change)


def test_unknown_fields_are_skipped_for_forward_compatibility() -> None:
    raw = (b'{"type":"provisioning.error.v1","id":"1","at":"2026-01-01T00:00:00Z","service":"mapper",'
           b'"error_code":"X","reason":"r","recommended_action":"a","added_in_v2":true}')
    rec = decoder("provisioning.errors").decode(raw)
    assert isinstance(rec, ErrorRecord)
    assert rec.error_code == "X"


def test_unknown_tag_is_rejected() -> None:
    with pytest.raises(msgspec.ValidationError, match=r"Invalid value 'directory\.change\.v9'"):
        decoder("directory.changes").decode(b'{"type":"directory.change.v9"}')
