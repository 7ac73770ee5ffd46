"""The writer's consume loop: consume -> decide -> call the target -> record.

Each command is scheduled in its object's chain (``scheduler``: objects concurrently, each
object's commands in order, parking, supersede, escrow); the app-level rules around it
(status Off/On, restart, deletion guard, quarantine health) live in ``app_state``; one
command against the target is ``apply``.

References (``manager``) and group members resolve through the link index (``links``),
fed by the managed-state changelog of every partition; an object that refers to one not
linked yet is written without it and runs again through its chain when the link appears.
The wait is kept in the object's managed state too (``deferred``), so it survives restarts.

Acks are manual and in offset order per partition (``chains``): an offset is acknowledged
only when it and every offset before it on its partition are done. (faust commits the first
run of consecutive acked offsets, so acking out of order could commit past a command still
in flight; a crash would then lose it.) A crash replays whatever was not acknowledged, and
every write is idempotent: state compare, then lookup-before-create.

Full scans find deletions here (``cycles``): the objects a complete scan did not mention.

Applications are live (``set_application``, ``remove_application``): a new version of one
app replaces that app's :class:`Writer` between two of its commands and touches no other
app. Jobs already running finish with the version they started with; a replaced client is
closed once they are done.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Hashable, Iterable
from datetime import UTC, datetime
from typing import Any

import msgspec
import structlog

from schemas import CycleMarker, ManagedObject, ProvisioningCommand
from schemas.codecs import decoder, encode
from schemas.control import AppCapabilities
from services.runtime import metrics
from services.runtime.config import Application, LoadedConfig
from services.runtime.kafka import partition_for
from services.runtime.records import MalformedError, decode_message, malformed_message
from services.runtime.settings import Settings
from services.runtime.state import partition_items, read
from services.scim.capabilities import Capabilities, check_mappings
from services.scim.client import client_for
from services.writer.app_state import AppState
from services.writer.apply import Outcome, Writer
from services.writer.chains import Ack, InOrderAcks, Job
from services.writer.cycles import CycleTracker, FinishedScan
from services.writer.links import Deferrals, LinkIndex, resolve
from services.writer.publish import Publisher
from services.writer.scheduler import Scheduler

__all__ = ["Ack", "CommandProcessor"]

log = structlog.get_logger("scimflow.writer")

_BLOCKED_ACKS = 30.0
"""Seconds a partition's acknowledgements wait behind one event before it is reported."""

_STOP_WAIT = 5.0
"""Seconds a stopping writer waits for its target calls in flight before closing clients."""

_commands = decoder("provisioning.commands")
_state = decoder("writer.managed")


class _Counted(msgspec.Struct):
    """What the managed-objects gauge reads of a state; the rest is skipped undecoded."""

    app: str
    object_type: str
    deferred: msgspec.Raw = msgspec.Raw(b"null")
    """Its JSON undecoded: ``null`` unless a command waits for links."""


_counted = msgspec.json.Decoder(_Counted)

_COUNT_SHARE = 20.0
"""A managed-objects count waits this many times as long as the last one took before it
runs again: it walks the whole table without yielding (a million objects in RocksDB take
seconds), so at most ~5% of the event loop goes to the gauge, however big the table."""

_RERUN_DELAY = 0.2
"""Seconds to gather links that appear together before re-running the objects waiting for
them (a group whose members are being created runs once per batch, not once per member)."""


