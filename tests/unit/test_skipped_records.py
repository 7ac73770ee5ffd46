"""Records faust skipped around a rebalance are noticed and read again (SkippedRecords), and
a partition whose records stopped coming altogether is sought back (``unstall``)."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from faust.transport import consumer as faust_consumer
from intervaltree import IntervalTree  # type: ignore[import-untyped]

from services.runtime.kafka import SkippedRecords, _new_offset


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
    starts: dict[TP, int] = field(default_factory=dict)
    """Each partition's first offset in the log (0 unless said)."""
    group: dict[TP, int] = field(default_factory=dict)
    """The group's committed offsets as the broker holds them, where faust's copy
    (``_committed_offset``) lacks them."""
    asked: list[str] = field(default_factory=list)
    """The broker calls made: each costs the agent a second or so through faust's thread."""

    async def seek(self, tp: TP, offset: int) -> None:
        self.seeks.append((tp, offset))

    async def earliest_offsets(self, *tps: TP) -> dict[TP, int]:
        self.asked.append("earliest")
        return {tp: self.starts.get(tp, 0) for tp in tps}

    @property
    def _thread(self) -> Any:  # faust's consumer thread, as far as the watch asks it
        return self

    def _ensure_consumer(self) -> Any:  # aiokafka's consumer, likewise
        return self

    async def call_thread(self, fun: Any, *args: Any) -> Any:
        return await fun(*args)

    async def committed(self, tp: TP) -> int | None:
        self.asked.append("committed")
        return self.group.get(tp)

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


def _run(offsets: list[int], *, committed: int | None = None, generation: int = 1,
         group: int | None = None, start: int = 0) -> Consumer:
    """``committed``: faust's copy of the group's offset; ``group``: the broker's, where
    faust has none; ``start``: the log's first offset."""
    tp = TP("commands", 0)
    consumer = Consumer({tp: committed} if committed is not None else {},
                        group={tp: group} if group is not None else {}, starts={tp: start})
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
    consumer = _run([3, 4, 7, 8, 5, 6, 7, 8, 9, 12], committed=3)
    assert consumer.seeks == [(TP("commands", 0), 5), (TP("commands", 0), 10)]


def test_records_skipped_before_the_first_one_delivered_are_read_again() -> None:
    assert _run([4, 5], committed=2).seeks == [(TP("commands", 0), 2)]


def test_a_partition_the_group_never_committed_is_expected_from_the_log_start() -> None:
    # A writer killed before its first commit leaves its partitions so: the consumer
    # starts them at the log's first offset (auto_offset_reset earliest).
    assert _run([4, 5]).seeks == [(TP("commands", 0), 0)]
    from_zero = _run([0, 1, 2])
    assert from_zero.seeks == [] and from_zero.asked == []  # nothing before 0: no broker call
    assert _run([40, 41], start=40).seeks == []  # the log starts there (retention)


def test_a_committed_offset_faust_does_not_hold_is_asked_of_the_group() -> None:
    assert _run([9, 10], group=7).seeks == [(TP("commands", 0), 7)]
    assert _run([7, 8], group=7).seeks == []


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


def test_a_partition_never_committed_and_never_delivered_is_sought_to_the_log_start(
        monkeypatch: Any) -> None:
    # The CI failure this guards: writer-2 was killed before its first commit; the survivor
    # took its partition, faust dropped what it fetched of it, and it waited for ever.
    c, d = TP("commands", 0), TP("commands", 1)
    app, watch, clock = _stalled(monkeypatch, {c: 670, d: 660}, {})
    app.consumer.starts[d] = 600  # the log of d starts later (retention)
    app.consumer.group[d] = 630  # and the broker holds a commit of d that faust does not
    clock.now += 11
    assert sorted(asyncio.run(watch.unstall("commands"))) == [0, 1]
    assert sorted(app.consumer.seeks, key=lambda seek: seek[0].partition) == [(c, 0), (d, 630)]


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


def _delivered(offsets: list[int], *, committed: int = 0) -> tuple[list[int], list[int], Consumer]:
    """What the agent handles of ``offsets`` (a noack stream) and what is acknowledged."""
    tp = TP("commands", 0)
    consumer = Consumer({tp: committed})
    watch = SkippedRecords(App(consumer), "writer")
    handled: list[int] = []
    acked: list[int] = []

    async def feed() -> None:
        async def events() -> Any:
            for offset in offsets:
                yield Event(Message(tp, offset))
        async def ack(event: Event) -> None:
            acked.append(event.message.offset)
        async for event in watch.through(events(), ack):
            handled.append(event.message.offset)
    asyncio.run(feed())
    return handled, acked, consumer


