"""Benchmark phase: what an initial sync, an unchanged full scan and a restart cost the target.

The throughput run has nothing between the writer and the target (a proxy would slow it
down and distort it). This phase is separate: the fault proxy of ``tests/support`` sits as
a pure recorder (no rule programmed) between the writer and a fresh scim2-server, and every
request that reaches the target is counted. The file source holds N users in G groups (each
user a member of one group, so group members are written too) and scans every
``--reconcile-scan-interval`` seconds, so full scans come by themselves:

1. initial sync: from the workers' start until the target holds every user, every group and
   every member and the pipeline is quiet. The listings of periodic scans that started
   meanwhile are not the initial sync's and are left out (reported apart);
2. unchanged full scan: from a quiet moment after the initial sync to the end of the first
   scan that started after it (ingest's cycle markers on ``directory.changes``), the
   pipeline quiet again: nothing changed, so nothing may be written;
3. restart: the three workers stopped (SIGTERM) and started again with the same config on
   the same broker and topics, until the full scan ingest runs at its start has ended and
   the pipeline is quiet: nothing may be written either.

"Quiet" is observed, not guessed from sleeps: no scan open on ``directory.changes``, the
writer has handled the end frame of the last scan that ended there on every commands
partition (its ``full scan finished`` / ``full scan not used to find deletions`` lines: a
frame waits for every command before it), and no request reached the target for a second.
Not the consumer groups' committed offsets: a writer restarted once can leave a partition's
offset behind for good (the bench reports it as ``reconcile_writer_commit_lag``), so a wait
on them can hang.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import yaml
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from schemas import CycleMarker
from schemas.codecs import decoder
from services.devstack.scim_target import ScimTarget, start_scim_target
from services.devstack.supervisor import Supervisor
from services.runtime.config import Target
from services.runtime.kafka import create_topics
from services.runtime.topics import Topics
from tests.support.faultproxy import FaultProxy, LogEntry

__all__ = ["BULK_NOTE", "has_bulk_switch", "run_reconcile"]

WRITES = ("POST", "PUT", "PATCH", "DELETE")
BULK_NOTE = "not yet used by the writer"
_QUIET_S = 1.0
"""No request for this long (with every lag at 0): deferred member writes are over too."""
_STAGE_TIMEOUT_S = 900.0
_SHOWN = 30
"""Write requests and log lines put in the JSON line when writes are not 0 (all go to stderr)."""
_changes = decoder("directory.changes")


def _log(msg: str) -> None:
    sys.stderr.write(f"[bench] {msg}\n")
    sys.stderr.flush()


# -- the directory and the app -----------------------------------------------------------------


def _directory(users: int, groups: int, *, name: str = "Member") -> dict[str, Any]:
    people = [{"id": f"r{i:06d}", "userPrincipalName": f"member{i}@example.com", "givenName": f"G{i}",
               "surname": f"S{i}", "displayName": f"{name} {i}", "accountEnabled": True}
              for i in range(users)]
    teams = [{"id": f"team-{g:02d}", "displayName": f"Team {g:02d}",
              "members": [p["id"] for i, p in enumerate(people) if i % groups == g]}
             for g in range(groups)]
    return {"users": people, "groups": teams}


def _config(directory: Path, base_url: str, groups: int, args: argparse.Namespace) -> dict[str, Any]:
    return {
        "sources": [{"name": "hr", "type": "file", "path": str(directory), "poll_interval": 0.05,
                     "full_scan_interval": args.reconcile_scan_interval}],
        "applications": [{
            "name": "bench", "target": {"base_url": base_url, "token": "env:BENCH_TOKEN",
                                        "max_connections": args.concurrency,
                                        "rate_limit": {"max_concurrency": args.concurrency,
                                                       "max_requests_per_second": 5000}},
            "assignments": {"groups": [f"team-{g:02d}" for g in range(groups)]},
            "mappings": {
                "user": {"attributes": [
                    {"target": "userName", "source": "userPrincipalName", "matching": 1},
                    {"target": "externalId", "source": "id"},
                    {"target": "displayName", "source": "displayName"},
                    {"target": "name.givenName", "source": "givenName"},
                    {"target": "name.familyName", "source": "surname"}]},
                "group": {"attributes": [
                    {"target": "displayName", "source": "displayName", "matching": 1},
                    {"target": "externalId", "source": "id"}]}}}],
    }


# -- what the broker says ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Frame:
    offset: int
    marker: CycleMarker


class _Pipeline:
    """Reads cycle markers and consumer lags of one pipeline's topics."""

    def __init__(self, bootstrap: str, topics: Topics) -> None:
        self.topics = topics
        self.frames: list[_Frame] = []
        self._admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="bench-reconcile")
        self._consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                       client_id="bench-reconcile")
        # Ingest sends its frames to every partition: partition 0 has all of them.
        self._p0 = TopicPartition(topics.changes, 0)
        self._consumer.assign([self._p0])
        self._consumer.seek_to_beginning(self._p0)

    def close(self) -> None:
        self._consumer.close()
        self._admin.close()

    def frames_end(self) -> int:
        """Read partition 0 of ``directory.changes`` to its end; returns that end offset."""
        end: int = self._consumer.end_offsets([self._p0])[self._p0]
        while self._consumer.position(self._p0) < end:
            for record in self._consumer.poll(timeout_ms=500).get(self._p0, []):
                message = _changes.decode(record.value)
                if isinstance(message, CycleMarker):
                    self.frames.append(_Frame(record.offset, message))
        return end

    def scan_open(self) -> bool:
        return bool(self.frames) and self.frames[-1].marker.phase == "start"

    def scans_after(self, offset: int) -> list[str]:
        """Cycle ids of the complete scans that started and ended at or after ``offset``."""
        started = {f.marker.cycle_id for f in self.frames if f.offset >= offset and f.marker.phase == "start"}
        return [f.marker.cycle_id for f in self.frames
                if f.offset >= offset and f.marker.phase == "end" and f.marker.complete
                and f.marker.cycle_id in started]

    def starts_between(self, first: int, end: int) -> int:
        return sum(1 for f in self.frames if first <= f.offset < end and f.marker.phase == "start")

    def last_ended(self) -> str | None:
        """The cycle id of the last end frame read, if any."""
        ends = [f.marker.cycle_id for f in self.frames if f.marker.phase == "end"]
        return ends[-1] if ends else None

    def commit_lag(self, service: str, topic: str) -> dict[int, int]:
        """Per partition: end offset minus the service group's committed offset."""
        tps = [TopicPartition(topic, p) for p in range(self.topics.partitions)]
        group = self.topics.app_id(service)
        offsets = self._admin.list_group_offsets({group: tps}).get(group, {})
        committed = {tp: meta.offset for tp, meta in offsets.items()}
        ends = self._consumer.end_offsets(tps)
        return {tp.partition: end - max(0, committed.get(tp, 0)) for tp, end in sorted(ends.items())}


