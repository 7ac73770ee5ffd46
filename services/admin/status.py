"""Sync details per application, read from the topics themselves (Entra's "Synchronization
details" pane): what scimflow manages, when cycles ran, what happened last.

Everything comes from Kafka, so any machine that can read the topics can answer, and the
answer survives restarts of every worker:

- managed users and groups: the writer's compacted state changelog (latest value per key,
  a tombstone removes the object);
- escrowed objects: the writer's compacted escrow changelog;
- cycles and the running cycle's progress: the scan frames and scanned objects on
  ``directory.changes``;
- outcomes, held removals, last error: ``provisioning.activity`` / ``provisioning.errors``;
- status on/off (and who set it), quarantine and why, allowed removals: the compacted
  ``control`` topic (latest value per ``app/kind``).

The topics are read concurrently (one thread each), so a status costs about one idle
timeout, not one per topic.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec

from schemas import ActivityRecord, CycleMarker, DirectoryChange, ErrorRecord, ManagedObject
from schemas.codecs import decoder
from schemas.control import AllowDeletes, AppCapabilities, AppHealth, AppStatus, ControlMessage
from services.runtime.config import LoadedConfig
from services.runtime.kafka import read_latest, read_records
from services.runtime.topics import Topics

__all__ = ["AppStatusReport", "CycleProgress", "read_status"]


@dataclass
class CycleProgress:
    """The running full scan: objects read so far, of ``total`` when the source said."""

    cycle_id: str
    done: int = 0
    total: int | None = None


@dataclass
class AppStatusReport:
    app: str
    mode: str
    status: str
    """``on``, ``off`` or ``quarantined`` (on, but the writer backs off: see ``status_reason``)."""
    status_reason: str | None = None
    status_by: str | None = None
    status_at: datetime | None = None
    dry_run: bool = False
    managed_users: int = 0
    disabled_users: int = 0
    managed_groups: int = 0
    escrowed: int = 0
    quarantined_since: datetime | None = None
    next_probe: datetime | None = None
    first_cycle_start: datetime | None = None
    last_cycle_start: datetime | None = None
    last_cycle_end: datetime | None = None
    last_cycle_seconds: float | None = None
    cycle_running: bool = False
    progress: CycleProgress | None = None
    outcomes: dict[str, int] = field(default_factory=dict)
    held_removals: int = 0
    last_error: str | None = None
    last_error_at: datetime | None = None
    capabilities: dict[str, Any] | None = None
    """What the target declares (PATCH, bulk, filter, ETag, schemas), as the writer read it."""
    mapping_problems: list[str] = field(default_factory=list)


def read_status(loaded: LoadedConfig, bootstrap: str, topics: Topics) -> list[AppStatusReport]:
    """One report per configured application, as the topics have it now."""
    reports = {a.name: AppStatusReport(a.name, a.mode, a.status, dry_run=a.dry_run)
               for a in loaded.config.applications}
    data = _read_topics(bootstrap, topics)
    _managed(reports, data["state"])
    _escrowed(reports, data["escrow"])
    _cycles(reports, data["changes"])
    allowed = _control(reports, data["control"])
    _activity(reports, data["activity"], allowed)
    _errors(reports, data["errors"])
    return list(reports.values())


def _read_topics(bootstrap: str, topics: Topics) -> dict[str, Any]:
    def log(topic: str) -> Callable[[], list[Any]]:
        return lambda: read_records(bootstrap, topic)

    def latest(topic: str) -> Callable[[], dict[bytes, bytes]]:
        return lambda: read_latest(bootstrap, topic)

    jobs: dict[str, Callable[[], Any]] = {
        "state": latest(topics.writer_state), "escrow": latest(topics.writer_escrow),
        "control": latest(topics.control), "changes": log(topics.changes),
        "activity": log(topics.activity), "errors": log(topics.errors),
    }
    with ThreadPoolExecutor(max_workers=len(jobs), thread_name_prefix="status") as pool:
        futures = {name: pool.submit(job) for name, job in jobs.items()}
        return {name: future.result() for name, future in futures.items()}


def _managed(reports: dict[str, AppStatusReport], latest: dict[bytes, bytes]) -> None:
    dec = decoder("writer.managed")
    for value in latest.values():
        try:
            state: ManagedObject = dec.decode(value)
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue
        report = reports.get(state.app)
        if report is None:
            continue
        if state.object_type == "group":
            report.managed_groups += 1
        else:
            report.managed_users += 1
            report.disabled_users += not state.active


def _escrowed(reports: dict[str, AppStatusReport], latest: dict[bytes, bytes]) -> None:
    for key, value in latest.items():
        app = _app_of(key, value)
        if app in reports:
            reports[app].escrowed += 1


def _app_of(key: bytes, value: bytes) -> str | None:
    """The app an escrow entry belongs to: its ``app`` field, else the ``app/`` key prefix."""
    try:
        body = msgspec.json.decode(value)
    except msgspec.DecodeError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("app"), str):
        return str(body["app"])
    app, sep, _ = key.decode("utf-8", "replace").partition("/")
    return app if sep else None


@dataclass
class _Scans:
    starts: dict[str, datetime] = field(default_factory=dict)
    ends: dict[str, datetime] = field(default_factory=dict)
    totals: dict[str, int] = field(default_factory=dict)
    read: dict[str, set[str]] = field(default_factory=dict)


def _scans(records: list[Any]) -> _Scans:
    scans = _Scans()
    dec = decoder("directory.changes")
    for record in records:
        try:
            message = dec.decode(record.value)
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue
        if isinstance(message, DirectoryChange):
            if message.cycle_id:
                scans.read.setdefault(message.cycle_id, set()).add(message.object_id)
            continue
        _frame(scans, message)
    return scans


def _frame(scans: _Scans, marker: CycleMarker) -> None:
    # Frames are sent to every partition: keep the first start and the last end.
    if marker.total is not None:
        scans.totals[marker.cycle_id] = marker.total
    if marker.phase == "start":
        scans.starts.setdefault(marker.cycle_id, marker.at)
    elif marker.complete:
        scans.ends[marker.cycle_id] = max(marker.at, scans.ends.get(marker.cycle_id, marker.at))


def _cycles(reports: dict[str, AppStatusReport], records: list[Any]) -> None:
    scans = _scans(records)
    if not scans.starts:
        return
    first = min(scans.starts.values())
    last_id = max(scans.starts, key=lambda c: scans.starts[c])
    done = [c for c in scans.ends if c in scans.starts]
    last_done = max(done, key=lambda c: scans.ends[c]) if done else None
    running = last_id not in scans.ends
    for report in reports.values():
        report.first_cycle_start = first
        report.last_cycle_start = scans.starts[last_id]
        report.cycle_running = running
        if running:
            report.progress = CycleProgress(last_id, len(scans.read.get(last_id, ())),
                                            scans.totals.get(last_id))
        if last_done is not None:
            report.last_cycle_end = scans.ends[last_done]
            report.last_cycle_seconds = (scans.ends[last_done] - scans.starts[last_done]).total_seconds()


def _control(reports: dict[str, AppStatusReport], latest: dict[bytes, bytes]) -> dict[str, datetime]:
    allowed: dict[str, datetime] = {}
    dec = msgspec.json.Decoder(ControlMessage)
    health: dict[str, AppHealth] = {}
    for value in latest.values():
        try:
            message = dec.decode(value)
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue
        report = reports.get(message.app)
        if report is None:
            continue
        if isinstance(message, AppStatus):
            report.status, report.status_by, report.status_at = message.status, message.by, message.at
        elif isinstance(message, AllowDeletes):
            allowed[message.app] = message.before
        elif isinstance(message, AppHealth):
            health[message.app] = message
        elif isinstance(message, AppCapabilities):
            report.capabilities, report.mapping_problems = message.capabilities, list(message.problems)
    for app, h in health.items():
        _health(reports[app], h)
    return allowed


def _health(report: AppStatusReport, health: AppHealth) -> None:
    if not health.quarantined:
        return
    report.quarantined_since, report.next_probe = health.since, health.next_probe
    if report.status == "on":
        report.status = "quarantined"
        report.status_reason = health.reason or "most recent calls to the target failed"


def _activity(reports: dict[str, AppStatusReport], records: list[Any],
              allowed: dict[str, datetime]) -> None:
    counts: dict[str, Counter[str]] = {app: Counter() for app in reports}
    held: dict[str, set[str]] = {app: set() for app in reports}
    dec = msgspec.json.Decoder(ActivityRecord)
    for record in records:
        try:
            activity = dec.decode(record.value)
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue
        if activity.app not in reports:
            continue
        counts[activity.app][f"{activity.action}/{activity.status}"] += 1
        if activity.action == "stagedDelete":
            held[activity.app].add(activity.source_id)
        elif activity.action in ("disable", "delete"):
            held[activity.app].discard(activity.source_id)
    for app, report in reports.items():
        report.outcomes = dict(counts[app])
        report.held_removals = 0 if app in allowed and not held[app] else len(held[app])


def _errors(reports: dict[str, AppStatusReport], records: list[Any]) -> None:
    dec = msgspec.json.Decoder(ErrorRecord)
    for record in records:
        try:
            error = dec.decode(record.value)
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue
        report = reports.get(error.app or "")
        if report is not None:
            report.last_error = f"{error.error_code}: {error.reason}"
            report.last_error_at = error.at
