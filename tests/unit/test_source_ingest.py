"""The one ingest loop over any source (SourceIngest) and the control requests (Controller),
with an in-memory source and a recording publisher: no broker, no network."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta
from typing import Any

from schemas import CycleMarker, DirectoryChange, ErrorRecord
from schemas.control import AppStatus, ProvisionRequest, Restart
from services.ingest.control import Controller
from services.ingest.objects import ObjectType, Snapshot, SourceObject
from services.ingest.sources.base import DirectorySource, OnChange, OnPosition, SourceUnavailableError
from services.ingest.worker import Publisher, SourceIngest


class MemorySource(DirectorySource):
    def __init__(self, name: str, objects: list[SourceObject]) -> None:
        self.name = name
        self.objects = {o.key: o for o in objects}
        self.scanning = 0
        self.most_at_once = 0
        self.started_with: bytes | None = b"unset"
        self.fail_fetch = False

    async def start(self, position: bytes | None) -> None:
        self.started_with = position

    async def scan(self) -> Snapshot:
        self.scanning += 1
        self.most_at_once = max(self.most_at_once, self.scanning)
        await asyncio.sleep(0.05)
        self.scanning -= 1
        return dict(self.objects)

    async def watch(self, on_change: OnChange, on_position: OnPosition) -> None:
        await asyncio.Event().wait()

    async def fetch(self, object_id: str, object_type: ObjectType) -> SourceObject | None:
        if self.fail_fetch:
            raise SourceUnavailableError("directory down (password=hunter2 never shown)")
        return self.objects.get((object_type, object_id))


class Recording:
    def __init__(self) -> None:
        self.changes: list[DirectoryChange] = []
        self.markers: list[CycleMarker] = []
        self.errors: list[ErrorRecord] = []

    def publisher(self) -> Publisher:
        async def change(c: DirectoryChange) -> None:
            self.changes.append(c)

        async def marker(m: CycleMarker) -> None:
            self.markers.append(m)

        async def error(e: ErrorRecord) -> None:
            self.errors.append(e)

        return Publisher(change, marker, error)


class StoredPositions:
    """What Positions does, in memory."""

    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}

    async def load(self, source: str) -> bytes | None:
        return self.values.get(source)

    async def load_prefixed(self, prefix: str) -> dict[str, bytes]:
        return {k: v for k, v in self.values.items() if k.startswith(prefix)}

    async def store(self, source: str, position: bytes) -> None:
        self.values[source] = position


ADA = SourceObject("user", "u1", {"id": "u1", "givenName": "Ada"})


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_requested_scans_run_one_at_a_time_each_framed_by_markers() -> None:
    source, recording = MemorySource("hr", [ADA]), Recording()

    async def scenario() -> None:
        ingest = SourceIngest(source, recording.publisher())
        task = asyncio.create_task(ingest.run())
        await asyncio.sleep(0.02)
        for _ in range(5):  # a burst of restarts while the first scan runs
            ingest.request_scan()
        await asyncio.sleep(0.4)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    _run(scenario())
    assert source.most_at_once == 1
    phases = [m.phase for m in recording.markers]
    assert phases[:4] == ["start", "end", "start", "end"]  # the start-up scan, then one for the burst
    assert len(phases) == 4
    assert all(c.cycle_id is not None for c in recording.changes) and len(recording.changes) == 2


def _controller(recording: Recording, source: MemorySource, positions: StoredPositions,
                started_at: datetime) -> tuple[Controller, SourceIngest]:
    ingest = SourceIngest(source, recording.publisher())
    ingest.started.set()
    controller = Controller({source.name: ingest}, recording.publisher().error, positions,  # type: ignore[arg-type]
                            started_at=started_at)
    return controller, ingest


def _provision(object_id: str, request_id: str, source: str | None = None) -> ProvisionRequest:
    return ProvisionRequest(app="app", object_id=object_id, request_id=request_id, source=source, by="t",
                            at=datetime.now(UTC))


def test_provision_publishes_the_object_once_with_the_request_id() -> None:
    recording, positions = Recording(), StoredPositions()
    source = MemorySource("hr", [ADA])

    async def scenario() -> None:
        controller, _ = _controller(recording, source, positions, datetime.now(UTC))
        await controller.load()
        await controller.handle(_provision("u1", "req-1"))
        # After an ingest restart the compacted control topic is read again: not acted on twice.
        again, _ = _controller(recording, source, positions, datetime.now(UTC))
        await again.load()
        await again.handle(_provision("u1", "req-1"))
        await again.handle(AppStatus(app="app", status="off", by="t", at=datetime.now(UTC)))

    _run(scenario())
    [change] = recording.changes
    assert (change.change_id, change.object_id, change.cycle_id, change.operation) == ("req-1", "u1", None,
                                                                                       "upsert")
    assert recording.errors == []


def test_provision_of_an_unknown_object_or_a_failing_source_is_an_error_record() -> None:
    recording, positions = Recording(), StoredPositions()
    source = MemorySource("hr", [ADA])

    async def scenario() -> None:
        controller, _ = _controller(recording, source, positions, datetime.now(UTC))
        await controller.handle(_provision("nobody", "req-2"))
        await controller.handle(_provision("u1", "req-3", source="other"))
        source.fail_fetch = True
        await controller.handle(_provision("u1", "req-4"))

    _run(scenario())
    assert recording.changes == []
    missing, wrong_source, failing = recording.errors
    assert (missing.error_code, missing.change_id, missing.app, missing.source_id) == (
        "ObjectNotFound", "req-2", "app", "nobody")
    assert wrong_source.error_code == "ObjectNotFound" and "other" in wrong_source.reason
    assert (failing.error_code, failing.change_id) == ("SourceUnavailable", "req-4")


def test_restart_scans_now_unless_the_start_up_scan_already_covers_it() -> None:
    recording, positions = Recording(), StoredPositions()
    source = MemorySource("hr", [ADA])
    now = datetime.now(UTC)

    async def scenario() -> tuple[bool, bool, bool]:
        controller, ingest = _controller(recording, source, positions, now)
        older = Restart(app="app", request_id="r-0", by="t", at=now - timedelta(minutes=5))
        await controller.handle(older)
        covered = ingest._scan_wanted.is_set()
        await controller.handle(Restart(app="app", request_id="r-1", by="t", at=now + timedelta(seconds=1)))
        wanted = ingest._scan_wanted.is_set()
        ingest._scan_wanted.clear()
        await controller.handle(Restart(app="app", request_id="r-1", by="t", at=now + timedelta(seconds=1)))
        return covered, wanted, ingest._scan_wanted.is_set()

    covered, wanted, repeated = _run(scenario())
    assert (covered, wanted, repeated) == (False, True, False)
    assert positions.values["control:app/restart"] == b"r-1"


def test_provisioning_on_again_runs_a_catch_up_scan_but_not_for_a_replayed_status() -> None:
    recording, positions = Recording(), StoredPositions()
    source = MemorySource("hr", [ADA])
    now = datetime.now(UTC)

    async def scenario() -> tuple[bool, bool, bool]:
        controller, ingest = _controller(recording, source, positions, now)
        await controller.handle(AppStatus(app="app", status="on", by="t", at=now - timedelta(minutes=5)))
        replayed = ingest._scan_wanted.is_set()  # from before this process: the start-up scan covers it
        await controller.handle(AppStatus(app="app", status="off", by="t", at=now + timedelta(seconds=1)))
        off = ingest._scan_wanted.is_set()
        await controller.handle(AppStatus(app="app", status="on", by="t", at=now + timedelta(seconds=2)))
        return replayed, off, ingest._scan_wanted.is_set()

    assert _run(scenario()) == (False, False, True)
