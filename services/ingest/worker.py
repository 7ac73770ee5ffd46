"""ingest: drive each configured source and publish its changes to ``directory.changes``.

Every source implements one interface (``services/ingest/sources/base.py``: scan, watch from a
position, fetch one object) and runs under one loop, ``SourceIngest``:

- a full scan at start, every ``full_scan_interval`` and on a Restart request, framed by
  cycle markers sent to every partition, one at a time (never overlapping itself);
- the source's change feed in between, each change published as it is reported; the
  positions it hands out (a syncrepl cookie, Graph deltaLinks, a DirSync cookie) are stored
  in ``source.positions`` after the changes they cover are on the topic, and a restart
  resumes from the last one;
- provision on demand: one object fetched from the source and published with the request's
  id as its ``change_id``.

``FileIngest`` and ``LdapIngest`` are that loop over the file and LDAP sources, with the
constructors the rest of the code and the tests use.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import structlog

from schemas import CycleMarker, DirectoryChange, ErrorRecord
from services.ingest.objects import Key, ObjectType, SourceObject
from services.ingest.positions import Positions
from services.ingest.sources.base import DirectorySource, Operation, SourceError, SourceUnavailableError
from services.ingest.sources.file import file_directory
from services.runtime import metrics
from services.runtime.config import FileSource
from services.runtime.config import LdapSource as LdapSourceConfig
from services.runtime.errors import ConfigError
from services.runtime.records import error_record

__all__ = ["FileIngest", "LdapIngest", "Publisher", "SourceIngest"]

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


class SourceIngest:
    """Drives one ``DirectorySource``: its change feed as it happens, and full scans on a schedule.

    At start the source's last position is read from ``source.positions`` and the source
    resumes from it (or starts from scratch without one). A new position is stored only
    after the changes it covers are on the changes topic. Full scans run one at a time, at
    start, every ``full_scan_interval`` and whenever ``request_scan`` asks (a Restart). A
    change the feed publishes while a scan runs is never overtaken by the scan's older copy
    of that object: the scan publishes the feed's newer one instead (or, for a deleted
    object, nothing).
    """

    def __init__(self, source: DirectorySource, publish: Publisher,
                 positions: Positions | None = None) -> None:
        self.name = source.name
        self.source = source
        self.publish = publish
        self.positions = positions
        self._scan_lock = asyncio.Lock()
        self._send_lock = asyncio.Lock()  # one object's messages go out in the order decided
        self._during_scan: dict[Key, tuple[Operation, SourceObject]] | None = None
        self._scan_sent = 0
        self._scan_wanted = asyncio.Event()
        self.started = asyncio.Event()
        # One metric child per operation, looked up once: a scan counts a million changes.
        self._ingested = {op: metrics.CHANGES_INGESTED.labels(source=self.name, operation=op)
                          for op in ("upsert", "delete")}

    async def run(self) -> None:
        await self.start()
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self.watch())
                if self.source.scans:
                    tasks.create_task(self.scans())
        finally:
            await self.source.close()

    async def start(self) -> DirectorySource:
        """Hand the source its stored position (if it keeps one) before it watches."""
        position = None
        if self.source.resumable and self.positions is not None:
            position = await self.positions.load(self.name)
        await self.source.start(position)
        self.started.set()
        return self.source

    async def watch(self) -> None:
        """Publish the feed until cancelled; after a failure, report it and watch again."""
        source, failures = self.source, 0
        while True:
            began = time.monotonic()
            try:
                await source.watch(self._on_change, self._on_position)
            except Exception as exc:  # reported, then retried: ingest keeps running
                failures = 1 if time.monotonic() - began > source.reconnect_max else failures + 1
                wait = min(source.reconnect_max, source.reconnect_initial * 2 ** failures)
                log.warning("source watch failed; retrying", source=self.name, reason=str(exc), retry_in=wait)
                await self._report("watching for changes", exc)
                await asyncio.sleep(wait)
            else:
                return  # the source was closed

    def request_scan(self) -> None:
        """Run a full scan as soon as the running one (if any) is over: a Restart."""
        self._scan_wanted.set()

    async def scans(self) -> None:
        """A full scan now, every ``full_scan_interval`` and on request; a failed one is retried sooner."""
        interval = self.source.full_scan_interval
        while True:
            began = time.monotonic()
            self._scan_wanted.clear()
            done = await self.full_scan()
            wait = interval if done is not None else min(interval, self.source.failed_scan_retry)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._scan_wanted.wait(), max(0.0, began + wait - time.monotonic()))

    async def full_scan(self) -> str | None:
        """Publish every object, framed by start/end markers. Returns the cycle id, or None if
        the scan failed: its end marker then says ``complete=False`` (nothing is taken as
        deleted) and an ErrorRecord says why."""
        async with self._scan_lock:
            cycle_id = str(uuid.uuid4())
            started = time.monotonic()
            self._during_scan, self._scan_sent = {}, 0
            metrics.cycle_started(self.name)
            try:
                await self.publish.marker(self._marker(cycle_id, "start", None))
                await self._publish_scan(cycle_id)
                # Sends are not awaited one by one: the end marker (complete, so the writer may
                # take what is missing as deleted) goes out only once every change is on the topic.
                await self.publish.flush()
                await self.publish.marker(self._marker(cycle_id, "end", self._scan_sent))
            except Exception as exc:  # an interrupted scan is reported, never fatal
                await self._scan_failed(cycle_id, started, exc)
                return None
            finally:
                self._during_scan = None
        metrics.cycle_finished(self.name, time.monotonic() - started, complete=True, ended_at=time.time())
        log.info("full scan done", source=self.name, cycle_id=cycle_id, objects=self._scan_sent)
        return cycle_id

    async def provide(self, object_id: str, object_type: ObjectType, change_id: str) -> bool:
        """Provision on demand: publish the object as the source has it now, with ``change_id``.
        False if the source has no such object (a failure to read raises ``SourceError``)."""
        try:
            await asyncio.wait_for(self.started.wait(), _START_WAIT)
        except TimeoutError:
            raise SourceUnavailableError(f"source {self.name} has not started (see the ingest log)") from None
        obj = await self.source.fetch(object_id, object_type)
        if obj is None:
            return False
        async with self._send_lock:
            await self.publish.change(self._change(obj, "upsert", None, change_id=change_id, on_demand=True))
        log.info("object provided on demand", source=self.name, object_id=object_id, change_id=change_id)
        return True

    async def _publish_scan(self, cycle_id: str) -> None:
        """Publish the scan as the source reads it: ingest holds one scanned object at a time."""
        changed = self._during_scan if self._during_scan is not None else {}
        met: set[Key] = set()  # keys the scan reached that the feed had changed (few)
        async for scanned in self.source.scan_objects():
            key = scanned.key
            async with self._send_lock:
                op, obj = changed.get(key, ("upsert", scanned))
                if key in changed:
                    met.add(key)
                if op == "upsert":
                    await self.publish.change(self._change(obj, "upsert", cycle_id))
                    self._scan_sent += 1
            if self._scan_sent % _PROGRESS_EVERY == 0:
                metrics.set_cycle_progress(self.name, self._scan_sent, self.source.scan_total)
        # What the watcher saw appear (or move past the scan) while it read is part of the
        # directory too.
        for key, (op, obj) in list(changed.items()):
            if op == "upsert" and key not in met:
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
        if not (isinstance(exc, SourceError) and exc.reported):
            await self._report(f"full scan {cycle_id}", exc)

    async def _on_change(self, op: Operation, obj: SourceObject) -> None:
        async with self._send_lock:
            if self._during_scan is not None:
                self._during_scan[obj.key] = (op, obj)
            await self.publish.change(self._change(obj, op, None))

    async def _on_position(self, position: bytes) -> None:
        # The position covers every change handed over before it: they must be on the topic first.
        await self.publish.flush()
        if self.positions is not None and self.source.resumable:
            await self.positions.store(self.name, position)

    async def _report(self, doing: str, exc: Exception) -> None:
        if isinstance(exc, SourceError):
            code, action = exc.code, exc.recommended_action
        else:
            code, action = "SourceReadFailed", "Check the ingest log; it retries by itself."
        metrics.ERRORS.labels(service="ingest", error_code=code).inc()
        try:
            await self.publish.error(_error(code, f"source {self.name}: {doing}: {exc}", action))
        except Exception as send_exc:  # nowhere left to report to but the log
            log.warning("cannot publish the error record", source=self.name, reason=str(send_exc))

    def _change(self, obj: SourceObject, op: Operation, cycle_id: str | None, *,
                change_id: str | None = None, on_demand: bool = False) -> DirectoryChange:
        self._ingested[op].inc()
        return DirectoryChange(
            source=self.name,
            object_type=obj.object_type,
            object_id=obj.object_id,
            operation=op,
            attributes=obj.attributes if op == "upsert" else {},
            memberships=list(obj.memberships),
            members=list(obj.members),
            change_id=change_id or str(uuid.uuid4()),
            cycle_id=cycle_id,
            observed_at=datetime.now(UTC),
            on_demand=on_demand,
        )

    def _marker(self, cycle_id: str, phase: Literal["start", "end"], total: int | None, *,
                complete: bool = True) -> CycleMarker:
        return CycleMarker(source=self.name, cycle_id=cycle_id, phase=phase, total=total,
                           complete=complete, at=datetime.now(UTC))


_PROGRESS_EVERY = 500  # objects between two updates of the cycle-progress gauge
_START_WAIT = 30.0  # seconds a provision-on-demand request waits for its source to start


class FileIngest(SourceIngest):
    """One file source (``file_directory``): full scans on a schedule, and a poll for edits."""

    def __init__(self, source: FileSource, path: Path, publish: Publisher) -> None:
        async def report(reason: str) -> None:
            metrics.ERRORS.labels(service="ingest", error_code="SourceReadFailed").inc()
            await publish.error(_file_error(reason))

        super().__init__(file_directory(source, path, report), publish)


class LdapIngest(SourceIngest):
    """One LDAP source (``LdapDirectory``): its syncrepl feed, and full scans on a schedule."""

    def __init__(self, source: LdapSourceConfig, password: str, publish: Publisher,
                 positions: Positions) -> None:
        """``password`` is the resolved bind password (``source.password`` is only its reference)."""
        LdapDirectory = ldap_module("ldap").LdapDirectory  # noqa: N806 (a class)
        self.directory = LdapDirectory(source, password)
        super().__init__(self.directory, publish, positions)


def ldap_module(name: Literal["ldap", "ad"]) -> Any:
    """``services.ingest.sources.ldap`` or ``.ad``, imported only when a source needs it:
    python-ldap is the optional ``ldap`` extra (it needs a compiler to install), so an image
    without LDAP sources runs without it."""
    try:
        return importlib.import_module(f"services.ingest.sources.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != "ldap":
            raise
        raise ConfigError(f"a source of type {name!r} needs python-ldap: install scimflow[ldap] "
                          "(or build the image with EXTRAS=ldap)") from None


def _file_error(reason: str) -> ErrorRecord:
    return _error("SourceReadFailed", reason,
                  "Fix the directory file; the last good version stays in effect.")


def _error(code: str, reason: str, action: str) -> ErrorRecord:
    return error_record("ingest", code, reason, action)
