"""When a running pipeline (ingest, mapper and writer as processes) has done everything it
was given, read from the broker rather than guessed from sleeps or logs.

A test takes a :class:`Mark` (the end offsets of ``directory.changes`` now), restarts or
changes something, and then waits with :func:`wait_settled` until:

1. ingest has ended a complete full scan after the mark (its ``end`` cycle marker is on
   ``directory.changes`` past the mark);
2. the mapper's consumer group has committed every offset of ``directory.changes``: every
   change is mapped and its commands are on ``provisioning.commands`` (faust commits only
   once what an event produced is flushed);
3. the writer's consumer group has committed every offset of ``provisioning.commands``:
   the writer acknowledges a command only when its target calls are done, in offset order,
   and a scan's end frame only after every command before it.

Checked in that order, each stage's input is complete before its output is looked at, so a
pipeline that passes has nothing left in flight.

One writer fault is told apart instead of waited for until the timeout: a writer that has
handled the whole scan (its log says the scan's end frames arrived on every partition; an
end frame waits for every command before it) while its committed offsets stay short of the
end (:attr:`Settled.stalled`). :func:`request_scan` asks ingest for a full scan now through
the control topic (a ``Restart``, as ``scimflow restart APP`` sends).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer
from kafka.errors import KafkaError
from kafka.structs import TopicPartition

from schemas import CycleMarker
from schemas.codecs import decoder, encode
from schemas.control import Restart
from services.runtime.kafka import plain_producer
from services.runtime.topics import Topics

__all__ = ["STALL", "Mark", "Settled", "WriterLog", "group_lag", "joined", "lag", "mark", "request_scan",
           "scan_ended", "wait_settled"]

_changes = decoder("directory.changes")


@dataclass(frozen=True)
class Mark:
    """``directory.changes`` as it was at one moment: its end offset per partition."""

    at: datetime
    offsets: dict[int, int]


@contextmanager
def _clients(bootstrap: str) -> Iterator[tuple[Any, Any]]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="test-settle")
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, client_id="test-settle")
    try:
        yield admin, consumer
    finally:
        consumer.close()
        admin.close()


def _partitions(topic: str, count: int) -> list[TopicPartition]:
    return [TopicPartition(topic, p) for p in range(count)]


def mark(bootstrap: str, topics: Topics) -> Mark:
    with _clients(bootstrap) as (_, consumer):
        ends = consumer.end_offsets(_partitions(topics.changes, topics.partitions))
    return Mark(datetime.now(UTC), {tp.partition: end for tp, end in ends.items()})


def lag(admin: Any, consumer: Any, group: str, topic: str, partitions: int) -> int:
    """End offsets minus the group's committed offsets, summed over ``topic``'s partitions
    (a partition without a commit counts whole)."""
    return sum(behind for behind, _, _ in _behind(admin, consumer, group, topic, partitions).values())


def _behind(admin: Any, consumer: Any, group: str, topic: str,
            partitions: int) -> dict[int, tuple[int, int, int]]:
    """Partition -> (lag, committed offset, end offset) of ``group`` on ``topic``."""
    tps = _partitions(topic, partitions)
    committed = {tp: meta.offset for tp, meta in admin.list_group_offsets(group).get(group, {}).items()}
    ends = consumer.end_offsets(tps)
    out = {}
    for tp, end in ends.items():
        done = max(0, committed.get(tp, 0))
        out[tp.partition] = (max(0, end - done), done, end)
    return out


def group_lag(bootstrap: str, topics: Topics, service: str) -> int:
    """What ``service``'s consumer group has not committed yet of its input topic."""
    topic = topics.changes if service == "mapper" else topics.commands
    with _clients(bootstrap) as (admin, consumer):
        return lag(admin, consumer, topics.app_id(service), topic, topics.partitions)


def joined(bootstrap: str, topics: Topics, service: str) -> bool:
    """Whether ``service``'s consumer group is stable with a member: it has its partitions."""
    group = topics.app_id(service)
    with _clients(bootstrap) as (admin, _):
        found = admin.describe_groups([group]).get(group, {})
    return bool(found.get("group_state") == "Stable" and found.get("members"))


def scan_ended(consumer: Any, topics: Topics, since: Mark) -> str | None:
    """The cycle id of the first complete full scan that ended on ``directory.changes``
    after ``since`` (None: none yet)."""
    tp = TopicPartition(topics.changes, 0)  # ingest sends its frames to every partition
    consumer.assign([tp])
    consumer.seek(tp, since.offsets.get(0, 0))
    end = consumer.end_offsets([tp])[tp]
    while consumer.position(tp) < end:
        for record in consumer.poll(timeout_ms=500).get(tp, []):
            message = _changes.decode(record.value)
            if isinstance(message, CycleMarker) and message.phase == "end" and message.complete:
                return message.cycle_id
    return None


