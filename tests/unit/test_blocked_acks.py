"""A partition whose acknowledgements wait behind one unfinished event is found (and the
writer reports it): its commits stop there, so it must not go unnoticed."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from services.writer.chains import InOrderAcks


def _event(partition: int, offset: int) -> Any:
    return SimpleNamespace(message=SimpleNamespace(partition=partition, offset=offset), key=b"a/u1")


def test_the_first_unfinished_ticket_of_a_partition_is_blocking_once_it_has_waited() -> None:
    acks = InOrderAcks()
    first, second = acks.track(_event(0, 5)), acks.track(_event(0, 6))
    other = acks.track(_event(1, 9))
    assert acks.blocking(older_than=0.0) == [first, other]
    assert acks.blocking(older_than=3600.0) == []  # nothing has waited an hour
    acked: list[int] = []

    async def ack(event: Any) -> None:
        acked.append(event.message.offset)

    async def finish() -> None:
        await acks.done(second, ack)  # done, but behind 5: still blocked by it
        assert acks.blocking(older_than=0.0) == [first, other]
        await acks.done(first, ack)
        await acks.done(other, ack)
    asyncio.run(finish())
    assert acks.blocking(older_than=0.0) == []
    assert acked == [5, 6, 9]


def _gen_event(partition: int, offset: int, generation: int) -> Any:
    message = SimpleNamespace(partition=partition, offset=offset, generation_id=generation)
    return SimpleNamespace(message=message, key=b"a/u1")


def test_events_of_an_earlier_generation_leave_the_line_when_a_new_assignment_is_in_force() -> None:
    # Generation 1's event of partition 2 came after the revoke forgot the queue: tracked
    # anew, its job never ran here. Partition 2 came back in generation 3: its events there
    # must be acknowledged, not wait behind it.
    acked: list[int] = []

    async def ack(event: Any) -> None:
        acked.append(event.message.offset)

    async def run() -> int:
        acks = InOrderAcks()
        acks.track(_gen_event(2, 40, 1), ack)  # stale: never done
        fresh = [acks.track(_gen_event(2, offset, 3), ack) for offset in (64, 65)]
        await acks.done(fresh[0], ack)  # done before the assignment's signal ran
        assert acked == []  # held back behind the stale one
        purged = await acks.purge(3)
        await acks.done(fresh[1], ack)
        return purged

    assert asyncio.run(run()) == 1
    assert acked == [64, 65]
