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
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Any, Literal

import faust.stores
from aiokafka.partitioner import murmur2
from faust.stores import rocksdb as faust_rocksdb

__all__ = ["STORE_SCHEME", "StateStore", "claim_state_dir", "faust_store_options"]

StateStore = Literal["memory", "rocksdb"]

STORE_SCHEME = "scimflow-rocksdb"
"""The faust store URL scheme of :class:`KeyPartitionedRocksStore`."""

_BLOCK_CACHE_BYTES = 32 * 2**20
"""RocksDB's read cache per partition database. faust's default (2 GiB, plus 500 MiB
compressed) is sized for a dedicated host; ours share a pod's memory limit with Python."""

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


def faust_store_options(store: StateStore, state_dir: Path | None) -> dict[str, Any]:
    """The ``faust.App`` keyword arguments for ``store`` (``tabledir`` for RocksDB)."""
    if store == "memory":
        return {"store": "memory://"}
    if state_dir is None:
        raise ValueError("the rocksdb store needs a state directory")
    return {"store": f"{STORE_SCHEME}://", "tabledir": str(state_dir)}


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
        options.setdefault("block_cache_size", _BLOCK_CACHE_BYTES)
        options.setdefault("block_cache_compressed_size", 0)
        options.setdefault("write_buffer_size", _WRITE_BUFFER_BYTES)
        super().__init__(url, app, table, options=options, **kwargs)

    def _key_partition(self, key: bytes) -> int:
        partitions = self.table.partitions or self.app.conf.topic_partitions
        return int((murmur2(key) & 0x7FFFFFFF) % partitions)

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

    def _contains(self, key: bytes) -> bool:
        return self._get(key) is not None if self.table.use_partitioner else bool(super()._contains(key))

    def _del(self, key: bytes) -> None:
        if not self.table.use_partitioner:
            super()._del(key)
            return
        db = self._dbs.get(self._key_partition(key))
        if db is not None:
            db.delete(key)


faust.stores.STORES.aliases[STORE_SCHEME] = f"{__name__}:KeyPartitionedRocksStore"
