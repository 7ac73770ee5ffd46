"""What Off and the deletion guard hold survives a writer restart: the ``held`` table.

A restart here is a new CommandProcessor over the same table dicts (what faust restores
from the changelogs) and nothing else: every in-memory structure of the old one is gone,
as after ``kill -9``. The e2e test ``test_held_survives_kill`` does the same with real
worker processes and a broker. The SCIM target is a real scim2-server.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from schemas.control import AllowDeletes, AppStatus
from services.devstack.scim_target import ScimTarget
from services.runtime.config import Application
from services.runtime.settings import load_settings
from services.scim.client import Backoff, ScimClient
from services.writer.apply import Writer
from services.writer.held import HeldStore
from services.writer.worker import CommandProcessor
from tests.support.writer_harness import PARTITIONS, Harness, Recorder, application, user_cmd


def _writer(scim_target: ScimTarget, app: Application, tables: dict[str, dict[bytes, bytes]]) -> Harness:
    """A writer process over ``tables`` (managed, escrow, held): a fresh one is a restart."""
    client = ScimClient(scim_target.base_url, scim_target.token, attempts=1, app=app.name,
                        backoff=Backoff(wait_initial=0.01, wait_max=0.05, wait_jitter=0.01))
    settings = load_settings({}, partitions=PARTITIONS, writer_batch=16)
    activity, errors, control = Recorder(), Recorder(), Recorder()
    processor = CommandProcessor(settings, {app.name: Writer(app, client)}, tables["managed"],
                                 activity=activity, errors=errors, escrow=tables["escrow"],
                                 control=control, held=tables["held"])
    processor.app_state.guard.grace = timedelta(seconds=0.2)
    return Harness(processor, tables["managed"], tables["escrow"], activity, errors, control)


def _tables() -> dict[str, dict[bytes, bytes]]:
    return {"managed": {}, "escrow": {}, "held": {}}


async def _tick(h: Harness, seconds: float) -> None:
    """The writer's guard timer (reload, then tick), faster than its 0.5 s."""
    end = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < end:
        await h.processor.app_state.reload_held()
        await h.processor.app_state.tick_guard()
        await asyncio.sleep(0.05)
    await h.settle()


def _users(scim_target: ScimTarget) -> dict[str, bool]:
    users = httpx.get(f"{scim_target.base_url}/Users", params={"count": 200},
                      headers={"Authorization": f"Bearer {scim_target.token}"}).json()["Resources"]
    return {u["userName"]: u.get("active", True) for u in users}


@pytest.mark.anyio
async def test_commands_held_while_off_survive_a_restart(scim_target: ScimTarget) -> None:
    tables = _tables()
    app = application(status="off")
    before = _writer(scim_target, app, tables)
    await before.feed(*(user_cmd(i) for i in range(3)))
    await before.settle()
    assert before.pending_acks == 0, "held commands are acknowledged"
    assert len(tables["held"]) == 3 and _users(scim_target) == {}

    after = _writer(scim_target, app, tables)  # the old process is gone, tables stay
    assert await after.processor.app_state.reload_held() == 3
    assert await after.processor.app_state.reload_held() == 0, "taken up once"
    await _tick(after, 0.3)
    assert _users(scim_target) == {}, "still Off: nothing written"

    await after.processor.app_state.set_status(AppStatus(app="app", status="on", by="t",
                                                         at=datetime.now(UTC)))
    await _tick(after, 0.3)
    assert sorted(_users(scim_target)) == [f"u{i}@example.com" for i in range(3)]
    assert [r.action for r in after.activity()] == ["create"] * 3, "each one exactly once"
    assert tables["held"] == {}, "what ran is no longer held"


@pytest.mark.anyio
async def test_removals_held_by_the_threshold_stay_held_after_a_restart(scim_target: ScimTarget) -> None:
    tables = _tables()
    app = application(deletion_threshold=2)
    before = _writer(scim_target, app, tables)
    await before.feed(*(user_cmd(i) for i in range(5)))
    await before.settle()
    await before.feed(*(user_cmd(i, operation="delete") for i in range(4)))
    await _tick(before, 0.6)
    assert before.processor.app_state.guard.held("app")
    assert [r.action for r in before.activity()].count("stagedDelete") == 4
    assert len(tables["held"]) == 4

    after = _writer(scim_target, app, tables)
    await _tick(after, 0.8)
    assert after.processor.app_state.guard.held("app"), "held again after the restart"
    assert len(_users(scim_target)) == 5, "nothing removed"
    assert after.activity() == [], "stagedDelete is not reported twice"

    allowed = AllowDeletes(app="app", before=datetime.now(UTC), by="test")
    after.processor.app_state.allow_deletes(allowed)
    await _tick(after, 0.5)
    assert sorted(_users(scim_target)) == ["u4@example.com"], "exactly the held removals ran"
    assert sorted(r.action for r in after.activity()) == ["delete"] * 4
    assert tables["held"] == {} and not after.processor.app_state.guard.held("app")


