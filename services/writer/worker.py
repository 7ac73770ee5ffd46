"""The writer's consume loop: consume -> decide -> call the target -> record.

Commands for different objects run concurrently (up to ``writer_batch`` commands in
flight; the SCIM client caps each app's concurrent calls and rate) while commands for the
same object run one after another, in offset order: each object has a *chain* of jobs.

Retries without head-of-line blocking: when the client gives up on a transient failure,
the object's job *parks* (``retry.retry_delay``: backoff, jitter, ``Retry-After`` as a
floor) without a window slot, so other objects of its partition go on. It stays at the
head of its object's chain, so nothing newer for the object overtakes it; a newer command
for the object *supersedes* it instead (commands carry the whole desired state, so the
newer one is all that needs writing, and it need not wait out the backoff). After
``retries.escrow_after`` failures the object is escrowed (``escrow``): reported once,
kept in a compacted table, its offset acknowledged, retried on a timer and by newer
commands. While an app is quarantined its jobs park until the gate opens.

References (``manager``) and group members resolve through the link index (``links``),
fed by the managed-state changelog of every partition; an object that refers to one not
linked yet is written without it and runs again through its chain when the link appears.
The wait is kept in the object's managed state too (``deferred``), so it survives restarts.

Acks are manual and in offset order per partition (``chains``): an offset is acknowledged
only when it and every offset before it on its partition are done. (faust commits the first
run of consecutive acked offsets, so acking out of order could commit past a command still
in flight; a crash would then lose it.) A crash replays whatever was not acknowledged, and
every write is idempotent: state compare, then lookup-before-create.

Around the per-object work sit the app-level rules: full-scan deletions (``cycles``),
accidental-deletion prevention (``deletion_guard``) and provisioning status Off/On.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import structlog

from schemas import ActivityRecord, CycleMarker, ErrorRecord, ManagedObject, ProvisioningCommand
from schemas.codecs import decoder, encode
from schemas.control import AllowDeletes, AppCapabilities, AppHealth, AppStatus, RemovalTally, Restart
from services.runtime import metrics
from services.runtime.errors import TransientError
from services.runtime.kafka import partition_for
from services.runtime.records import error_record, malformed_message
from services.runtime.settings import Settings
from services.scim.capabilities import check_mappings
from services.scim.quarantine import QuarantineEvent
from services.writer.apply import Outcome, Writer
from services.writer.chains import Ack, InOrderAcks, Job
from services.writer.cycles import CycleTracker, FinishedScan
from services.writer.deletion_guard import DeletionGuard, Staged
from services.writer.escrow import EscrowStore
from services.writer.health import app_health, health_key, quarantine_error
from services.writer.links import Deferrals, LinkIndex, resolve
from services.writer.retry import escrow_interval, retry_delay, should_escrow

__all__ = ["Ack", "CommandProcessor"]

log = structlog.get_logger("scimflow.writer")

_commands = decoder("provisioning.commands")
_state = decoder("writer.managed")

_RERUN_DELAY = 0.2
"""Seconds to gather links that appear together before re-running the objects waiting for
them (a group whose members are being created runs once per batch, not once per member)."""
_PARKED_PER_SLOT = 8
_TALLY_REPEAT = timedelta(seconds=5)
"""How often a replica repeats a non-zero removal tally (peers forget one after 15 s)."""
"""Parked jobs that may give up their window slot, per slot of ``writer_batch``."""
_PARK_POLL = 0.5
"""Seconds between looks at a quarantined app's gate by a parked job."""


