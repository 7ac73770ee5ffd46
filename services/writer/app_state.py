"""The writer's app-level rules: provisioning status Off/On, restart, accidental-deletion
prevention with the replicas' removal tallies, and quarantine health.

Per-object work runs through the :class:`~services.writer.scheduler.Scheduler`; these rules
sit around it, per application: Off keeps each object's latest command until On; the
deletion guard (``deletion_guard``) stages removals and holds them past the threshold,
counting every replica's removals (``RemovalTally`` on the control topic); a Restart
clears the app's escrow, quarantine and deferrals (and links, if asked).

What Off and the guard hold was acknowledged already, so it is kept in the ``held`` table
too (``held``) and reloaded from there after a restart or a rebalance (:meth:`AppState.reload_held`).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from schemas import ErrorRecord, ManagedObject, ProvisioningCommand
from schemas.codecs import decoder
from schemas.control import AllowDeletes, AppHealth, AppStatus, RemovalTally, Restart
from services.runtime import metrics
from services.runtime.kafka import partition_for
from services.runtime.records import error_record
from services.runtime.settings import Settings
from services.runtime.state import read
from services.scim.quarantine import QuarantineEvent
from services.writer.apply import Writer
from services.writer.chains import Job
from services.writer.deletion_guard import DeletionGuard, Staged
from services.writer.health import app_health, health_key, quarantine_error
from services.writer.held import HeldStore
from services.writer.links import Deferrals, LinkIndex
from services.writer.publish import Publisher
from services.writer.scheduler import Scheduler

__all__ = ["AppState"]

log = structlog.get_logger("scimflow.writer")

_state = decoder("writer.managed")

_TALLY_REPEAT = timedelta(seconds=5)
"""How often a replica repeats a non-zero removal tally (peers forget one after 15 s)."""


class AppState:
    """Per app: status On/Off, the deletion guard and its tallies, restarts, health."""

    def __init__(self, settings: Settings, writers: dict[str, Writer], managed: Any, *,
                 scheduler: Scheduler, publisher: Publisher, links: LinkIndex, deferrals: Deferrals,
                 restored: asyncio.Event, spawn: Callable[[Awaitable[None]], None],
                 learn: Callable[[list[str]], Awaitable[None]], held: Any = None) -> None:
        self.paused: dict[str, dict[bytes, ProvisioningCommand] | None] = {
            name: ({} if w.app.status == "off" else None) for name, w in writers.items()}
        """Per app: None while on; while off, the latest command of each object, to apply on resume."""
        self.guard = DeletionGuard({name: w.app.deletion_threshold for name, w in writers.items()},
                                   grace=settings.removal_grace)
        self.replica = uuid.uuid4().hex[:12]
        """This writer process among the replicas (the removal tallies it publishes)."""
        self._tallies: dict[str, tuple[int, datetime]] = {}
        """Per app: the tally this replica last published, and when."""
        self.started = datetime.now(UTC)
        self.restarts: set[str] = set()
        """request_ids of the Restart requests already handled by this process."""
        self.writers = writers
        self.managed = managed
        self.held = HeldStore(held)
        """What Off and the guard hold, durably: the in-memory ``paused`` and guard mirror it."""
        self._scheduler = scheduler
        self._publisher = publisher
        self._links = links
        self._deferrals = deferrals
        self._restored = restored
        self._spawn = spawn
        self._learn = learn
        """Reads an app's target capabilities again (after its restart)."""
        for writer in writers.values():
            writer.client.on_quarantine(self.on_quarantine)

    # -- versions of an app (live reload) --------------------------------------------------

    def add(self, writer: Writer) -> None:
        """A new app: its status from its definition, its own deletion guard."""
        app = writer.app
        self.paused[app.name] = {} if app.status == "off" else None
        self.guard.configure(app.name, app.deletion_threshold)
        writer.client.on_quarantine(self.on_quarantine)

    async def update(self, old: Writer, new: Writer) -> None:
        """A new version of an app: its threshold, and its status if the definition's
        changed (an operator's pause or resume from the control topic stands otherwise)."""
        name = new.app.name
        if new.client is not old.client:
            new.client.on_quarantine(self.on_quarantine)
        for staged in self.guard.configure(name, new.app.deletion_threshold):
            await self._scheduler.schedule(Job(staged.key, staged.command, releasing=True))
        if new.app.status != old.app.status:
            await self.set_status(AppStatus(app=name, status=new.app.status, by="config",
                                            at=datetime.now(UTC)))

    def remove(self, name: str) -> None:
        """A removed app: what waited for On and its staged removals are dropped (never
        written); its tallies stop."""
        waiting = self.paused.pop(name, None)
        staged = self.guard.forget(name)
        self.held.forget_app(name)
        self._tallies.pop(name, None)
        log.info("app removed from the writer", app=name, paused=len(waiting or {}), staged=staged)

    # -- status On/Off ---------------------------------------------------------------------

    def is_off(self, app: str) -> bool:
        return self.paused.get(app) is not None

    def hold_while_off(self, key: bytes, command: ProvisioningCommand) -> bool:
        """Off: nothing reaches the target; the latest desired state waits for On."""
        waiting = self.paused.get(command.app)
        if waiting is None:
            return False
        waiting[key] = command
        self.guard.drop(command.app, key)
        self.held.put(key, command, "off", datetime.now(UTC))
        return True

    def applied(self, key: bytes) -> None:
        """The object's command ran (or failed for good): nothing of it is held any more."""
        self.held.drop(key)

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
            await self._scheduler.schedule(Job(key, command))

    # -- accidental-deletion prevention ----------------------------------------------------

    async def stage_removal(self, key: bytes, command: ProvisioningCommand,
                            state: ManagedObject | None, writer: Writer) -> bool:
        """While the guard watches the app: a removal is staged (True: not applied now), and
        any other command supersedes a removal the object had waiting."""
        if not self.guard.guards(command.app):
            return False
        before = self.held.get(key)
        if self.guard.drop(command.app, key):  # this command supersedes a waiting removal
            # Safe to forget now: this command's own offset is acknowledged only once it ran.
            self.held.drop(key)
        # An upsert never decides a removal (decide._upsert): not decided twice per command.
        if command.operation == "upsert":
            return False
        if writer.preview(command, state).action not in ("disable", "delete"):
            return False
        if before is not None and before.reason == "removal" and before.reported:
            # A removal held and reported already: redelivered after a restart (held, then
            # acknowledged but not committed yet; it may come before or after the held table
            # was reloaded), or the same removal sent again. Held as it was, at its first
            # time, with the newest command, and not reported twice.
            self.guard.restore(Staged(key, command, before.held_at), held=True, now=datetime.now(UTC))
            self.held.put(key, command, "removal", before.held_at, reported=True)
            return True
        staged = Staged(key, command, datetime.now(UTC))
        held = self.guard.stage(staged)
        self.held.put(key, command, "removal", staged.at, reported=held)
        if held:
            reason = (f"removals of {command.app} are held by the deletion threshold; "
                      f"`scimflow allow-deletes {command.app}` releases them")
            await self._report_staged(writer, staged, reason)
        return True

    # -- held commands after a restart or a rebalance --------------------------------------

    async def reload_held(self, owns: Callable[[bytes], bool] | None = None) -> int:
        """Take up what the held table has and memory does not: after a restart, or for a
        partition that moved here. Off-held commands wait for On again (or run, if the app
        is On now); removals are staged again at their first time, held again if the
        threshold held them (their ``stagedDelete`` is not reported twice). Objects with a
        job scheduled or running, or escrowed, are left alone (that job or escrow has the
        command). ``owns``: whether a key's partition is this replica's (a table can hold a
        standby copy of others). Returns how many were taken up."""
        if not self._restored.is_set():
            return 0
        keys = [k for k in self.held.held_keys()
                if (owns is None or owns(k)) and not self._knows(k)]
        taken, unreported = 0, list[Staged]()
        for key, entry in self.held.entries(keys):
            command = entry.command
            if command.app not in self.writers or self._scheduler.escrow.get(key) is not None:
                continue
            taken += 1
            if entry.reason == "off" or not self.guard.guards(command.app):
                await self._resume_held(key, command, releasing=entry.reason == "removal")
                continue
            staged = Staged(key, command, entry.held_at)
            self.guard.restore(staged, held=entry.reported, now=datetime.now(UTC))
            if not entry.reported:
                unreported.append(staged)
        if taken:
            log.info("held commands reloaded", count=taken)
        await self._report_unreported(unreported)
        return taken

    async def _report_unreported(self, restored: list[Staged]) -> None:
        """Removals that came back to an app held again but were never reported (the writer
        stopped between holding them and reporting them): reported now."""
        for app, writer in self.writers.items():
            mine = [s for s in restored if s.command.app == app]
            if mine and self.guard.held(app):
                await self._held(writer, mine)

    def forget_partitions(self, partitions: set[int], count: int) -> int:
        """Partitions of the commands topic (of ``count``) moved away from this replica: what
        Off and the guard hold of them is forgotten here (never run by this replica); their
        held table moved with them, and the new owner takes them up. Returns how many."""
        if not partitions:
            return 0
        def gone(key: bytes) -> bool:
            return partition_for(key, count) in partitions

        forgotten = 0
        for waiting in filter(None, self.paused.values()):
            for key in [k for k in waiting if gone(k)]:
                del waiting[key]
                forgotten += 1
        for app in self.writers:
            forgotten += self.guard.forget_keys(app, gone)
        if forgotten:
            log.info("held commands of revoked partitions forgotten", count=forgotten)
        return forgotten

    def _knows(self, key: bytes) -> bool:
        if self._scheduler.busy(key):
            return True
        return any(key in (waiting or {}) for waiting in self.paused.values()) or any(
            self.guard.staged(app, key) for app in self.writers)

    async def _resume_held(self, key: bytes, command: ProvisioningCommand, *, releasing: bool) -> None:
        waiting = self.paused.get(command.app)
        if waiting is not None:
            waiting[key] = command
            return
        await self._scheduler.schedule(Job(key, command, releasing=releasing))

    async def tick_guard(self) -> None:
        """Run removals that are due; report the ones a threshold just held."""
        if not self._restored.is_set():
            return
        now = datetime.now(UTC)
        for app, writer in self.writers.items():
            if not self.guard.guards(app):
                continue
            release = self.guard.tick(app, now)
            for staged in release.run:
                await self._scheduler.schedule(Job(staged.key, staged.command, releasing=True))
            if release.newly_held:
                await self._held(writer, release.newly_held)
            metrics.STAGED_DELETES.labels(app=app).set(self.guard.waiting(app))
            await self._publish_tally(app, now)

    async def _publish_tally(self, app: str, now: datetime) -> None:
        """Tell the other writer replicas this one's removals: on change, and every few
        seconds while not zero (so the others can tell a stopped replica); and a zero for
        each stopped replica whose count a finished cycle ended (so no later start reads it)."""
        for replica in self.guard.settle(app):
            if self._publisher.has_control:
                log.info("removal tally of a stopped writer replica settled", app=app, replica=replica)
                settled = RemovalTally(app=app, replica=replica, count=0, at=now)
                await self._publisher.control(f"{app}/tally/{replica}".encode(), settled)
        count = self.guard.tally(app)
        last = self._tallies.get(app)
        due = last is None or last[0] != count or (count and now - last[1] >= _TALLY_REPEAT)
        if not self._publisher.has_control or not due or (last is None and count == 0):
            return
        self._tallies[app] = (count, now)
        tally = RemovalTally(app=app, replica=self.replica, count=count, at=now)
        await self._publisher.control(f"{app}/tally/{self.replica}".encode(), tally)

    def on_tally(self, tally: RemovalTally) -> None:
        """Another replica's removals for an app (from the control topic, read from its
        start: the tallies of replicas that stopped before this one started count too, until
        the cycle ends; a writer restarted after ``kill -9`` is one of them)."""
        if tally.replica != self.replica:
            self.guard.peer(tally.app, tally.replica, tally.count, tally.at)

    async def _held(self, writer: Writer, held: list[Staged]) -> None:
        app = writer.app
        reason = (f"{len(held)} removals exceed the deletion threshold ({app.deletion_threshold}) "
                  f"of this cycle; held until `scimflow allow-deletes {app.name}`")
        log.warning("removals held", app=app.name, count=len(held), threshold=app.deletion_threshold)
        # Held again after a restart: what was reported before the restart is not reported twice.
        fresh = [s for s in held if not ((entry := self.held.get(s.key)) and entry.reported)]
        if not fresh:
            return
        await self._publisher.error(app.name.encode(), _threshold_exceeded(app.name, reason))
        for staged in fresh:
            await self._report_staged(writer, staged, reason)
            self.held.reported(staged.key)

    async def _report_staged(self, writer: Writer, staged: Staged, reason: str) -> None:
        raw = read(self.managed, staged.key)
        record = writer.staged(staged.command, _state.decode(raw) if raw else None, reason)
        await self._publisher.activity(staged.key, record, staged.command)

    def allow_deletes(self, control: AllowDeletes) -> None:
        log.info("removals allowed", app=control.app, before=control.before.isoformat(), by=control.by)
        self.guard.allow(control.app, control.before)

    # -- restart ---------------------------------------------------------------------------

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

    async def restart(self, app: str, *, reset_links: bool) -> None:
        """Clear the app's escrow, quarantine and deferrals (and links, if asked): Entra's
        "clear current state and restart synchronization", the writer's part."""
        dropped = self._scheduler.forget_escrow(app)
        self._deferrals.forget_app(app)
        self.writers[app].client.quarantine.reset()
        self._scheduler.wake(app)  # try again now rather than after the backoff
        forgotten = self._forget_links(app) if reset_links else 0
        log.info("writer state of app cleared", app=app, escrowed=dropped, links=forgotten)
        self._spawn(self._learn([app]))

    def _forget_links(self, app: str) -> int:
        prefix = f"{app}/".encode()
        keys = [k for k in list(self.managed.keys()) if k.startswith(prefix)]
        for key in keys:
            self.managed.pop(key, None)
        self._links.forget_app(app)
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
        if writer.client.quarantine.active or not self._publisher.has_control:
            return
        now = datetime.now(UTC)
        healthy = AppHealth(app=health.app, quarantined=False, at=now)
        await self._publisher.control(health_key(health.app), healthy)

    def on_quarantine(self, event: QuarantineEvent) -> None:
        """The client's listener (synchronous): publish from a task of our own."""
        self._spawn(self._report_quarantine(event))

    async def _report_quarantine(self, event: QuarantineEvent) -> None:
        if event.quarantined:
            await self._publisher.error(event.app.encode(), quarantine_error(event))
        await self._publisher.control(health_key(event.app), app_health(event))


def _threshold_exceeded(app: str, reason: str) -> ErrorRecord:
    return error_record(
        "writer", "DeletionThresholdExceeded", reason,
        f"Check why so many objects left scope or the source; if intended, "
        f"run `scimflow allow-deletes {app}`. Nothing was removed.",
        app=app,
    )
