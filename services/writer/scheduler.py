"""Per-object chains of the writer: scheduling, parking, supersede and escrow timers.

Commands for different objects run concurrently (up to ``writer_batch`` commands in
flight; the SCIM client caps each app's concurrent calls and rate) while commands for the
same object run one after another, in offset order: each object has a *chain* of jobs
(``chains``).

Retries without head-of-line blocking: when the client gives up on a transient failure,
the object's job *parks* (``retry.retry_delay``: backoff, jitter, ``Retry-After`` as a
floor) without a window slot, so other objects of its partition go on. It stays at the
head of its object's chain, so nothing newer for the object overtakes it; a newer command
for the object *supersedes* it instead (commands carry the whole desired state, so the
newer one is all that needs writing, and it need not wait out the backoff). After
``retries.escrow_after`` failures the object is escrowed (``escrow``): reported once,
kept in a compacted table, its offset acknowledged, retried on a timer and by newer
commands. While an app is quarantined its jobs park until the gate opens.

Rebalances (``release``): when partitions are revoked, their jobs that are not inside a
target call are cancelled, unacknowledged, and the ones inside a call are waited for (up
to a bound) before the rebalance goes on. The new owner replays every command from the
committed offset, so a replica that kept running the old owner's queue would write the same
objects at the same time as it does (and create them twice on a target that does not refuse
a duplicate).

Fair sharing: the window is shared by every app, but one app runs at most about a second's
worth of its current rate (``Lanes``; at least two jobs). A slow or throttled app's other
jobs wait for their turn without a window slot (as parked jobs do), so they never hold
capacity another app's commands could use.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import structlog

from schemas import ErrorRecord, ProvisioningCommand
from services.runtime import metrics
from services.runtime.errors import TransientError
from services.runtime.records import error_record
from services.runtime.settings import Settings
from services.scim.client import retry_after_raised
from services.writer.apply import Outcome, Writer
from services.writer.chains import InOrderAcks, Job
from services.writer.escrow import EscrowStore
from services.writer.links import Deferrals
from services.writer.publish import Publisher
from services.writer.retry import escrow_interval, retry_delay, should_escrow

__all__ = ["Apply", "Scheduler"]

log = structlog.get_logger("scimflow.writer")

Apply = Callable[[bytes, ProvisioningCommand, bool], Awaitable[Outcome | None]]
"""Applies one command of an object (key, command, releasing a held removal)."""

_PARKED_PER_SLOT = 8
"""Parked jobs that may give up their window slot, per slot of ``writer_batch``."""
_PARK_POLL = 0.5
"""Seconds between looks at a quarantined app's gate by a parked job."""
_LANE_SECONDS = 1.0
"""An app runs at most this many seconds of its current requests/s as jobs at once..."""
_MIN_LANE = 2
"""...and at least this many."""
RELEASE_WAIT = 8.0
"""Seconds a revoke waits for the target calls in flight for its partitions (below the
session timeout of 10 s, so the group does not drop this member meanwhile)."""


class _Lane:
    """One app's running jobs and, in order, the jobs waiting for their turn."""

    def __init__(self) -> None:
        self.running = 0
        self.waiting: deque[asyncio.Future[None]] = deque()

    def admit(self, cap: int) -> None:
        """Hand turns to waiting jobs while the app runs fewer than ``cap``."""
        while self.waiting and self.running < cap:
            turn = self.waiting.popleft()
            if not turn.done():
                self.running += 1  # counted here: a job woken later must not be overtaken
                turn.set_result(None)


