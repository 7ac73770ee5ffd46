"""Sync details per application, read from the topics themselves (Entra's "Synchronization
details" pane): what scimflow manages, when cycles ran, what happened last.

Everything comes from Kafka, so any machine that can read the topics can answer, and the
answer survives restarts of every worker:

- managed objects: the writer's compacted state changelog (latest value per key);
- cycles: the scan frames on ``directory.changes``;
- outcomes, held removals, last error: ``provisioning.activity`` / ``provisioning.errors``;
- status on/off and allowed removals: the ``control`` topic.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec

from schemas import ActivityRecord, CycleMarker, ErrorRecord, ManagedObject
from schemas.codecs import decoder
from schemas.control import AllowDeletes, AppStatus, ControlMessage
from services.runtime.config import LoadedConfig
from services.runtime.kafka import consume
from services.runtime.topics import Topics

__all__ = ["AppStatusReport", "read_status"]


@dataclass
class AppStatusReport:
    app: str
    mode: str
    status: str
    managed_users: int = 0
    disabled_users: int = 0
    first_cycle_start: datetime | None = None
    last_cycle_start: datetime | None = None
    last_cycle_end: datetime | None = None
    last_cycle_seconds: float | None = None
    cycle_running: bool = False
    outcomes: dict[str, int] = field(default_factory=dict)
    held_removals: int = 0
    last_error: str | None = None
    last_error_at: datetime | None = None


def read_status(loaded: LoadedConfig, bootstrap: str, topics: Topics) -> list[AppStatusReport]:
    reports = {a.name: AppStatusReport(a.name, a.mode, a.status) for a in loaded.config.applications}
    _managed(reports, bootstrap, topics)
    _cycles(reports, bootstrap, topics)
    allowed = _control(reports, bootstrap, topics)
    _activity(reports, bootstrap, topics, allowed)
    _errors(reports, bootstrap, topics)
    return list(reports.values())


def _records(bootstrap: str, topic: str) -> list[Any]:
    return list(consume(bootstrap, topic, idle_timeout=0.5))


def _managed(reports: dict[str, AppStatusReport], bootstrap: str, topics: Topics) -> None:
    latest: dict[bytes, bytes | None] = {}
    for record in _records(bootstrap, topics.writer_state):
        latest[record.key] = record.value
    dec = decoder("writer.managed")
    for value in latest.values():
        if not value:
            continue
        state: ManagedObject = dec.decode(value)
        report = reports.get(state.app)
        if report is not None and state.object_type == "user":
            report.managed_users += 1
            report.disabled_users += not state.active


def _cycles(reports: dict[str, AppStatusReport], bootstrap: str, topics: Topics) -> None:
    starts: dict[str, datetime] = {}
    ends: dict[str, datetime] = {}
    dec = msgspec.json.Decoder(CycleMarker)
    for record in _records(bootstrap, topics.changes):
        try:
            marker = dec.decode(record.value)
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue  # a change, not a frame
        if marker.phase == "start":
            starts.setdefault(marker.cycle_id, marker.at)
        elif marker.complete:
            ends[marker.cycle_id] = max(marker.at, ends.get(marker.cycle_id, marker.at))
    if not starts:
        return
    first = min(starts.values())
    last_id = max(starts, key=lambda c: starts[c])
    done = [c for c in ends if c in starts]
    last_done = max(done, key=lambda c: ends[c]) if done else None
    for report in reports.values():
        report.first_cycle_start = first
        report.last_cycle_start = starts[last_id]
        report.cycle_running = last_id not in ends
        if last_done is not None:
            report.last_cycle_end = ends[last_done]
            report.last_cycle_seconds = (ends[last_done] - starts[last_done]).total_seconds()


def _control(reports: dict[str, AppStatusReport], bootstrap: str,
             topics: Topics) -> dict[str, datetime]:
    allowed: dict[str, datetime] = {}
    dec = msgspec.json.Decoder(ControlMessage)
    for record in _records(bootstrap, topics.control):
        try:
            message = dec.decode(record.value)
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue
        report = reports.get(message.app)
        if report is None:
            continue
        if isinstance(message, AppStatus):
            report.status = message.status
        elif isinstance(message, AllowDeletes):
            allowed[message.app] = message.before
    return allowed


def _activity(reports: dict[str, AppStatusReport], bootstrap: str, topics: Topics,
              allowed: dict[str, datetime]) -> None:
    counts: dict[str, Counter[str]] = {app: Counter() for app in reports}
    held: dict[str, set[str]] = {app: set() for app in reports}
    dec = msgspec.json.Decoder(ActivityRecord)
    for record in _records(bootstrap, topics.activity):
        activity = dec.decode(record.value)
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


def _errors(reports: dict[str, AppStatusReport], bootstrap: str, topics: Topics) -> None:
    dec = msgspec.json.Decoder(ErrorRecord)
    for record in _records(bootstrap, topics.errors):
        error = dec.decode(record.value)
        report = reports.get(error.app or "")
        if report is not None:
            report.last_error = f"{error.error_code}: {error.reason}"
            report.last_error_at = error.at