_SCAN_HANDLED = ("full scan finished", "full scan not used to find deletions")


class _WriterLog:
    """Follows the writer's JSON log: on how many commands partitions each scan was handled."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handled: Counter[str] = Counter()
        self._read = 0

    def scan_handled(self, cycle_id: str) -> int:
        if self.path.exists():
            with self.path.open("rb") as f:
                f.seek(self._read)
                chunk = f.read()
            complete = chunk.rfind(b"\n") + 1  # a line being written waits for the next look
            self._read += complete
            for raw in chunk[:complete].splitlines():
                self._note(raw)
        return self.handled[cycle_id]

    def _note(self, raw: bytes) -> None:
        if not raw.startswith(b"{"):
            return  # faust's and aiokafka's own lines
        try:
            line = json.loads(raw)
        except ValueError:
            return
        if line.get("event") in _SCAN_HANDLED and "cycle_id" in line:
            self.handled[line["cycle_id"]] += 1


@dataclass(frozen=True)
class _Mark:
    """A quiet moment: the proxy's log length and the end of ``directory.changes`` p0."""

    requests: int
    frames: int
    wall: float


class _Watch:
    """The pipeline, its workers and the recording proxy, waited on together."""

    def __init__(self, pipeline: _Pipeline, proxy: FaultProxy, sup: Supervisor, writer_log: Path) -> None:
        self.pipeline, self.proxy, self.sup = pipeline, proxy, sup
        self.writer = _WriterLog(writer_log)

    def until(self, what: str, check: Callable[[], bool]) -> None:
        deadline = time.monotonic() + _STAGE_TIMEOUT_S
        while not check():
            if self.sup.dead():
                raise SystemExit(f"reconcile: workers died ({self.sup.dead()}) waiting for {what}")
            if time.monotonic() > deadline:
                raise SystemExit(f"reconcile: timed out waiting for {what}")
            time.sleep(0.25)

    def quiet(self) -> _Mark:
        """Wait for a moment when nothing is in flight; return where the logs stood then."""
        marks: list[_Mark] = []

        def check() -> bool:
            before = len(self.proxy.log)
            end = self.pipeline.frames_end()
            last = self.pipeline.last_ended()
            if self.pipeline.scan_open() or last is None:
                return False
            if self.writer.scan_handled(last) < self.pipeline.topics.partitions:
                return False
            log = self.proxy.log
            if len(log) != before or (log and time.monotonic() - log[-1].at < _QUIET_S):
                return False
            marks.append(_Mark(before, end, time.time()))
            return True

        self.until("the pipeline to be quiet", check)
        return marks[-1]

    def scan_after(self, mark: _Mark) -> None:
        """Wait until a full scan that started after ``mark`` has ended, complete."""
        def ended() -> bool:
            self.pipeline.frames_end()
            return bool(self.pipeline.scans_after(mark.frames))

        self.until("a full scan after the mark", ended)