class Scheduler:
    """Runs jobs: objects concurrently, each object's jobs in order; parks and escrows."""

    def __init__(self, settings: Settings, writers: dict[str, Writer], *, apply: Apply,
                 publisher: Publisher, escrow: Any, deferrals: Deferrals, acks: InOrderAcks,
                 restored: asyncio.Event, is_off: Callable[[str], bool]) -> None:
        self.writers = writers
        self.escrow = EscrowStore(escrow)
        self.window = asyncio.Semaphore(settings.writer_batch)
        self.max_parked = settings.writer_batch * _PARKED_PER_SLOT
        self.tails: dict[bytes, asyncio.Task[None]] = {}
        self.jobs: dict[asyncio.Task[None], Job] = {}
        self.parked: dict[bytes, Job] = {}
        self._apply = apply
        self._publisher = publisher
        self._deferrals = deferrals
        self._acks = acks
        self._restored = restored
        """No job runs before the writer's state is restored."""
        self._is_off = is_off
        """Whether an app's provisioning is Off (its escrowed objects wait)."""
        self._waiting: Counter[str] = Counter()
        self._lanes: dict[str, _Lane] = {}
        self._queued = 0
        """Jobs waiting for their app's turn without a window slot."""
        self.owns: Callable[[bytes], bool] | None = None
        """Whether a key's partition is this replica's now (None: not known yet, all are)."""
        self.owns_generation: int | None = None
        """The consumer-group generation ``owns`` was worked out in."""
        self.owned: frozenset[int] | None = None
        """The partitions ``owns`` says are this replica's, when known (a job from an event
        is checked by its partition: no hash of its key per command)."""

    def busy(self, key: bytes) -> bool:
        """Whether a job for the object is scheduled or running."""
        return key in self.tails

    async def schedule(self, job: Job) -> None:
        """Run ``job`` after every earlier job for the same object."""
        await self.window.acquire()
        if self.elsewhere(job):
            self.window.release()  # revoked while it waited for a slot: the new owner has it
            if job.ticket is not None and job.ack is not None:
                await self._acks.drop(job.ticket, job.ack)
            return
        if job.command is not None and not job.escrowed:
            self._supersede(job.key)
        previous = self.tails.get(job.key)
        job.previous = self.jobs.get(previous) if previous is not None else None
        task = asyncio.create_task(self._run(previous, job))
        self.tails[job.key] = task
        self.jobs[task] = job
        task.add_done_callback(self._finished)

    def elsewhere(self, job: Job) -> bool:
        """Whether ``job``'s partition was revoked from this replica. An event fetched in a
        later generation than ``owns`` knows is this replica's: the group gave it the
        partition since, and faust can deliver its events before the signal that updates
        ``owns`` (dropped here, they would be lost: faust replays a partition only when it
        is assigned again)."""
        if self.owns is None:
            return False
        if job.partition is not None and self.owned is not None:
            if job.partition in self.owned:
                return False
        elif self.owns(job.key):
            return False
        known = self.owns_generation
        return job.generation is None or known is None or job.generation <= known

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
        if not self._restored.is_set():
            await self._restored.wait()  # no write before the writer's state is restored
        if previous is not None:
            await asyncio.wait({previous})  # same object: strictly after the one before
        command = job.running = job.command or self._deferrals.command(job.key)
        try:
            if command is not None:
                await self._attempts(job, command)
        except Exception as exc:
            assert command is not None
            log.exception("command failed", app=command.app, source_id=command.source_id)
            await self._publisher.error(job.key, _writer_failure(command, exc))
        if job.ticket is not None and job.ack is not None and not job.dropped:
            await self._acks.done(job.ticket, job.ack)

    async def release(self, owns: Callable[[bytes], bool], *, wait: float = RELEASE_WAIT,
                      why: str = "revoked partitions") -> int:
        """Partitions were revoked, or the worker stops (``owns`` False for their keys): drop
        their jobs and wait up to ``wait`` seconds for the target calls already made for
        them. Nothing dropped is acknowledged: the partition's next owner (maybe this replica
        again) replays it. ``why`` names the cause in the warning about calls still running.
        Returns how many jobs were dropped."""
        dropped = [(task, job) for task, job in self.jobs.items() if not owns(job.key)]
        for task, job in dropped:
            job.dropped = True
            if not job.applying:
                task.cancel()
        writing = {task for task, job in dropped if job.applying}
        if writing:
            _, late = await asyncio.wait(writing, timeout=wait)
            if late:
                log.warning(f"target calls of {why} still running after the wait",
                            jobs=len(late), seconds=wait)
        return len(dropped)

    async def _attempts(self, job: Job, command: ProvisioningCommand) -> None:
        """Apply ``command``; on a transient failure park and try again, or escrow it."""
        failures = job.escrowed
        while True:
            await self._while_quarantined(job, command.app)
            writer = self.writers.get(command.app)
            if job.superseded or writer is None:
                return  # superseded, or its app was removed while it waited: nothing to write
            retries = writer.app.target.retries  # each attempt under the app's current version
            # A Retry-After parks the object (below) rather than waiting inside the call,
            # where a scan's end frame would wait for it (and the whole consumer with it).
            async with self._turn(job, command.app):
                if job.dropped:
                    return  # its partition was revoked while it waited for its turn
                job.applying = True  # no await between the check and this: see ``release``
                try:
                    with retry_after_raised():
                        outcome = await self._apply(job.key, command, job.releasing)
                finally:
                    job.applying = False
            if job.dropped:
                return  # written (its state is in the changelog); the new owner replays it
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

    @asynccontextmanager
    async def _turn(self, job: Job, app: str) -> AsyncIterator[None]:
        """Run within the app's share of the window; wait for a turn without a slot if the
        app already runs its share."""
        lane = self._lanes.setdefault(app, _Lane())
        if lane.running < self._lane_cap(app) and not lane.waiting:
            lane.running += 1
        else:
            await self._wait_turn(job, lane, app)
        try:
            yield
        finally:
            lane.running -= 1
            lane.admit(self._lane_cap(app))

    async def _wait_turn(self, job: Job, lane: _Lane, app: str) -> None:
        """Queue for the app's next turn; give the window slot back meanwhile (within
        ``max_parked``, as a parked job does: beyond it the consumer stops reading ahead)."""
        if job.holds_window and len(self.parked) + self._queued < self.max_parked:
            job.holds_window = False
            self.window.release()
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        lane.waiting.append(turn)
        self._queued += 1
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                lane.running -= 1  # handed a turn as we were cancelled: pass it on
                lane.admit(self._lane_cap(app))
            raise
        finally:
            self._queued -= 1

    def _lane_cap(self, app: str) -> int:
        """Jobs the app may run at once: a second's worth of its current rate (at least
        two); unlimited for an app without limits."""
        writer = self.writers.get(app)
        limiter = writer.client.limiter if writer is not None else None
        if limiter is None:
            return self.max_parked
        return max(_MIN_LANE, math.ceil(limiter.limits.requests_per_second * _LANE_SECONDS))

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
        while (writer := self.writers.get(app)) is not None and writer.client.quarantine.active \
                and not job.superseded:
            await self._park(job, _PARK_POLL)

    def wake(self, app: str) -> None:
        """The app's parked jobs try again now rather than after their backoff."""
        for job in list(self.parked.values()):
            if job.running is not None and job.running.app == app:
                job.wake.set()

    async def drain(self) -> None:
        """Wait until every job is done, parked, or queued behind a parked job."""
        while busy := {t for t, j in self.jobs.items() if not j.blocked()}:
            await asyncio.wait(busy, timeout=_PARK_POLL, return_when=asyncio.FIRST_COMPLETED)

    # -- escrow ----------------------------------------------------------------------------

    async def _escrow(self, key: bytes, command: ProvisioningCommand, outcome: Outcome,
                      exc: TransientError, failures: int) -> None:
        writer = self.writers.get(command.app)
        interval = escrow_interval(writer.app.target.retries) if writer else float("inf")
        first = self.escrow.put(key, command, failures, exc)
        self.count_escrow()
        if not first:
            log.info("escrowed object failed again", app=command.app, source_id=command.source_id,
                     attempts=failures)
            return
        log.warning("object escrowed", app=command.app, source_id=command.source_id, attempts=failures)
        if outcome.activity is not None:
            await self._publisher.activity(key, outcome.activity, command)
        await self._publisher.error(key, _escrowed(command, exc, failures, interval))

    def _unescrow(self, key: bytes) -> None:
        if self.escrow.drop(key):
            log.info("object left escrow", key=key.decode("utf-8", "replace"))
            self.count_escrow()

    def forget_escrow(self, app: str) -> int:
        """Drop the app's escrowed objects (a restart); how many there were."""
        dropped = self.escrow.forget_app(app)
        self.count_escrow()
        return dropped

    async def tick_escrow(self) -> None:
        """Try again the escrowed objects whose retry interval has passed."""
        if not self._restored.is_set():
            return
        def interval(app: str) -> float:
            writer = self.writers.get(app)
            return escrow_interval(writer.app.target.retries) if writer else float("inf")

        for key, entry in self.escrow.due(datetime.now(UTC), interval):
            if key in self.tails or self._is_off(entry.command.app):
                continue  # a newer command is on its way, or the app is off
            await self.schedule(Job(key, entry.command, escrowed=entry.attempts))

    def count_escrow(self) -> None:
        counts = self.escrow.counts()
        for app in self.writers:
            metrics.ESCROWED_OBJECTS.labels(app=app).set(counts.get(app, 0))


def _writer_failure(command: ProvisioningCommand, exc: Exception) -> ErrorRecord:
    return error_record(
        "writer", "WriterFailure", f"{type(exc).__name__}: {exc}",
        "A bug in scimflow's writer: report it with this record; the object is retried at the "
        "next full scan.",
        app=command.app, object_type=command.object_type, source_id=command.source_id,
        change_id=command.change_id, cycle_id=command.cycle_id,
    )


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
