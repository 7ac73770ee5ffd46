"""Per-object chains of the writer's scheduler: jobs, and acknowledgements in offset order.

Each object (key ``app/source_id``) has a chain of :class:`Job`s that run one after another;
different objects run concurrently. Acks are manual and in offset order per partition
(:class:`InOrderAcks`): an offset is acknowledged only when it and every offset before it
on its partition are done, so a crash replays whatever was not finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from schemas import ProvisioningCommand

__all__ = ["Ack", "InOrderAcks", "Job", "Ticket"]

Ack = Callable[[Any], Awaitable[Any]]


@dataclass(eq=False)
class Ticket:
    """One consumed event, acknowledged once it and all before it on its partition are done."""

    event: Any
    done: bool = False
    since: float = field(default_factory=time.monotonic)
    reported: bool = False
    ack: Ack | None = None


@dataclass(eq=False)
class Job:
    """One run of one object's command, a link in that object's chain."""

    key: bytes
    command: ProvisioningCommand | None
    """None: run the object's latest deferred command again (a link it waited for appeared)."""
    ticket: Ticket | None = None
    ack: Ack | None = None
    generation: int | None = None
    """The consumer-group generation its event was fetched in (None: not from an event)."""
    partition: int | None = None
    """The commands partition its event came from (None: not from an event)."""
    releasing: bool = False
    escrowed: int = 0
    """> 0: a retry of an escrowed command that has failed this many times already."""
    running: ProvisioningCommand | None = None
    """The command this job applies, once it started (for a re-run: the deferred one)."""
    previous: Job | None = None
    holds_window: bool = True
    parked: bool = False
    superseded: bool = False
    applying: bool = False
    """Inside a target call: a revoke waits for it rather than cancel it half-written."""
    dropped: bool = False
    """Its partition was revoked: it writes nothing more and acknowledges nothing."""
    done: bool = False
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def blocked(self) -> bool:
        """Parked, or waiting behind a parked job of its object: not work in progress."""
        job: Job | None = self
        while job is not None:
            if job.parked:
                return True
            job = job.previous if job.previous is not None and not job.previous.done else None
        return False


def _generation(ticket: Ticket) -> int | None:
    generation = getattr(ticket.event.message, "generation_id", None)
    return generation if isinstance(generation, int) else None


class InOrderAcks:
    """Acknowledges events per partition strictly in offset order."""

    def __init__(self) -> None:
        self._queues: dict[int, deque[Ticket]] = defaultdict(deque)
        self._lock = asyncio.Lock()

    def track(self, event: Any, ack: Ack | None = None) -> Ticket:
        ticket = Ticket(event, ack=ack)
        self._queues[event.message.partition].append(ticket)
        return ticket

    async def purge(self, generation: int) -> int:
        """The consumer group's assignment of ``generation`` is in force: events fetched in
        an earlier generation (delivered after their partition was revoked, and tracked in a
        queue a revoke had already forgotten) are the group's to replay, not this replica's
        to acknowledge. Out of every line, so that none holds back the acks of a partition
        this replica owns now (a kill -9 replica test's survivor kept its commits of a
        partition it took over at the first offset for good). Returns how many were purged."""
        purged = 0
        async with self._lock:
            for queue in self._queues.values():
                stale = [t for t in queue if (g := _generation(t)) is not None and g < generation]
                for ticket in stale:
                    queue.remove(ticket)
                purged += len(stale)
                while queue and queue[0].done and queue[0].ack is not None:
                    ticket = queue.popleft()
                    assert ticket.ack is not None
                    await ticket.ack(ticket.event)
        return purged

    def forget(self, partitions: set[int]) -> None:
        """Partitions revoked: their unacknowledged events are the next owner's to replay
        (a ticket left here would block the partition's acks if it came back)."""
        for partition in partitions:
            self._queues.pop(partition, None)

    def blocking(self, older_than: float) -> list[Ticket]:
        """The first unfinished ticket of each partition, when it has waited ``older_than``
        seconds: the partition's acknowledgements (and commits) wait behind it."""
        now = time.monotonic()
        return [queue[0] for queue in self._queues.values()
                if queue and not queue[0].done and now - queue[0].since >= older_than]

    async def done(self, ticket: Ticket, ack: Ack) -> None:
        ticket.done = True
        async with self._lock:
            queue = self._queues.get(ticket.event.message.partition)
            while queue and queue[0].done:  # None: the partition was revoked
                await ack(queue.popleft().event)

    async def drop(self, ticket: Ticket, ack: Ack) -> None:
        """``ticket``'s event is not this replica's to acknowledge (fetched before its
        partition went to another replica, delivered after the revoke): out of the line,
        unacknowledged, so that the partition's events after it, once it comes back here,
        are not held back behind it for good."""
        async with self._lock:
            queue = self._queues.get(ticket.event.message.partition)
            if queue is None:
                return
            with contextlib.suppress(ValueError):
                queue.remove(ticket)
            while queue and queue[0].done:
                await ack(queue.popleft().event)
