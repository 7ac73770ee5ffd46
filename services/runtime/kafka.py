"""The one module that owns Kafka clients.

faust apps for the three workers, and kafka-python for everything outside a worker:
waiting for a broker, creating topics, the plain producer, and every read of a topic
outside a worker's stream. Those reads all go through :class:`TopicReader` (no consumer
group, every partition, nothing committed): a snapshot up to the end offsets
(:func:`read_records`, :func:`read_latest`: ``scimflow status``, the admin API), a tail
(:func:`tail_records`, :func:`consume`: ``scimflow tail``, ``up``, the test harness), or
polls from the end (provision on demand). Inside a worker, :func:`follow_records` and
friends (aiokafka) follow a topic from its beginning for ever.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterable, Iterator
from pathlib import Path
from typing import Any, Literal, Self

import faust
import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError as AioKafkaError
from aiokafka.partitioner import murmur2
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from kafka.structs import TopicPartition as KafkaPartition

from services.runtime import metrics
from services.runtime.errors import ScimflowError
from services.runtime.settings import Settings
from services.runtime.topics import Topics, TopicSpec

log = structlog.get_logger("scimflow.worker")

__all__ = [
    "CAUGHT_UP",
    "IDLE",
    "BrokerUnavailableError",
    "SkippedRecords",
    "TopicReader",
    "consume",
    "create_topics",
    "faust_app",
    "follow_from_start",
    "follow_records",
    "follow_topic",
    "partition_for",
    "plain_producer",
    "raw_schema",
    "raw_topic",
    "read_latest",
    "read_records",
    "report_consumer_lag",
    "run_worker",
    "tail_records",
    "wait_until_ready",
]


class BrokerUnavailableError(ScimflowError):
    """The broker did not answer in time."""


def wait_until_ready(bootstrap: str, timeout: float = 60.0) -> None:
    """Block until the broker at ``bootstrap`` answers a metadata request."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000,
                                     client_id="scimflow-probe")
        except KafkaError as exc:
            last = exc
            time.sleep(0.25)
            continue
        try:
            admin.list_topics()
        except KafkaError as exc:
            last = exc
            time.sleep(0.25)
        else:
            return
        finally:
            admin.close()
    raise BrokerUnavailableError(f"broker at {bootstrap} did not answer within {timeout:.0f}s: {last}")


def create_topics(bootstrap: str, specs: Iterable[TopicSpec]) -> list[str]:
    """Create the topics that do not exist yet; returns the names created."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="scimflow-admin")
    try:
        existing = set(admin.list_topics())
        new = [
            NewTopic(
                name=s.name,
                num_partitions=s.partitions,
                replication_factor=1 if _single_node(admin) else -1,
                topic_configs={"cleanup.policy": "compact"} if s.compacted else {},
            )
            for s in specs
            if s.name not in existing
        ]
        if new:
            # A concurrent creator may win the race; the topic is then what we asked for.
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(new, timeout_ms=30000)
        return [t.name for t in new]
    finally:
        admin.close()


def _single_node(admin: Any) -> bool:
    return len(admin.describe_cluster().get("brokers", [])) <= 1


def plain_producer(bootstrap: str) -> Any:
    """A kafka-python producer for tools and tests (bytes in, bytes out)."""
    return KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)


def consume(bootstrap: str, topic: str, *, from_beginning: bool = True,
            idle_timeout: float = 1.0) -> Iterator[Any]:
    """Yield records of ``topic`` until it has been idle for ``idle_timeout`` seconds."""
    for record in tail_records(bootstrap, topic, from_beginning=from_beginning, idle_timeout=idle_timeout):
        if record is IDLE:
            return
        yield record


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives ``key`` (murmur2, as in Java)."""
    hashed: int = murmur2(key)
    return (hashed & 0x7FFFFFFF) % partitions