# -- what reached the target -------------------------------------------------------------------


def _is_write(entry: LogEntry) -> bool:
    # POST /.search is a read (RFC 7644 §3.4.3); /Bulk and everything else POSTed writes.
    return entry.method in WRITES and not entry.path.endswith("/.search")


def _kind(entry: LogEntry, base_path: str) -> str:
    """``GET /Users (list)``, ``GET /Users?filter``, ``PATCH /Groups/{id}``, ``GET /Schemas``..."""
    path = entry.path.removeprefix(base_path).strip("/")
    parts = path.split("/")
    kind = f"/{parts[0]}" + ("/{id}" if len(parts) > 1 else "")
    if entry.method == "GET" and len(parts) == 1 and parts[0] in ("Users", "Groups"):
        kind += "?filter" if "filter=" in entry.query else " (list)"
    return f"{entry.method} {kind}"


def _is_listing(entry: LogEntry, base_path: str) -> bool:
    return _kind(entry, base_path).endswith("(list)")


def _initial(entries: list[LogEntry], base_path: str) -> tuple[list[LogEntry], int]:
    """The initial sync's requests, and how many listings of later scans were left out: the
    initial scan lists the (empty) target before its first write; listings after the first
    write are the discovery of periodic scans that started while the sync was running."""
    first_write = next((i for i, e in enumerate(entries) if _is_write(e)), len(entries))
    later = [i for i, e in enumerate(entries) if i > first_write and _is_listing(e, base_path)]
    dropped = set(later)
    return [e for i, e in enumerate(entries) if i not in dropped], len(later)


def _on_users(entries: list[LogEntry], base_path: str) -> int:
    """Requests about users (``/Users`` and ``/Users/{id}``), not groups, members or metadata."""
    return sum(1 for e in entries if _kind(e, base_path).split()[1].startswith("/Users"))


def _by_kind(entries: list[LogEntry], base_path: str) -> dict[str, int]:
    return dict(sorted(Counter(_kind(e, base_path) for e in entries).items()))


def _shown(window: str, entry: LogEntry) -> dict[str, Any]:
    body = entry.body.decode("utf-8", "replace")
    return {"window": window, "method": entry.method, "path": entry.path, "status": entry.status,
            "body": body if len(body) <= 400 else body[:400] + "..."}


