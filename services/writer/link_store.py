"""The writer's link index on local disk (RocksDB via ``rocksdict``), for bounded memory.

Every writer replica holds the link of every managed object of every partition (see
:mod:`services.writer.links`); at a million objects two Python dicts of them took most of
the worker's memory, and rebuilding them meant reading the whole managed changelog at
every start. With ``SCIMFLOW_STATE_STORE=rocksdb`` the index lives in this store instead,
in the worker's state slot (:func:`~services.runtime.state.claim_state_dir`), next to the
changelog offsets it has read per partition, so a warm start reads only what came after.

Why it survives a kill -9 without skipping a record: each link change is one atomic
write batch (the link, its reverse entry and the count), and the offsets are written only
after the entries of the records before them. A crash loses at most offsets, never an
entry behind a stored offset: the next start reads those records again, and applying a
record twice leaves the same links (each record carries an object's whole state).
RocksDB's write-ahead log is written at each write, so what was written outlives the
process (an OS crash may lose the unsynced tail; the offsets go with it, in order).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import structlog
from rocksdict import BlockBasedOptions, Cache, Options, Rdict, WriteBatch

from services.runtime.kafka import follow_records_from
from services.runtime.settings import Settings
from services.writer.links import LinkIndex

__all__ = ["RocksLinkStore", "follow_links", "open_links"]

log = structlog.get_logger("scimflow.writer")

_BLOCK_CACHE_BYTES = 16 * 2**20
"""Read cache: lookups are point reads spread over all keys; a bloom filter answers most
"not linked yet" without one."""

_WRITE_BUFFER_BYTES = 8 * 2**20

_FLUSH_EVERY_RECORDS = 2000
_FLUSH_EVERY_SECONDS = 1.0
"""How often the offsets read are written: at most this much is read again after a crash."""

_COUNT = b"#n"
_LINK = b"l"
_OWNER = b"o"
_OFFSET = b"p"
_SEP = b"\x00"


def _link_key(app: str, source_id: str) -> bytes:
    return _LINK + app.encode() + _SEP + source_id.encode()


def _owner_key(app: str, target_id: str) -> bytes:
    return _OWNER + app.encode() + _SEP + target_id.encode()


def _text(value: object) -> str | None:
    return value.decode() if isinstance(value, bytes) else None


def _options() -> Options:
    options = Options(raw_mode=True)
    options.create_if_missing(True)
    options.set_write_buffer_size(_WRITE_BUFFER_BYTES)
    options.set_max_write_buffer_number(2)
    table = BlockBasedOptions()
    table.set_block_cache(Cache(_BLOCK_CACHE_BYTES))
    table.set_bloom_filter(10, False)
    options.set_block_based_table_factory(table)
    return options


class RocksLinkStore:
    """A :class:`~services.writer.links.LinkStore` in one RocksDB database at ``path``.

    Keys: ``l<app>\\0<source id>`` -> target id, ``o<app>\\0<target id>`` -> source id,
    ``p<partition>`` -> the next changelog offset to read, ``#n`` -> how many links.
    """

    def __init__(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self._db = Rdict(str(path), options=_options())
        self._count = int(_text(self._db.get(_COUNT)) or 0)
        self._pending: dict[int, int] = {}
        """Offsets read whose entries are written, not yet stored themselves."""
        self._unflushed = 0
        self._flushed_at = time.monotonic()

    def __len__(self) -> int:
        return self._count

    def link(self, app: str, source_id: str) -> str | None:
        return _text(self._db.get(_link_key(app, source_id)))

    def owner(self, app: str, target_id: str) -> str | None:
        return _text(self._db.get(_owner_key(app, target_id)))

    def write(self, app: str, source_id: str, target_id: str | None, *,
              before: str | None, unown: bool) -> None:
        """Link ``source_id`` to ``target_id`` (None: unlink) in one atomic batch; ``unown``
        removes ``before``'s reverse entry too."""
        batch = WriteBatch(raw_mode=True)
        if unown and before is not None:
            batch.delete(_owner_key(app, before))
        key = _link_key(app, source_id)
        if target_id is None:
            batch.delete(key)
        else:
            batch.put(key, target_id.encode())
            batch.put(_owner_key(app, target_id), source_id.encode())
        count = self._count + (target_id is not None) - (before is not None)
        batch.put(_COUNT, str(count).encode())
        self._db.write(batch)
        self._count = count

    def sources(self, app: str) -> Iterator[str]:
        """The source ids linked in ``app`` (a snapshot: the caller may unlink them)."""
        prefix = _LINK + app.encode() + _SEP
        return iter([key[len(prefix):].decode() for key, _ in self._scan(prefix)])

    def offsets(self) -> dict[int, int]:
        """The next changelog offset to read per partition, as stored (pending included)."""
        stored = {int(key[len(_OFFSET):]): int(value) for key, value in self._scan(_OFFSET)}
        return stored | self._pending

    def _scan(self, prefix: bytes) -> list[tuple[bytes, bytes]]:
        """The entries whose key starts with ``prefix`` (read before any is changed)."""
        found = []
        for key, value in self._db.items(from_key=prefix):
            # raw mode: keys and values are bytes
            if not isinstance(key, bytes) or not key.startswith(prefix):
                break
            found.append((key, value if isinstance(value, bytes) else b""))
        return found

    def read_to(self, partition: int, offset: int) -> None:
        """Every changelog record of ``partition`` before ``offset`` is applied; stored with
        the next flush, which comes after this many records or seconds."""
        self._pending[partition] = offset
        self._unflushed += 1
        if (self._unflushed >= _FLUSH_EVERY_RECORDS
                or time.monotonic() - self._flushed_at >= _FLUSH_EVERY_SECONDS):
            self.flush()

    def flush(self) -> None:
        """Store the offsets read so far (after their entries: the order a crash keeps)."""
        self._unflushed = 0
        self._flushed_at = time.monotonic()
        if not self._pending:
            return
        batch = WriteBatch(raw_mode=True)
        for partition, offset in self._pending.items():
            batch.put(_OFFSET + str(partition).encode(), str(offset).encode())
        self._db.write(batch)
        self._pending.clear()

    def clear(self) -> None:
        """Empty the store, offsets included (the changelog is read again from its start)."""
        self._db.delete_range(b"\x00", b"\xff")
        self._count = 0
        self._pending.clear()
        self._unflushed = 0

    def close(self) -> None:
        self.flush()
        self._db.close()