@dataclass(frozen=True)
class WriterLog:
    """The writer's log file from ``start`` (a byte offset: what the current process wrote)."""

    path: Path
    start: int = 0

    @classmethod
    def now(cls, path: Path) -> WriterLog:
        return cls(path, path.stat().st_size if path.exists() else 0)

    def scan_done(self, cycle_id: str) -> int:
        """On how many commands partitions the writer handled the end of scan ``cycle_id``
        (an end frame waits for every command before it)."""
        with self.path.open("rb") as log:
            log.seek(self.start)
            text = log.read().decode("utf-8", "replace")
        return sum(1 for line in text.splitlines() if f'"cycle_id": "{cycle_id}"' in line
                   and any(f'"event": "{event}"' in line for event in _SCAN_DONE))


_SCAN_DONE = ("full scan finished", "full scan not used to find deletions")
STALL = 10.0
"""Seconds the writer's committed offsets may stay short of the end once its log says it
handled the whole scan, before :func:`wait_settled` calls it a stall."""


@dataclass(frozen=True)
class Settled:
    seconds: float
    cycle_id: str
    stalled: str | None = None
    """Set when the writer handled the whole scan but did not commit it: which partitions
    stopped where (the commands after that offset are replayed at its next start)."""


@dataclass
class _Watch:
    since: Mark
    writer: bool
    log: WriterLog | None
    committed: dict[int, int] | None = None
    moved: float = field(default_factory=time.monotonic)
    handled: float | None = None
    """When the writer's log first said it handled the whole scan."""


def wait_settled(bootstrap: str, topics: Topics, since: Mark, *, timeout: float,
                 writer: bool = True, log: WriterLog | None = None,
                 alive: Callable[[], None] | None = None) -> Settled:
    """Wait until a full scan after ``since`` went through mapper (and writer, unless
    ``writer`` is False: its commands then wait on the topic). With the writer's ``log``, a
    writer that handled the whole scan but left its offsets uncommitted for ``STALL``
    seconds is reported in :attr:`Settled.stalled` instead of waited for until ``timeout``.
    ``alive`` is called between looks (to fail fast when a worker died)."""
    started = time.monotonic()
    watch = _Watch(since, writer, log)
    stage: str | Settled = "a full scan after the mark"
    with _clients(bootstrap) as (admin, consumer):
        while time.monotonic() - started < timeout:
            try:
                stage = _look(admin, consumer, topics, watch, started)
            except KafkaError as exc:  # e.g. a group's coordinator is not elected yet
                stage = f"the broker to answer ({exc})"
            if isinstance(stage, Settled):
                return stage
            if alive is not None:
                alive()
            time.sleep(0.5)
    raise AssertionError(f"the pipeline did not settle in {timeout:.0f}s: still waiting for {stage}")


def _look(admin: Any, consumer: Any, topics: Topics, watch: _Watch, started: float) -> str | Settled:
    """What the pipeline is still doing (a description), or how it settled."""
    cycle_id = scan_ended(consumer, topics, watch.since)
    if cycle_id is None:
        return "ingest to end a full scan"
    behind = _behind(admin, consumer, topics.app_id("mapper"), topics.changes, topics.partitions)
    if any(lag for lag, _, _ in behind.values()):
        return f"the mapper to commit every offset of {topics.changes} ({_shown(behind)})"
    if not watch.writer:
        return Settled(time.monotonic() - started, cycle_id)
    behind = _behind(admin, consumer, topics.app_id("writer"), topics.commands, topics.partitions)
    if not any(lag for lag, _, _ in behind.values()):
        return Settled(time.monotonic() - started, cycle_id)
    waiting = f"the writer to commit every offset of {topics.commands} ({_shown(behind)})"
    committed = {p: done for p, (_, done, _) in behind.items()}
    if committed != watch.committed:
        watch.committed, watch.moved = committed, time.monotonic()
    if watch.handled is None and watch.log is not None and watch.log.scan_done(cycle_id) >= topics.partitions:
        watch.handled = time.monotonic()
    if watch.handled is not None and time.monotonic() - max(watch.handled, watch.moved) >= STALL:
        stuck = ", ".join(f"partition {p} at offset {done} of {end}"
                          for p, (lag, done, end) in behind.items() if lag)
        return Settled(time.monotonic() - started, cycle_id,
                       stalled=f"the writer handled scan {cycle_id} on every partition but its "
                               f"committed offsets stopped: {stuck}")
    return waiting


def _shown(behind: dict[int, tuple[int, int, int]]) -> str:
    return ", ".join(f"partition {p}: {done} of {end}" for p, (_, done, end) in sorted(behind.items()))


def request_scan(bootstrap: str, topics: Topics, app: str) -> None:
    """Ask ingest for a full scan now: a ``Restart`` on the control topic (a writer that
    starts later ignores it: it predates that writer)."""
    message = Restart(app=app, request_id=uuid.uuid4().hex, by="test", at=datetime.now(UTC))
    producer = plain_producer(bootstrap)
    try:
        producer.send(topics.control, key=f"{app}/restart".encode(), value=encode(message)).get(timeout=30)
    finally:
        producer.close()
