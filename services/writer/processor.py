"""The writer's command processor: consume -> decide -> call the target -> record.

Commands for different objects run concurrently (up to ``writer_concurrency`` target calls,
``writer_batch`` commands in flight) while commands for the same object run one after
another, in offset order.

Acks are manual and in offset order per partition: an offset is acknowledged only when it
and every offset before it on its partition are done. (faust commits the first run of
consecutive acked offsets, so acking out of order could commit past a command still in
flight; a crash would then lose it.) A crash replays whatever was not acknowledged, and
every write is idempotent: state compare, then lookup-before-create.

Around the per-object work sit the app-level rules: full-scan deletions (``cycles``),
accidental-deletion prevention (``deletion_guard``) and provisioning status Off/On.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
import structlog

from schemas import ActivityRecord, CycleMarker, ErrorRecord, ManagedObject, ProvisioningCommand
from schemas.codecs import decoder, encode
from schemas.control import AllowDeletes, AppStatus
from services.runtime import metrics
from services.runtime.kafka import partition_for
from services.runtime.records import error_record, malformed_message
from services.runtime.settings import Settings
from services.writer.cycles import CycleTracker, FinishedScan
from services.writer.deletion_guard import DeletionGuard, Staged
from services.writer.worker import Writer

__all__ = ["Ack", "CommandProcessor"]

log = structlog.get_logger("scimflow.writer")

_commands = decoder("provisioning.commands")
_state = decoder("writer.managed")


Ack = Callable[[Any], Awaitable[Any]]


@dataclass(eq=False)
class _Ticket:
    event: Any
    done: bool = False


class _InOrderAcks:
    """Acknowledges events per partition strictly in offset order."""

    def __init__(self) -> None:
        self._queues: dict[int, deque[_Ticket]] = defaultdict(deque)
        self._lock = asyncio.Lock()

    def track(self, event: Any) -> _Ticket:
        ticket = _Ticket(event)
        self._queues[event.message.partition].append(ticket)
        return ticket

    async def done(self, ticket: _Ticket, ack: Ack) -> None:
        ticket.done = True
        async with self._lock:
            queue = self._queues[ticket.event.message.partition]
            while queue and queue[0].done:
                await ack(queue.popleft().event)


class CommandProcessor:
    """Applies commands: objects concurrently, each object's commands in order."""

    def __init__(self, settings: Settings, writers: dict[str, Writer], managed: Any, *,
                 activity: Any, errors: Any) -> None:
        self.paused: dict[str, dict[bytes, ProvisioningCommand] | None] = {
            name: ({} if w.app.status == "off" else None) for name, w in writers.items()}
        """Per app: None while on; while off, the latest command of each object, to apply on resume."""
        self.guard = DeletionGuard({name: w.app.deletion_threshold for name, w in writers.items()},
                                   grace=settings.removal_grace)
        self.settings = settings
        self.writers = writers
        self.managed = managed
        self.activity = activity
        self.errors = errors
        self.cycles = CycleTracker()
        self.limit = asyncio.Semaphore(settings.writer_concurrency)
        self.window = asyncio.Semaphore(settings.writer_batch)
        self.acks = _InOrderAcks()
        self.tails: dict[bytes, asyncio.Task[None]] = {}
        self.inflight: set[asyncio.Task[None]] = set()

    async def submit(self, event: Any, ack: Ack) -> None:
        """Take one event; returns once it is scheduled (or handled, for frames)."""
        ticket = self.acks.track(event)
        message = await self._decode(event)
        partition = event.message.partition
        if isinstance(message, ProvisioningCommand):
            key = event.key or b""
            self.cycles.saw(partition, message.app, message.cycle_id, key)
            await self._schedule(key, message, ticket, ack)
            return
        if isinstance(message, CycleMarker):
            # A frame waits for every command before it, so a scan's end means its commands ran.
            await self.drain()
            await self._on_marker(partition, message)
        await self.acks.done(ticket, ack)

    async def _schedule(self, key: bytes, command: ProvisioningCommand, ticket: _Ticket | None,
                        ack: Ack | None, *, releasing: bool = False) -> None:
        """Run ``command`` after every earlier command for the same object."""
        await self.window.acquire()
        task = asyncio.create_task(
            self._after(self.tails.get(key), key, command, ticket, ack, releasing=releasing))
        self.tails[key] = task
        self.inflight.add(task)
        task.add_done_callback(lambda t, key=key: self._finished(t, key))  # type: ignore[misc]

    async def tick_guard(self) -> None:
        """Run removals that are due; report the ones a threshold just held."""
        now = datetime.now(UTC)
        for app, writer in self.writers.items():
            if not self.guard.guards(app):
                continue
            release = self.guard.tick(app, now)
            for staged in release.run:
                await self._schedule(staged.key, staged.command, None, None, releasing=True)
            if release.newly_held:
                await self._held(writer, release.newly_held)
            metrics.STAGED_DELETES.labels(app=app).set(self.guard.waiting(app))

    async def _held(self, writer: Writer, held: list[Staged]) -> None:
        app = writer.app
        reason = (f"{len(held)} removals exceed the deletion threshold ({app.deletion_threshold}) "
                  f"of this cycle; held until `scimflow allow-deletes {app.name}`")
        log.warning("removals held", app=app.name, count=len(held), threshold=app.deletion_threshold)
        await self._error(app.name.encode(), _threshold_exceeded(app.name, reason))
        for staged in held:
            await self._report_staged(writer, staged, reason)

    async def _report_staged(self, writer: Writer, staged: Staged, reason: str) -> None:
        raw = self.managed.get(staged.key)
        record = writer.staged(staged.command, _state.decode(raw) if raw else None, reason)
        _count(record, staged.command)
        await self.activity.send(key=staged.key, value=encode(record))

    async def set_status(self, control: AppStatus) -> None:
        """Off pauses an app's writes (other apps go on); on applies what changed meanwhile."""
        if control.app not in self.paused:
            return
        waiting = self.paused[control.app]
        if control.status == "off":
            if waiting is None:
                log.info("provisioning paused", app=control.app, by=control.by)
                self.paused[control.app] = {}
            return
        if waiting is None:
            return
        self.paused[control.app] = None
        log.info("provisioning resumed", app=control.app, by=control.by, pending=len(waiting))
        for key, command in waiting.items():
            await self._schedule(key, command, None, None)

    def allow_deletes(self, control: AllowDeletes) -> None:
        log.info("removals allowed", app=control.app, before=control.before.isoformat(), by=control.by)
        self.guard.allow(control.app, control.before)

    async def drain(self) -> None:
        while self.inflight:
            await asyncio.wait(set(self.inflight))

    def _finished(self, task: asyncio.Task[None], key: bytes) -> None:
        self.inflight.discard(task)
        self.window.release()
        if self.tails.get(key) is task:
            del self.tails[key]

    async def _after(self, previous: asyncio.Task[None] | None, key: bytes,
                     command: ProvisioningCommand, ticket: _Ticket | None, ack: Ack | None, *,
                     releasing: bool = False) -> None:
        if previous is not None:
            await asyncio.wait({previous})  # same object: strictly after the one before
        try:
            await self._limited(key, command, releasing=releasing)
        except Exception as exc:
            log.exception("command failed", app=command.app, source_id=command.source_id)
            await self._error(key, _writer_failure(command, exc))
        if ticket is not None and ack is not None:
            await self.acks.done(ticket, ack)

    async def close(self) -> None:
        await asyncio.gather(*(w.client.aclose() for w in self.writers.values()))

    async def _decode(self, event: Any) -> ProvisioningCommand | CycleMarker | None:
        key: bytes = event.key or b""
        try:
            message: ProvisioningCommand | CycleMarker = _commands.decode(event.value)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            metrics.MALFORMED_MESSAGES.labels(service="writer", topic="provisioning.commands").inc()
            await self._error(key, malformed_message("writer", event, str(exc)))
            return None
        if isinstance(message, ProvisioningCommand) and message.app not in self.writers:
            reason = f"unknown application {message.app!r}"
            await self._error(key, malformed_message("writer", event, reason))
            return None
        return message

    async def _apply(self, key: bytes, command: ProvisioningCommand, *,
                     releasing: bool = False) -> None:
        waiting = self.paused.get(command.app)
        if waiting is not None:
            # Off: nothing reaches the target; the latest desired state waits for On.
            waiting[key] = command
            self.guard.drop(command.app, key)
            return
        raw = self.managed.get(key)
        state = _state.decode(raw) if raw else None
        writer = self.writers[command.app]
        if not releasing and self.guard.guards(command.app):
            self.guard.drop(command.app, key)  # this command supersedes a waiting removal
            if writer.preview(command, state).action in ("disable", "delete"):
                if self.guard.stage(Staged(key, command, datetime.now(UTC))):
                    reason = (f"removals of {command.app} are held by the deletion threshold; "
                              f"`scimflow allow-deletes {command.app}` releases them")
                    await self._report_staged(writer, Staged(key, command, datetime.now(UTC)), reason)
                return
        outcome = await writer.handle(command, state)
        if outcome.changed_state:
            if outcome.managed is None:
                self.managed.pop(key, None)
            else:
                self.managed[key] = encode(outcome.managed)
        if outcome.activity is not None:
            _count(outcome.activity, command)
            log.info("outcome", app=command.app, source_id=command.source_id,
                     action=outcome.activity.action, status=outcome.activity.status,
                     target_id=outcome.activity.target_id, change_id=command.change_id)
            await self.activity.send(key=key, value=encode(outcome.activity))
        if outcome.error is not None:
            await self._error(key, outcome.error)

    async def _error(self, key: bytes, record: ErrorRecord) -> None:
        metrics.ERRORS.labels(service="writer", error_code=record.error_code).inc()
        await self.errors.send(key=key, value=encode(record))

    def count_managed(self) -> None:
        """Set ``scimflow_managed_objects`` from the partitions this writer owns now."""
        counts: dict[tuple[str, str], int] = dict.fromkeys(
            ((app, "user") for app in self.writers), 0)
        for raw in list(self.managed.values()):
            state = _state.decode(raw)
            counts[(state.app, state.object_type)] = counts.get((state.app, state.object_type), 0) + 1
        for (app, object_type), n in counts.items():
            metrics.MANAGED_OBJECTS.labels(app=app, object_type=object_type).set(n)

    async def _on_marker(self, partition: int, marker: CycleMarker) -> None:
        finished = self.cycles.on_marker(partition, marker)
        if finished is None:
            return
        if not finished.sweep:
            log.info("full scan not used to find deletions", app=finished.app,
                     cycle_id=finished.cycle_id, reason=finished.reason)
            return
        await self._sweep(finished)

    async def _sweep(self, scan: FinishedScan) -> None:
        """Objects we manage that a complete full scan did not mention: deleted in source."""
        prefix = f"{scan.app}/".encode()
        states = ((k, _state.decode(v)) for k, v in list(self.managed.items()) if k.startswith(prefix))
        gone = [
            (key, state) for key, state in states
            if key not in scan.seen and state.created_at < scan.started
            and partition_for(key, self.settings.partitions) == scan.partition
        ]
        log.info("full scan finished", app=scan.app, cycle_id=scan.cycle_id,
                 partition=scan.partition, seen=len(scan.seen), absent=len(gone))
        self.guard.cycle_finished(scan.app)
        await asyncio.gather(*(self._limited(key, _absent(scan, state)) for key, state in gone))

    async def _limited(self, key: bytes, command: ProvisioningCommand, *,
                       releasing: bool = False) -> None:
        async with self.limit:
            await self._apply(key, command, releasing=releasing)


