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
