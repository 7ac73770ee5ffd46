"""Per-object chains: acknowledgements in offset order, and what counts as work in progress."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from services.writer.chains import InOrderAcks, Job


def event(partition: int, offset: int) -> Any:
    return SimpleNamespace(message=SimpleNamespace(partition=partition, offset=offset))


def test_offsets_are_acked_only_in_order_per_partition() -> None:
    acked: list[tuple[int, int]] = []

    async def ack(e: Any) -> None:
        acked.append((e.message.partition, e.message.offset))

    async def run() -> None:
        acks = InOrderAcks()
        tickets = [acks.track(event(0, 0)), acks.track(event(0, 1)), acks.track(event(1, 0))]
        await acks.done(tickets[1], ack)  # offset 1 waits for offset 0 (e.g. a parked retry)
        await acks.done(tickets[2], ack)  # another partition is not held back
        assert acked == [(1, 0)]
        await acks.done(tickets[0], ack)
        assert acked == [(1, 0), (0, 0), (0, 1)]

    asyncio.run(run())


def test_a_job_behind_a_parked_one_is_not_work_in_progress() -> None:
    parked = Job(b"a/u1", None, parked=True)
    behind = Job(b"a/u1", None, previous=parked)
    assert parked.blocked() and behind.blocked()
    parked.parked = False
    assert not behind.blocked()
    parked.parked, parked.done = True, True  # a finished job holds nothing back
    assert not behind.blocked()
