"""The file source: a YAML, JSON or JSON Lines file of users and groups (the demo default).

The file looks like::

    users:
      - {id: u-0001, userPrincipalName: ada@example.com, givenName: Ada, accountEnabled: true}
    groups:
      - {id: g-eng, displayName: Engineering, members: [u-0001]}

Each user's group memberships are derived from the groups' ``members`` lists, so moving a
user between groups is a change of that user (and of the groups). ``read_directory`` and
``parse_directory`` are pure functions from the file to a snapshot.

``FileDirectory`` is the YAML/JSON file as a ``DirectorySource``: full reads of the file, and
a poll for edits. A YAML or JSON document has to be parsed whole, so each edit costs a parse
of the whole file (its limit: latency grows with the directory, about 0.1 s per 10,000 users
for JSON); what the poll keeps between two versions is only a 64-bit hash per object, and the
new version is compared with those, object by object. Its first baseline is the start-up full
scan's read, so what the scan published is not published again, and an edit made between the
scan and the first poll is still seen. A file that does not parse is reported once per
version (an ErrorRecord) and the last good version stays in effect: a half-saved file must
not look like mass deletion.

``JsonLinesDirectory`` is a ``.jsonl``/``.ndjson`` file (``jsonlines.py``): an edit is a line
appended, and the poll reads only the appended bytes, so its cost does not grow with the
directory; its full scan streams the file. ``file_directory`` picks one by the file's suffix.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import structlog
import yaml

from services.ingest.objects import Key, ObjectType, Snapshot, SourceObject
from services.ingest.sources.base import DirectorySource, OnChange, OnPosition, Operation, SourceError
from services.ingest.sources.jsonlines import JSON_LINES_SUFFIXES, JsonLinesLog, LogRotatedError
from services.runtime.config import FileSource
from services.runtime.errors import ScimflowError

__all__ = [
    "DirectoryFileError",
    "FileDirectory",
    "FileSourceError",
    "JsonLinesDirectory",
    "file_directory",
    "parse_directory",
    "read_directory",
]

log = structlog.get_logger("scimflow.ingest.file")

# libyaml's loader parses a 10,000-user file about 5x faster than the pure-Python one.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

Report = Callable[[str], Awaitable[None]]


class DirectoryFileError(ScimflowError):
    """The directory file cannot be read or has the wrong shape."""


def read_directory(path: Path) -> Snapshot:
    """Read and parse the directory file (any format); raise DirectoryFileError with the reason."""
    if path.suffix.lower() in JSON_LINES_SUFFIXES:
        return _read_json_lines(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DirectoryFileError(f"{path}: cannot read directory file: {exc.strerror}") from exc
    return parse_directory(text, str(path))


def _read_json_lines(path: Path) -> Snapshot:
    lines = JsonLinesLog(path)
    try:
        lines.catch_up()
        return {obj.key: obj for obj in lines.live_objects()}
    except OSError as exc:
        raise DirectoryFileError(f"{path}: cannot read directory file: {exc.strerror}") from exc


def parse_directory(text: str, name: str = "<directory>") -> Snapshot:
    try:
        data = msgspec.json.decode(text) if name.endswith(".json") else yaml.load(text, Loader=_Loader)  # noqa: S506 - a safe loader
    except (yaml.YAMLError, msgspec.DecodeError) as exc:
        raise DirectoryFileError(f"{name}: not valid YAML/JSON: {exc}") from exc
    data = data or {}
    if not isinstance(data, dict):
        raise DirectoryFileError(f"{name}: expected a mapping with `users` and `groups`")
    users = _records(data.get("users") or [], name, "users")
    groups = _records(data.get("groups") or [], name, "groups")
    memberships: dict[str, list[str]] = {}
    snapshot: Snapshot = {}
    for g in groups:
        members = tuple(str(m) for m in g.pop("members", None) or [])
        for m in members:
            memberships.setdefault(m, []).append(str(g["id"]))
        obj = SourceObject("group", str(g["id"]), g, members=members)
        snapshot[obj.key] = obj
    for u in users:
        uid = str(u["id"])
        obj = SourceObject("user", uid, u, memberships=tuple(sorted(memberships.get(uid, []))))
        snapshot[obj.key] = obj
    return snapshot


def _records(items: Any, name: str, section: str) -> list[dict[str, Any]]:
    if not isinstance(items, list):
        raise DirectoryFileError(f"{name}: `{section}` must be a list")
    seen: set[str] = set()
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or "id" not in item:
            raise DirectoryFileError(f"{name}: {section}[{i}] must be a mapping with an `id`")
        if str(item["id"]) in seen:
            raise DirectoryFileError(f"{name}: {section}[{i}]: duplicate id {item['id']!r}")
        seen.add(str(item["id"]))
        out.append(_plain(dict(item)))
    return out


def _plain(record: dict[str, Any]) -> dict[str, Any]:
    # YAML gives dates as datetime objects; the pipeline carries them as ISO-8601 text,
    # which is what a directory's API would give.
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in record.items()}


class FileSourceError(SourceError):
    """The directory file cannot be read or has the wrong shape."""

    code = "SourceReadFailed"
    recommended_action = "Fix the directory file; the last good version stays in effect."


class _PolledFile(DirectorySource):
    """What both file formats share: settings, and a poll every ``poll_interval`` for edits."""

    resumable = False  # the file itself is the state: a restart's full scan is the resume

    def __init__(self, source: FileSource, path: Path, report: Report) -> None:
        self.name = source.name
        self.full_scan_interval = source.full_scan_interval
        self.poll_interval = source.poll_interval
        # The poll picks up the fixed file (see ``scan``); the next scan runs on schedule.
        self.failed_scan_retry = source.full_scan_interval
        self.path = path
        self._report = report

    async def watch(self, on_change: OnChange, on_position: OnPosition) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            await self.poll(on_change)

    async def poll(self, on_change: OnChange) -> int:
        """Report what changed since the last look; returns how many changes."""
        raise NotImplementedError

    def _current_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)


class FileDirectory(_PolledFile):
    """A YAML or JSON file of users and groups (the demo source)."""

    def __init__(self, source: FileSource, path: Path, report: Report) -> None:
        super().__init__(source, path, report)
        self._baseline: dict[Key, int] | None = None  # what the poll saw last: a hash per object
        self._stamp: tuple[int, int, int] | None = None
        self._bad_stamp: tuple[int, int, int] | None = None

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
            self._baseline = {key: _digest(obj) for key, obj in snapshot.items()}
        return snapshot

    async def poll(self, on_change: OnChange) -> int:
        if self._baseline is None or self._current_stamp() == self._stamp:
            return 0
        snapshot = await self._read()
        if snapshot is None:
            return 0
        digests: dict[Key, int] = {}
        count = 0
        for op, obj in _changes(self._baseline, snapshot, digests):
            await on_change(op, obj)
            count += 1
        self._baseline = digests
        if count:
            log.info("changes published", source=self.name, changes=count)
        return count

    async def fetch(self, object_id: str, object_type: ObjectType) -> SourceObject | None:
        try:
            snapshot = await asyncio.to_thread(read_directory, self.path)
        except DirectoryFileError as exc:
            raise FileSourceError(str(exc)) from None
        return snapshot.get((object_type, object_id))

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


def _digest(obj: SourceObject) -> int:
    """64 bits of the object's fingerprint: what the poll keeps of each object between versions."""
    return int.from_bytes(hashlib.blake2b(obj.fingerprint(), digest_size=8).digest())


