"""Full-scan bookkeeping for one writer: which managed objects a completed scan did not see.

A scan of the source is framed by start/end markers that reach every commands partition
once per changes partition. On one commands partition a scan is *complete* when the end
marker of every changes partition has arrived, every one of them says the scan ran to the
end, and this writer also saw every start marker (so it saw every command in between).
Only then may objects it manages that the scan did not mention be treated as deleted in
the source. Anything less (an interrupted scan, a writer restarted mid-scan) sweeps
nothing. Pure; no I/O.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from schemas import CycleMarker

__all__ = ["CycleTracker", "FinishedScan", "SeenKeys"]


class SeenKeys:
    """The keys a scan mentioned on one partition, as 8-byte fingerprints.

    A set of the keys themselves held every key of a scan until it finished: ~90 bytes
    per object (the bytes and the set's slot), 90 MB for a scan of a million. Here each
    key is its 64-bit ``hash`` (the bytes' own, computed once and cached on the key) in an
    array, sorted and deduplicated when first asked, then looked up by bisection. An unseen
    key that shares a fingerprint with a seen one (about once in 10**13 unseen keys, next
    to a million seen) looks seen: it is not swept this time, which is the safe way to be
    wrong (an object is never treated as deleted because of a collision). Fingerprints are this process's
    (``hash`` is seeded per process), as the scan's bookkeeping is.
    """

    __slots__ = ("_hashes", "_ordered")

    def __init__(self, keys: Iterable[bytes] = ()) -> None:
        self._hashes = array("q", (hash(key) for key in keys))
        self._ordered = False

    def add(self, key: bytes) -> None:
        self._hashes.append(hash(key))
        self._ordered = False

    def _order(self) -> array[int]:
        if not self._ordered:
            ordered = sorted(self._hashes)
            self._hashes = array("q", (h for i, h in enumerate(ordered) if not i or ordered[i - 1] != h))
            self._ordered = True
        return self._hashes

    def __contains__(self, key: object) -> bool:
        hashes = self._order()
        fingerprint = hash(key)
        at = bisect_left(hashes, fingerprint)
        return at < len(hashes) and hashes[at] == fingerprint

    def __len__(self) -> int:
        return len(self._order())


@dataclass
class _Scan:
    started: datetime
    expected: int
    starts: set[int] = field(default_factory=set)
    ends: set[int] = field(default_factory=set)
    complete: bool = True
    seen: SeenKeys = field(default_factory=SeenKeys)


@dataclass(frozen=True, slots=True)
class FinishedScan:
    app: str
    source: str
    cycle_id: str
    partition: int
    started: datetime
    sweep: bool
    """True only for a complete scan this writer saw from its first frame."""
    reason: str
    seen: SeenKeys


class CycleTracker:
    def __init__(self) -> None:
        self._scans: dict[tuple[int, str, str], _Scan] = {}

    def saw(self, partition: int, app: str, cycle_id: str | None, key: bytes) -> None:
        """Note that a scan mentioned the object ``key`` (commands of a scan carry its id)."""
        if cycle_id is not None:
            scan = self._scans.get((partition, app, cycle_id))
            if scan is not None:
                scan.seen.add(key)

    def forget_app(self, app: str) -> None:
        """``app`` was removed: a scan of it in progress here can no longer be complete."""
        for slot in [s for s in self._scans if s[1] == app]:
            del self._scans[slot]

    def on_marker(self, partition: int, marker: CycleMarker) -> FinishedScan | None:
        """Record a frame; returns the finished scan when its last end frame arrives."""
        if marker.app is None or marker.origin_partition is None or not marker.origin_partitions:
            return None
        slot = (partition, marker.app, marker.cycle_id)
        scan = self._scans.setdefault(slot, _Scan(marker.at, marker.origin_partitions))
        scan.started = min(scan.started, marker.at)
        if marker.phase == "start":
            scan.starts.add(marker.origin_partition)
            return None
        scan.ends.add(marker.origin_partition)
        scan.complete = scan.complete and marker.complete
        if len(scan.ends) < scan.expected:
            return None
        del self._scans[slot]
        return self._finish(partition, marker, scan)

    def _finish(self, partition: int, marker: CycleMarker, scan: _Scan) -> FinishedScan:
        if not scan.complete:
            reason = "the scan was interrupted"
        elif len(scan.starts) < scan.expected:
            reason = "this writer did not see the scan from its start"
        else:
            reason = "complete"
        return FinishedScan(app=marker.app or "", source=marker.source, cycle_id=marker.cycle_id,
                            partition=partition, started=scan.started, sweep=reason == "complete",
                            reason=reason, seen=scan.seen)
