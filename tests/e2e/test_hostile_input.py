"""One bad object costs one error record: never a stalled source, a crashed agent, or a
lost neighbour. Real workers, real broker, real scim2-server."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from services.runtime.kafka import plain_producer
from tests.conftest import Pipeline, user

pytestmark = pytest.mark.e2e

Factory = Callable[..., Pipeline]


def _crashes(p: Pipeline, service: str) -> int:
    """Agent crashes faust logged (it restarts the agent after each, seconds later)."""
    log = (p.dir / "logs" / f"{service}.log").read_text(errors="replace")
    return log.count("Crashed reason=")


def test_an_object_over_the_message_limit_is_one_error_and_the_rest_flow(pipeline_factory: Factory) -> None:
    users = [user(i) for i in range(20)]
    users[5] = user(5, photo="A" * 1_500_000)  # over Kafka's default 1 MB message limit
    p = pipeline_factory(users)
    p.wait_for("the 19 other users", lambda: p.scim.count() >= 19)
    p.wait_for("the error record", lambda: any(e.error_code == "ObjectTooLarge" for e in p.errors()))
    [error] = [e for e in p.errors() if e.error_code == "ObjectTooLarge"]
    assert (error.service, error.source_id) == ("ingest", "u00005")
    assert "1,000,000" in error.reason and "photo (1,500,002 bytes)" in error.reason
    assert "user5@example.com" not in p.scim.by_username()
    # The source is not stalled: the scan went on past the object, and so do later changes.
    users[7] = {**users[7], "givenName": "Later"}
    p.write_directory(users)
    p.wait_for("a later change",
               lambda: p.scim.by_username()["user7@example.com"]["name"]["givenName"] == "Later")
    assert len(p.scim.users()) == 19


def test_poison_changes_are_error_records_and_the_mapper_never_restarts(pipeline_factory: Factory) -> None:
    p = pipeline_factory([user(1)])
    p.wait_for("first user", lambda: len(p.scim.users()) == 1)
    good = json.dumps({"type": "directory.change.v1", "source": "hr", "object_type": "user",
                       "object_id": "POISON", "operation": "upsert", "change_id": "c",
                       "observed_at": "2026-12-04T10:00:00Z"}).encode()
    poison = {
        b"null": None,  # a tombstone: no value at all
        b"utf8": good.replace(b'"POISON"', b'"\xff\xfe"'),  # invalid UTF-8 in a known field
        # Not JSON, and each byte becomes a 3-byte U+FFFD in the error record's payload:
        # quoted whole, the record would be 2.7 MB, over the broker's limit.
        b"huge": b"\xff" * 900_000,
    }
    producer = plain_producer(p.bootstrap)
    for key, value in poison.items():
        producer.send(p.topics.changes, key=key, value=value)
    producer.flush()
    producer.close()
    p.write_directory([user(1), user(2)])
    p.wait_for("the user behind the poison", lambda: len(p.scim.users()) == 2)
    p.wait_for("three error records", lambda: len(p.errors()) >= 3)
    assert len(p.errors()) == 3, [e.reason for e in p.errors()]
    assert {e.error_code for e in p.errors()} == {"MalformedMessage"}
    reasons = sorted(e.reason for e in p.errors())
    assert any("no value" in r for r in reasons)
    assert any("not UTF-8" in r for r in reasons)
    huge = next(e for e in p.errors() if e.payload and len(e.payload) > 1000)
    assert huge.payload is not None and "…[truncated: 900,000 bytes, sha256 " in huge.payload
    assert all(e.origin is not None and e.origin.topic == p.topics.changes for e in p.errors())
    assert _crashes(p, "mapper") == 0