def test_records_after_a_gap_wait_for_it_and_are_neither_handled_nor_acked_before() -> None:
    # 2 and 3 were skipped by faust; 4..6 were already fetched when the watch sought back.
    handled, acked, consumer = _delivered([0, 1, 4, 5, 6, 2, 3, 4, 5, 6, 7])
    assert consumer.seeks == [(TP("commands", 0), 2)]
    assert handled == [0, 1, 2, 3, 4, 5, 6, 7]  # in order, each once
    assert acked == handled


def test_a_gap_the_log_no_longer_has_is_given_up_after_a_few_seeks(monkeypatch: Any) -> None:
    # Records 2..3 are gone (retention): every read again starts at 4.
    clock = Clock()
    monkeypatch.setattr("services.runtime.kafka.time.monotonic", clock)
    tp = TP("commands", 0)
    consumer = Consumer({tp: 0})
    watch = SkippedRecords(App(consumer), "writer")

    async def run() -> None:
        for offset in (0, 1):
            assert await watch.check(Event(Message(tp, offset)))
        for _ in range(3):
            assert not await watch.check(Event(Message(tp, 4)))  # sought back to 2
            assert not watch.admit(Message(tp, 4))
            clock.now += 31
            assert watch.admit(Message(tp, 4))  # 2 never came: the fence ends
        assert await watch.check(Event(Message(tp, 4)))  # given up: on after the gap
        assert await watch.check(Event(Message(tp, 5)))
    asyncio.run(run())
    assert consumer.seeks == [(tp, 2)] * 3


class FaustConsumer:
    """The two attributes of faust's consumer the fence replaces."""

    def __init__(self) -> None:
        self._read_offset: defaultdict[TP, int | None] = defaultdict(lambda: None)
        self.delivered: list[int] = []

        async def callback(message: Message) -> None:
            self.delivered.append(message.offset)
        self.callback = callback

    async def seek(self, tp: TP, offset: int) -> None:
        self._read_offset[tp] = offset  # what faust's seek does


def _drain(consumer: FaustConsumer, messages: list[Message]) -> None:
    """faust's fetch loop (Consumer._drain_messages), as far as read offsets go."""
    get, put = consumer._read_offset.__getitem__, consumer._read_offset.__setitem__

    async def run() -> None:
        for message in messages:
            read = get(message.tp)
            if read is None or message.offset >= read:
                await consumer.callback(message)
                put(message.tp, message.offset)
    asyncio.run(run())


def test_a_seek_back_delivers_the_records_sought_not_the_rest_of_the_batch_in_hand() -> None:
    tp, other = TP("commands", 0), TP("commands", 1)
    consumer = FaustConsumer()
    watch = SkippedRecords(App(consumer), "writer")  # type: ignore[arg-type]
    watch.install(consumer)
    _drain(consumer, [Message(tp, 0), Message(tp, 1), Message(other, 0)])
    asyncio.run(watch._seek_back(tp, 1, 1))
    # The batch in hand goes on (2, 3), then the fetch from the seek (1..4).
    _drain(consumer, [Message(tp, 2), Message(other, 1), Message(tp, 3),
                      Message(tp, 1), Message(tp, 2), Message(tp, 3), Message(tp, 4)])
    assert consumer.delivered == [0, 1, 0, 1, 1, 2, 3, 4]
    # faust's own read offsets again: a record fetched twice now is dropped as already read
    _drain(consumer, [Message(tp, 4), Message(tp, 5)])
    assert consumer.delivered[-1:] == [5]


def test_a_fence_ends_with_a_rebalance_or_after_a_while(monkeypatch: Any) -> None:
    clock = Clock()
    monkeypatch.setattr("services.runtime.kafka.time.monotonic", clock)
    tp = TP("commands", 0)
    consumer = FaustConsumer()
    watch = SkippedRecords(App(consumer), "writer")  # type: ignore[arg-type]
    watch.install(consumer)
    asyncio.run(watch._seek_back(tp, 10, 1))
    assert not watch.admit(Message(tp, 12, 1))
    assert watch.admit(Message(tp, 14, 2))  # a rebalance sought to the committed offset
    asyncio.run(watch._seek_back(tp, 10, 1))
    clock.now += 31
    assert watch.admit(Message(tp, 12, 1))  # the record sought never came: deliver again