@pytest.mark.anyio
async def test_a_removal_waiting_out_the_grace_period_runs_after_a_restart(scim_target: ScimTarget) -> None:
    tables = _tables()
    app = application(deletion_threshold=5)
    before = _writer(scim_target, app, tables)
    await before.feed(user_cmd(1), user_cmd(2))
    await before.settle()
    await before.feed(user_cmd(1, operation="delete"))
    await before.settle()  # staged, acknowledged, not run yet: the process dies now
    assert len(tables["held"]) == 1 and len(_users(scim_target)) == 2

    after = _writer(scim_target, app, tables)
    await _tick(after, 0.6)
    assert sorted(_users(scim_target)) == ["u2@example.com"]
    assert tables["held"] == {}


@pytest.mark.anyio
async def test_held_removals_move_with_their_partitions(scim_target: ScimTarget) -> None:
    tables = _tables()
    app = application(deletion_threshold=2)
    old = _writer(scim_target, app, tables)
    await old.feed(*(user_cmd(i) for i in range(4)))
    await old.settle()
    await old.feed(*(user_cmd(i, operation="delete") for i in range(4)))
    await _tick(old, 0.6)
    assert old.processor.app_state.guard.waiting("app") == 4

    # A rebalance: every partition moves to a new replica, with the held table.
    assert old.processor.app_state.forget_partitions(set(range(PARTITIONS)), PARTITIONS) == 4
    new = _writer(scim_target, app, tables)
    await _tick(new, 0.3)
    assert new.processor.app_state.guard.held("app") and new.processor.app_state.guard.waiting("app") == 4

    assert await old.processor.app_state.reload_held(owns=lambda key: False) == 0, "a standby copy stays"
    allowed = AllowDeletes(app="app", before=datetime.now(UTC), by="test")
    old.processor.app_state.allow_deletes(allowed)
    await old.processor.app_state.tick_guard()
    await old.settle()
    assert len(_users(scim_target)) == 4 and all(_users(scim_target).values()), \
        "the replica the partitions left runs nothing of them"
    new.processor.app_state.allow_deletes(allowed)
    await _tick(new, 0.5)
    assert _users(scim_target) == {} and tables["held"] == {}


@pytest.mark.anyio
async def test_a_removal_held_but_not_reported_before_a_kill_is_reported_once(
        scim_target: ScimTarget) -> None:
    tables = _tables()
    app = application(deletion_threshold=5)
    before = _writer(scim_target, app, tables)
    await before.feed(user_cmd(1), user_cmd(2))
    await before.settle()
    # The writer died between reporting u1's stagedDelete and reporting u2's.
    store = HeldStore(tables["held"])
    store.put(b"app/u1", user_cmd(1, operation="delete"), "removal", datetime.now(UTC), reported=True)
    store.put(b"app/u2", user_cmd(2, operation="delete"), "removal", datetime.now(UTC))

    after = _writer(scim_target, app, tables)
    await _tick(after, 0.5)
    assert after.processor.app_state.guard.held("app"), "below the threshold, and held all the same"
    assert [(r.action, r.source_id) for r in after.activity()] == [("stagedDelete", "u2")]
    assert all((e := store.get(k)) is not None and e.reported for k in (b"app/u1", b"app/u2"))
    assert len(_users(scim_target)) == 2


@pytest.mark.anyio
async def test_held_removals_redelivered_after_a_kill_stay_held_and_unreported(
        scim_target: ScimTarget) -> None:
    tables = _tables()
    app = application(deletion_threshold=2)
    before = _writer(scim_target, app, tables)
    await before.feed(*(user_cmd(i) for i in range(4)))
    await before.settle()
    removals = [user_cmd(i, operation="delete") for i in range(4)]
    await before.feed(*removals)
    await _tick(before, 0.6)
    assert [r.action for r in before.activity()].count("stagedDelete") == 4

    # Acknowledged but not committed when the writer was killed: the broker sends them again.
    after = _writer(scim_target, app, tables)
    await after.feed(*removals)
    await after.settle()
    await _tick(after, 0.6)
    assert after.processor.app_state.guard.held("app")
    assert after.activity() == [] and len(_users(scim_target)) == 4
    assert all((e := HeldStore(tables["held"]).get(f"app/u{i}".encode())) and e.reported for i in range(4))