def faust_app(service: str, settings: Settings, bootstrap: str) -> Any:
    """The faust app of one service: its id is the consumer group, state is in changelogs.

    Tables use the in-memory store and are rebuilt from their changelog topic at start-up,
    so a replacement pod needs no volume. Offsets are committed only after the producer
    has flushed what the events produced (faust does this), which gives at-least-once.
    """
    topics = Topics(settings.topic_prefix, settings.partitions)
    servers = ";".join(f"kafka://{hp.strip()}" for hp in bootstrap.split(","))
    datadir = Path(settings.data_dir) / "faust" / topics.app_id(service)
    datadir.mkdir(parents=True, exist_ok=True)
    return faust.App(
        topics.app_id(service),
        broker=servers,
        store="memory://",
        topic_partitions=settings.partitions,
        topic_disable_leader=True,  # no leader topic: we never use app.is_leader()
        topic_allow_declare=True,
        web_enabled=False,
        datadir=str(datadir),
        producer_acks=-1,
        broker_commit_interval=1.0,
        # A crashed worker's partitions move to a live one after this long (Kafka: 45 s).
        broker_session_timeout=10.0,
        broker_heartbeat_interval=3.0,
        consumer_auto_offset_reset="earliest",
        stream_wait_empty=False,
    )


async def follow_topic(bootstrap: str, topic: str) -> AsyncIterator[bytes]:
    """Every value of ``topic`` from the beginning, then new ones as they come, without a
    consumer group: each process that follows a control topic sees all of it."""
    async for _, value in follow_records(bootstrap, topic):
        if value is not None:
            yield value


async def follow_records(bootstrap: str, topic: str, *,
                         on_caught_up: Callable[[], None] | None = None,
                         ) -> AsyncIterator[tuple[bytes | None, bytes | None]]:
    """Every ``(key, value)`` of ``topic`` from the beginning of every partition, then new
    ones as they come; ``value`` is None for a tombstone (a compacted changelog's delete).
    No consumer group and no commits: every replica that follows it sees every partition.
    ``on_caught_up`` is called once, when the end offsets the partitions had at the start
    are reached: state built from the topic is complete from then on."""
    async for record in _from_start(bootstrap, topic):
        if record is CAUGHT_UP:
            if on_caught_up is not None:
                on_caught_up()
        else:
            yield record.key, record.value


CAUGHT_UP = None
"""What :func:`follow_from_start` yields once, when it reached the end offsets of its start."""


async def follow_from_start(bootstrap: str, topic: str) -> AsyncIterator[bytes | None]:
    """Like :func:`follow_topic`, and yields :data:`CAUGHT_UP` (None) once, when it has read
    up to the end offsets the partitions had when it started: a replica that builds state
    from the topic knows when that state is complete."""
    async for record in _from_start(bootstrap, topic):
        if record is CAUGHT_UP:
            yield CAUGHT_UP
        elif record.value is not None:
            yield record.value


async def _from_start(bootstrap: str, topic: str) -> AsyncIterator[Any]:
    """Every record of ``topic`` from the beginning, with :data:`CAUGHT_UP` once between
    the records that were there at the start and the ones that came after. A broker
    failure raises BrokerUnavailableError (callers never see aiokafka's errors)."""
    try:
        # aclosing: a caller that stops reading stops the consumer now, not at garbage collection.
        async with contextlib.aclosing(_from_start_unwrapped(bootstrap, topic)) as records:
            async for record in records:
                yield record
    except AioKafkaError as exc:
        raise BrokerUnavailableError(f"cannot follow {topic} from {bootstrap}: {exc}") from exc


async def _from_start_unwrapped(bootstrap: str, topic: str) -> AsyncGenerator[Any, None]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        partitions = await _all_partitions(consumer, topic)
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends: dict[TopicPartition, int] = await consumer.end_offsets(partitions)
        waiting = True
        while True:
            if waiting and await _reached(consumer, ends):
                waiting = False
                yield CAUGHT_UP
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    yield record
    finally:
        with contextlib.suppress(Exception):
            await consumer.stop()