def test_records_skipped_before_the_first_one_delivered_are_read_again_once_known() -> None:
    # The agent's first record of partition 0 in this generation was 20 while nobody knew
    # of an earlier offset (the log started there, as far as the broker said); faust then
    # learns the group's committed offset, 5: 5..19 never came.
    tp = TP("commands", 0)
    consumer = Consumer(ends={tp: 30}, starts={tp: 20})
    watch = SkippedRecords(App(consumer), "writer")
    handled: list[int] = []

    async def run() -> None:
        async def deliver(*offsets: int) -> None:
            for offset in offsets:
                if await watch.check(Event(Message(tp, offset))):
                    handled.append(offset)
        await deliver(20, 21)
        assert await watch.reread_head("commands") == []  # committed not known yet
        consumer._committed_offset[tp] = 5
        assert await watch.reread_head("commands") == []  # a first look
        assert await watch.reread_head("commands") == [0]  # still so: sought back
        assert await watch.reread_head("commands") == []  # once
        await deliver(22, 23, *range(5, 24))  # the batch in hand, then the records sought
    asyncio.run(run())
    assert consumer.seeks == [(tp, 5)]
    assert handled == [20, 21, *range(5, 24)]


def test_a_first_record_at_the_committed_offset_is_no_gap() -> None:
    tp = TP("commands", 0)
    consumer = Consumer({tp: 5}, ends={tp: 30})
    watch = SkippedRecords(App(consumer), "writer")

    async def run() -> None:
        for offset in (5, 6, 7):
            assert await watch.check(Event(Message(tp, offset)))
        for _ in range(3):
            assert await watch.reread_head("commands") == []
    asyncio.run(run())
    assert consumer.seeks == []


def test_a_commit_that_stays_put_behind_later_acks_is_reported_once(monkeypatch: Any) -> None:
    clock = Clock()
    monkeypatch.setattr("services.runtime.kafka.time.monotonic", clock)
    tp, other = TP("commands", 1), TP("commands", 2)
    consumer = Consumer({tp: 410, other: 7}, ends={tp: 688, other: 7})
    consumer._acked = {tp: [412, 413, 414]}  # type: ignore[attr-defined]
    watch = SkippedRecords(App(consumer), "writer")
    assert watch.report_commit_stall("commands") == []  # first look
    clock.now += 31
    assert watch.report_commit_stall("commands") == [1]  # nothing acknowledged on 2
    clock.now += 31
    assert watch.report_commit_stall("commands") == []  # once per offset
    consumer._committed_offset[tp] = 415
    clock.now += 31
    assert watch.report_commit_stall("commands") == []  # it moved


class Acks:
    """The attributes of faust's consumer its ``_new_offset`` reads."""

    def __init__(self, acked: list[int], committed: int | None,
                 gaps: tuple[tuple[int, int], ...] = ()) -> None:
        tp = TP("commands", 0)
        self._acked: defaultdict[TP, list[int]] = defaultdict(list, {tp: list(acked)})
        self._acked_index: defaultdict[TP, set[int]] = defaultdict(set, {tp: set(acked)})
        self._gap: defaultdict[TP, IntervalTree] = defaultdict(IntervalTree)
        for begin, end in gaps:
            self._gap[tp].addi(begin, end)
        self._committed_offset: defaultdict[TP, int | None] = defaultdict(lambda: None, {tp: committed})


def test_the_commit_offset_ignores_an_offset_acknowledged_twice() -> None:
    tp, acked = TP("commands", 0), [256, 256, 257, 258, 258, 259, 261]
    assert faust_consumer.Consumer._new_offset(Acks(acked, 256), tp) == 257  # type: ignore[arg-type]
    acks = Acks(acked, 256)
    assert _new_offset(acks, tp) == 260  # the whole run, not up to the first duplicate
    assert acks._acked[tp] == [261]


def test_the_commit_offset_is_fausts_when_nothing_is_acknowledged_twice() -> None:
    tp, rng = TP("commands", 0), random.Random(7)
    for _ in range(200):
        committed = rng.choice([None, 0, 10, 50])
        gaps = ((40, 45),) if rng.random() < 0.3 else ()
        acked = sorted(o for o in rng.sample(range(80), rng.randint(0, 40)) if not (gaps and 40 <= o < 45))
        theirs, ours = Acks(acked, committed, gaps), Acks(acked, committed, gaps)
        assert _new_offset(ours, tp) == faust_consumer.Consumer._new_offset(theirs, tp)  # type: ignore[arg-type]
        assert ours._acked[tp] == theirs._acked[tp]