def _renamed(target: ScimTarget, users: int) -> bool:
    """Straight to the target: every user's displayName is the update wave's."""
    found: list[dict[str, Any]] = []
    with httpx.Client(base_url=target.base_url, timeout=30,
                      headers={"Authorization": f"Bearer {target.token}"}) as http:
        while len(found) < users:
            page = http.get("/Users", params={"startIndex": len(found) + 1, "count": 1000}).json()
            if not page.get("Resources"):
                break
            found.extend(page["Resources"])
    return len(found) == users and all(str(u.get("displayName", "")).startswith("Renamed ") for u in found)


def _bulk_operations(entries: list[LogEntry]) -> Counter[str]:
    """Operations the ``/Bulk`` requests among ``entries`` carried, by method."""
    return Counter(str(op.get("method")) for e in entries if e.method == "POST" and e.path.endswith("/Bulk")
                   for op in (e.json() or {}).get("Operations", []))


def _target_holds(target: ScimTarget, users: int, groups: int) -> bool:
    """Straight to the target (not through the proxy): every user, group and member there."""
    with httpx.Client(base_url=target.base_url, timeout=30,
                      headers={"Authorization": f"Bearer {target.token}"}) as http:
        held = http.get("/Users", params={"count": 1}).json().get("totalResults")
        listed = http.get("/Groups", params={"count": groups + 10}).json()
    teams = listed.get("Resources", [])
    members = sum(len(t.get("members") or []) for t in teams)
    return (held == users and listed.get("totalResults") == groups and len(teams) == groups
            and members == users)


# -- the worker logs that explain a write ------------------------------------------------------


def _explaining_lines(log_dir: Path, since: float) -> list[str]:
    """Writer and mapper log lines after ``since`` (wall clock) that say what was written or
    went wrong: outcomes other than skips, warnings and errors."""
    lines: list[str] = []
    for name in ("writer", "mapper", "ingest"):
        path = log_dir / f"{name}.log"
        if not path.exists():
            continue
        for raw in path.read_text(errors="replace").splitlines():
            if _explains(raw, since):
                lines.append(f"{name}: {raw}")
    return lines


def _explains(raw: str, since: float) -> bool:
    try:
        line = json.loads(raw)
        at = datetime.fromisoformat(line["timestamp"]).timestamp()
    except (ValueError, KeyError, TypeError, AttributeError):
        return False
    if at < since - 1:
        return False
    if line.get("level") in ("warning", "error", "critical"):
        return True
    return line.get("event") == "outcome" and line.get("action") not in (None, "skip")


# -- the phase ---------------------------------------------------------------------------------


@dataclass
class _Run:
    """One recorded pipeline: its files, topics, target, recording proxy and frame reader."""

    work: Path
    config: Path
    env: dict[str, str]
    users: int
    groups: int
    topics: Topics
    target: ScimTarget
    proxy: FaultProxy
    pipeline: _Pipeline

    def supervisor(self) -> Supervisor:
        return Supervisor(config=self.config, env=self.env, log_dir=self.work / "logs")

    @property
    def base_path(self) -> str:
        return self.proxy.upstream.path.rstrip("/")

    def holds_everything(self) -> bool:
        return _target_holds(self.target, self.users, self.groups)


def has_bulk_switch() -> bool:
    """Whether this build's application config has ``target.bulk`` (``auto`` | ``off``)."""
    return "bulk" in Target.__struct_fields__


@contextmanager
def _recorded(bootstrap: str, args: argparse.Namespace, bulk: str | None) -> Iterator[_Run]:
    """A fresh target behind a recording proxy, fresh topics and config (``target.bulk`` set
    to ``bulk`` unless None)."""
    with start_scim_target(threads=args.target_threads) as target, FaultProxy(target.base_url) as proxy:
        work = Path(tempfile.mkdtemp(prefix="scimflow-bench-reconcile-"))
        topics = Topics(f"benchrec{uuid.uuid4().hex[:6]}.", args.partitions)
        create_topics(bootstrap, topics.specs())
        groups = max(1, min(args.reconcile_groups, args.reconcile_users))
        directory = work / "directory.json"
        directory.write_text(json.dumps(_directory(args.reconcile_users, groups)))
        config = _config(directory, proxy.url, groups, args)
        if bulk is not None:
            config["applications"][0]["target"]["bulk"] = bulk
        (work / "bench.yaml").write_text(yaml.safe_dump(config))
        # Info level: the writer's scan and outcome lines are what the waits and the
        # explanation of an unexpected write read.
        env = {"SCIMFLOW_KAFKA_BOOTSTRAP": bootstrap, "SCIMFLOW_TOPIC_PREFIX": topics.prefix,
               "SCIMFLOW_PARTITIONS": str(args.partitions), "SCIMFLOW_DATA_DIR": str(work / "data"),
               "SCIMFLOW_LOG_FORMAT": "json", "SCIMFLOW_LOG_LEVEL": "info", "BENCH_TOKEN": target.token}
        pipeline = _Pipeline(bootstrap, topics)
        try:
            yield _Run(work, work / "bench.yaml", env, args.reconcile_users, groups, topics, target, proxy,
                       pipeline)
        finally:
            pipeline.close()


