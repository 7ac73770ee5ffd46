"""Bulk restore of a worker's RocksDB tables from their changelogs, before faust starts.

faust's own recovery reads a changelog at about 2,500 records/s per partition on a small
machine (an event object per record, a small fetch, a flow-control round trip per buffer):
a writer that provisioned a million objects took minutes to become ready on an empty disk.
This reads each changelog partition the state slot lacks with one plain consumer and large
fetches, bytes in and bytes out, and writes it into the very partition databases faust's
RocksDB store opens (``<tabledir>/<table>-<partition>.db``), together with the offset faust
looks for there (:attr:`faust.stores.rocksdb.Store.offset_key`). faust's recovery then
seeks past it and reads only the tail that came after.

Which tables: every changelog topic of the app (``<app id>-<table>-changelog``), all of its
partitions. A single replica owns them all; with several replicas each restores every
partition too, including those another replica will own: wasted reading, but correct (a
partition restored here and assigned later is recovered from the offset stored with it,
like faust's own standby copy).

Why a kill cannot leave an offset ahead of its data: each fetched chunk of a partition is
one RocksDB write batch holding the chunk's records *and* the offset of its last record;
RocksDB applies a batch atomically and writes it to its write-ahead log first. The offset
stored is always that of the last record whose write is in the database.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.stores.rocksdb import Store as FaustRocksStore
from rocksdict import Options, Rdict, WriteBatch

__all__ = ["OFFSET_KEY", "Restored", "changelog_tables", "partition_path", "restore_tables"]

log = structlog.get_logger("scimflow.worker")

OFFSET_KEY: bytes = FaustRocksStore.offset_key
"""Where faust's RocksDB store keeps, in each partition database, the offset of the last
changelog record it applied (it seeks there when it recovers)."""

_FETCH_MAX_BYTES = 64 * 2**20
_PARTITION_FETCH_BYTES = 16 * 2**20
"""Large fetches: the broker answers with whole segments' worth of batches at once."""

_MAX_RECORDS = 10_000
"""Records taken from the fetched data at once: a fetch of compressed batches (zstd: about
eight times smaller) would otherwise become hundreds of MB of record objects in one go."""

_WRITE_BUFFER_BYTES = 16 * 2**20
"""Memtable per partition database while restoring: twice faust's open of ours, for fewer
flushes; every partition of every table is open at once, so it counts against RSS."""

_SUFFIX = "-changelog"


@dataclass(frozen=True)
class Restored:
    """What the restore of one table partition read."""

    topic: str
    partition: int
    records: int
    last_offset: int | None


def changelog_tables(topics: Iterable[str], app_id: str) -> dict[str, str]:
    """The app's tables and their changelog topics, among ``topics`` (faust names a table's
    changelog ``<app id>-<table>-changelog``)."""
    prefix = f"{app_id}-"
    return {topic[len(prefix):-len(_SUFFIX)]: topic for topic in topics
            if topic.startswith(prefix) and topic.endswith(_SUFFIX)
            and len(topic) > len(prefix) + len(_SUFFIX)}


def partition_path(tabledir: Path, table: str, partition: int) -> Path:
    """The database faust's RocksDB store opens for ``table``'s ``partition``."""
    return tabledir / f"{table}-{partition}.db"


def persisted_offset(db: Rdict) -> int | None:
    """The offset of the last changelog record applied to ``db`` (faust's key), if any."""
    value = db.get(OFFSET_KEY)
    return int(value) if isinstance(value, bytes) else None


def open_partition(path: Path) -> Rdict:
    """``path`` opened as faust's store opens it (raw bytes keys and values)."""
    options = Options(raw_mode=True)
    options.create_if_missing(True)
    options.set_write_buffer_size(_WRITE_BUFFER_BYTES)
    return Rdict(str(path), options=options)


def write_chunk(db: Rdict, records: Iterable[Any]) -> int | None:
    """Apply ``records`` (``offset``, ``key``, ``value``; None is a tombstone) and store the
    offset of the last one, all in one atomic batch; that offset (None: no records)."""
    batch = WriteBatch(raw_mode=True)
    last: int | None = None
    for record in records:
        if record.value is None:
            batch.delete(record.key)
        else:
            batch.put(record.key, record.value)
        last = record.offset
    if last is None:
        return None
    batch.put(OFFSET_KEY, str(last).encode())
    db.write(batch)
    return last


def restore_tables(bootstrap: str, app_id: str, tabledir: Path, *,
                   client: Mapping[str, Any] | None = None) -> list[Restored]:
    """Bring every table partition database in ``tabledir`` up to its changelog's end offset
    as of now (``client``: aiokafka's security kwargs). Runs on a loop of its own thread, so
    callers may be in an event loop already."""
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="scimflow-restore") as pool:
        done = pool.submit(asyncio.run, _restore(bootstrap, app_id, tabledir, dict(client or {})))
        restored = done.result()
    read = [r for r in restored if r.records]
    log.info("tables restored from changelogs", partitions=len(read),
             records=sum(r.records for r in read), seconds=round(time.monotonic() - started, 1))
    return restored


async def _restore(bootstrap: str, app_id: str, tabledir: Path,
                   client: dict[str, Any]) -> list[Restored]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
        fetch_max_bytes=_FETCH_MAX_BYTES, max_partition_fetch_bytes=_PARTITION_FETCH_BYTES,
        **client)
    await consumer.start()
    try:
        # one metadata request for every topic (aiokafka has no public call that returns it)
        cluster = await consumer._client.fetch_all_metadata()
        tables = changelog_tables(cluster.topics(), app_id)
        dbs = _open_all(cluster, tables, tabledir)
        try:
            return await _read_all(consumer, dbs)
        finally:
            for db in dbs.values():
                db.close()
    finally:
        await consumer.stop()


def _open_all(cluster: Any, tables: Mapping[str, str], tabledir: Path) -> dict[TopicPartition, Rdict]:
    tabledir.mkdir(parents=True, exist_ok=True)
    return {TopicPartition(topic, partition): open_partition(partition_path(tabledir, table, partition))
            for table, topic in tables.items()
            for partition in sorted(cluster.partitions_for_topic(topic) or ())}


async def _read_all(consumer: AIOKafkaConsumer, dbs: Mapping[TopicPartition, Rdict]) -> list[Restored]:
    """Read each partition from after its stored offset to its end offset of now."""
    if not dbs:
        return []
    tps = list(dbs)
    starts = await consumer.beginning_offsets(tps)
    ends = await consumer.end_offsets(tps)
    consumer.assign(tps)
    todo: dict[TopicPartition, int] = {}
    for tp, db in dbs.items():
        stored = persisted_offset(db)
        start = max(starts[tp], -1 if stored is None else stored + 1)
        if start < ends[tp]:
            consumer.seek(tp, start)
            todo[tp] = ends[tp]
    counts = dict.fromkeys(tps, 0)
    lasts: dict[TopicPartition, int | None] = {tp: persisted_offset(db) for tp, db in dbs.items()}
    consumer.pause(*(tp for tp in tps if tp not in todo))
    while todo:
        chunks = await consumer.getmany(*todo, timeout_ms=1000, max_records=_MAX_RECORDS)
        for tp, records in chunks.items():
            wanted = [r for r in records if r.offset < todo[tp]]
            last = write_chunk(dbs[tp], wanted)
            counts[tp] += len(wanted)
            if last is not None:
                lasts[tp] = last
            if await consumer.position(tp) >= todo[tp]:
                consumer.pause(tp)
                del todo[tp]
    return [Restored(tp.topic, tp.partition, counts[tp], lasts[tp]) for tp in tps]