def _absent(scan: FinishedScan, state: ManagedObject) -> ProvisioningCommand:
    return ProvisioningCommand(
        app=state.app, object_type=state.object_type, source=scan.source, source_id=state.source_id,
        operation="delete", display_name=state.display_name, cycle_id=scan.cycle_id,
        change_id=f"{scan.cycle_id}/absent", observed_at=datetime.now(UTC),
        reason=f"absent from the completed full scan {scan.cycle_id}: deleted in source",
    )


def _writer_failure(command: ProvisioningCommand, exc: Exception) -> ErrorRecord:
    return error_record(
        "writer", "WriterFailure", f"{type(exc).__name__}: {exc}",
        "A bug in scimflow's writer: report it with this record; the object is retried at the "
        "next full scan.",
        app=command.app, object_type=command.object_type, source_id=command.source_id,
        change_id=command.change_id, cycle_id=command.cycle_id,
    )


def _count(activity: ActivityRecord, command: ProvisioningCommand) -> None:
    metrics.OUTCOMES.labels(app=activity.app, object_type=activity.object_type,
                            action=activity.action, status=activity.status).inc()
    if activity.status == "success":
        seconds = (activity.at - command.observed_at).total_seconds()
        metrics.PROVISIONING_LATENCY.labels(app=activity.app).observe(max(0.0, seconds))


def _threshold_exceeded(app: str, reason: str) -> ErrorRecord:
    return error_record(
        "writer", "DeletionThresholdExceeded", reason,
        f"Check why so many objects left scope or the source; if intended, "
        f"run `scimflow allow-deletes {app}`. Nothing was removed.",
        app=app,
    )
