"""ingest: watch each configured source and publish its changes to ``directory.changes``.

Every source runs a full scan at start and every ``full_scan_interval``, framed by cycle
markers sent to every partition, and publishes what changed in between:

- a file source (``FileIngest``) polls its file, so a change is published within one poll
  interval (default 0.25 s);
- an LDAP source (``LdapIngest``) follows the server's syncrepl feed, so a change is
  published as the server makes it; its cookie is stored in ``source.positions`` after
  the changes it covers are on the topic, and a restart resumes from it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import structlog

from schemas import CycleMarker, DirectoryChange, ErrorRecord
from services.ingest.file_source import DirectoryFileError, Key, Snapshot, SourceObject, diff, read_directory
from services.ingest.ldap_source import LdapSettings, LdapSource, LdapSourceError, Operation
from services.ingest.positions import Positions
from services.runtime import metrics
from services.runtime.config import FileSource
from services.runtime.config import LdapSource as LdapSourceConfig
from services.runtime.records import error_record

__all__ = ["FileIngest", "LdapIngest", "Publisher", "ldap_settings"]

log = structlog.get_logger("scimflow.ingest")


class Publisher:
    """Where ingest puts messages; the worker wires it to Kafka, tests can record.

    ``flush`` returns once every change sent so far is on the topic (raising if one could
    not be delivered); a source calls it before it stores a position.
    """

    def __init__(self, change: Callable[[DirectoryChange], Awaitable[None]],
                 marker: Callable[[CycleMarker], Awaitable[None]],
                 error: Callable[[ErrorRecord], Awaitable[None]],
                 flush: Callable[[], Awaitable[None]] | None = None) -> None:
        self.change = change
        self.marker = marker
        self.error = error
        self.flush = flush or _delivered


async def _delivered() -> None:
    return None


class _SourceIngest:
    """What every source's ingest shares: the shape of the messages it publishes."""

    def __init__(self, name: str, publish: Publisher) -> None:
        self.name = name
        self.publish = publish

    def _change(self, obj: SourceObject, op: Any, cycle_id: str | None) -> DirectoryChange:
        metrics.CHANGES_INGESTED.labels(source=self.name, operation=op).inc()
        return DirectoryChange(
            source=self.name,
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

    def _marker(self, cycle_id: str, phase: Literal["start", "end"], total: int | None, *,
                complete: bool = True) -> CycleMarker:
        return CycleMarker(source=self.name, cycle_id=cycle_id, phase=phase, total=total,
                           complete=complete, at=datetime.now(UTC))


class FileIngest(_SourceIngest):
    """One file source: full scans on a schedule, and a poll for edits in between."""

    def __init__(self, source: FileSource, path: Path, publish: Publisher) -> None:
        super().__init__(source.name, publish)
        self.source = source
        self.path = path
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


_FAILED_SCAN_RETRY = 60.0  # seconds until a failed full scan is tried again (at most the interval)


class LdapIngest(_SourceIngest):
    """One LDAP source: its syncrepl feed as it happens, and full scans on a schedule.

    At start the source's last cookie is read from ``source.positions``; the watcher resumes
    from it (or syncs from scratch without one). A new cookie is stored only after the
    changes it covers are on the changes topic. Scans run one at a time. A change the
    watcher publishes while a scan runs is never overtaken by the scan's older copy of that
    object: the scan publishes the watcher's newer one instead (or, for a deleted object,
    nothing).
    """

    def __init__(self, source: LdapSourceConfig, settings: LdapSettings, publish: Publisher,
                 positions: Positions) -> None:
        super().__init__(source.name, publish)
        self.source = source
        self.settings = settings
        self.positions = positions
        self.directory: LdapSource | None = None
        self._scan_lock = asyncio.Lock()
        self._send_lock = asyncio.Lock()  # one object's messages go out in the order decided
        self._during_scan: dict[Key, tuple[Operation, SourceObject]] | None = None
        self._scan_sent = 0

    async def run(self) -> None:
        directory = await self.start()
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self.watch(directory))
                tasks.create_task(self.scans())
        finally:
            await asyncio.to_thread(directory.close)

    async def start(self) -> LdapSource:
        """Connect the source object, resuming from the stored cookie if there is one."""
        cookie = await self.positions.load(self.name)
        self.directory = LdapSource(self.settings, cookie=cookie)
        log.info("ldap source starting", source=self.name, url=self.settings.url,
                 base_dn=self.settings.base_dn, resumed=cookie is not None)
        return self.directory

    async def watch(self, directory: LdapSource) -> None:
        """Publish the feed until cancelled; after a failure, report it and watch again."""
        failures = 0
        while True:
            began = time.monotonic()
            try:
                await directory.watch(self._on_change, self._on_cookie)
            except Exception as exc:  # reported, then retried: ingest keeps running
                failures = 1 if time.monotonic() - began > self.settings.reconnect_max else failures + 1
                wait = min(self.settings.reconnect_max, self.settings.reconnect_initial * 2 ** failures)
                log.warning("ldap watch failed; retrying", source=self.name, reason=str(exc), retry_in=wait)
                await self._report("watching for changes", exc)
                await asyncio.sleep(wait)
            else:
                return  # the source was closed

    async def scans(self) -> None:
        """A full scan now and every ``full_scan_interval``; a failed one is retried sooner."""
        interval = self.source.full_scan_interval
        while True:
            began = time.monotonic()
            done = await self.full_scan()
            wait = interval if done is not None else min(interval, _FAILED_SCAN_RETRY)
            await asyncio.sleep(max(0.0, began + wait - time.monotonic()))

    async def full_scan(self) -> str | None:
        """Publish every object, framed by start/end markers. Returns the cycle id, or None
        if the scan failed: its end marker then says ``complete=False`` (nothing is taken as
        deleted) and an ErrorRecord says why."""
        async with self._scan_lock:
            cycle_id = str(uuid.uuid4())
            started = time.monotonic()
            self._during_scan, self._scan_sent = {}, 0
            metrics.cycle_started(self.name)
            try:
                await self.publish.marker(self._marker(cycle_id, "start", None))
                snapshot = await self._directory().scan()
                await self._publish_scan(cycle_id, snapshot)
                await self.publish.marker(self._marker(cycle_id, "end", self._scan_sent))
            except Exception as exc:  # an interrupted scan is reported, never fatal
                await self._scan_failed(cycle_id, started, exc)
                return None
            finally:
                self._during_scan = None
        metrics.cycle_finished(self.name, time.monotonic() - started, complete=True, ended_at=time.time())
        log.info("full scan done", source=self.name, cycle_id=cycle_id, objects=self._scan_sent)
        return cycle_id

    async def _publish_scan(self, cycle_id: str, snapshot: Snapshot) -> None:
        changed = self._during_scan if self._during_scan is not None else {}
        total = len(snapshot)
        for key, scanned in snapshot.items():
            async with self._send_lock:
                op, obj = changed.get(key, ("upsert", scanned))
                if op == "upsert":
                    await self.publish.change(self._change(obj, "upsert", cycle_id))
                    self._scan_sent += 1
            if self._scan_sent % 500 == 0:
                metrics.set_cycle_progress(self.name, self._scan_sent, total)
        # What the watcher saw appear while the scan read is part of the directory too.
        for key, (op, obj) in list(changed.items()):
            if op == "upsert" and key not in snapshot:
                async with self._send_lock:
                    await self.publish.change(self._change(obj, "upsert", cycle_id))
                    self._scan_sent += 1

    async def _scan_failed(self, cycle_id: str, started: float, exc: Exception) -> None:
        log.warning("full scan failed", source=self.name, cycle_id=cycle_id, reason=str(exc))
        metrics.cycle_finished(self.name, time.monotonic() - started, complete=False, ended_at=time.time())
        try:
            await self.publish.marker(self._marker(cycle_id, "end", self._scan_sent, complete=False))
        except Exception as send_exc:  # the broker is the problem; the next scan retries
            log.warning("cannot end the failed scan", source=self.name, cycle_id=cycle_id,
                        reason=str(send_exc))
        await self._report(f"full scan {cycle_id}", exc)

    async def _on_change(self, op: Operation, obj: SourceObject) -> None:
        async with self._send_lock:
            if self._during_scan is not None:
                self._during_scan[obj.key] = (op, obj)
            await self.publish.change(self._change(obj, op, None))

    async def _on_cookie(self, cookie: bytes) -> None:
        # The cookie covers every change handed over before it: they must be on the topic first.
        await self.publish.flush()
        await self.positions.store(self.name, cookie)

    async def _report(self, doing: str, exc: Exception) -> None:
        if isinstance(exc, LdapSourceError):
            code, action = exc.code, exc.recommended_action
        else:
            code, action = "SourceReadFailed", "Check the ingest log; it retries by itself."
        metrics.ERRORS.labels(service="ingest", error_code=code).inc()
        try:
            await self.publish.error(_error(code, f"source {self.name}: {doing}: {exc}", action))
        except Exception as send_exc:  # nowhere left to report to but the log
            log.warning("cannot publish the error record", source=self.name, reason=str(send_exc))

    def _directory(self) -> LdapSource:
        if self.directory is None:
            raise RuntimeError(f"LdapIngest {self.name}: start() was not called")
        return self.directory


def ldap_settings(source: LdapSourceConfig, password: str) -> LdapSettings:
    """The LDAP source's settings from its config; unset optional keys keep their defaults."""
    base = LdapSettings(url=source.url, base_dn=source.base_dn, bind_dn=source.bind_dn, password=password,
                        timeout=source.timeout, reconnect_initial=source.reconnect_initial,
                        reconnect_max=source.reconnect_max)
    return dataclasses.replace(
        base,
        user_filter=source.user_filter or base.user_filter,
        group_filter=source.group_filter or base.group_filter,
        attributes=tuple(source.attributes or base.attributes),
        group_classes=tuple(source.group_classes or base.group_classes),
        member_attributes=tuple(source.member_attributes or base.member_attributes),
    )


def _file_error(reason: str) -> ErrorRecord:
    return _error("SourceReadFailed", reason,
                  "Fix the directory file; the last good version stays in effect.")


def _error(code: str, reason: str, action: str) -> ErrorRecord:
    return error_record("ingest", code, reason, action)
