"""The bulk restore of RocksDB tables on a real broker (services/runtime/restore.py): a table
it restored equals what faust's own recovery builds from the same changelog, faust then
reads only the records that came after, and a restore stopped between two batches never
stores an offset ahead of the data written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from rocksdict import Rdict

from services.devstack.broker import Broker
from services.runtime import restore
from services.runtime.kafka import create_topics, partition_for, plain_producer
from services.runtime.restore import (
    OFFSET_KEY,
    open_partition,
    partition_path,
    persisted_offset,
    restore_tables,
)
from services.runtime.topics import Topics, TopicSpec

pytestmark = pytest.mark.integration

PARTITIONS = 3
Record = tuple[str, str | None]


def changelog(broker: Broker) -> tuple[Topics, str]:
    topics = Topics(f"t{uuid.uuid4().hex[:8]}.", PARTITIONS)
    topic = f"{topics.app_id('tables')}-kv-changelog"
    create_topics(broker.bootstrap, [TopicSpec(topic, PARTITIONS, compacted=True)])
    return topics, topic


def produce(bootstrap: str, topic: str, records: list[Record]) -> None:
    producer = plain_producer(bootstrap)
    for key, value in records:
        producer.send(topic, key=key.encode(), value=None if value is None else value.encode(),
                      partition=partition_for(key.encode(), PARTITIONS))
    producer.flush()
    producer.close()


def expected(records: list[Record]) -> dict[str, str]:
    table: dict[str, str] = {}
    for key, value in records:
        if value is None:
            table.pop(key, None)
        else:
            table[key] = value
    return table


FIRST: list[Record] = [
    *[(f"k{i}", f"v{i}") for i in range(60)],
    *[(f"k{i}", f"w{i}") for i in range(0, 60, 3)],  # overwrites
    *[(f"k{i}", None) for i in range(1, 60, 7)],  # tombstones
    ("k1", "back"),  # a key deleted, then written again
]
TAIL: list[Record] = [("k2", "tail"), ("k0", None), ("new", "n")]


def run_worker(broker: Broker, topics: Topics, state: Path, *, bulk: bool) -> dict[str, Any]:
    """Start tests/support/table_worker.py on ``state``; its report once recovery ended."""
    env = {**os.environ, "SCIMFLOW_KAFKA_BOOTSTRAP": broker.bootstrap,
           "SCIMFLOW_TOPIC_PREFIX": topics.prefix, "SCIMFLOW_PARTITIONS": str(PARTITIONS),
           "SCIMFLOW_STATE_STORE": "rocksdb", "SCIMFLOW_STATE_DIR": str(state),
           "SCIMFLOW_DATA_DIR": str(state.parent / f"data-{uuid.uuid4().hex[:6]}")}
    args = [sys.executable, "-m", "tests.support.table_worker"] + (["--bulk"] if bulk else [])
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        deadline = time.monotonic() + 90
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("{"):
                report: dict[str, Any] = json.loads(line)
                return report
            assert time.monotonic() < deadline
        raise AssertionError(f"the table worker exited ({proc.wait()}) without a report")
    finally:
        proc.terminate()
        proc.wait(30)


def slot(state: Path, topics: Topics) -> Path:
    return state / topics.app_id("tables") / "slot-0"


def test_a_bulk_restored_table_equals_faust_recovery_and_faust_reads_only_the_tail(
        broker: Broker, tmp_path: Path) -> None:
    topics, topic = changelog(broker)
    produce(broker.bootstrap, topic, FIRST)
    restored = restore_tables(broker.bootstrap, topics.app_id("tables"), slot(tmp_path / "bulk", topics))
    assert sum(r.records for r in restored) == len(FIRST)
    produce(broker.bootstrap, topic, TAIL)  # written while the worker was away

    by_faust = run_worker(broker, topics, tmp_path / "faust", bulk=False)
    after_bulk = run_worker(broker, topics, tmp_path / "bulk", bulk=False)

    assert by_faust["table"] == after_bulk["table"] == expected(FIRST + TAIL)
    assert {k for k, _ in FIRST} - set(after_bulk["table"])  # tombstones were applied
    assert len(by_faust["applied"]) == len(FIRST + TAIL)
    # faust seeks to the stored offset: at most that one record again per partition, and the tail
    tail_partitions = {partition_for(k.encode(), PARTITIONS) for k, _ in TAIL}
    assert len(TAIL) <= len(after_bulk["applied"]) <= len(TAIL) + len(tail_partitions)


def test_a_worker_built_by_faust_app_restores_in_bulk_before_faust(broker: Broker, tmp_path: Path) -> None:
    topics, topic = changelog(broker)
    produce(broker.bootstrap, topic, FIRST + TAIL)
    report = run_worker(broker, topics, tmp_path / "state", bulk=True)
    assert report["table"] == expected(FIRST + TAIL)
    assert len(report["applied"]) <= PARTITIONS  # faust found every partition at its end


def test_a_restore_stopped_between_batches_stores_no_offset_ahead_of_its_data(
        broker: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    topics, topic = changelog(broker)
    records = FIRST + TAIL
    for record in records[:8]:  # a produce request per record: a record batch each
        produce(broker.bootstrap, topic, [record])
    produce(broker.bootstrap, topic, records[8:])
    monkeypatch.setattr(restore, "_PARTITION_FETCH_BYTES", 1)  # one record batch per fetch
    monkeypatch.setattr(restore, "_FETCH_MAX_BYTES", 1)
    written = restore.write_chunk
    chunks: list[int] = []

    def dies_at_the_third(db: Rdict, chunk: Any) -> int | None:
        if len(chunks) == 2:
            raise KeyboardInterrupt  # the process is killed between two batches
        chunks.append(1)
        return written(db, chunk)

    monkeypatch.setattr(restore, "write_chunk", dies_at_the_third)
    state = slot(tmp_path, topics)
    with pytest.raises(KeyboardInterrupt):
        restore_tables(broker.bootstrap, topics.app_id("tables"), state)
    for partition in range(PARTITIONS):
        db = open_partition(partition_path(state, "kv", partition))
        stored = persisted_offset(db)
        mine = [r for r in records if partition_for(r[0].encode(), PARTITIONS) == partition]
        upto = mine[:stored + 1] if stored is not None else []
        found = {k.decode(): v.decode() for k, v in db.items()
                 if isinstance(k, bytes) and isinstance(v, bytes) and k != OFFSET_KEY}
        assert found == expected(upto)
        db.close()
    assert len(chunks) == 2
    monkeypatch.setattr(restore, "write_chunk", written)
    restore_tables(broker.bootstrap, topics.app_id("tables"), state)  # the next start completes it
    assert run_worker(broker, topics, tmp_path, bulk=False)["table"] == expected(records)
