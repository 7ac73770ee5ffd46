"""A thousand poison records on each worker's input topic, interleaved with good changes,
cost a thousand error records each: no agent crash or restart, and every good user lands.

Real ingest, mapper and writer processes on the session's real broker, provisioning into
a real scim2-server. The poison goes to the mapper's input (directory.changes) and the
writer's (provisioning.commands) while ingest publishes the good users from the file
source, so both workers meet poison and good records mixed on the same partitions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import pytest

from services.runtime.kafka import plain_producer
from tests.conftest import Pipeline, user
from tests.support.poison import CHANGE, COMMAND, HUGE, HUGE_EVERY, poison

pytestmark = pytest.mark.e2e

Factory = Callable[..., Pipeline]

POISON_PER_TOPIC = 1000
GOOD_USERS = 400
ROUNDS = 10

Sent = set[tuple[str, int, int]]


def send_poison(p: Pipeline, producer: Any, round_: int) -> tuple[Sent, Sent]:
    """One round's share of poison on both topics; where each record landed, and which of
    them are the huge ones."""
    futures, huge = [], []
    per_round = POISON_PER_TOPIC // ROUNDS
    for topic, template in ((p.topics.changes, CHANGE), (p.topics.commands, COMMAND)):
        for i in range(round_ * per_round, (round_ + 1) * per_round):
            value = poison(template, i)
            future = producer.send(topic, key=f"poison-{i}".encode(), value=value)
            futures.append(future)
            if value is HUGE:
                huge.append(future)
    producer.flush()

    def where(fs: list[Any]) -> Sent:
        return {(m.topic, m.partition, m.offset) for m in (f.get(timeout=30) for f in fs)}

    return where(futures), where(huge)


def restarts(p: Pipeline, service: str) -> list[str]:
    """Lines where faust/mode logged an agent crash or a restart of a crashed service."""
    log = (p.dir / "logs" / f"{service}.log").read_text(errors="replace")
    return [line[:300] for line in log.splitlines() if "Crashed reason=" in line or "Restarting dead" in line]


def test_a_thousand_poison_records_per_topic_are_a_thousand_error_records_each(
        pipeline_factory: Factory) -> None:
    people = [user(i) for i in range(GOOD_USERS)]
    p = pipeline_factory(people[:1])
    p.wait_for("the first user", lambda: p.scim.count() == 1)
    producer = plain_producer(p.bootstrap)
    sent: Sent = set()
    huge: Sent = set()
    step = GOOD_USERS // ROUNDS
    try:
        for r in range(ROUNDS):
            # Good changes start flowing from ingest while this round's poison is produced.
            p.write_directory(people[: (r + 1) * step])
            round_sent, round_huge = send_poison(p, producer, r)
            sent |= round_sent
            huge |= round_huge
    finally:
        producer.close()
    assert len(sent) == 2 * POISON_PER_TOPIC and len(huge) == 2 * POISON_PER_TOPIC // HUGE_EVERY

    p.wait_for("every good user", lambda: p.scim.count() == GOOD_USERS)
    p.wait_for("an error record per poison record",
               lambda: len([e for e in p.errors() if e.error_code == "MalformedMessage"]) >= len(sent))
    errors = p.errors()
    assert {e.error_code for e in errors} == {"MalformedMessage"}, {e.reason for e in errors}
    origins = [(e.origin.topic, e.origin.partition, e.origin.offset) for e in errors if e.origin]
    assert len(origins) == len(errors) == len(sent)  # exactly one each: no duplicate, none missing
    assert set(origins) == sent
    by_origin = {(e.origin.topic, e.origin.partition, e.origin.offset): e for e in errors if e.origin}
    assert {e.service for (topic, _, _), e in by_origin.items() if topic == p.topics.changes} == {"mapper"}
    assert {e.service for (topic, _, _), e in by_origin.items() if topic == p.topics.commands} == {"writer"}
    marker = f"…[truncated: 900,000 bytes, sha256 {hashlib.sha256(HUGE).hexdigest()}]"
    for where in huge:
        payload = by_origin[where].payload
        assert payload is not None and payload.endswith(marker), (where, (payload or "")[-120:])
    assert any("no value" in e.reason for e in errors)
    assert any("not UTF-8" in e.reason for e in errors)

    assert set(p.scim.by_username()) == {u["userPrincipalName"] for u in people}
    assert restarts(p, "mapper") == [] and restarts(p, "writer") == []
    assert not p.sup.dead()