async def _all_partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    found = consumer.partitions_for_topic(topic)
    if not found:
        await consumer._client.force_metadata_update()  # aiokafka has no public refresh
        found = consumer.partitions_for_topic(topic) or {0}
    return [TopicPartition(topic, p) for p in sorted(found)]


async def _reached(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
    for tp, end in ends.items():
        if await consumer.position(tp) < end:
            return False
    return True


class SkippedRecords:
    """Notices records faust dropped before they reached an agent, and reads them again.

    faust skips (and does not deliver) records it fetched while flow control was off or in
    an older consumer-group generation, i.e. around a rebalance, but keeps its fetch
    position past them (faust-streaming#527, #216). With manual acks the partition's commits
    then stop at the gap, and the skipped records wait for the next restart. ``check``
    sees the offsets jump, logs and counts it (``scimflow_skipped_records_total``, the part
    the tests verify) and seeks the partition back to the first one missing. In the one
    case seen under load, after the worker's stream had not been read for seconds, the
    seek did not bring the records back: the worker must not stop reading its stream.
    """

    def __init__(self, app: Any, service: str) -> None:
        self._app = app
        self._service = service
        self._next: dict[tuple[Any, int | None], int] = {}
        self._seeking: dict[tuple[Any, int | None], int] = {}
        """Partitions sought back: the offset awaited; records after it pass meanwhile."""

    async def check(self, event: Any) -> None:
        message = event.message
        tp, offset = message.tp, message.offset
        key = (tp, getattr(message, "generation_id", None))
        awaited = self._seeking.get(key)
        if awaited is not None:
            if offset > awaited:
                return  # fetched before the seek; the missing ones follow
            del self._seeking[key]
        expected = self._next.get(key, self._committed(tp))
        if awaited is None and expected is not None and offset > expected:
            log.warning("records were skipped by the consumer; reading them again", service=self._service,
                        topic=tp.topic, partition=tp.partition, first=expected, got=offset)
            metrics.SKIPPED_RECORDS.labels(service=self._service).inc(offset - expected)
            self._seeking[key] = expected
            await self._app.consumer.seek(tp, expected)
            return
        self._next[key] = offset + 1

    def _committed(self, tp: Any) -> int | None:
        # faust keeps the group's committed offsets of its assignment here; no public accessor.
        committed = getattr(self._app.consumer, "_committed_offset", {}).get(tp)
        return committed if isinstance(committed, int) else None


def report_consumer_lag(app: Any, service: str, every: float = 5.0) -> None:
    """Export ``scimflow_consumer_lag{service,topic}``: high-water mark minus committed offset
    over the partitions this process owns (changelog topics excluded)."""
    @app.timer(every)  # type: ignore[untyped-decorator]
    async def lag() -> None:
        consumer = app.consumer
        per_topic: dict[str, int] = {}
        for tp in consumer.assignment():
            if tp.topic.endswith("-changelog"):
                continue
            # faust has no public getter for the committed offset of a partition.
            committed = consumer._committed_offset.get(tp) or 0
            per_topic[tp.topic] = per_topic.get(tp.topic, 0) + max(0, consumer.highwater(tp) - committed)
        for topic, value in per_topic.items():
            metrics.CONSUMER_LAG.labels(service=service, topic=topic).set(value)


def raw_schema() -> Any:
    """Keys and values as bytes: every message is encoded/decoded with msgspec by us."""
    return faust.Schema(key_type=bytes, value_type=bytes, key_serializer="raw",
                        value_serializer="raw")


def raw_topic(app: Any, name: str) -> Any:
    """A faust topic of raw bytes: we decode with msgspec so bad input reaches the error topic."""
    return app.topic(name, schema=raw_schema())


class _Worker(faust.Worker):
    """A faust worker whose shutdown has a deadline.

    A clean shutdown commits offsets and flushes producers, which needs the broker; with
    the broker gone, faust's stop can wait (and spin) for ever. Once shutdown begins, a
    watchdog thread ends the process after ``shutdown_timeout`` seconds: what was not
    committed is redelivered to the next consumer (at-least-once, idempotent writes).
    """

    shutdown_timeout: float = 30.0
    _deadline: threading.Timer | None = None

    def _schedule_shutdown(self, signal: Any) -> None:  # mode's hook for SIGTERM/SIGINT
        self._arm_deadline()
        super()._schedule_shutdown(signal)

    def stop_and_shutdown(self) -> None:  # also reached when the worker stops on a crash
        self._arm_deadline()
        super().stop_and_shutdown()

    def _arm_deadline(self) -> None:
        if self._deadline is None:
            self._deadline = threading.Timer(self.shutdown_timeout, _shutdown_timed_out,
                                             args=(self.shutdown_timeout,))
            self._deadline.daemon = True
            self._deadline.start()


def _shutdown_timed_out(seconds: float) -> None:
    log.error("shutdown_timed_out", seconds=seconds,
              detail="the worker did not stop in time (broker unreachable?); exiting anyway")
    logging.shutdown()
    os._exit(_SHUTDOWN_TIMED_OUT)


_SHUTDOWN_TIMED_OUT = 75  # EX_TEMPFAIL: stopped, not cleanly


def run_worker(app: Any, *, loglevel: str = "info", shutdown_timeout: float = 30.0) -> None:
    """Run a faust worker in the foreground until SIGTERM/SIGINT (clean shutdown, within
    ``shutdown_timeout`` seconds)."""
    worker = _Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    worker.shutdown_timeout = shutdown_timeout
    # faust keeps a terminal spinner at level WARNING and above, and for it sets the root
    # logger to DEBUG: every debug line of aiokafka and httpcore then builds a LogRecord
    # (about 5-10 % of a worker's CPU). Workers run headless; no spinner.
    worker.spinner = None
    worker.execute_from_commandline()


class TopicReader:
    """Reads topics with no consumer group: every partition, nothing committed.

    Each partition starts at its beginning or, with ``start="end"``, at its end offset as
    of construction, resolved before the constructor returns: a caller that then asks for
    something misses none of the answers. A topic that has no partitions yet is looked up
    again at each poll, and read from its beginning once it appears (all of it is new).
    Records are kafka-python ``ConsumerRecord`` (``topic``, ``partition``, ``offset``,
    ``key``, ``value``). Broker failures raise BrokerUnavailableError.
    """

    def __init__(self, bootstrap: str, topics: Iterable[str], *,
                 start: Literal["beginning", "end"] = "beginning", client_id: str = "scimflow-read",
                 request_timeout: float | None = None) -> None:
        self._missing = list(topics)
        self._where = f"{', '.join(self._missing)} from {bootstrap}"
        self.assigned: list[KafkaPartition] = []
        """The partitions read so far (those of the topics that exist)."""
        try:
            timeouts = {} if request_timeout is None else {"request_timeout_ms": int(request_timeout * 1000)}
            self._consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                           client_id=client_id, **timeouts)
        except KafkaError as exc:
            raise BrokerUnavailableError(f"cannot read {self._where}: {exc}") from exc
        try:
            found = self._assign_missing()
            if start == "end":
                self._consumer.seek_to_end(*found)
                for tp in found:
                    self._consumer.position(tp)  # resolve "end" now, not at the first poll
        except KafkaError as exc:
            self.close()
            raise BrokerUnavailableError(f"cannot read {self._where}: {exc}") from exc

    def poll(self, timeout: float) -> list[Any]:
        """The records that arrive within ``timeout`` seconds (empty: none did)."""
        try:
            if self._missing:
                self._assign_missing()
            batches = self._consumer.poll(timeout_ms=int(timeout * 1000))
        except KafkaError as exc:
            raise BrokerUnavailableError(f"cannot read {self._where}: {exc}") from exc
        return [record for records in batches.values() for record in records]

    def end_offsets(self) -> dict[Any, int]:
        """The end offset of every partition read, now."""
        ends: dict[Any, int] = self._consumer.end_offsets(self.assigned)
        return ends

    def position(self, tp: Any) -> int:
        """The offset of the next record this reader gets from partition ``tp``."""
        offset: int = self._consumer.position(tp)
        return offset

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _assign_missing(self) -> list[KafkaPartition]:
        """Assign the partitions of the topics that had none so far; returns the new ones."""
        found = [KafkaPartition(topic, p) for topic in self._missing
                 for p in sorted(self._consumer.partitions_for_topic(topic) or ())]
        if not found:
            return []
        self._missing = [t for t in self._missing if t not in {tp.topic for tp in found}]
        self.assigned += found
        self._consumer.assign(self.assigned)
        self._consumer.seek_to_beginning(*found)
        return found


