"""Where faust tables live (services/runtime/state.py): RocksDB slots and key partitions."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import faust
import pytest

from services.runtime.kafka import partition_for
from services.runtime.settings import load_settings
from services.runtime.state import (
    MARKER,
    KeyPartitionedRocksStore,
    Provenance,
    claim_state_dir,
    faust_store_options,
    keep_if_same_source,
    partition_items,
    read,
)

PARTITIONS = 6


def _table(state_dir: Path) -> Any:
    app = faust.App("scimflow-test", **faust_store_options("rocksdb", state_dir),
                    topic_partitions=PARTITIONS)
    table: Any = app.Table("managed", key_type=bytes, value_type=bytes, partitions=PARTITIONS,
                      use_partitioner=True)
    table.key_serializer = table.value_serializer = "raw"
    return table


def test_rocksdb_is_the_default_and_memory_can_be_chosen() -> None:
    assert load_settings({}).state_store == "memory"
    settings = load_settings({"SCIMFLOW_STATE_STORE": "memory", "SCIMFLOW_STATE_DIR": "/var/state"})
    assert (settings.state_store, settings.state_dir) == ("memory", "/var/state")
    assert faust_store_options("memory", None) == {"store": "memory://"}


def test_a_write_outside_any_event_lands_on_its_keys_changelog_partition(tmp_path: Path) -> None:
    store = _table(tmp_path).data
    assert isinstance(store, KeyPartitionedRocksStore)
    key = b"app/u1"
    store[key] = b"state"  # no current event: the writer's jobs and timers write like this
    assert list(store._dbs) == [partition_for(key, PARTITIONS)]
    assert store[key] == b"state" and key in store
    del store[key]
    assert store.get(key) is None and key not in store


def test_read_asks_the_rocksdb_store_once_and_gets_what_table_get_gets(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    table = _table(tmp_path)
    table.data[b"app/u1"] = b"state"
    lookups: list[bytes] = []
    real = KeyPartitionedRocksStore._get

    def counted(store: KeyPartitionedRocksStore, key: bytes) -> bytes | None:
        lookups.append(key)
        return real(store, key)
    monkeypatch.setattr(KeyPartitionedRocksStore, "_get", counted)
    assert table.get(b"app/u1") == b"state" and len(lookups) == 2  # faust: ``in``, then ``[]``
    lookups.clear()
    assert read(table, b"app/u1") == b"state" and lookups == [b"app/u1"]
    assert read(table, b"app/nobody") is None and table.get(b"app/nobody") is None
    assert read({b"k": b"v"}, b"k") == b"v" and read({}, b"k") is None


def test_get_answers_without_the_keyerror_path_of_mapping_get(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = _table(tmp_path).data
    store[b"app/u1"] = b"state"

    def no_getitem(*_: Any) -> Any:
        raise AssertionError("Mapping.get went through [] and its KeyError")
    monkeypatch.setattr(KeyPartitionedRocksStore, "__getitem__", no_getitem)
    assert store.get(b"app/u1") == b"state"
    assert store.get(b"app/nobody") is None and store.get(b"app/nobody", b"-") == b"-"


def test_partition_items_reads_one_partitions_entries(tmp_path: Path) -> None:
    table = _table(tmp_path)
    entries = {f"app/u{i}".encode(): f"v{i}".encode() for i in range(60)}
    for key, value in entries.items():
        table.data[key] = value
    for partition in range(PARTITIONS):
        expected = {k: v for k, v in entries.items() if partition_for(k, PARTITIONS) == partition}
        assert expected  # 60 keys reach every one of 6 partitions
        assert dict(partition_items(table, partition, PARTITIONS)) == expected
        assert dict(partition_items(dict(entries), partition, PARTITIONS)) == expected  # any mapping


def test_what_was_stored_is_there_after_a_restart_on_the_same_dir(tmp_path: Path) -> None:
    store = _table(tmp_path).data
    store[b"app/u1"] = b"one"
    store[b"app/u2"] = b"two"
    for db in store._dbs.values():
        db.close()
    again = _table(tmp_path).data
    for partition in range(PARTITIONS):
        again._db_for_partition(partition)  # what faust opens for assigned partitions
    assert (again.get(b"app/u1"), again.get(b"app/u2")) == (b"one", b"two")


def test_two_processes_get_two_slots_and_a_dead_ones_slot_is_free_again(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from services.runtime.state import claim_state_dir; "
         "print(claim_state_dir(Path(sys.argv[1]), 'w').name, flush=True); time.sleep(60)", str(tmp_path)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "slot-0"
        assert claim_state_dir(tmp_path, "w").name == "slot-1"  # slot-0 is locked by the other
    finally:
        holder.kill()  # the kernel drops a killed process's flock
        holder.wait()
    assert claim_state_dir(tmp_path, "w").name == "slot-0"


def _slot_with_files(tmp_path: Path) -> Path:
    slot = tmp_path / "slot-0"
    (slot / "managed-0.db").mkdir(parents=True)
    (slot / "managed-0.db" / "CURRENT").write_text("MANIFEST-1")
    (slot / ".lock").write_text("")
    return slot


A = Provenance("cluster-a", {"w-managed-changelog": "6f1c"})


def test_a_slot_built_from_the_same_cluster_and_changelogs_is_kept(tmp_path: Path) -> None:
    slot = _slot_with_files(tmp_path)
    assert keep_if_same_source(slot, A) is False  # files of unknown origin: emptied once
    (slot / "managed-0.db").mkdir()
    assert keep_if_same_source(slot, A) is True
    assert (slot / "managed-0.db").is_dir()
    assert json.loads((slot / MARKER).read_text()) == {"cluster_id": "cluster-a",
                                                       "topics": {"w-managed-changelog": "6f1c"}}


@pytest.mark.parametrize(("now", "why"), [
    (Provenance("cluster-b", {"w-managed-changelog": "6f1c"}), "built from Kafka cluster cluster-a"),
    (Provenance("cluster-a", {"w-managed-changelog": "77aa"}), "deleted and created again"),
    (Provenance("cluster-a", {}), "was deleted"),
])
def test_a_slot_from_another_cluster_or_changelog_is_emptied_but_its_lock(
        tmp_path: Path, now: Provenance, why: str) -> None:
    slot = _slot_with_files(tmp_path)
    keep_if_same_source(slot, A)
    (slot / "managed-0.db").mkdir()
    said: list[str] = []
    assert keep_if_same_source(slot, now, log=said.append) is False
    assert sorted(p.name for p in slot.iterdir()) == [".lock", MARKER]
    assert len(said) == 1 and why in said[0]
    assert json.loads((slot / MARKER).read_text())["cluster_id"] == now.cluster_id


def test_new_changelogs_join_the_marker_and_ids_a_broker_does_not_give_are_not_compared(
        tmp_path: Path) -> None:
    slot = tmp_path / "slot-0"
    slot.mkdir()
    assert keep_if_same_source(slot, Provenance("c", {"x-changelog": ""})) is True
    (slot / "db").mkdir()
    grown = Provenance("c", {"x-changelog": "00000000-0000-0000-0000-000000000000", "y-changelog": "9"})
    assert keep_if_same_source(slot, grown) is True
    assert (slot / "db").is_dir()
    assert json.loads((slot / MARKER).read_text())["topics"] == {
        "x-changelog": "00000000-0000-0000-0000-000000000000", "y-changelog": "9"}


def test_murmur2_is_kafkas_for_keys_of_every_length() -> None:
    from aiokafka.partitioner import murmur2 as aiokafka_murmur2

    from services.runtime.state import murmur2

    draw = random.Random(7)
    keys = [draw.randbytes(n) for n in range(64) for _ in range(50)]
    keys += [b"", b"hr/u1", "app/\u00fcser-\u00e9".encode(), b"\xff" * 33]
    for key in keys:
        assert murmur2(key) == aiokafka_murmur2(key), key
    # Known answers from the Java client's Utils.murmur2 (its test suite).
    assert murmur2(b"21") == (-973932308) & 0xFFFFFFFF
    assert murmur2(b"foobar") == (-790332482) & 0xFFFFFFFF
