"""Accidental-deletion prevention: hold a cycle's removals when there are too many.

Every disable or delete first waits here until no new removal has arrived for a short
grace period (at most ``max_wait`` in all), so that a burst of removals (a group emptied,
a filter changed, a source that returns nothing) is seen as a whole before any of it runs,
even when a loaded pipeline delivers it over many seconds. If the removals of one cycle
(those executed since the last completed full scan plus those waiting) exceed the app's
threshold, none of the waiting ones runs: each is reported as ``stagedDelete`` and the app
is *held* until an operator allows them (``scimflow allow-deletes APP``). A later command
for a held object replaces its removal (back in scope: nothing is removed).

With several writer replicas each one sees only its partitions' removals, so the count is
global: every replica publishes its own tally (:meth:`DeletionGuard.tally`) and adds the
other replicas' ones (:meth:`DeletionGuard.peer`) before deciding. The grace period is
what lets the tallies of one burst meet before any of it runs. Pure bookkeeping; no I/O.

The count survives a replica's end: a tally stays on the (compacted) control topic, and
every replica, one started after a ``kill -9`` included, reads the topic from its start.
A replica that stopped (its tally was not repeated for ``peer_ttl``) keeps counting until
the cycle ends (:meth:`DeletionGuard.cycle_finished`) or an operator's allowance releases
the app, so a threshold of 3 lets 3 removals through per cycle, not 3 before a crash and 3
more after. The replica that ends the cycle settles the stopped ones' tallies
(:meth:`DeletionGuard.departed`: published again as zero), so a later start does not count
an old cycle. The cost: removals a stopped replica had waiting are counted in its tally and
again by the replica that takes them up (held sooner, never later).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from schemas import ProvisioningCommand

__all__ = ["DeletionGuard", "Release", "Staged"]


@dataclass(frozen=True, slots=True)
class Staged:
    key: bytes
    command: ProvisioningCommand
    at: datetime


@dataclass(slots=True)
class Release:
    """What the guard decided for one app at one tick."""

    run: list[Staged] = field(default_factory=list)
    """Removals to execute now."""
    newly_held: list[Staged] = field(default_factory=list)
    """Removals to report as ``stagedDelete`` (the app just crossed its threshold)."""


@dataclass(slots=True)
class _App:
    threshold: int
    pending: dict[bytes, Staged] = field(default_factory=dict)
    removed: int = 0
    held: bool = False
    allowed_before: datetime | None = None
    peers: dict[str, tuple[int, datetime]] = field(default_factory=dict)
    """Other writer replicas: their last tally and when they sent it."""
    last_staged: datetime | None = None
    """When the latest removal arrived: the burst is over once it is ``grace`` old."""
    settled: set[str] = field(default_factory=set)
    """Stopped replicas whose count a finished cycle ended (:meth:`DeletionGuard.settle`)."""
    restored_at: datetime | None = None
    """When removals staged before a restart came back: none runs before ``grace`` after
    (their ``max_wait`` may be long past, and the rest of their burst may be replaying)."""


class DeletionGuard:
    def __init__(self, thresholds: dict[str, int], *, grace: float = 2.0,
                 peer_ttl: float = 15.0, max_wait: float = 30.0) -> None:
        self._apps = {app: _App(threshold) for app, threshold in thresholds.items()}
        self.grace = timedelta(seconds=grace)
        self.max_wait = timedelta(seconds=max_wait)
        """A removal runs after this long even if others keep arriving (a steady trickle)."""
        self.peer_ttl = timedelta(seconds=peer_ttl)
        """A peer whose tally was not repeated for this long stopped (its count stays until
        the cycle ends)."""

    def configure(self, app: str, threshold: int) -> list[Staged]:
        """A new version of ``app`` (or a new app) with this threshold; the cycle's count, the
        waiting removals and an operator's allowance stay. Turning the guard off (0) hands
        back the removals that waited: nothing holds them any more, they run now."""
        state = self._apps.setdefault(app, _App(threshold))
        state.threshold = threshold
        if threshold > 0:
            return []
        waiting = list(state.pending.values())
        state.pending.clear()
        state.held = False
        return waiting

    def forget(self, app: str) -> int:
        """``app`` was removed: its waiting removals are dropped (never run); how many."""
        state = self._apps.pop(app, None)
        return len(state.pending) if state is not None else 0

    def tally(self, app: str) -> int:
        """This replica's share of the app's removals this cycle: executed plus waiting."""
        state = self._apps[app]
        return state.removed + len(state.pending)

    def peer(self, app: str, replica: str, count: int, at: datetime) -> None:
        """Another writer replica's tally for ``app``."""
        state = self._apps.get(app)
        if state is not None:
            state.peers[replica] = (count, at)

    def _others(self, state: _App) -> int:
        return sum(count for count, _ in state.peers.values())

    def settle(self, app: str) -> list[str]:
        """Stopped replicas whose tally for ``app`` a finished cycle ended: publish a zero
        tally for each (else the next start would read their old count); asked once."""
        state = self._apps.get(app)
        if state is None:
            return []
        settled, state.settled = sorted(state.settled), set()
        return settled

    def guards(self, app: str) -> bool:
        """Whether removals for ``app`` go through the guard (threshold 0 turns it off)."""
        state = self._apps.get(app)
        return state is not None and state.threshold > 0

    def held(self, app: str) -> bool:
        return self._apps[app].held

    def waiting(self, app: str) -> int:
        return len(self._apps[app].pending)

    def stage(self, staged: Staged) -> bool:
        """Queue a removal; True when the app is held (report it as ``stagedDelete`` now)."""
        state = self._apps[staged.command.app]
        state.pending[staged.key] = staged
        state.last_staged = staged.at if state.last_staged is None else max(state.last_staged, staged.at)
        return state.held

    def restore(self, staged: Staged, *, held: bool, now: datetime) -> None:
        """A removal staged before a restart (from the held table), at the time it was first
        staged (what an allowance compares); ``held``: the threshold held it, so the app is
        held again until an operator allows it. The grace period starts again: the rest of
        the burst may still be on its way."""
        state = self._apps.get(staged.command.app)
        if state is None:
            return
        state.pending[staged.key] = staged
        state.last_staged = now if state.last_staged is None else max(state.last_staged, now)
        state.restored_at = now
        state.held = state.held or held

    def staged(self, app: str, key: bytes) -> bool:
        """Whether a removal of ``key`` waits here."""
        state = self._apps.get(app)
        return state is not None and key in state.pending

    def forget_keys(self, app: str, gone: Callable[[bytes], bool]) -> int:
        """Removals of keys another replica owns now: dropped here (never run here); how many."""
        state = self._apps.get(app)
        return len(self._take(state, lambda s: gone(s.key))) if state is not None else 0

    def drop(self, app: str, key: bytes) -> bool:
        """A newer command for ``key`` supersedes its waiting removal."""
        state = self._apps.get(app)
        return state is not None and state.pending.pop(key, None) is not None

    def allow(self, app: str, before: datetime) -> None:
        """An operator allowed the removals staged before ``before``."""
        state = self._apps.get(app)
        if state is not None and (state.allowed_before is None or before > state.allowed_before):
            state.allowed_before = before

    def cycle_finished(self, app: str, now: datetime | None = None) -> None:
        """A full scan completed: the next cycle's count starts at zero, the other replicas'
        too (live ones publish their new tally; stopped ones count no more)."""
        state = self._apps.get(app)
        if state is not None:
            state.removed = 0
            state.settled.update(self._departed(state, now or datetime.now(UTC)))
            state.peers.clear()

    def _departed(self, state: _App, now: datetime) -> list[str]:
        """Replicas with a non-zero tally not repeated for ``peer_ttl``: stopped (a live one
        repeats a non-zero tally every few seconds)."""
        return [replica for replica, (count, at) in state.peers.items()
                if count and now - at > self.peer_ttl]

    def tick(self, app: str, now: datetime) -> Release:
        state = self._apps[app]
        release = Release()
        allowed = state.allowed_before
        if allowed is not None:
            release.run = self._take(state, lambda s: s.at <= allowed)
        if state.held and not state.pending:
            # Allowed and run, or every held removal superseded: nothing is held any more,
            # and what the other replicas counted was allowed with it (live ones repeat theirs).
            state.held, state.removed = False, 0
            state.settled.update(self._departed(state, now))
            state.peers.clear()
        if state.held:
            return release
        # Only a replica with removals of its own waiting holds; the others' count through
        # their tallies, so one burst spread over every replica is held on all of them.
        if state.pending and (state.removed + len(state.pending) + self._others(state)
                              > state.threshold):
            state.held = True
            release.newly_held = list(state.pending.values())
            return release
        if state.restored_at is not None and now - state.restored_at < self.grace:
            return release
        quiet = state.last_staged is not None and now - state.last_staged >= self.grace
        ready = self._take(state, lambda s: quiet or now - s.at >= self.max_wait)
        state.removed += len(ready)
        release.run += ready
        return release

    @staticmethod
    def _take(state: _App, due: Callable[[Staged], bool]) -> list[Staged]:
        chosen = [s for s in state.pending.values() if due(s)]
        for s in chosen:
            del state.pending[s.key]
        return chosen
