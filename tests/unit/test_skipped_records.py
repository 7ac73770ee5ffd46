"""Records faust skipped around a rebalance are noticed and read again (SkippedRecords), and
a partition whose records stopped coming altogether is sought back (``unstall``)."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from typing import Any

from services.runtime.kafka import SkippedRecords


@dataclass(frozen=True)
class TP:
    topic: str
    partition: int


@dataclass
class Message:
    tp: TP
    offset: int
    generation_id: int = 1


@dataclass
class Event:
    message: Message


@dataclass
class Consumer:
    _committed_offset: dict[Any, int] = field(default_factory=dict)
    seeks: list[tuple[TP, int]] = field(default_factory=list)
    ends: dict[TP, int] = field(default_factory=dict)
    _paused_partitions: set[TP] = field(default_factory=set)

    async def seek(self, tp: TP, offset: int) -> None:
        self.seeks.append((tp, offset))

    def assignment(self) -> set[TP]:
        return set(self.ends)

    async def highwaters(self, *tps: TP) -> dict[TP, int]:
        return {tp: self.ends[tp] for tp in tps}

    def resume_partitions(self, tps: set[TP]) -> None:
        self._paused_partitions -= tps


@dataclass
class App:
    consumer: Consumer
    consumer_generation_id: int = 1
    rebalancing: bool = False


def _run(offsets: list[int], *, committed: int | None = None, generation: int = 1) -> Consumer:
    tp = TP("commands", 0)
    consumer = Consumer({tp: committed} if committed is not None else {})
    guard = SkippedRecords(App(consumer), "writer")

    async def feed() -> None:
        for offset in offsets:
            await guard.check(Event(Message(tp, offset, generation)))
    asyncio.run(feed())
    return consumer


def test_consecutive_offsets_need_no_seek() -> None:
    assert _run([3, 4, 5, 6], committed=3).seeks == []


def test_a_gap_is_sought_back_once_and_tracking_resumes_after_it() -> None:
    # 5 and 6 were skipped; 7, 8 arrive (fetched before the seek), then 5.. again.
    consumer = _run([3, 4, 7, 8, 5, 6, 7, 8, 9, 12])
    assert consumer.seeks == [(TP("commands", 0), 5), (TP("commands", 0), 10)]


def test_records_skipped_before_the_first_one_delivered_are_read_again() -> None:
    assert _run([4, 5], committed=2).seeks == [(TP("commands", 0), 2)]


def test_a_redelivery_from_an_earlier_offset_is_not_a_gap() -> None:
    assert _run([3, 4, 5, 3, 4, 5, 6], committed=3).seeks == []


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _stalled(monkeypatch: Any, ends: dict[TP, int], delivered: dict[TP, list[int]], *,
             committed: dict[Any, int] | None = None) -> tuple[App, SkippedRecords, Clock]:
    """A watch whose agent took ``delivered`` and now waits; the partitions end at ``ends``."""
    clock = Clock()
    monkeypatch.setattr("services.runtime.kafka.time.monotonic", clock)
    app = App(Consumer(dict(committed or {}), ends=ends))
    watch = SkippedRecords(app, "writer")

    async def feed() -> None:
        async def events() -> Any:
            for tp, offsets in delivered.items():
                for offset in offsets:
                    yield Event(Message(tp, offset))
        async for _ in watch.through(events()):
            pass
    asyncio.run(feed())
    return app, watch, clock


def test_a_partition_whose_records_stopped_coming_is_sought_back_once_the_agent_idles(
        monkeypatch: Any) -> None:
    a, b = TP("commands", 0), TP("commands", 1)
    app, watch, clock = _stalled(monkeypatch, {a: 10, b: 600}, {a: list(range(10)), b: [0, 1, 2]})
    assert asyncio.run(watch.unstall("commands")) == []  # the agent has waited no time yet
    clock.now += 10
    assert asyncio.run(watch.unstall("commands")) == [1]
    assert app.consumer.seeks == [(b, 3)]  # the first record it did not deliver; a is complete


def test_a_busy_agent_or_a_rebalance_is_no_stall(monkeypatch: Any) -> None:
    b = TP("commands", 1)
    app, watch, clock = _stalled(monkeypatch, {b: 600}, {b: [0, 1, 2]})
    clock.now += 60
    app.rebalancing = True
    assert asyncio.run(watch.unstall("commands")) == []
    app.rebalancing = False

    async def busy() -> None:
        async def one() -> Any:
            yield Event(Message(b, 3))
        async for _ in watch.through(one()):
            clock.now += 60  # the agent works on offset 3 for a minute
            assert await watch.unstall("commands") == []
    asyncio.run(busy())
    assert app.consumer.seeks == []


def test_a_partition_never_delivered_is_sought_to_its_committed_offset_and_resumed(
        monkeypatch: Any) -> None:
    c = TP("commands", 2)
    app, watch, clock = _stalled(monkeypatch, {c: 50}, {}, committed={c: 20})
    app.consumer._paused_partitions.add(c)
    clock.now += 11
    assert asyncio.run(watch.unstall("commands")) == [2]
    assert app.consumer.seeks == [(c, 20)]
    assert c not in app.consumer._paused_partitions


def test_a_seek_that_brought_nothing_is_tried_again_less_and_less_often(monkeypatch: Any) -> None:
    c = TP("commands", 2)
    app, watch, clock = _stalled(monkeypatch, {c: 50}, {c: [0, 1]})
    tried_at = []
    for _ in range(80):  # 400 seconds, a look every 5
        clock.now += 5
        if asyncio.run(watch.unstall("commands")):
            tried_at.append(clock.now - 1000)
    assert tried_at[:4] == [10, 20, 40, 80]
    gaps = [b - a for a, b in itertools.pairwise(tried_at)]
    assert gaps == sorted(gaps) and max(gaps) <= 300
    assert set(app.consumer.seeks) == {(c, 2)}