@contextmanager
def _running(run: _Run) -> Iterator[tuple[list[Supervisor], _Watch]]:
    """The workers, started (the list holds the current supervisor: a restart replaces it)."""
    sups = [run.supervisor()]
    watch = _Watch(run.pipeline, run.proxy, sups[-1], run.work / "logs" / "writer.log")
    try:
        sups[-1].start()
        yield sups, watch
    finally:
        sups[-1].stop()


def _initial_sync(run: _Run, watch: _Watch) -> _Mark:
    watch.until("the target to hold every user, group and member", run.holds_everything)
    return watch.quiet()


def _restart(run: _Run, sups: list[Supervisor], watch: _Watch) -> _Mark:
    """Stop the three workers, start them again, wait for the scan after the restart."""
    sups[-1].stop()
    restart_from = run.pipeline.frames_end()
    sups.append(run.supervisor())
    watch.sup = sups[-1]
    sups[-1].start()
    watch.scan_after(_Mark(len(run.proxy.log), restart_from, time.time()))
    return watch.quiet()


def run_reconcile(bootstrap: str, args: argparse.Namespace) -> dict[str, Any]:
    """The three windows against a fresh target (without /Bulk), then the initial sync with
    /Bulk when the writer has it; the figures for the bench's JSON line."""
    started = time.time()
    with _recorded(bootstrap, args, "off" if has_bulk_switch() else None) as run:
        _log(f"reconcile: initial sync of {run.users} users in {run.groups} groups through a recording "
             f"proxy (logs in {run.work / 'logs'})")
        result = _windows(run, args)
    result.update(_bulk_initial(bootstrap, args))
    _log(f"reconcile: took {time.time() - started:.0f} s")
    return result


def _windows(run: _Run, args: argparse.Namespace) -> dict[str, Any]:
    with _running(run) as (sups, watch):
        initial_end = _initial_sync(run, watch)
        _log("reconcile: waiting for a full scan that finds nothing changed")
        watch.scan_after(initial_end)
        unchanged_end = watch.quiet()
        _log("reconcile: restarting the three workers; waiting for the full scan after the restart")
        restart_end = _restart(run, sups, watch)
        commit_lag = run.pipeline.commit_lag("writer", run.topics.commands)
        if not run.holds_everything():
            raise SystemExit("reconcile: after the restart the target no longer holds every user, group "
                             "and member")
    log = run.proxy.log
    windows = {
        "initial": log[:initial_end.requests],
        "unchanged_full_scan": log[initial_end.requests:unchanged_end.requests],
        "restart": log[unchanged_end.requests:restart_end.requests],
    }
    initial, later_reads = _initial(windows["initial"], run.base_path)
    result: dict[str, Any] = {
        "reconcile_users": run.users, "reconcile_groups": run.groups,
        "reconcile_scan_interval_s": args.reconcile_scan_interval,
        "requests_per_user_initial": round(len(initial) / run.users, 3),
        "requests_per_user_initial_users_only": round(_on_users(initial, run.base_path) / run.users, 3),
        "requests_initial_later_scan_listings_left_out": later_reads,
        "requests_unchanged_full_scan": len(windows["unchanged_full_scan"]),
        "unchanged_full_scans": run.pipeline.starts_between(initial_end.frames, unchanged_end.frames),
        "writes_unchanged_full_scan": sum(map(_is_write, windows["unchanged_full_scan"])),
        "requests_restart": len(windows["restart"]),
        "writes_restart": sum(map(_is_write, windows["restart"])),
        "reconcile_requests_by_kind": {
            "initial": _by_kind(initial, run.base_path),
            "unchanged_full_scan": _by_kind(windows["unchanged_full_scan"], run.base_path),
            "restart": _by_kind(windows["restart"], run.base_path)},
        # Commands the writer handled but whose offsets its group has not committed, per
        # partition, at the end: a scan's worth or less is the commit interval; more is a
        # partition left behind (the next start replays it).
        "reconcile_writer_commit_lag": commit_lag,
    }
    if result["writes_unchanged_full_scan"] or result["writes_restart"]:
        result.update(_explain(run, windows, since=initial_end.wall))
    return result


