"""Where a worker's faust tables live: in memory, or on disk in RocksDB (``rocksdict``).

The changelog topic is the source of truth either way. The memory store rebuilds a table
from its changelog at every start and holds all of it in RAM; the RocksDB store keeps it on
disk (RAM holds a bounded block cache) and, when the disk survives a restart, reads only
the changelog records written after the offset it stored last.

``SCIMFLOW_STATE_STORE`` picks the store (``memory`` by default, ``rocksdb`` for bounded RAM
with a writable disk); ``SCIMFLOW_STATE_DIR`` is where the RocksDB files go (default
``<SCIMFLOW_DATA_DIR>/state``). Each process claims a *slot* directory under it with an
exclusive lock (:func:`claim_state_dir`): two replicas on one machine never open the same
RocksDB files (RocksDB allows one opener), and a restarted process takes the first free
slot again, so it finds the files its predecessor left (a warm restart).

A slot's files are only as good as the changelogs they were built from. Each slot keeps a
marker (:data:`MARKER`): the Kafka cluster id and the topic id of each changelog it read
(:class:`Provenance`). Before the files are opened, :func:`keep_if_same_source` compares it
with the cluster the process talks to now and empties the slot when they differ: a new
cluster (a dev broker started afresh, a disaster-recovery cluster) or a changelog deleted
and created again. Without it, faust's recovery stops the worker (its stored offsets are past
the new topic's end: ConsistencyError), or, worse, trusts old entries when the new topic has
grown past them. The changelog stays the source of truth: an emptied slot is a cold start.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import shutil
import struct
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import faust.stores
from faust.stores import rocksdb as faust_rocksdb
from rocksdict import BlockBasedIndexType, BlockBasedOptions, Cache, Options

__all__ = ["MARKER", "STORE_SCHEME", "Provenance", "StateStore", "claim_state_dir",
           "faust_store_options", "keep_if_same_source", "partition_for", "partition_items", "read"]

StateStore = Literal["memory", "rocksdb"]

STORE_SCHEME = "scimflow-rocksdb"
"""The faust store URL scheme of :class:`KeyPartitionedRocksStore`."""

_BLOCK_CACHE_BYTES = 64 * 2**20
"""RocksDB's read cache, one for every table and partition database of a process. faust
gives each database its own (2 GiB, plus 500 MiB compressed, by default), sized for a
dedicated host; ours share a pod's memory limit with Python. 32 MiB per database was
still 192 MiB for the writer's managed table alone, filled by a full scan that reads
each object once (the OS page cache holds the files as well, outside the process)."""

_WRITE_BUFFER_BYTES = 8 * 2**20
"""Memtable size per partition database (faust's default: 64 MiB, three of them)."""

_held_locks: list[int] = []
"""File descriptors of the slot locks this process holds: kept open until it exits."""


def claim_state_dir(root: Path, app_id: str) -> Path:
    """The first slot directory ``root/app_id/slot-N`` no other live process holds.

    The lock is an ``flock`` on ``slot-N/.lock``, released by the kernel when the process
    ends, however it ends (kill -9 included), so a restarted worker gets its slot back.
    """
    base = root / app_id
    for n in range(1024):
        slot = base / f"slot-{n}"
        slot.mkdir(parents=True, exist_ok=True)
        fd = os.open(slot / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        _held_locks.append(fd)
        return slot
    raise RuntimeError(f"no free state slot under {base}")


MARKER = "source.json"
"""The file in a slot naming the cluster and changelog topics its files were built from."""

_LOCK = ".lock"


@dataclass(frozen=True, slots=True)
class Provenance:
    """Where a slot's files come from: a Kafka cluster and its changelog topics' ids.

    ``topics`` maps a changelog topic's name to its topic id (KIP-516); a broker that gives
    no ids (an all-zero or missing id) is compared by cluster id alone.
    """

    cluster_id: str
    topics: Mapping[str, str] = field(default_factory=dict)


def keep_if_same_source(slot: Path, now: Provenance, *,
                        log: Callable[[str], None] = lambda _: None) -> bool:
    """Empty ``slot`` unless its files were built from ``now``'s cluster and topics; then
    record ``now`` in its marker. Returns whether the files were kept.

    A slot with files but no marker (written before markers existed, or a marker lost in a
    crash) is emptied too: files of unknown origin are not worth a wrong table.
    """
    before = _read_marker(slot)
    why = _why_not_same(before, now) if before is not None else (
        "its files have no record of the cluster they came from" if _has_files(slot) else None)
    if why is not None:
        log(f"state slot {slot} emptied ({why}); its tables are restored from their changelogs")
        _empty(slot)
        before = None
    kept_topics = dict(before.topics) if before is not None else {}
    _write_marker(slot, Provenance(now.cluster_id, {**kept_topics, **now.topics}))
    return why is None


def _why_not_same(before: Provenance, now: Provenance) -> str | None:
    if before.cluster_id != now.cluster_id:
        return f"built from Kafka cluster {before.cluster_id}, now {now.cluster_id}"
    for name, topic_id in before.topics.items():
        if name not in now.topics:
            return f"changelog {name} was deleted"
        if _known(topic_id) and _known(now.topics[name]) and topic_id != now.topics[name]:
            return f"changelog {name} was deleted and created again"
    return None


def _known(topic_id: str) -> bool:
    return bool(topic_id) and topic_id.strip("0-") != ""


def _has_files(slot: Path) -> bool:
    return any(entry.name not in (_LOCK, MARKER) for entry in slot.iterdir())


def _empty(slot: Path) -> None:
    """Remove everything in ``slot`` but its lock (held by this process)."""
    for entry in slot.iterdir():
        if entry.name == _LOCK:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _read_marker(slot: Path) -> Provenance | None:
    try:
        raw = json.loads((slot / MARKER).read_text())
        return Provenance(str(raw["cluster_id"]), {str(k): str(v) for k, v in raw["topics"].items()})
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _write_marker(slot: Path, provenance: Provenance) -> None:
    """Write the marker atomically (a crash leaves the old one or the new one)."""
    tmp = slot / f".{MARKER}.tmp"
    with tmp.open("w") as out:
        json.dump({"cluster_id": provenance.cluster_id,
                   "topics": dict(sorted(provenance.topics.items()))}, out, indent=1)
        out.flush()
        os.fsync(out.fileno())
    tmp.replace(slot / MARKER)
    with contextlib.suppress(OSError):  # make the rename itself durable where the FS allows
        fd = os.open(slot, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def faust_store_options(store: StateStore, state_dir: Path | None) -> dict[str, Any]:
    """The ``faust.App`` keyword arguments for ``store`` (``tabledir`` for RocksDB)."""
    if store == "memory":
        return {"store": "memory://"}
    if state_dir is None:
        raise ValueError("the rocksdb store needs a state directory")
    return {"store": f"{STORE_SCHEME}://", "tabledir": str(state_dir)}


@functools.cache
def _shared_cache() -> Cache:
    return Cache(_BLOCK_CACHE_BYTES)


class _SharedCacheOptions(faust_rocksdb.RocksDBOptions):
    """faust's rocksdict options, with the process's one block cache for every database."""

    def as_options(self) -> Options:
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        if self.max_open_files is not None:
            options.set_max_open_files(self.max_open_files)
        options.set_write_buffer_size(self.write_buffer_size)
        options.set_target_file_size_base(self.target_file_size_base)
        options.set_max_write_buffer_number(self.max_write_buffer_number)
        table = BlockBasedOptions()
        table.set_bloom_filter(self.bloom_filter_size, block_based=True)
        table.set_block_cache(_shared_cache())
        table.set_index_type(BlockBasedIndexType.binary_search())
        options.set_block_based_table_factory(table)
        return options


class KeyPartitionedRocksStore(faust_rocksdb.Store):
    """faust's RocksDB store, for tables whose changelog is partitioned by key.

    faust's store files a write under the partition of the event being processed; the
    writer writes its tables from jobs and timers that run outside any event (or under
    another key's event), and its tables' changelogs are partitioned by key
    (``use_partitioner``). This store files each key under the partition Kafka's default
    partitioner gives it, the one its changelog record lands on, so a restart's recovery
    and a rebalance find it where they look.
    """

    def __init__(self, url: Any, app: Any, table: Any, **kwargs: Any) -> None:
        options = dict(kwargs.pop("options", None) or {})
        options.setdefault("driver", "rocksdict")
        options.setdefault("block_cache_compressed_size", 0)
        options.setdefault("write_buffer_size", _WRITE_BUFFER_BYTES)
        super().__init__(url, app, table, options=options, **kwargs)
        self.rocksdb_options = _SharedCacheOptions(**(self.options or {}), use_rocksdict=True)

    def _key_partition(self, key: bytes) -> int:
        return partition_for(key, self.table.partitions or self.app.conf.topic_partitions)

    def _set(self, key: bytes, value: bytes | None) -> None:
        if not self.table.use_partitioner:
            super()._set(key, value)
            return
        self._db_for_partition(self._key_partition(key)).put(key, value)

    def _get(self, key: bytes) -> bytes | None:
        if not self.table.use_partitioner:
            return super()._get(key)
        db = self._dbs.get(self._key_partition(key))
        return None if db is None else db.get(key)

    def get(self, key: Any, default: Any = None) -> Any:
        """``Mapping.get`` without its ``KeyError``: the base answers a missing key by raising
        and catching one, and most lookups of an unchanged scan (held, escrow) miss. Raw
        tables (scimflow's) skip faust's codecs, which are the identity for them."""
        raw = key if self.key_serializer == "raw" and isinstance(key, bytes) else self._encode_key(key)
        value = self._get(raw)
        if value is None:
            return default
        return value if self.value_serializer == "raw" else self._decode_value(value)

    def _contains(self, key: bytes) -> bool:
        return self._get(key) is not None if self.table.use_partitioner else bool(super()._contains(key))

    def partition_items(self, partition: int) -> Iterator[tuple[bytes, bytes]]:
        """The entries filed under ``partition``: its database alone is read."""
        db = self._dbs.get(partition)
        return iter(()) if db is None else self._visible_items(db)

    def _del(self, key: bytes) -> None:
        if not self.table.use_partitioner:
            super()._del(key)
            return
        db = self._dbs.get(self._key_partition(key))
        if db is not None:
            db.delete(key)


@functools.lru_cache(maxsize=8192)
def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives ``key`` (murmur2, as in Java).
    Recent keys are kept: the writer asks for the same key several times per command (its
    tables' stores, its ownership)."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


_M: Final = 0x5BD1E995
_MASK: Final = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (the Java client's ``Utils.murmur2``, as aiokafka's and kafka-python's
    partitioners compute it), reading the key four bytes at a time: 1.7 us for a 20-byte
    key against aiokafka's 3.0 (byte by byte), once per key in the mapper and the writer."""
    length = len(data)
    h = (0x9747B28C ^ length) & _MASK
    words = length >> 2
    for word in struct.unpack_from(f"<{words}I", data) if words else ():
        k = (word * _M) & _MASK
        k ^= k >> 24
        h = ((h * _M) & _MASK) ^ ((k * _M) & _MASK)
    extra = length & 3
    if extra:
        tail = length & ~3
        if extra == 3:
            h ^= data[tail + 2] << 16
        if extra >= 2:
            h ^= data[tail + 1] << 8
        h = ((h ^ data[tail]) * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    return h ^ (h >> 15)


def _store(table: Mapping[bytes, bytes]) -> Mapping[bytes, bytes]:
    """What holds ``table``'s entries: a faust Table's store, or the mapping itself."""
    store: Mapping[bytes, bytes] = table.data if isinstance(table, faust.Table) else table
    return store


def partition_items(table: Mapping[bytes, bytes], partition: int,
                    partitions: int) -> Iterator[tuple[bytes, bytes]]:
    """The entries of ``table`` whose key is on ``partition`` (of ``partitions``). On RocksDB
    only that partition's database is read: a scan's sweep per partition read (and hashed)
    every key of every partition, six million per scan of a million objects on six."""
    store = _store(table)
    if isinstance(store, KeyPartitionedRocksStore) and store.table.use_partitioner:
        yield from store.partition_items(partition)
        return
    for key, value in store.items():
        if partition_for(key, partitions) == partition:
            yield key, value


def read(table: Mapping[bytes, bytes], key: bytes) -> bytes | None:
    """``table.get(key)`` in one store lookup. A faust Table answers ``get`` by asking its
    store twice (``key in`` it, then ``[key]``), on RocksDB two reads and two key hashes;
    an unchanged scan asks several tables per object. Its store answers in one (what the
    Table adds is a monitor hook scimflow does not use). Other mappings are read as they are."""
    return _store(table).get(key)


faust.stores.STORES.aliases[STORE_SCHEME] = f"{__name__}:KeyPartitionedRocksStore"
