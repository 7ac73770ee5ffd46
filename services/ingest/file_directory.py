"""The file source as a ``DirectorySource``: full reads of the file, and a poll for edits.

The watch compares each new version of the file with the last one it saw. Its first
baseline is the start-up full scan's read, so what the scan published is not published
again, and an edit made between the scan and the first poll is still seen. A file that
does not parse is reported once per version (an ErrorRecord) and the last good version
stays in effect: a half-saved file must not look like mass deletion.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog

from services.ingest.file_source import (
    DirectoryFileError,
    ObjectType,
    Snapshot,
    SourceObject,
    diff,
    read_directory,
)
from services.ingest.source import DirectorySource, OnChange, OnPosition, SourceError
from services.runtime.config import FileSource

__all__ = ["FileDirectory", "FileSourceError"]

log = structlog.get_logger("scimflow.ingest.file")

Report = Callable[[str], Awaitable[None]]


class FileSourceError(SourceError):
    """The directory file cannot be read or has the wrong shape."""

    code = "SourceReadFailed"
    recommended_action = "Fix the directory file; the last good version stays in effect."


class FileDirectory(DirectorySource):
    """A YAML or JSON file of users and groups (the demo source)."""

    resumable = False  # the file itself is the state: a restart's full scan is the resume

    def __init__(self, source: FileSource, path: Path, report: Report) -> None:
        self.name = source.name
        self.full_scan_interval = source.full_scan_interval
        self.poll_interval = source.poll_interval
        # The poll picks up the fixed file (see ``scan``); the next scan runs on schedule.
        self.failed_scan_retry = source.full_scan_interval
        self.path = path
        self._report = report
        self._baseline: Snapshot | None = None
        self._stamp: tuple[int, int] | None = None
        self._bad_stamp: tuple[int, int] | None = None

    async def scan(self) -> Snapshot:
        # The poll keeps its own view of which version it diffed last: a scan does not move it.
        snapshot = await self._read(track=self._baseline is None)
        if snapshot is None:
            if self._baseline is None:
                # Nothing was published: once the file is fixed, the poll publishes all of it.
                self._baseline = {}
            error = FileSourceError(f"{self.path}: the directory file is not valid now")
            error.reported = True  # _read published the reason once per version of the file
            raise error
        if self._baseline is None:
            self._baseline = snapshot
        return snapshot

    async def watch(self, on_change: OnChange, on_position: OnPosition) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            await self.poll(on_change)

    async def poll(self, on_change: OnChange) -> int:
        """Report what changed since the last look; returns how many changes."""
        if self._baseline is None or self._current_stamp() == self._stamp:
            return 0
        snapshot = await self._read()
        if snapshot is None:
            return 0
        count = 0
        for op, obj in diff(self._baseline, snapshot):
            await on_change(op, obj)
            count += 1
        self._baseline = snapshot
        if count:
            log.info("changes published", source=self.name, changes=count)
        return count

    async def fetch(self, object_id: str, object_type: ObjectType) -> SourceObject | None:
        try:
            snapshot = await asyncio.to_thread(read_directory, self.path)
        except DirectoryFileError as exc:
            raise FileSourceError(str(exc)) from None
        return snapshot.get((object_type, object_id))

    def _current_stamp(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    async def _read(self, *, track: bool = True) -> Snapshot | None:
        """The file parsed, or None (reported once per version) if it is not valid. ``track``:
        remember this version as the one the poll has seen."""
        stamp = self._current_stamp()
        try:
            snapshot = await asyncio.to_thread(read_directory, self.path)
        except DirectoryFileError as exc:
            if stamp != self._bad_stamp:
                self._bad_stamp = stamp
                log.warning("directory file rejected", source=self.name, reason=str(exc))
                await self._report(str(exc))
            if track:
                self._stamp = stamp
            return None
        if track:
            self._stamp = stamp
        return snapshot
