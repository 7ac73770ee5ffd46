"""A burst of removals above the threshold is held whole; allowing releases exactly it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from schemas import ProvisioningCommand
from services.writer.deletion_guard import DeletionGuard, Staged

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def removal(i: int, at: datetime = T0) -> Staged:
    cmd = ProvisioningCommand(app="a", object_type="user", source="s", source_id=f"u{i}",
                              operation="deprovision", reason="not assigned", change_id="c",
                              observed_at=at)
    return Staged(f"a/u{i}".encode(), cmd, at)


def test_removals_below_threshold_run_after_the_grace_period() -> None:
    guard = DeletionGuard({"a": 5}, grace=2)
    for i in range(5):
        assert guard.stage(removal(i)) is False
    assert guard.tick("a", T0 + timedelta(seconds=1)).run == []
    release = guard.tick("a", T0 + timedelta(seconds=2))
    assert sorted(s.command.source_id for s in release.run) == [f"u{i}" for i in range(5)]
    assert guard.waiting("a") == 0


def test_burst_above_threshold_holds_all_then_allow_releases_exactly_them() -> None:
    guard = DeletionGuard({"a": 5}, grace=2)
    for i in range(6):
        guard.stage(removal(i))
    release = guard.tick("a", T0 + timedelta(seconds=3))
    assert release.run == []
    assert len(release.newly_held) == 6
    assert guard.held("a")
    assert guard.stage(removal(7, T0 + timedelta(seconds=4))) is True  # reported while held
    assert guard.tick("a", T0 + timedelta(seconds=9)).run == []
    guard.allow("a", T0 + timedelta(seconds=3))
    released = guard.tick("a", T0 + timedelta(seconds=10)).run
    assert sorted(s.command.source_id for s in released) == [f"u{i}" for i in range(6)]
    assert guard.waiting("a") == 1  # u7 was staged after the allowed moment
    guard.allow("a", T0 + timedelta(seconds=5))
    assert [s.command.source_id for s in guard.tick("a", T0 + timedelta(seconds=11)).run] == ["u7"]
    assert not guard.held("a")


def test_executed_removals_count_until_the_cycle_ends() -> None:
    guard = DeletionGuard({"a": 3}, grace=0)
    for i in range(3):
        guard.stage(removal(i))
    assert len(guard.tick("a", T0).run) == 3
    guard.stage(removal(9))
    assert guard.tick("a", T0).newly_held != []  # 3 done + 1 waiting > 3
    guard2 = DeletionGuard({"a": 3}, grace=0)
    for i in range(3):
        guard2.stage(removal(i))
    guard2.tick("a", T0)
    guard2.cycle_finished("a")
    guard2.stage(removal(9))
    assert [s.command.source_id for s in guard2.tick("a", T0).run] == ["u9"]


def test_a_newer_command_supersedes_a_held_removal() -> None:
    guard = DeletionGuard({"a": 1}, grace=0)
    guard.stage(removal(1))
    guard.stage(removal(2))
    assert len(guard.tick("a", T0).newly_held) == 2
    assert guard.drop("a", b"a/u1") is True
    assert guard.waiting("a") == 1


def test_threshold_zero_turns_the_guard_off() -> None:
    assert DeletionGuard({"a": 0}).guards("a") is False
    assert DeletionGuard({"a": 500}).guards("a") is True
    assert DeletionGuard({"a": 500}).guards("other") is False


def test_other_replicas_tallies_count_towards_the_threshold() -> None:
    guard = DeletionGuard({"a": 5}, grace=2, peer_ttl=15)
    for i in range(3):
        guard.stage(removal(i))
    assert guard.tally("a") == 3
    guard.peer("a", "other", 3, T0)  # 3 + 3 > 5: the app as a whole crossed it
    release = guard.tick("a", T0 + timedelta(seconds=3))
    assert release.run == [] and len(release.newly_held) == 3 and guard.held("a")


def test_a_stopped_replicas_tally_counts_until_the_cycle_ends_then_is_settled_once() -> None:
    # A replica killed (or restarted: it comes back as a new replica) keeps its removals of
    # this cycle in the count: 3 before a crash and 3 after must not pass a threshold of 5.
    guard = DeletionGuard({"a": 5}, grace=2, peer_ttl=15)
    for i in range(3):
        guard.stage(removal(i, T0 + timedelta(seconds=20)))
    guard.peer("a", "stopped", 3, T0)  # not repeated for 23 s: that replica stopped
    guard.peer("a", "idle", 0, T0)
    assert guard.tick("a", T0 + timedelta(seconds=23)).newly_held != []

    fresh = DeletionGuard({"a": 5}, grace=2, peer_ttl=15)
    fresh.peer("a", "stopped", 3, T0)
    fresh.peer("a", "live", 1, T0 + timedelta(seconds=20))
    fresh.cycle_finished("a", T0 + timedelta(seconds=21))  # the next cycle counts from zero
    assert fresh.settle("a") == ["stopped"]  # the live one publishes its own; zero has nothing
    assert fresh.settle("a") == []
    for i in range(5):
        fresh.stage(removal(i, T0 + timedelta(seconds=22)))
    assert len(fresh.tick("a", T0 + timedelta(seconds=25)).run) == 5


def test_an_allowance_releases_the_stopped_replicas_count_too() -> None:
    guard = DeletionGuard({"a": 2}, grace=0, peer_ttl=15)
    guard.peer("a", "stopped", 2, T0)
    guard.stage(removal(1, T0 + timedelta(seconds=20)))
    assert guard.tick("a", T0 + timedelta(seconds=20)).newly_held != []
    guard.allow("a", T0 + timedelta(seconds=21))
    assert len(guard.tick("a", T0 + timedelta(seconds=22)).run) == 1
    guard.tick("a", T0 + timedelta(seconds=22))  # nothing waits: no longer held
    assert not guard.held("a") and guard.settle("a") == ["stopped"]
    guard.stage(removal(2, T0 + timedelta(seconds=23)))
    assert len(guard.tick("a", T0 + timedelta(seconds=24)).run) == 1


def test_a_replica_with_nothing_waiting_does_not_hold() -> None:
    guard = DeletionGuard({"a": 5}, grace=2)
    guard.peer("a", "other", 9, T0)
    assert guard.tick("a", T0 + timedelta(seconds=1)).newly_held == []
    assert not guard.held("a")


def test_a_burst_delivered_slowly_is_still_seen_whole() -> None:
    # A loaded pipeline delivers one file change's 8 removals over 7 s, 1 s apart: each
    # is older than the 2 s grace by the time the last arrives, yet none may run early.
    guard = DeletionGuard({"a": 5}, grace=2)
    held, reported_at_once = 0, 0
    for i in range(8):
        now = T0 + timedelta(seconds=i)
        reported_at_once += guard.stage(removal(i, now))
        release = guard.tick("a", now + timedelta(seconds=0.5))
        assert release.run == [], f"a removal ran at {i + 0.5}s, before the burst was over"
        held += len(release.newly_held)
    assert guard.tick("a", T0 + timedelta(seconds=30)).run == []
    assert guard.held("a") and held + reported_at_once == 8 and guard.waiting("a") == 8


def test_a_steady_trickle_runs_after_max_wait() -> None:
    guard = DeletionGuard({"a": 1000}, grace=2, max_wait=10)
    for i in range(12):
        guard.stage(removal(i, T0 + timedelta(seconds=i)))
    ran = guard.tick("a", T0 + timedelta(seconds=11.5))  # still arriving, but u0, u1 waited 10 s
    assert sorted(s.command.source_id for s in ran.run) == ["u0", "u1"]


def test_a_restored_held_removal_stays_held_below_the_threshold_until_allowed() -> None:
    # Some of a held wave were superseded before the restart: fewer than the threshold came back.
    guard = DeletionGuard({"a": 5}, grace=2)
    later = T0 + timedelta(hours=1)
    guard.restore(removal(1), held=True, now=later)
    guard.restore(removal(2), held=True, now=later)
    assert guard.held("a") and guard.staged("a", b"a/u1")
    assert guard.tick("a", later + timedelta(seconds=10)).run == []
    guard.allow("a", T0)  # the allowance compares the time each was first staged
    assert sorted(s.key for s in guard.tick("a", later + timedelta(seconds=11)).run) == [b"a/u1", b"a/u2"]


def test_a_restored_removal_waits_the_grace_period_again() -> None:
    guard = DeletionGuard({"a": 5}, grace=2)
    later = T0 + timedelta(hours=1)
    guard.restore(removal(1), held=False, now=later)
    assert guard.tick("a", later + timedelta(seconds=1)).run == []
    assert [s.key for s in guard.tick("a", later + timedelta(seconds=2)).run] == [b"a/u1"]