def open_links(links: LinkIndex, settings: Settings, tabledir: str | Path) -> None:
    """Keep ``links`` on disk in the worker's state slot (``tabledir``, the directory its
    faust tables use) when the state store is RocksDB; in memory otherwise."""
    if settings.state_store == "rocksdb":
        links.use(RocksLinkStore(Path(tabledir) / "links"))


async def follow_links(bootstrap: str, topic: str, links: LinkIndex, *,
                       on_record: Callable[[bytes | None, bytes | None], None],
                       on_caught_up: Callable[[], None]) -> None:
    """Feed every record of the managed changelog ``topic`` to ``on_record`` (which applies
    it to ``links``), from the offsets the link store read last, for ever; ``on_caught_up``
    once the end offsets of the start are reached. Each record's offset is stored after
    ``on_record`` applied it."""
    store = links.store
    resumed = store.offsets()
    started = time.monotonic()

    def caught_up() -> None:
        store.flush()
        log.info("link index caught up", links=len(store), resumed=bool(resumed),
                 seconds=round(time.monotonic() - started, 1))
        on_caught_up()

    changelog = follow_records_from(bootstrap, topic, resumed, on_reset=store.clear,
                                    on_caught_up=caught_up)
    try:
        async for record in changelog:
            on_record(record.key, record.value)
            store.read_to(record.partition, record.offset + 1)
    finally:
        store.flush()