def _changes(baseline: dict[Key, int], snapshot: Snapshot,
             digests: dict[Key, int]) -> Iterator[tuple[Operation, SourceObject]]:
    """Upserts for objects whose hash differs from ``baseline``, deletes for the gone ones;
    fills ``digests`` with the new version's hashes as it goes."""
    for key, obj in snapshot.items():
        digests[key] = digest = _digest(obj)
        if baseline.get(key) != digest:
            yield "upsert", obj
    for key in baseline:
        if key not in snapshot:
            yield "delete", SourceObject(key[0], key[1], {})  # type: ignore[arg-type]


_SCAN_BATCH = 2000  # objects a scan reads per trip to its thread


class JsonLinesDirectory(_PolledFile):
    """A JSON Lines file (``jsonlines.py``): polls read what was appended, scans stream the file.

    The first scan (or poll or fetch) reads the whole file; that is the poll's baseline, as
    for the YAML/JSON file. A line that is not an object with an ``id`` is skipped and
    reported once; the rest of the file stays in effect.
    """

    def __init__(self, source: FileSource, path: Path, report: Report) -> None:
        super().__init__(source, path, report)
        self._log = JsonLinesLog(path)
        self._lock = asyncio.Lock()  # one thread at a time touches the log's state
        self._stamp: tuple[int, int, int] | None = None
        self._reported: set[tuple[int, int]] = set()  # (generation, offset) of bad lines

    async def scan(self) -> Snapshot:
        return {obj.key: obj async for obj in self.scan_objects()}

    async def scan_objects(self) -> AsyncIterator[SourceObject]:
        await self._load()
        self.scan_total = len(self._log)
        objects = self._log.live_objects()
        while True:
            async with self._lock:
                try:
                    batch = await asyncio.to_thread(list, itertools.islice(objects, _SCAN_BATCH))
                except (OSError, LogRotatedError) as exc:
                    raise FileSourceError(f"{self.path}: {exc}") from None
            for obj in batch:
                yield obj
            if len(batch) < _SCAN_BATCH:
                return

    async def poll(self, on_change: OnChange) -> int:
        stamp = self._current_stamp()
        if not self._log.loaded or stamp == self._stamp:
            return 0
        self._stamp = stamp
        async with self._lock:
            try:
                changes = await asyncio.to_thread(self._log.catch_up)
            except OSError as exc:  # replaced under us: the next poll reads the new file
                log.warning("directory file unreadable", source=self.name, reason=str(exc))
                self._stamp = None
                return 0
            await self._report_bad_lines()
        for op, obj in changes:
            await on_change(op, obj)
        if changes:
            log.info("changes published", source=self.name, changes=len(changes))
        return len(changes)

    async def fetch(self, object_id: str, object_type: ObjectType) -> SourceObject | None:
        await self._load()
        async with self._lock:
            return await asyncio.to_thread(self._log.get, object_type, object_id)

    async def _load(self) -> None:
        """Read the whole file once (the baseline); later reads are the poll's."""
        async with self._lock:
            if self._log.loaded:
                return
            self._stamp = self._current_stamp()
            try:
                await asyncio.to_thread(self._log.catch_up)
            except OSError as exc:
                raise FileSourceError(f"{self.path}: cannot read directory file: {exc.strerror}") from None
            await self._report_bad_lines()

    async def _report_bad_lines(self) -> None:
        for bad in self._log.bad:
            if (self._log.generation, bad.offset) in self._reported:
                continue
            self._reported.add((self._log.generation, bad.offset))
            reason = f"{self.path}: line at byte {bad.offset} skipped: {bad.reason}"
            log.warning("directory file line rejected", source=self.name, reason=reason)
            await self._report(reason)


def file_directory(source: FileSource, path: Path, report: Report) -> DirectorySource:
    """The file source for ``path``: JSON Lines by its suffix, else a YAML/JSON document."""
    if path.suffix.lower() in JSON_LINES_SUFFIXES:
        return JsonLinesDirectory(source, path, report)
    return FileDirectory(source, path, report)
