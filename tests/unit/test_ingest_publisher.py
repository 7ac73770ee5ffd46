"""Ingest's publisher under a full scan: sends are not awaited one by one, so what a scan
promises must still hold. The producer here is a stand-in that delivers in batches (or fails
one delivery) on its own schedule, as a real broker does: a real one will not fail a single
record on demand."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from schemas import CycleMarker, DirectoryChange, ErrorRecord
from services.ingest.main import _publisher
from services.ingest.objects import Snapshot, SourceObject
from services.ingest.worker import SourceIngest
from services.runtime.settings import load_settings
from tests.unit.test_source_ingest import MemorySource

_LIMIT = 20_000


class Broker:
    """What the producer and topics hand the broker, and when each delivery completed."""

    def __init__(self, fail_key: bytes | None = None) -> None:
        self.fail_key = fail_key
        self.log: list[tuple[str, bytes]] = []  # ("change" | "marker" | "error", value), in send order
        self.pending: list[tuple[bytes, asyncio.Future[None]]] = []
        self.undelivered_at_end_marker: int | None = None

    async def deliver(self) -> None:
        """Complete pending deliveries a batch at a time, like a producer's linger."""
        while True:
            await asyncio.sleep(0.001)
            batch, self.pending = self.pending[:50], self.pending[50:]
            for key, sent in batch:
                if key == self.fail_key:
                    sent.set_exception(RuntimeError("broker refused the record"))
                else:
                    sent.set_result(None)


class Producer:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    async def send(self, topic: str, key: bytes, value: bytes, *, partition: int | None,
                   timestamp: float | None, headers: Any) -> asyncio.Future[None]:
        sent: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.broker.log.append(("change", value))
        self.broker.pending.append((key, sent))
        return sent


class App:
    def __init__(self, broker: Broker) -> None:
        self.producer = Producer(broker)

    async def maybe_start_producer(self) -> Producer:
        return self.producer


class Topic:
    def __init__(self, kind: str, broker: Broker) -> None:
        self.kind, self.broker, self.app = kind, broker, App(broker)

    def get_topic_name(self) -> str:
        return self.kind

    async def send(self, *, key: bytes, value: bytes, partition: int | None = None) -> None:
        if self.kind == "marker" and b'"end"' in value and self.broker.undelivered_at_end_marker is None:
            self.broker.undelivered_at_end_marker = sum(not f.done() for _, f in self.broker.pending)
        self.broker.log.append((self.kind, value))


class ListSource(MemorySource):
    """Scans in the order given (the oversized object sits mid-batch)."""

    def __init__(self, objects: list[SourceObject]) -> None:
        super().__init__("hr", objects)
        self.order = objects

    async def scan(self) -> Snapshot:
        return {o.key: o for o in self.order}


def _user(i: int, photo: str = "") -> SourceObject:
    attributes = {"id": f"u{i}", "givenName": f"G{i}"} | ({"photo": photo} if photo else {})
    return SourceObject("user", f"u{i}", attributes)


def _scan(objects: list[SourceObject], broker: Broker) -> str | None:
    settings = load_settings({}, max_message_bytes=_LIMIT, partitions=2)

    async def scenario() -> str | None:
        changes = Topic("marker", broker)
        publisher = _publisher(changes, Topic("error", broker), settings)
        delivering = asyncio.create_task(broker.deliver())
        try:
            return await SourceIngest(ListSource(objects), publisher).full_scan()
        finally:
            delivering.cancel()

    return asyncio.run(scenario())


def _sent(broker: Broker, kind: str, type_: Any) -> list[Any]:
    return [msgspec.json.decode(v, type=type_) for k, v in broker.log if k == kind]


def test_an_oversized_object_mid_scan_is_one_error_and_every_other_object_is_sent_in_order() -> None:
    objects = [_user(i) for i in range(300)]
    objects[137] = _user(137, photo="A" * (_LIMIT + 1))
    broker = Broker()
    assert _scan(objects, broker) is not None
    changes = _sent(broker, "change", DirectoryChange)
    assert [c.object_id for c in changes] == [f"u{i}" for i in range(300) if i != 137]
    [error] = _sent(broker, "error", ErrorRecord)
    assert error.error_code == "ObjectTooLarge" and "u137" in error.reason
    end = _sent(broker, "marker", CycleMarker)[-1]
    assert (end.phase, end.complete, end.total) == ("end", True, 300)
    assert broker.undelivered_at_end_marker == 0  # every change was on the topic before the end


def test_a_change_the_broker_refuses_mid_scan_makes_the_scan_incomplete() -> None:
    broker = Broker(fail_key=b"u42")
    assert _scan([_user(i) for i in range(200)], broker) is None
    ends = [m for m in _sent(broker, "marker", CycleMarker) if m.phase == "end"]
    # Never "complete": the writer would take the object that did not arrive as deleted.
    assert [m.complete for m in ends] == [False, False]  # one per partition
    assert any("refused" in e.reason for e in _sent(broker, "error", ErrorRecord))


def test_a_flush_that_overlaps_another_still_waits_for_every_change_sent_before_it() -> None:
    # The scan's flush before its end marker and the feed's flush before a position overlap.
    broker = Broker()
    settings = load_settings({}, max_message_bytes=_LIMIT, partitions=2)

    async def scenario() -> bool:
        publisher = _publisher(Topic("marker", broker), Topic("error", broker), settings)
        for c in [_user(1), _user(2)]:
            await publisher.change(_change(c))
        first = asyncio.ensure_future(publisher.flush())
        await asyncio.sleep(0)
        second = asyncio.ensure_future(publisher.flush())
        await asyncio.sleep(0.01)
        early = second.done()
        broker.pending[-1][1].set_result(None)
        broker.pending[0][1].set_result(None)
        await asyncio.gather(first, second)
        return early

    assert asyncio.run(scenario()) is False  # the position would have been stored too soon


def _change(obj: SourceObject) -> DirectoryChange:
    return msgspec.json.decode(msgspec.json.encode({
        "type": "directory.change.v1", "source": "hr", "object_type": obj.object_type,
        "object_id": obj.object_id, "operation": "upsert", "attributes": obj.attributes,
        "change_id": obj.object_id, "observed_at": "2026-01-01T00:00:00Z"}), type=DirectoryChange)