class CommandProcessor:
    """Applies commands: objects concurrently, each object's commands in order."""

    def __init__(self, settings: Settings, writers: dict[str, Writer], managed: Any, *,
                 activity: Any, errors: Any, escrow: Any = None, control: Any = None,
                 restoring: Iterable[str] = (), loaded: LoadedConfig | None = None,
                 held: Any = None) -> None:
        self.settings = settings
        self.writers = writers
        """Per app, its writer for the version in effect (replaced by ``set_application``)."""
        self._loaded = dict.fromkeys(writers, loaded) if loaded is not None else {}
        """Per app, the config its version came from (its secrets, its file and lines)."""
        self._removed: set[str] = set()
        """Apps removed while this process ran: their commands still in the topic are skipped."""
        self._holding: Counter[Writer] = Counter()
        """Jobs inside each writer right now: a replaced client closes once none are left."""
        self._learning = False
        """Whether a capabilities read started (a new app's target is read at once after)."""
        self._retiring: dict[Writer, asyncio.Event] = {}
        """Replaced writers, and the event set when their last job is done."""
        self.managed = managed
        self.publisher = Publisher(activity=activity, errors=errors, control=control)
        self.links = LinkIndex()
        self.deferrals = Deferrals()
        self.cycles = CycleTracker()
        self.acks = InOrderAcks()
        self.restored = asyncio.Event()
        """Set once the link index holds every link the changelog had at start (before that
        a group would see its members as unlinked and remove them, a manager as missing)
        and each target's capabilities were read (how to match, PATCH or PUT, bulk)."""
        self._restoring = set(restoring)
        """What is still being restored: ``links`` (:meth:`links_restored`), ``capabilities``
        (:meth:`learn`), ``config`` (:meth:`config_read`) and ``control`` (:meth:`control_read`),
        as the worker asks for them."""
        if not self._restoring:
            self.restored.set()
        self._reruns: set[bytes] = set()
        self._claims: dict[tuple[str, str], str] = {}
        """(app, target id) -> source id of the job that is linking it right now."""
        self._background: set[asyncio.Task[None]] = set()
        self._next_count = 0.0
        """When (``time.monotonic``) :meth:`count_managed` may walk the table again."""
        self._changes = 0
        """Records of the managed changelog seen (:meth:`on_changelog`): what a count is of."""
        self._counted: Hashable = None
        """What the last count was of: the changes seen, the apps, the caller's ``epoch``."""
        self._gained: dict[int, datetime] = {}
        """When each partition of the commands topic was last assigned to this replica: a
        listing taken before that does not know what the previous owner wrote since."""
        self.scheduler = Scheduler(settings, writers, apply=self._apply, publisher=self.publisher,
                                   escrow=escrow, deferrals=self.deferrals, acks=self.acks,
                                   restored=self.restored, is_off=self._is_off)
        self.app_state = AppState(settings, writers, managed, scheduler=self.scheduler,
                                  publisher=self.publisher, links=self.links, deferrals=self.deferrals,
                                  restored=self.restored, spawn=self._spawn, learn=self.learn,
                                  held=held)

    def _is_off(self, app: str) -> bool:
        return self.app_state.is_off(app)

    def links_restored(self) -> None:
        """The changelog follower reached the end offsets of its start."""
        self._ready("links")

    def config_read(self) -> None:
        """The config topic was read at start: every app runs its current version."""
        self._ready("config")

    def control_read(self) -> None:
        """The control topic was read at start: an app an operator turned Off is Off before
        the first write (a held command reloaded then would otherwise run)."""
        self._ready("control")

    def _ready(self, part: str) -> None:
        self._restoring.discard(part)
        if not self._restoring and not self.restored.is_set():
            log.info("writer state restored; applying commands", links=len(self.links))
            self.restored.set()

    async def submit(self, event: Any, ack: Ack) -> None:
        """Take one event; returns once it is scheduled (or handled, for frames). No job
        runs before the writer's state is restored (:meth:`links_restored`, :meth:`learn`)."""
        ticket = self.acks.track(event, ack)
        message = await self._decode(event)
        partition = event.message.partition
        if isinstance(message, CycleMarker) and message.app is not None and message.app not in self.writers:
            message = None  # a frame of a removed app's scan: nothing to find deleted
        if isinstance(message, ProvisioningCommand):
            key = event.key or b""
            self.cycles.saw(partition, message.app, message.cycle_id, key)
            generation = getattr(event.message, "generation_id", None)
            job = Job(key, message, ticket, ack, generation=generation, partition=partition)
            if self._settled(job, message):
                await self.acks.done(ticket, ack)  # nothing to do, nothing waits for it
                return
            await self.scheduler.schedule(job)
            return
        if isinstance(message, CycleMarker):
            # A frame waits for every command before it, so a scan's end means its commands ran
            # (or wait for a retry: those are in the scan's ``seen`` set all the same).
            await self.scheduler.drain()
            await self._on_marker(partition, message)
            await self._discover(message)
        await self.acks.done(ticket, ack)

    def _settled(self, job: Job, command: ProvisioningCommand) -> bool:
        """Whether ``command`` would change nothing (:meth:`Writer.settled`) and nothing of
        its object waits here: then it is done without a job (task, window slot, turn), as
        the million unchanged objects of a full scan are. Any doubt: False, and it runs as a
        job, where everything below is decided the same way."""
        writer = self.writers.get(command.app)
        key = job.key
        if (writer is None or not self.restored.is_set() or self.scheduler.busy(key)
                or self.scheduler.elsewhere(job) or self._is_off(command.app)
                or writer.client.quarantine.active or self.deferrals.command(key) is not None
                or self.app_state.guard.staged(command.app, key)
                or self.app_state.held.get(key) is not None
                or self.scheduler.escrow.get(key) is not None):
            return False
        raw = read(self.managed, key)
        if not raw:
            return False
        state = _state.decode(raw)
        if state.deferred is not None:
            return False
        resolved = resolve(command, self.links)
        return not resolved.missing and writer.settled(resolved.command, state,
                                                       listed_after=self.listed_after(key))

    # -- rebalances ------------------------------------------------------------------------

    async def partitions_revoked(self, partitions: set[int], generation: int | None = None) -> int:
        """Partitions of the commands topic leave this replica (for now): their jobs stop
        and nothing more of them is acknowledged here; the target calls in flight finish
        first (bounded), so the next owner never writes an object at the same time as this
        replica. Returns how many jobs were dropped."""
        count = self.settings.partitions
        kept = self.scheduler.owns

        def owns(key: bytes) -> bool:
            return partition_for(key, count) not in partitions and (kept is None or kept(key))

        self.scheduler.owns, self.scheduler.owns_generation = owns, generation
        if self.scheduler.owned is not None:
            self.scheduler.owned -= partitions
        self.acks.forget(partitions)
        dropped = await self.scheduler.release(owns)
        self.app_state.forget_partitions(partitions, count)
        if dropped:
            log.info("partitions revoked; their queued commands are left to the next owner",
                     partitions=sorted(partitions), dropped=dropped)
        return dropped

    def partitions_assigned(self, partitions: set[int], generation: int | None = None) -> None:
        """The partitions of the commands topic this replica owns from now on (from the
        consumer-group ``generation``)."""
        count, now = self.settings.partitions, datetime.now(UTC)
        for partition in partitions:
            self._gained.setdefault(partition, now)
        for partition in set(self._gained) - partitions:
            del self._gained[partition]  # gained again later: a new time then
        owned = frozenset(partitions)
        self.scheduler.owns = lambda key: partition_for(key, count) in owned
        self.scheduler.owned = owned
        self.scheduler.owns_generation = generation

    def listed_after(self, key: bytes) -> datetime | None:
        """A listing of the target must be newer than this to tell whether the object
        exists: its partition came here then, and another replica may have written it."""
        return self._gained.get(partition_for(key, self.settings.partitions))

    # -- references ------------------------------------------------------------------------

    def on_changelog(self, key: bytes | None, value: bytes | None) -> None:
        """One record of the managed-state changelog (any partition): keep the links."""
        self._changes += 1
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
            await self.scheduler.schedule(Job(key, None))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- one command -----------------------------------------------------------------------

    async def _apply(self, key: bytes, command: ProvisioningCommand,
                     releasing: bool) -> Outcome | None:
        if self.app_state.hold_while_off(key, command):
            return None
        writer = self.writers.get(command.app)
        if writer is None:
            self._skip_removed(command.app)
            return None
        self._holding[writer] += 1
        try:
            return await self._apply_with(writer, key, command, releasing)
        finally:
            self._holding[writer] -= 1
            if self._holding[writer] == 0 and writer in self._retiring:
                self._retiring[writer].set()

    async def _apply_with(self, writer: Writer, key: bytes, command: ProvisioningCommand,
                          releasing: bool) -> Outcome | None:
        raw = read(self.managed, key)
        state = _state.decode(raw) if raw else None
        if not releasing and await self.app_state.stage_removal(key, command, state, writer):
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
                                          claim=lambda t: self._claim(command, t, claims),
                                          listed_after=self.listed_after(key))
            if not writer.app.dry_run:
                self._keep(key, command, state, outcome, deferred=command if resolved.missing else None)
            if outcome.retry is None:
                self.app_state.applied(key)  # a retry keeps it held: a restart runs it again
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
            log.info("outcome", app=command.app, source_id=command.source_id,
                     action=outcome.activity.action, status=outcome.activity.status,
                     target_id=outcome.activity.target_id, change_id=command.change_id)
            await self.publisher.activity(key, outcome.activity, command)
        if outcome.error is not None:
            await self.publisher.error(key, outcome.error)

    async def learn(self, apps: list[str] | None = None, *, loaded: Any = None) -> None:
        """Read each app's target capabilities (all apps at start, at once; one at its
        restart) and publish them for sync details, with the mappings the target cannot
        take. Commands wait for this at start; a failure here only leaves them unknown."""
        self._learning = True
        try:
            await asyncio.gather(*(self._learn(name, loaded) for name in apps or list(self.writers)))
        except Exception:
            log.exception("reading the targets' capabilities failed; they stay unknown")
        finally:
            self._ready("capabilities")

    async def _learn(self, name: str, loaded: Any) -> None:
        writer = self.writers[name]
        await self._check(name, await writer.learn(), self._loaded.get(name, loaded))

    async def _check(self, name: str, found: Capabilities, loaded: LoadedConfig | None) -> None:
        """Publish what the target declares for the app, with the mappings it cannot take."""
        writer = self.writers.get(name)
        if writer is None:
            return
        problems = [str(p) for p in check_mappings(writer.app, found, loaded)]
        for problem in problems:
            log.warning("the target does not declare what a mapping writes", app=name, problem=problem)
        if self.publisher.has_control:
            record = AppCapabilities(app=name, capabilities=msgspec.to_builtins(found),
                                     problems=problems, at=datetime.now(UTC))
            await self.publisher.control(f"{name}/capabilities".encode(), record)

    async def close(self) -> None:
        # A stop (SIGTERM, a rolling restart, a scale-down) first lets the target calls in
        # flight finish and drops the jobs not started, none acknowledged: the partitions'
        # next owner replays them. Closing the clients under running calls would report
        # each as a failed command, on the error topic, that was no failure at all.
        await self.scheduler.release(lambda _key: False, wait=_STOP_WAIT, why="a stopping writer")
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*(w.aclose() for w in self.writers.values()))

    # -- versions of an application (live reload) ------------------------------------------

    async def set_application(self, app: Application, loaded: LoadedConfig) -> None:
        """Run ``app`` (a new app, or a new version of one) from now on; no other app is
        touched. Raises (and changes nothing) if its client cannot be built: the caller
        keeps the last good version."""
        old = self.writers.get(app.name)
        if old is not None and _same_target(old.app, self._loaded.get(app.name), app, loaded):
            new = old.reconfigured(app)
        else:
            new = Writer(app, client_for(app, loaded, self.settings))
        self.writers[app.name] = new
        self._loaded[app.name] = loaded
        self._removed.discard(app.name)
        if old is None:
            self.app_state.add(new)
        else:
            await self.app_state.update(old, new)
        log.info("app version in effect in the writer", app=app.name, new=old is None,
                 same_target=old is not None and new.client is old.client)
        self._follow_version(old, new)

    def _follow_version(self, old: Writer | None, new: Writer) -> None:
        """Read the capabilities of a new target (unless the start-up read is still to
        come); close the replaced client once its jobs are done; check the new mappings
        against capabilities already known."""
        name = new.app.name
        if old is not None and new.client is old.client:
            if new.capabilities is not None:
                self._spawn(self._check(name, new.capabilities, self._loaded.get(name)))
            return
        if old is not None:
            self._spawn(self._retire(old))
        if "capabilities" not in self._restoring or self._learning:
            self._spawn(self.learn([name]))  # else the start-up read will include it

    async def remove_application(self, name: str) -> None:
        """Stop writing for ``name``: commands of it still in the topic (or queued, parked,
        escrowed, staged) are skipped and counted, jobs already writing finish, its client
        closes. Its managed state stays in the table and its target accounts are left as
        they are: adding the app again resumes with its links."""
        writer = self.writers.pop(name, None)
        if writer is None:
            return
        self._removed.add(name)
        self._loaded.pop(name, None)
        self.app_state.remove(name)
        self.cycles.forget_app(name)
        self.scheduler.wake(name)  # parked jobs end now rather than after their backoff
        self._spawn(self._retire(writer))
        log.info("app removed from the writer; its target accounts are left as they are", app=name)

    async def _retire(self, writer: Writer) -> None:
        """Close a replaced writer's client once no job is inside it any more."""
        idle = self._retiring[writer] = asyncio.Event()
        if self._holding[writer] == 0:
            idle.set()
        await idle.wait()
        del self._retiring[writer], self._holding[writer]
        await writer.listings_done()
        await writer.aclose()
        log.info("replaced target client closed", app=writer.app.name)

    def _skip_removed(self, app: str) -> None:
        """A command of an app that is not (or no longer) configured here. Not an error
        record: removing the app was the operator's intent, and a full scan's worth of
        records saying so would bury the errors that need acting on; the metric counts them."""
        metrics.REMOVED_APP_COMMANDS.labels(app=app).inc()

    # -- decoding, gauges, full scans ------------------------------------------------------

    async def _decode(self, event: Any) -> ProvisioningCommand | CycleMarker | None:
        key: bytes = event.key or b""
        try:
            message: ProvisioningCommand | CycleMarker = decode_message(_commands, event.value)
        except MalformedError as exc:
            metrics.MALFORMED_MESSAGES.labels(service="writer", topic="provisioning.commands").inc()
            await self.publisher.error(key, malformed_message("writer", event, str(exc)))
            return None
        if isinstance(message, ProvisioningCommand) and message.app in self._removed:
            self._skip_removed(message.app)
            return None
        if isinstance(message, ProvisioningCommand) and message.app not in self.writers:
            reason = f"unknown application {message.app!r}"
            await self.publisher.error(key, malformed_message("writer", event, reason))
            return None
        return message

    def report_blocked_acks(self, older_than: float = _BLOCKED_ACKS) -> None:
        """Warn, once per event, about a partition whose acknowledgements (and so its
        commits) have waited ``older_than`` seconds behind one unfinished event, with what
        its object's jobs are doing: the sign of a command stuck, or lost by the writer."""
        for ticket in self.acks.blocking(older_than):
            if ticket.reported:
                continue
            ticket.reported = True
            message, key = ticket.event.message, ticket.event.key or b""
            jobs = [job for job in self.scheduler.jobs.values() if job.key == key]
            running = any(job.ticket is ticket and not job.dropped for job in jobs)
            report = log.info if running else log.warning  # a parked job may wait minutes
            report("a partition's commits wait behind one event", partition=message.partition,
                        offset=message.offset, key=key.decode(errors="replace"),
                        generation=getattr(message, "generation_id", None),
                        seconds=round(time.monotonic() - ticket.since),
                        jobs=[{"own": job.ticket is ticket, "parked": job.parked, "applying": job.applying,
                               "dropped": job.dropped, "done": job.done} for job in jobs],
                        parked=key in self.scheduler.parked)

    def count_managed(self, epoch: Hashable = None) -> None:
        """Set ``scimflow_managed_objects`` from the partitions this writer owns now; skipped
        until ``_COUNT_SHARE`` times the last count's duration has passed since it ended,
        and while nothing it counts can have changed: no record of the managed changelog
        (every write of the table is one), no app added or removed, and the same ``epoch``
        (the caller's word for what else changes the table under it: the partitions owned,
        their recovery). A full scan that changes nothing walks a million objects once,
        not every few seconds."""
        counted = (self._changes, tuple(self.writers), epoch)
        started = time.monotonic()
        if started < self._next_count:
            return
        if counted == self._counted:
            self._count_side()
            return
        self._count_managed()
        self._counted = counted
        ended = time.monotonic()
        self._next_count = ended + (ended - started) * _COUNT_SHARE

    def _count_managed(self) -> None:
        counts: dict[tuple[str, str], int] = dict.fromkeys(
            ((app, kind) for app in self.writers for kind in ("user", "group")), 0)
        ready: list[tuple[bytes, ProvisioningCommand]] = []
        # Streamed, not listed, and decoded only as far as the count needs: this runs every
        # few seconds over every object this replica owns (a million, in RocksDB). Nothing
        # in the loop awaits, so the table does not change under it.
        for key, raw in self.managed.items():
            state = _counted.decode(raw)
            counts[(state.app, state.object_type)] = counts.get((state.app, state.object_type), 0) + 1
            if bytes(state.deferred) != b"null":
                deferred = _state.decode(raw).deferred
                if deferred is not None:
                    ready.extend(self._restore_deferral(key, deferred))
        if ready:
            self._spawn(self._run_restored(ready))
        for (app, object_type), n in counts.items():
            metrics.MANAGED_OBJECTS.labels(app=app, object_type=object_type).set(n)
        self._count_side()

    def _count_side(self) -> None:
        """The gauges of what waits beside the table (small, counted every time)."""
        self.scheduler.count_escrow()
        deferred = self.deferrals.counts()
        for app in self.writers:
            metrics.DEFERRED_REFERENCES.labels(app=app).set(deferred.get(app, 0))

    def _restore_deferral(self, key: bytes,
                          deferred: ProvisioningCommand) -> list[tuple[bytes, ProvisioningCommand]]:
        """A wait for links found in the stored state (after a restart, or a partition that
        moved here): wait again, or run now if the links appeared meanwhile."""
        if (self.deferrals.command(key) is not None or self.scheduler.busy(key)
                or self.scheduler.escrow.get(key)):
            return []  # already waiting here, about to run, or escrowed with a newer command
        missing = resolve(deferred, self.links).missing
        self.deferrals.defer(key, deferred, missing)
        return [] if missing else [(key, deferred)]

    async def _run_restored(self, ready: list[tuple[bytes, ProvisioningCommand]]) -> None:
        await self.restored.wait()
        for key, command in ready:
            if not self.scheduler.busy(key):
                await self.scheduler.schedule(Job(key, command))

    async def _discover(self, marker: CycleMarker) -> None:
        """A scan starts: list the app's target once, in the background; the scan's commands
        wait for the listing in their own jobs, so the consumer never blocks on it (a
        consumer that stops reading for long can have faust skip records)."""
        writer = self.writers.get(marker.app or "")
        if marker.phase != "start" or writer is None or self.app_state.is_off(writer.app.name):
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
        gone = self._absent(scan)
        log.info("full scan finished", app=scan.app, cycle_id=scan.cycle_id,
                 partition=scan.partition, seen=len(scan.seen), absent=len(gone))
        self.app_state.guard.cycle_finished(scan.app)
        # Through each object's chain, so a removal never overtakes a command still waiting.
        for key, state in gone:
            await self.scheduler.schedule(Job(key, _absent(scan, state)))


    def _absent(self, scan: FinishedScan) -> list[tuple[bytes, ManagedObject]]:
        """The managed objects of ``scan``'s app and partition that it did not mention.

        Streamed, not copied: a list of the table's items was a million keys and values in
        memory at once, per partition of every scan. Cheapest test first; only the few
        absent objects are decoded. Nothing here awaits, so the table does not change under it.
        """
        prefix, seen, gone = f"{scan.app}/".encode(), scan.seen, []
        for key, raw in partition_items(self.managed, scan.partition, self.settings.partitions):
            if key in seen or not key.startswith(prefix):
                continue
            state = _state.decode(raw)
            if state.created_at < scan.started:
                gone.append((key, state))
        return gone


