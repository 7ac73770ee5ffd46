"""Reading topics outside a worker on a real broker: "up to now" (``scimflow status``, the admin
API's recent records) is a snapshot at the end offsets, even while producers keep writing;
a reader from the end (provision on demand) and a tail (``scimflow tail``) miss nothing new."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from services.devstack.broker import Broker
from services.runtime.kafka import (
    IDLE,
    TopicReader,
    create_topics,
    plain_producer,
    read_latest,
    read_records,
    tail_records,
)
from services.runtime.topics import TopicSpec

pytestmark = pytest.mark.integration


def test_a_topic_that_keeps_growing_is_read_up_to_its_end_offsets_at_the_start(broker: Broker) -> None:
    topic = f"read-{uuid.uuid4().hex[:8]}"
    create_topics(broker.bootstrap, [TopicSpec(topic, 3)])
    producer = plain_producer(broker.bootstrap)
    for i in range(200):
        producer.send(topic, key=f"k{i % 7}".encode(), value=f"r{i}".encode())
    producer.flush()
    stop = threading.Event()

    def keep_writing() -> None:  # what activity does during a sync
        n = 0
        while not stop.is_set():
            producer.send(topic, value=f"later{n}".encode())
            n += 1
            time.sleep(0.01)

    writer = threading.Thread(target=keep_writing, daemon=True)
    writer.start()
    try:
        time.sleep(0.5)
        started = time.monotonic()
        records = read_records(broker.bootstrap, topic)
        took = time.monotonic() - started
    finally:
        stop.set()
        writer.join(5)
        producer.close()
    values = {r.value for r in records}
    assert {f"r{i}".encode() for i in range(200)} <= values
    assert any(v.startswith(b"later") for v in values)  # written before the read began
    assert took < 10, f"the read followed the writes for {took:.1f}s"


def test_read_latest_keeps_the_last_value_of_each_key_and_drops_tombstones(broker: Broker) -> None:
    topic = f"latest-{uuid.uuid4().hex[:8]}"
    create_topics(broker.bootstrap, [TopicSpec(topic, 2, compacted=True)])
    producer = plain_producer(broker.bootstrap)
    for key, value in [(b"a", b"1"), (b"b", b"1"), (b"a", b"2"), (b"b", None), (b"c", b"1")]:
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()
    assert read_latest(broker.bootstrap, topic) == {b"a": b"2", b"c": b"1"}
    assert read_records(broker.bootstrap, f"missing-{uuid.uuid4().hex[:8]}") == []


def test_a_reader_from_the_end_gets_only_what_came_after_it_started(broker: Broker) -> None:
    """Provision on demand's read: nothing older, nothing missed, and a topic that appears
    later is read from its beginning."""
    old, later = f"end-{uuid.uuid4().hex[:8]}", f"later-{uuid.uuid4().hex[:8]}"
    create_topics(broker.bootstrap, [TopicSpec(old, 2)])
    producer = plain_producer(broker.bootstrap)
    for i in range(20):
        producer.send(old, value=f"before{i}".encode())
    producer.flush()
    with TopicReader(broker.bootstrap, [old, later], start="end") as reader:
        producer.send(old, value=b"after")
        create_topics(broker.bootstrap, [TopicSpec(later, 1)])
        producer.send(later, value=b"new topic")
        producer.flush()
        seen: list[tuple[str, bytes]] = []
        deadline = time.monotonic() + 15
        while len(seen) < 2 and time.monotonic() < deadline:
            seen += [(r.topic, r.value) for r in reader.poll(0.2)]
    producer.close()
    assert sorted(seen) == sorted([(old, b"after"), (later, b"new topic")])


def test_a_tail_says_when_the_topic_fell_idle_and_reads_on(broker: Broker) -> None:
    topic = f"tail-{uuid.uuid4().hex[:8]}"
    create_topics(broker.bootstrap, [TopicSpec(topic, 2)])
    producer = plain_producer(broker.bootstrap)
    producer.send(topic, value=b"first")
    producer.flush()
    tail = tail_records(broker.bootstrap, topic, idle_timeout=0.3)
    try:
        assert next(tail).value == b"first"
        assert next(tail) is IDLE
        producer.send(topic, value=b"second")
        producer.flush()
        following = next(r for r in tail if r is not IDLE)
    finally:
        tail.close()
        producer.close()
    assert following.value == b"second"
