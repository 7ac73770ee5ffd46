"""The writer's side of an unchanged full scan at scale: what it walks, decodes and counts.

No network: a processor over a plain dict as its managed table (the table's own interface:
``items()`` of key and value bytes).
"""

from __future__ import annotations

import time
from collections.abc import ItemsView
from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from schemas import ManagedObject
from services.runtime.kafka import partition_for
from services.runtime.settings import load_settings
from services.writer.cycles import FinishedScan, SeenKeys
from services.writer.worker import CommandProcessor
from tests.support.writer_harness import Recorder

T0 = datetime(2026, 1, 1, tzinfo=UTC)
PARTITIONS = 3


class CountingTable(dict[bytes, bytes]):
    """A managed table that counts how often it is walked."""

    walks = 0

    def items(self) -> ItemsView[bytes, bytes]:  # type: ignore[override]
        self.walks += 1
        return super().items()


def state(source_id: str, created: datetime = T0) -> bytes:
    return msgspec.json.encode(ManagedObject(
        app="a", object_type="user", source_id=source_id, target_id=f"t-{source_id}",
        attributes={"userName": source_id, "active": True}, origin="created",
        created_at=created, updated_at=created))


def processor(table: dict[bytes, bytes]) -> CommandProcessor:
    return CommandProcessor(load_settings({}, partitions=PARTITIONS), {}, table,
                            activity=Recorder(), errors=Recorder(), restoring=("capabilities",))


def keys_on(partition: int, n: int) -> list[bytes]:
    keys = (f"a/u{i}".encode() for i in range(10_000))
    return [k for k in keys if partition_for(k, PARTITIONS) == partition][:n]


def scan(seen: list[bytes], partition: int = 0) -> FinishedScan:
    return FinishedScan(app="a", source="s", cycle_id="c1", partition=partition,
                        started=T0 + timedelta(hours=1), sweep=True, reason="complete",
                        seen=SeenKeys(seen))


def test_the_sweep_decodes_only_what_the_scan_did_not_mention() -> None:
    mine = keys_on(0, 4)
    other = keys_on(1, 1)
    table = dict.fromkeys(mine[:2], b"seen: never decoded")
    table[mine[2]] = state(mine[2].decode()[2:])  # absent, managed before the scan: gone
    table[mine[3]] = state(mine[3].decode()[2:], T0 + timedelta(hours=2))  # created during it
    table[other[0]] = b"another partition: never decoded"
    table[b"b/u1"] = b"another app: never decoded"
    gone = processor(table)._absent(scan(mine[:2]))
    assert [(key, s.source_id) for key, s in gone] == [(mine[2], mine[2].decode()[2:])]


def test_the_managed_count_waits_in_proportion_to_how_long_it_took(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]

    def monotonic() -> float:
        clock[0] += 0.5  # every reading half a second later: one count "takes" 0.5 s
        return clock[0]

    monkeypatch.setattr(time, "monotonic", monotonic)
    table = CountingTable({k: state(k.decode()[2:]) for k in keys_on(0, 3)})
    p = processor(table)
    p.count_managed()
    assert table.walks == 1
    clock[0] += 5.0  # the 5-second gauge timer fires again
    p.count_managed()
    assert table.walks == 1  # 0.5 s of walking buys ~10 s of rest, not 5
    clock[0] += 10.0
    p.count_managed()
    assert table.walks == 1  # nothing changed since: the last count stands
    p.on_changelog(b"a/u9", None)  # a write of the table (any partition's)
    p.count_managed()
    assert table.walks == 2
    clock[0] += 20.0
    p.count_managed(epoch=7)  # partitions moved (a new generation)
    assert table.walks == 3
