"""Records faust skipped around a rebalance are noticed and read again (SkippedRecords)."""

from __future__ import annotations

import asyncio
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

    async def seek(self, tp: TP, offset: int) -> None:
        self.seeks.append((tp, offset))


@dataclass
class App:
    consumer: Consumer


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
