"""Only a complete full scan, seen from its start, may be used to infer deletions."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

from schemas import CycleMarker
from services.writer.cycles import CycleTracker, SeenKeys

NOW = datetime.now(UTC)


def frame(phase: Any, origin: int, *, complete: bool = True, n: int = 3) -> CycleMarker:
    return CycleMarker(source="hr", cycle_id="c1", phase=phase, total=10, complete=complete, at=NOW,
                       app="app", origin_partition=origin, origin_partitions=n)


def test_complete_scan_sweeps_with_what_it_saw() -> None:
    t = CycleTracker()
    for origin in range(3):
        assert t.on_marker(0, frame("start", origin)) is None
    t.saw(0, "app", "c1", b"app/u1")
    t.saw(0, "app", None, b"app/u2")  # an event, not part of the scan
    t.saw(0, "app", "c1", b"app/u3")
    assert t.on_marker(0, frame("end", 0)) is None
    assert t.on_marker(0, frame("end", 1)) is None
    done = t.on_marker(0, frame("end", 2))
    assert done is not None
    assert done.sweep is True
    assert b"app/u1" in done.seen and b"app/u3" in done.seen
    assert b"app/u2" not in done.seen and len(done.seen) == 2
    assert (done.app, done.cycle_id, done.partition, done.source) == ("app", "c1", 0, "hr")


def test_interrupted_scan_sweeps_nothing() -> None:
    t = CycleTracker()
    for origin in range(3):
        t.on_marker(1, frame("start", origin))
    t.on_marker(1, frame("end", 0))
    t.on_marker(1, frame("end", 1, complete=False))
    done = t.on_marker(1, frame("end", 2))
    assert done is not None
    assert done.sweep is False
    assert done.reason == "the scan was interrupted"


def test_scan_not_seen_from_its_start_sweeps_nothing() -> None:
    t = CycleTracker()
    t.on_marker(0, frame("start", 2))  # a restarted writer missed starts 0 and 1
    for origin in range(3):
        done = t.on_marker(0, frame("end", origin))
    assert done is not None
    assert done.sweep is False
    assert "did not see the scan from its start" in done.reason


def test_partitions_are_tracked_separately() -> None:
    t = CycleTracker()
    for origin in range(2):
        t.on_marker(0, frame("start", origin, n=2))
        t.on_marker(1, frame("start", origin, n=2))
    t.on_marker(0, frame("end", 0, n=2))
    t.on_marker(0, frame("end", 1, n=2))
    assert t.on_marker(1, frame("end", 0, n=2)) is None


def test_frames_without_origin_are_ignored() -> None:
    raw = CycleMarker(source="hr", cycle_id="c1", phase="end", at=NOW)
    assert CycleTracker().on_marker(0, raw) is None


def test_seen_keys_answer_as_a_set_of_the_keys_would() -> None:
    draw = random.Random(5)
    keys = [f"app/u{draw.randrange(100_000)}".encode() for _ in range(20_000)]  # with repeats
    seen = SeenKeys(keys[:10])
    for key in keys[10:]:
        seen.add(key)
    assert len(seen) == len(set(keys))
    probes = keys[:500] + [f"app/{c}{i}".encode() for c in "xu" for i in range(500)]
    assert [key in seen for key in probes] == [key in set(keys) for key in probes]
    seen.add(b"app/late")  # added after a lookup: still found
    assert b"app/late" in seen and len(seen) == len(set(keys)) + 1