def _explain(run: _Run, windows: dict[str, list[LogEntry]], *, since: float) -> dict[str, Any]:
    """Every write that should not have been, and the worker log lines about it (stderr gets
    them all, the JSON line the first ``_SHOWN``)."""
    writes = [_shown(name, e) for name in ("unchanged_full_scan", "restart")
              for e in windows[name] if _is_write(e)]
    lines = _explaining_lines(run.work / "logs", since)
    for write in writes:
        _log(f"unexpected write: {json.dumps(write)}")
    for line in lines:
        _log(f"explained by: {line}")
    return {"reconcile_unexpected_writes": writes[:_SHOWN], "reconcile_log_lines": lines[:_SHOWN],
            "reconcile_logs": str(run.work / "logs")}


def _bulk_initial(bootstrap: str, args: argparse.Namespace) -> dict[str, Any]:
    """``requests_per_user_initial_bulk``: the same initial sync with ``target.bulk: auto``,
    against another fresh target, then an update wave (every user renamed in the source):
    its requests per user and the updates each ``/Bulk`` request carried. None (and why, in
    ``notes``) while the writer has no /Bulk."""
    if not has_bulk_switch():
        return {"requests_per_user_initial_bulk": None, "notes": {"bulk": BULK_NOTE}}
    with _recorded(bootstrap, args, "auto") as run:
        _log(f"reconcile: the same initial sync with target.bulk: auto (logs in {run.work / 'logs'})")
        with _running(run) as (_, watch):
            mark = _initial_sync(run, watch)
            _log("reconcile: an update wave (every user renamed) with target.bulk: auto")
            directory = run.work / "directory.json"
            directory.write_text(json.dumps(_directory(run.users, run.groups, name="Renamed")))
            watch.until("the target to hold every user renamed", lambda: _renamed(run.target, run.users))
            watch.scan_after(mark)
            wave_end = watch.quiet()
        initial, _ = _initial(run.proxy.log[:mark.requests], run.base_path)
        wave = run.proxy.log[mark.requests:wave_end.requests]
    by_kind = _by_kind(initial, run.base_path)
    used = sum(n for kind, n in by_kind.items() if kind.startswith("POST /Bulk"))
    note = ("target.bulk: auto; requests_per_user_initial is with target.bulk: off" if used else
            "target.bulk: auto, but the writer sent no /Bulk request (does the target declare bulk?)")
    return {"requests_per_user_initial_bulk": round(len(initial) / run.users, 3),
            "requests_initial_bulk_by_kind": by_kind, "notes": {"bulk": note}, **_wave(wave, run)}


def _wave(wave: list[LogEntry], run: _Run) -> dict[str, Any]:
    """The update wave's figures: its writes (the listing of the full scan waited for is a
    read), and how many updates each /Bulk request carried."""
    bulks = [e for e in wave if e.method == "POST" and e.path.endswith("/Bulk")]
    carried = _bulk_operations(wave)
    updates = carried["PATCH"] + carried["PUT"]
    return {"requests_per_user_update_wave_bulk": round(sum(map(_is_write, wave)) / run.users, 3),
            "bulk_updates_per_request": round(updates / len(bulks), 1) if bulks else None,
            "requests_update_wave_bulk_by_kind": _by_kind(wave, run.base_path)}