class CommandProcessor:
    """Applies commands: objects concurrently, each object's commands in order."""

    def __init__(self, settings: Settings, writers: dict[str, Writer], managed: Any, *,
                 activity: Any, errors: Any, escrow: Any = None, control: Any = None,
                 restoring: Iterable[str] = ()) -> None:
        self.paused: dict[str, dict[bytes, ProvisioningCommand] | None] = {
            name: ({} if w.app.status == "off" else None) for name, w in writers.items()}
        """Per app: None while on; while off, the latest command of each object, to apply on resume."""
        self.guard = DeletionGuard({name: w.app.deletion_threshold for name, w in writers.items()},
                                   grace=settings.removal_grace)
        self.replica = uuid.uuid4().hex[:12]
        """This writer process among the replicas (the removal tallies it publishes)."""
        self._tallies: dict[str, tuple[int, datetime]] = {}
        """Per app: the tally this replica last published, and when."""
        self.settings = settings
        self.writers = writers
        self.managed = managed
        self.activity = activity
        self.errors = errors
        self.control = control
        self.escrow = EscrowStore(escrow)
        self.links = LinkIndex()
        self.deferrals = Deferrals()
        self.cycles = CycleTracker()
        self.window = asyncio.Semaphore(settings.writer_batch)
        self.max_parked = settings.writer_batch * _PARKED_PER_SLOT
        self.acks = InOrderAcks()
        self.tails: dict[bytes, asyncio.Task[None]] = {}
        self.jobs: dict[asyncio.Task[None], Job] = {}
        self.parked: dict[bytes, Job] = {}
        self.started = datetime.now(UTC)
        self.restarts: set[str] = set()
        """request_ids of the Restart requests already handled by this process."""
        self._reruns: set[bytes] = set()
        self._claims: dict[tuple[str, str], str] = {}
        """(app, target id) -> source id of the job that is linking it right now."""
        self._waiting: Counter[str] = Counter()
        self._background: set[asyncio.Task[None]] = set()
        self.restored = asyncio.Event()
        """Set once the link index holds every link the changelog had at start (before that
        a group would see its members as unlinked and remove them, a manager as missing)
        and each target's capabilities were read (how to match, PATCH or PUT, bulk)."""
        self._restoring = set(restoring)
        """What is still being restored: ``links`` (:meth:`links_restored`) and
        ``capabilities`` (:meth:`learn`), as the worker asks for them."""
        if not self._restoring:
            self.restored.set()
        for writer in writers.values():
            writer.client.on_quarantine(self._on_quarantine)

    @property
    def inflight(self) -> set[asyncio.Task[None]]:
        return set(self.jobs)

    def links_restored(self) -> None:
        """The changelog follower reached the end offsets of its start."""
        self._ready("links")

    def _ready(self, part: str) -> None:
        self._restoring.discard(part)
        if not self._restoring and not self.restored.is_set():
            log.info("writer state restored; applying commands", links=len(self.links))
            self.restored.set()

    async def submit(self, event: Any, ack: Ack) -> None:
        """Take one event; returns once it is scheduled (or handled, for frames). No job
        runs before the writer's state is restored (:meth:`links_restored`, :meth:`learn`)."""
        ticket = self.acks.track(event)
        message = await self._decode(event)
        partition = event.message.partition
        if isinstance(message, ProvisioningCommand):
            key = event.key or b""
            self.cycles.saw(partition, message.app, message.cycle_id, key)
            await self._schedule(Job(key, message, ticket, ack))
            return
        if isinstance(message, CycleMarker):
            # A frame waits for every command before it, so a scan's end means its commands ran
            # (or wait for a retry: those are in the scan's ``seen`` set all the same).
            await self.drain()
            await self._on_marker(partition, message)
            await self._discover(message)
        await self.acks.done(ticket, ack)

    # -- chains ----------------------------------------------------------------------------

    async def _schedule(self, job: Job) -> None:
        """Run ``job`` after every earlier job for the same object."""
        await self.window.acquire()
        if job.command is not None and not job.escrowed:
            self._supersede(job.key)
        previous = self.tails.get(job.key)
        job.previous = self.jobs.get(previous) if previous is not None else None
        task = asyncio.create_task(self._run(previous, job))
        self.tails[job.key] = task
        self.jobs[task] = job
        task.add_done_callback(self._finished)

    def _supersede(self, key: bytes) -> None:
        """A newer command for an object replaces its parked one (it holds the whole state)."""
        parked = self.parked.get(key)
        if parked is not None and parked.running is not None:
            parked.superseded = True
            parked.wake.set()

    def _finished(self, task: asyncio.Task[None]) -> None:
        job = self.jobs.pop(task)
        job.done = True
        if job.holds_window:
            self.window.release()
        if self.tails.get(job.key) is task:
            del self.tails[job.key]

    async def _run(self, previous: asyncio.Task[None] | None, job: Job) -> None:
        if not self.restored.is_set():
            await self.restored.wait()  # no write before the writer's state is restored
        if previous is not None:
            await asyncio.wait({previous})  # same object: strictly after the one before
        command = job.running = job.command or self.deferrals.command(job.key)
        try:
            if command is not None:
                await self._attempts(job, command)
        except Exception as exc:
            assert command is not None
            log.exception("command failed", app=command.app, source_id=command.source_id)
            await self._error(job.key, _writer_failure(command, exc))
        if job.ticket is not None and job.ack is not None:
            await self.acks.done(job.ticket, job.ack)

    async def _attempts(self, job: Job, command: ProvisioningCommand) -> None:
        """Apply ``command``; on a transient failure park and try again, or escrow it."""
        retries = self.writers[command.app].app.target.retries
        failures = job.escrowed
        while True:
            await self._while_quarantined(job, command.app)
            if job.superseded:
                return
            outcome = await self._apply(job.key, command, releasing=job.releasing)
            if outcome is None or outcome.retry is None:
                if job.command is not None:
                    self._unescrow(job.key)
                return
            failures += 1
            if job.escrowed or should_escrow(failures, retries):
                await self._escrow(job.key, command, outcome, outcome.retry, failures)
                return
            delay = retry_delay(failures, retries, retry_after=outcome.retry.retry_after)
            log.info("object waits for a retry", app=command.app, source_id=command.source_id,
                     attempt=failures, delay=round(delay, 3), error_code=outcome.retry.code)
            if not await self._park(job, delay):
                return

    async def _park(self, job: Job, delay: float) -> bool:
        """Wait ``delay`` seconds (or until woken) without a window slot; False if superseded."""
        self.parked[job.key] = job
        job.parked = True
        self._count_waiting(job, +1)
        if job.holds_window and len(self.parked) <= self.max_parked:
            # Beyond ``max_parked`` a parked job keeps its slot: memory stays bounded and
            # the consumer stops reading ahead (backpressure) rather than park forever.
            job.holds_window = False
            self.window.release()
        try:
            await asyncio.wait_for(job.wake.wait(), timeout=delay)
        except TimeoutError:
            pass
        finally:
            job.parked = False
            job.wake.clear()
            if self.parked.get(job.key) is job:
                del self.parked[job.key]
            self._count_waiting(job, -1)
        return not job.superseded

    def _count_waiting(self, job: Job, change: int) -> None:
        """``scimflow_retries_waiting``: parked objects per app, kept incrementally."""
        if job.running is None:
            return
        app = job.running.app
        self._waiting[app] += change
        metrics.RETRIES_WAITING.labels(app=app).set(self._waiting[app])

    async def _while_quarantined(self, job: Job, app: str) -> None:
        """Calls of a quarantined app wait at its gate; wait here instead, parked, so the
        app's waiting objects hold no window slot that other apps need."""
        gate = self.writers[app].client.quarantine
        while gate.active and not job.superseded:
            await self._park(job, _PARK_POLL)

    async def drain(self) -> None:
        """Wait until every job is done, parked, or queued behind a parked job."""
        while busy := {t for t, j in self.jobs.items() if not j.blocked()}:
            await asyncio.wait(busy, timeout=_PARK_POLL, return_when=asyncio.FIRST_COMPLETED)

    # -- escrow ----------------------------------------------------------------------------

    async def _escrow(self, key: bytes, command: ProvisioningCommand, outcome: Outcome,
                      exc: TransientError, failures: int) -> None:
        interval = escrow_interval(self.writers[command.app].app.target.retries)
        first = self.escrow.put(key, command, failures, exc)
        self._count_escrow()
        if not first:
            log.info("escrowed object failed again", app=command.app, source_id=command.source_id,
                     attempts=failures)
            return
        log.warning("object escrowed", app=command.app, source_id=command.source_id, attempts=failures)
        if outcome.activity is not None:
            _count(outcome.activity, command)
            await self.activity.send(key=key, value=encode(outcome.activity))
        await self._error(key, _escrowed(command, exc, failures, interval))

    def _unescrow(self, key: bytes) -> None:
        if self.escrow.drop(key):
            log.info("object left escrow", key=key.decode("utf-8", "replace"))
            self._count_escrow()

    async def tick_escrow(self) -> None:
        """Try again the escrowed objects whose retry interval has passed."""
        if not self.restored.is_set():
            return
        def interval(app: str) -> float:
            writer = self.writers.get(app)
            return escrow_interval(writer.app.target.retries) if writer else float("inf")

        for key, entry in self.escrow.due(datetime.now(UTC), interval):
            if key in self.tails or self.paused.get(entry.command.app) is not None:
                continue  # a newer command is on its way, or the app is off
            await self._schedule(Job(key, entry.command, escrowed=entry.attempts))

    def _count_escrow(self) -> None:
        counts = self.escrow.counts()
        for app in self.writers:
            metrics.ESCROWED_OBJECTS.labels(app=app).set(counts.get(app, 0))

    # -- references ------------------------------------------------------------------------

    def on_changelog(self, key: bytes | None, value: bytes | None) -> None:
        """One record of the managed-state changelog (any partition): keep the links."""
        linked = self.links.apply(key, value)
        if linked is not None:
            self._linked(*linked)

    def _linked(self, app: str, source_id: str) -> None:
        waiting = self.deferrals.waiting_for(app, source_id)
        if not waiting:
            return
        first = not self._reruns
        self._reruns.update(waiting)
        if first:
            self._spawn(self._rerun_soon())

    async def _rerun_soon(self) -> None:
        await asyncio.sleep(_RERUN_DELAY)
        keys, self._reruns = sorted(self._reruns), set()
        for key in keys:
            await self._schedule(Job(key, None))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- one command -----------------------------------------------------------------------

    async def _apply(self, key: bytes, command: ProvisioningCommand, *,
                     releasing: bool = False) -> Outcome | None:
        waiting = self.paused.get(command.app)
        if waiting is not None:
            # Off: nothing reaches the target; the latest desired state waits for On.
            waiting[key] = command
            self.guard.drop(command.app, key)
            return None
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
                return None
        if command.cycle_id is not None:
            # The scan's listing (started by its first frame, or now for a scan this writer
            # did not see start): waited for here, in the object's job, not in the consumer.
            await writer.discover(command.cycle_id)
        resolved = resolve(command, self.links)
        # Before any await: a link that appears while this runs finds the object waiting.
        self.deferrals.defer(key, command, resolved.missing)
        claims: set[str] = set()
        try:
            outcome = await writer.handle(resolved.command, state, resolved.members,
                                          owner=lambda t: self.links.owner(command.app, t),
                                          claim=lambda t: self._claim(command, t, claims))
            if not writer.app.dry_run:
                self._keep(key, command, state, outcome, deferred=command if resolved.missing else None)
        finally:
            for target_id in claims:
                self._claims.pop((command.app, target_id), None)
        if outcome.retry is not None:
            return outcome  # reported only if it ends in escrow
        await self._publish(key, command, outcome)
        return outcome

    def _claim(self, command: ProvisioningCommand, target_id: str, claims: set[str]) -> str | None:
        """Reserve ``target_id`` for ``command``'s object until its state is stored; the
        source id that holds it already (linked, or reserved by a job in flight), if any."""
        linked = self.links.owner(command.app, target_id)
        if linked is not None:
            return linked
        holder = self._claims.setdefault((command.app, target_id), command.source_id)
        if holder == command.source_id:
            claims.add(target_id)
            return None
        return holder

    def _keep(self, key: bytes, command: ProvisioningCommand, before: ManagedObject | None,
              outcome: Outcome, *, deferred: ProvisioningCommand | None) -> None:
        """Store the outcome's state, with the command if it waits for links (so the wait
        survives a restart); rewrite an unchanged state only when that part changed."""
        if outcome.changed_state:
            state = outcome.managed
        elif before is not None and before.deferred != deferred:
            state = before
        else:
            return
        if state is not None and state.deferred != deferred:
            state = msgspec.structs.replace(state, deferred=deferred)
        self._store(key, command, state)

    def _store(self, key: bytes, command: ProvisioningCommand, state: ManagedObject | None) -> None:
        if state is None:
            self.managed.pop(key, None)
            self.links.drop(command.app, command.source_id)
            return
        self.managed[key] = encode(state)
        if self.links.set(state):
            self._linked(state.app, state.source_id)

    async def _publish(self, key: bytes, command: ProvisioningCommand, outcome: Outcome) -> None:
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

    # -- app-level rules -------------------------------------------------------------------

    async def tick_guard(self) -> None:
        """Run removals that are due; report the ones a threshold just held."""
        if not self.restored.is_set():
            return
        now = datetime.now(UTC)
        for app, writer in self.writers.items():
            if not self.guard.guards(app):
                continue
            release = self.guard.tick(app, now)
            for staged in release.run:
                await self._schedule(Job(staged.key, staged.command, releasing=True))
            if release.newly_held:
                await self._held(writer, release.newly_held)
            metrics.STAGED_DELETES.labels(app=app).set(self.guard.waiting(app))
            await self._publish_tally(app, now)

    async def _publish_tally(self, app: str, now: datetime) -> None:
        """Tell the other writer replicas this one's removals: on change, and every few
        seconds while not zero (so a stopped replica's tally ages out)."""
        count = self.guard.tally(app)
        last = self._tallies.get(app)
        due = last is None or last[0] != count or (count and now - last[1] >= _TALLY_REPEAT)
        if self.control is None or not due or (last is None and count == 0):
            return
        self._tallies[app] = (count, now)
        tally = RemovalTally(app=app, replica=self.replica, count=count, at=now)
        await self.control.send(key=f"{app}/tally/{self.replica}".encode(), value=encode(tally))

    def on_tally(self, tally: RemovalTally) -> None:
        """Another replica's removals for an app (from the control topic)."""
        if tally.replica != self.replica:
            self.guard.peer(tally.app, tally.replica, tally.count, tally.at)

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
            await self._schedule(Job(key, command))

    def allow_deletes(self, control: AllowDeletes) -> None:
        log.info("removals allowed", app=control.app, before=control.before.isoformat(), by=control.by)
        self.guard.allow(control.app, control.before)

    async def on_restart(self, control: Restart) -> None:
        """A Restart from the control topic, acted on once per request.

        The control topic is compacted and read from its beginning at every start: a request
        older than this process was handled by the writer that ran before it (or issued
        while none ran; ingest's new full scan then still re-runs every object).
        """
        if control.app not in self.writers or control.request_id in self.restarts:
            return
        self.restarts.add(control.request_id)
        if control.at < self.started:
            return
        log.info("restart", app=control.app, reset_links=control.reset_links, by=control.by)
        await self.restart(control.app, reset_links=control.reset_links)

    async def learn(self, apps: list[str] | None = None, *, loaded: Any = None) -> None:
        """Read each app's target capabilities (all apps at start, at once; one at its
        restart) and publish them for sync details, with the mappings the target cannot
        take. Commands wait for this at start; a failure here only leaves them unknown."""
        try:
            await asyncio.gather(*(self._learn(name, loaded) for name in apps or list(self.writers)))
        except Exception:
            log.exception("reading the targets' capabilities failed; they stay unknown")
        finally:
            self._ready("capabilities")

    async def _learn(self, name: str, loaded: Any) -> None:
        writer = self.writers[name]
        found = await writer.learn()
        problems = [str(p) for p in check_mappings(writer.app, found, loaded)]
        for problem in problems:
            log.warning("the target does not declare what a mapping writes", app=name, problem=problem)
        if self.control is not None:
            record = AppCapabilities(app=name, capabilities=msgspec.to_builtins(found),
                                     problems=problems, at=datetime.now(UTC))
            await self.control.send(key=f"{name}/capabilities".encode(), value=encode(record))

    async def restart(self, app: str, *, reset_links: bool) -> None:
        """Clear the app's escrow, quarantine and deferrals (and links, if asked): Entra's
        "clear current state and restart synchronization", the writer's part."""
        dropped = self.escrow.forget_app(app)
        self._count_escrow()
        self.deferrals.forget_app(app)
        self.writers[app].client.quarantine.reset()
        for job in list(self.parked.values()):
            if job.running is not None and job.running.app == app:
                job.wake.set()  # try again now rather than after the backoff
        forgotten = self._forget_links(app) if reset_links else 0
        log.info("writer state of app cleared", app=app, escrowed=dropped, links=forgotten)
        self._spawn(self.learn([app]))

    def _forget_links(self, app: str) -> int:
        prefix = f"{app}/".encode()
        keys = [k for k in list(self.managed.keys()) if k.startswith(prefix)]
        for key in keys:
            self.managed.pop(key, None)
        self.links.forget_app(app)
        return len(keys)

    # -- quarantine ------------------------------------------------------------------------

    async def on_health(self, health: AppHealth) -> None:
        """An AppHealth read back from the control topic. One that says "quarantined" and
        predates this process was left by a writer that stopped while quarantined; this
        process starts with a closed record, so it says it is healthy again (else status
        would show the quarantine until the next one ends)."""
        writer = self.writers.get(health.app)
        if writer is None or not health.quarantined or health.at >= self.started:
            return
        if writer.client.quarantine.active or self.control is None:
            return
        now = datetime.now(UTC)
        healthy = AppHealth(app=health.app, quarantined=False, at=now)
        await self.control.send(key=health_key(health.app), value=encode(healthy))

    def _on_quarantine(self, event: QuarantineEvent) -> None:
        """The client's listener (synchronous): publish from a task of our own."""
        self._spawn(self._report_quarantine(event))

    async def _report_quarantine(self, event: QuarantineEvent) -> None:
        if event.quarantined:
            await self._error(event.app.encode(), quarantine_error(event))
        if self.control is not None:
            await self.control.send(key=health_key(event.app), value=encode(app_health(event)))

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*(w.aclose() for w in self.writers.values()))

    # -- decoding, gauges, full scans ------------------------------------------------------

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

    def count_managed(self) -> None:
        """Set ``scimflow_managed_objects`` from the partitions this writer owns now."""
        counts: dict[tuple[str, str], int] = dict.fromkeys(
            ((app, kind) for app in self.writers for kind in ("user", "group")), 0)
        ready: list[tuple[bytes, ProvisioningCommand]] = []
        for key, raw in list(self.managed.items()):
            state = _state.decode(raw)
            counts[(state.app, state.object_type)] = counts.get((state.app, state.object_type), 0) + 1
            if state.deferred is not None:
                ready.extend(self._restore_deferral(key, state.deferred))
        if ready:
            self._spawn(self._run_restored(ready))
        for (app, object_type), n in counts.items():
            metrics.MANAGED_OBJECTS.labels(app=app, object_type=object_type).set(n)
        self._count_escrow()
        deferred = self.deferrals.counts()
        for app in self.writers:
            metrics.DEFERRED_REFERENCES.labels(app=app).set(deferred.get(app, 0))

    def _restore_deferral(self, key: bytes,
                          deferred: ProvisioningCommand) -> list[tuple[bytes, ProvisioningCommand]]:
        """A wait for links found in the stored state (after a restart, or a partition that
        moved here): wait again, or run now if the links appeared meanwhile."""
        if self.deferrals.command(key) is not None or key in self.tails or self.escrow.get(key):
            return []  # already waiting here, about to run, or escrowed with a newer command
        missing = resolve(deferred, self.links).missing
        self.deferrals.defer(key, deferred, missing)
        return [] if missing else [(key, deferred)]

    async def _run_restored(self, ready: list[tuple[bytes, ProvisioningCommand]]) -> None:
        await self.restored.wait()
        for key, command in ready:
            if key not in self.tails:
                await self._schedule(Job(key, command))

    async def _discover(self, marker: CycleMarker) -> None:
        """A scan starts: list the app's target once, in the background; the scan's commands
        wait for the listing in their own jobs, so the consumer never blocks on it (a
        consumer that stops reading for long can have faust skip records)."""
        writer = self.writers.get(marker.app or "")
        if marker.phase != "start" or writer is None or self.paused.get(writer.app.name) is not None:
            return
        self._spawn(writer.discover(marker.cycle_id))

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
        # Through each object's chain, so a removal never overtakes a command still waiting.
        for key, state in gone:
            await self._schedule(Job(key, _absent(scan, state)))


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


def _escrowed(command: ProvisioningCommand, exc: TransientError, attempts: int,
              interval: float) -> ErrorRecord:
    # A failure of its own kind (e.g. a 409 no lookup explains) knows what to do about it.
    specific = type(exc) is not TransientError
    action = (exc.recommended_action if specific else
              "None if the target recovers; otherwise check its availability.")
    return error_record(
        "writer", "ObjectEscrowed",
        f"{attempts} attempts failed; the object is escrowed and retried every {interval:g}s "
        f"and with its next change. Last failure: {exc}",
        f"{action} `scimflow restart` clears escrowed objects.",
        attempts=attempts, app=command.app, object_type=command.object_type,
        source_id=command.source_id, change_id=command.change_id, cycle_id=command.cycle_id,
        target_status=exc.status,
    )


def _threshold_exceeded(app: str, reason: str) -> ErrorRecord:
    return error_record(
        "writer", "DeletionThresholdExceeded", reason,
        f"Check why so many objects left scope or the source; if intended, "
        f"run `scimflow allow-deletes {app}`. Nothing was removed.",
        app=app,
    )
