"""ingest: watch each configured source and publish its changes to ``directory.changes``.

A full scan runs at start and every ``full_scan_interval``, framed by cycle markers sent to
every partition; between scans the file is polled and only what changed is published,
within one poll interval (default 0.25 s).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from schemas import CycleMarker, DirectoryChange, ErrorRecord
from services.ingest.file_source import DirectoryFileError, Snapshot, SourceObject, diff, read_directory
from services.runtime import metrics
from services.runtime.config import FileSource

__all__ = ["FileIngest", "Publisher"]

log = structlog.get_logger("scimflow.ingest")


class Publisher:
    """Where ingest puts messages; the worker wires it to Kafka, tests can record."""

    def __init__(self, change: Callable[[DirectoryChange], Awaitable[None]],
                 marker: Callable[[CycleMarker], Awaitable[None]],
                 error: Callable[[ErrorRecord], Awaitable[None]]) -> None:
        self.change = change
        self.marker = marker
        self.error = error


class FileIngest:
    """One file source: full scans on a schedule, and a poll for edits in between."""

    def __init__(self, source: FileSource, path: Path, publish: Publisher) -> None:
        self.source = source
        self.path = path
        self.publish = publish
        self.snapshot: Snapshot = {}
        self._stamp: tuple[int, int] | None = None
        self._bad_stamp: tuple[int, int] | None = None

    async def run(self) -> None:
        next_scan = 0.0
        while True:
            if time.monotonic() >= next_scan:
                await self.full_scan()
                next_scan = time.monotonic() + self.source.full_scan_interval
            else:
                await self.poll()
            await asyncio.sleep(self.source.poll_interval)

    async def full_scan(self) -> str | None:
        """Publish every object, framed by start/end markers. Returns the cycle id."""
        snapshot = await self._read()
        if snapshot is None:
            return None
        cycle_id = str(uuid.uuid4())
        started = time.monotonic()
        metrics.cycle_started(self.source.name)
        await self.publish.marker(self._marker(cycle_id, "start", len(snapshot)))
        for done, obj in enumerate(snapshot.values(), 1):
            await self.publish.change(self._change(obj, "upsert", cycle_id))
            if done % 500 == 0:
                metrics.set_cycle_progress(self.source.name, done, len(snapshot))
        # Deletions seen since the last snapshot are events too, even inside a scan.
        for op, obj in diff(self.snapshot, snapshot):
            if op == "delete":
                await self.publish.change(self._change(obj, "delete", None))
        await self.publish.marker(self._marker(cycle_id, "end", len(snapshot)))
        self.snapshot = snapshot
        metrics.cycle_finished(self.source.name, time.monotonic() - started, complete=True,
                               ended_at=time.time())
        log.info("full scan done", source=self.source.name, cycle_id=cycle_id, objects=len(snapshot))
        return cycle_id

    async def poll(self) -> int:
        """Publish what changed since the last look; returns how many changes."""
        if self._current_stamp() == self._stamp:
            return 0
        snapshot = await self._read()
        if snapshot is None:
            return 0
        count = 0
        for op, obj in diff(self.snapshot, snapshot):
            await self.publish.change(self._change(obj, op, None))
            count += 1
        self.snapshot = snapshot
        if count:
            log.info("changes published", source=self.source.name, changes=count)
        return count

    def _current_stamp(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    async def _read(self) -> Snapshot | None:
        stamp = self._current_stamp()
        try:
            snapshot = await asyncio.to_thread(read_directory, self.path)
        except DirectoryFileError as exc:
            # Keep the last good snapshot: a half-saved file must not look like mass deletion.
            if stamp != self._bad_stamp:
                self._bad_stamp = stamp
                log.warning("directory file rejected", source=self.source.name, reason=str(exc))
                metrics.ERRORS.labels(service="ingest", error_code="SourceReadFailed").inc()
                await self.publish.error(_file_error(str(exc)))
            self._stamp = stamp
            return None
        self._stamp = stamp
        return snapshot

    def _change(self, obj: SourceObject, op: Any, cycle_id: str | None) -> DirectoryChange:
        metrics.CHANGES_INGESTED.labels(source=self.source.name, operation=op).inc()
        return DirectoryChange(
            source=self.source.name,
            object_type=obj.object_type,
            object_id=obj.object_id,
            operation=op,
            attributes=obj.attributes if op == "upsert" else {},
            memberships=list(obj.memberships),
            members=list(obj.members),
            change_id=str(uuid.uuid4()),
            cycle_id=cycle_id,
            observed_at=datetime.now(UTC),
        )

    def _marker(self, cycle_id: str, phase: Any, total: int) -> CycleMarker:
        return CycleMarker(source=self.source.name, cycle_id=cycle_id, phase=phase, total=total,
                           at=datetime.now(UTC))


def _file_error(reason: str) -> ErrorRecord:
    return ErrorRecord(
        id=str(uuid.uuid4()),
        at=datetime.now(UTC),
        service="ingest",
        error_code="SourceReadFailed",
        reason=reason,
        recommended_action="Fix the directory file; the last good version stays in effect.",
    )
