"""The bulk restore's pure parts (services/runtime/restore.py): which topics are the app's
table changelogs, and one atomic write per chunk with faust's offset key."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import faust

from services.runtime.restore import (
    OFFSET_KEY,
    changelog_tables,
    open_partition,
    partition_path,
    persisted_offset,
    write_chunk,
)
from services.runtime.state import faust_store_options


class Rec(NamedTuple):
    offset: int
    key: bytes
    value: bytes | None


def test_the_apps_changelogs_are_found_and_no_other_topic() -> None:
    topics = ["p.writer-managed-changelog", "p.writer-held-changelog", "p.writer-changelog",
              "p.writer-x", "p.writer2-managed-changelog", "p.commands", "p.mapper-t-changelog"]
    assert changelog_tables(topics, "p.writer") == {"managed": "p.writer-managed-changelog",
                                                    "held": "p.writer-held-changelog"}


def test_a_chunk_is_written_with_the_offset_of_its_last_record(tmp_path: Path) -> None:
    db = open_partition(tmp_path / "t-0.db")
    assert persisted_offset(db) is None
    assert write_chunk(db, [Rec(0, b"a", b"1"), Rec(1, b"b", b"2"), Rec(2, b"a", None)]) == 2
    assert (db.get(b"a"), db.get(b"b"), persisted_offset(db)) == (None, b"2", 2)
    assert write_chunk(db, []) is None and persisted_offset(db) == 2


def test_the_database_and_offset_are_where_fausts_store_looks(tmp_path: Path) -> None:
    db = open_partition(partition_path(tmp_path, "managed", 4))
    write_chunk(db, [Rec(41, b"k", b"v")])
    db.close()
    app = faust.App("restore-test", **faust_store_options("rocksdb", tmp_path), topic_partitions=6)
    table = app.Table("managed", key_type=bytes, value_type=bytes, partitions=6)
    store: Any = table.data
    assert store.partition_path(4) == partition_path(tmp_path, "managed", 4)
    assert store.offset_key == OFFSET_KEY
    tp = faust.types.TP("restore-test-managed-changelog", 4)
    assert store.persisted_offset(tp) == 41