IDLE = None
"""What :func:`tail_records` yields each time the topic has been idle for a while."""


def tail_records(bootstrap: str, topic: str, *, from_beginning: bool = True,
                 idle_timeout: float = 0.5) -> Generator[Any, None, None]:
    """Every record of ``topic`` from its beginning (or from now), for ever; :data:`IDLE`
    (None) each time no record came for ``idle_timeout`` seconds, so the caller can stop
    there or check on something before it reads on."""
    with TopicReader(bootstrap, [topic], start="beginning" if from_beginning else "end") as reader:
        last = time.monotonic()
        while True:
            records = reader.poll(max(0.0, last + idle_timeout - time.monotonic()))
            if records:
                yield from records
                last = time.monotonic()
            elif time.monotonic() >= last + idle_timeout:
                yield IDLE
                last = time.monotonic()


def read_latest(bootstrap: str, topic: str, *, timeout: float = 30.0) -> dict[bytes, bytes]:
    """The latest value of every key of a compacted ``topic``, as of its end offsets now.

    Reads every partition from the beginning to the end offsets taken at the start, with
    manual assignment (no consumer group); a tombstone (null value) removes its key. A
    topic that does not exist holds nothing. Raises BrokerUnavailableError if the broker
    does not answer, or the read does not reach the end within ``timeout`` seconds.
    """
    latest: dict[bytes, bytes] = {}
    for record in read_records(bootstrap, topic, timeout=timeout):
        if record.key is None:
            continue
        if record.value is None:
            latest.pop(record.key, None)
        else:
            latest[record.key] = record.value
    return latest


def read_records(bootstrap: str, topic: str, *, timeout: float = 30.0) -> list[Any]:
    """Every record of ``topic`` up to its end offsets now: a snapshot, so a topic that keeps
    growing (activity during a sync) does not keep the read going, and nothing waits for
    the topic to fall idle. Same errors as :func:`read_latest`."""
    deadline = time.monotonic() + timeout
    with TopicReader(bootstrap, [topic], request_timeout=timeout) as reader:
        try:
            return _read_to_end(reader, topic, deadline)
        except KafkaError as exc:
            raise BrokerUnavailableError(f"cannot read {topic} from {bootstrap}: {exc}") from exc


def _read_to_end(reader: TopicReader, topic: str, deadline: float) -> list[Any]:
    ends = reader.end_offsets()
    records: list[Any] = []
    while any(reader.position(tp) < end for tp, end in ends.items()):
        if time.monotonic() > deadline:
            raise BrokerUnavailableError(f"reading {topic} did not reach its end offsets in time")
        # A partition that appeared during the read is past "now": none of it is taken.
        records.extend(r for r in reader.poll(0.2)
                       if r.offset < ends.get(KafkaPartition(r.topic, r.partition), 0))
    return records