def _same_target(old: Application, old_loaded: LoadedConfig | None, new: Application,
                 new_loaded: LoadedConfig) -> bool:
    """Whether a new version of an app reaches its target exactly as the old one did: the
    same target settings and the same credentials (a rotated ``file:`` secret is a change).
    Compared in memory only; a credential never leaves this function."""
    if old.target != new.target:
        return False
    if old_loaded is None:
        return True  # the writer was built without its config: same references, same values
    return _credentials(old, old_loaded) == _credentials(new, new_loaded)


def _credentials(app: Application, loaded: LoadedConfig) -> tuple[str, ...]:
    target = app.target
    refs = [target.token] if target.token is not None else []
    if target.oauth2 is not None:
        refs.append(target.oauth2.client_secret)
    return tuple(loaded.secret(ref).reveal() for ref in refs)


def _absent(scan: FinishedScan, state: ManagedObject) -> ProvisioningCommand:
    return ProvisioningCommand(
        app=state.app, object_type=state.object_type, source=scan.source, source_id=state.source_id,
        operation="delete", display_name=state.display_name, cycle_id=scan.cycle_id,
        change_id=f"{scan.cycle_id}/absent", observed_at=datetime.now(UTC),
        reason=f"absent from the completed full scan {scan.cycle_id}: deleted in source",
    )

