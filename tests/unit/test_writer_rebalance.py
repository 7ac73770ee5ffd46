"""What a writer replica does when partitions move: the jobs of revoked partitions stop
(target calls in flight finish first) and acknowledge nothing; a listing taken before a
partition came here is not used to decide that its objects are absent."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

from schemas import ProvisioningCommand
from services.runtime.kafka import partition_for
from services.runtime.settings import load_settings
from services.scim.client import ScimClient
from services.writer.apply import Writer
from services.writer.chains import InOrderAcks, Job
from services.writer.discovery import TargetSnapshot
from services.writer.links import Deferrals
from services.writer.scheduler import Scheduler
from tests.unit.test_writer_on_demand import APP

PARTITIONS = 3


def _key(partition: int, n: int = 0) -> bytes:
    """The n-th key ``a/u<i>`` that lands on ``partition``."""
    keys = (f"a/u{i}".encode() for i in range(1000))
    return [k for k in keys if partition_for(k, PARTITIONS) == partition][n]


def _command(key: bytes) -> ProvisioningCommand:
    return ProvisioningCommand(app="a", object_type="user", source="s", source_id=key.decode()[2:],
                               operation="upsert", reason="in scope", change_id="c",
                               observed_at=datetime.now(UTC), cycle_id="scan-1")


def _event(partition: int, offset: int) -> Any:
    return SimpleNamespace(message=SimpleNamespace(partition=partition, offset=offset))


class _Harness:
    """A scheduler whose apply records each key and, for ``blocking`` keys, waits for ``gate``."""

    def __init__(self, blocking: set[bytes]) -> None:
        self.applied: list[bytes] = []
        self.acked: list[tuple[int, int]] = []
        self.gate = asyncio.Event()
        self.blocking = blocking
        self.acks = InOrderAcks()
        restored = asyncio.Event()
        restored.set()
        retries = SimpleNamespace(escrow_after=5, attempts=1, initial_wait=0.1, max_wait=1.0)
        client = SimpleNamespace(quarantine=SimpleNamespace(active=False), limiter=None)
        writer: Any = SimpleNamespace(app=SimpleNamespace(target=SimpleNamespace(retries=retries)),
                                      client=client)
        self.scheduler = Scheduler(load_settings({}, partitions=PARTITIONS), {"a": writer},
                                   apply=self._apply, publisher=SimpleNamespace(),  # type: ignore[arg-type]
                                   escrow=None, deferrals=Deferrals(), acks=self.acks,
                                   restored=restored, is_off=lambda _: False)

    async def _apply(self, key: bytes, _: ProvisioningCommand, __: bool) -> None:
        self.applied.append(key)
        if key in self.blocking:
            await self.gate.wait()

    async def _ack(self, event: Any) -> None:
        self.acked.append((event.message.partition, event.message.offset))

    async def submit(self, key: bytes, offset: int, generation: int | None = None, *,
                     by_partition: bool = False) -> None:
        partition = partition_for(key, PARTITIONS)
        ticket = self.acks.track(_event(partition, offset))
        await self.scheduler.schedule(Job(key, _command(key), ticket, self._ack, generation=generation,
                                          partition=partition if by_partition else None))


def test_a_revoke_drops_queued_jobs_waits_for_the_call_in_flight_and_acks_none_of_them() -> None:
    revoked, kept = _key(0), _key(1)

    async def run() -> _Harness:
        h = _Harness(blocking={revoked})
        await h.submit(revoked, 0)  # writing when the revoke comes
        await h.submit(revoked, 1)  # queued behind it in the object's chain
        await asyncio.sleep(0.01)
        release = asyncio.create_task(h.scheduler.release(lambda k: partition_for(k, PARTITIONS) != 0))
        await asyncio.sleep(0.05)
        assert not release.done()  # the target call in flight is awaited...
        h.gate.set()
        assert await release == 2  # ...then the revoke goes on
        await h.submit(kept, 0)
        await asyncio.sleep(0.01)
        return h

    h = asyncio.run(run())
    assert h.applied.count(revoked) == 1  # the queued command is the new owner's to replay
    assert h.applied[-1] == kept
    assert h.acked == [(1, 0)]  # nothing of the revoked partition acknowledged here
    assert not h.scheduler.jobs and not h.scheduler.tails


def test_a_revoke_waits_only_so_long_for_a_call_that_does_not_end() -> None:
    async def run() -> int:
        h = _Harness(blocking={_key(0)})
        await h.submit(_key(0), 0)
        await asyncio.sleep(0.01)
        dropped = await h.scheduler.release(lambda _: False, wait=0.05)
        h.gate.set()
        await asyncio.sleep(0.01)
        assert h.acked == []
        return dropped

    assert asyncio.run(run()) == 1


def test_a_command_scheduled_for_a_partition_not_owned_any_more_is_not_run() -> None:
    async def run() -> _Harness:
        h = _Harness(blocking=set())
        h.scheduler.owns = lambda k: partition_for(k, PARTITIONS) != 2
        await h.submit(_key(2), 0)
        await h.submit(_key(1), 0)
        await asyncio.sleep(0.01)
        return h

    h = asyncio.run(run())
    assert h.applied == [_key(1)] and h.acked == [(1, 0)]


def test_a_command_from_an_event_is_judged_by_the_events_partition_not_a_hash_of_its_key() -> None:
    def unhashed(key: bytes) -> bool:
        raise AssertionError(f"hashed {key!r}: its event told the partition")

    async def run() -> _Harness:
        h = _Harness(blocking=set())
        h.scheduler.owns, h.scheduler.owned = unhashed, frozenset({0, 1})
        await h.submit(_key(2), 0, by_partition=True)
        await h.submit(_key(1), 0, by_partition=True)
        await asyncio.sleep(0.01)
        return h

    h = asyncio.run(run())
    assert h.applied == [_key(1)] and h.acked == [(1, 0)]


def test_an_event_of_a_later_generation_runs_before_the_assignment_signal_arrives() -> None:
    # A revoke in generation 4 took partition 2; the group gave it back in generation 5 and
    # faust delivered its events before the signal that updates ``owns``. Dropped, they
    # would never come again (faust replays a partition only when it is assigned anew).
    async def run() -> _Harness:
        h = _Harness(blocking=set())
        h.scheduler.owns = lambda k: partition_for(k, PARTITIONS) != 2
        h.scheduler.owns_generation = 4
        await h.submit(_key(2, 0), 7, generation=4)  # fetched before the revoke: the new owner replays it
        await h.submit(_key(2, 1), 7, generation=5)
        await asyncio.sleep(0.01)
        return h

    h = asyncio.run(run())
    assert h.applied == [_key(2, 1)]


def test_forgotten_tickets_of_a_revoked_partition_do_not_hold_back_its_acks_when_it_returns() -> None:
    acked: list[int] = []

    async def ack(e: Any) -> None:
        acked.append(e.message.offset)

    async def run() -> None:
        acks = InOrderAcks()
        acks.track(_event(0, 5))  # its job was dropped at the revoke: never done here
        acks.forget({0})
        again = acks.track(_event(0, 5))  # the partition came back: replayed from offset 5
        await acks.done(again, ack)

    asyncio.run(run())
    assert acked == [5]


def test_an_event_delivered_after_its_partitions_revoke_does_not_hold_back_its_acks_when_it_returns() -> None:
    # Partition 2 was revoked (generation 4) and its queue forgotten; faust then delivered an
    # event it had fetched before (generation 4), dropped as the new owner's. The partition
    # came back in generation 5: its events there must be acknowledged, not wait forever
    # behind the dropped one (the consumer group's commits stopped at it).
    async def run() -> _Harness:
        h = _Harness(blocking=set())
        h.scheduler.owns = lambda k: partition_for(k, PARTITIONS) != 2
        h.scheduler.owns_generation = 4
        h.acks.forget({2})
        await h.submit(_key(2, 0), 7, generation=4)
        h.scheduler.owns = lambda k: True
        h.scheduler.owns_generation = 5
        await h.submit(_key(2, 1), 7, generation=5)
        await h.submit(_key(2, 2), 8, generation=5)
        await asyncio.sleep(0.01)
        return h

    h = asyncio.run(run())
    assert h.applied == [_key(2, 1), _key(2, 2)]
    assert h.acked == [(2, 7), (2, 8)]


def test_a_listing_older_than_the_objects_partition_here_is_not_used() -> None:
    async def run() -> None:
        async with ScimClient(APP.target.base_url, "token") as client:
            writer = Writer(APP, client)
            taken = datetime.now(UTC)
            writer.snapshot = TargetSnapshot("scan-1", {}, 0.0, taken)
            command = _command(_key(0))
            assert writer._snapshot_for(command) is writer.snapshot
            assert writer._snapshot_for(command, taken - timedelta(seconds=1)) is writer.snapshot
            # The partition came here after the listing: another replica may have created it.
            assert writer._snapshot_for(command, taken + timedelta(seconds=1)) is None

    asyncio.run(run())
