"""What an app's Off and the deletion guard hold survives ``kill -9`` of the writer.

Both kinds of command are acknowledged when they are held, so the broker will not send
them again; after a SIGKILL only the writer's ``held`` table (its changelog on the broker)
still has them. Real ingest, mapper and writer processes on a real broker and target.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime

import msgspec
import pytest

from schemas import HeldCommand
from schemas.control import AllowDeletes, AppStatus
from services.runtime.kafka import read_latest
from tests.conftest import APP, Pipeline, user
from tests.support.settle import group_lag
from tests.support.source_pipeline import send_control

pytestmark = pytest.mark.e2e

Factory = Callable[..., Pipeline]
GRACE = 2.0
"""The writer's default ``removal_grace``."""


def _held(p: Pipeline, *, reported: bool = False) -> int:
    """Objects with a held command, read from the writer's held changelog (``reported``:
    only removals whose ``stagedDelete`` the changelog already records as reported)."""
    entries = [msgspec.json.decode(v, type=HeldCommand)
               for v in read_latest(p.bootstrap, p.topics.writer_held).values() if v is not None]
    return sum(e.reported or not reported for e in entries)


def _kill_and_restart_writer(p: Pipeline) -> None:
    """SIGKILL, start again, and wait until the new writer applies commands. What it holds
    comes back from the held table, or (acknowledged but not committed yet when it was
    killed) from the commands topic again: either way it must not run, nor be reported twice."""
    restored = "writer state restored"
    p.sup.kill("writer")
    p.sup.start_one("writer")
    p.wait_for("the restarted writer to restore its state",
               lambda: (p.dir / "logs" / "writer.log").read_text().count(restored) == 2, timeout=90)
    time.sleep(GRACE + 2)  # the guard ticks every 0.5 s: a removal not held would have run by now


def _actions(p: Pipeline) -> Counter[str]:
    return Counter(a.action for a in p.activity() if a.app == "app")


def test_changes_held_while_off_land_once_after_a_kill(pipeline_factory: Factory) -> None:
    users = [user(i) for i in range(5)]
    p = pipeline_factory(users)
    p.wait_for("initial sync", lambda: p.scim.count() == 5)
    send_control(p, "app/status", AppStatus(app="app", status="off", by="test", at=datetime.now(UTC)))
    p.wait_for("the writer to pause app",
               lambda: "provisioning paused" in (p.dir / "logs" / "writer.log").read_text())

    p.write_directory([*(dict(u, givenName=f"Changed{i}") for i, u in enumerate(users)), user(5), user(6)])
    p.wait_for("7 changes held and acknowledged",
               lambda: _held(p) == 7 and group_lag(p.bootstrap, p.topics, "writer") == 0, timeout=60)
    assert p.scim.count() == 5, "an app that is off was written to"
    _kill_and_restart_writer(p)
    assert p.scim.count() == 5, "still off after the restart"

    send_control(p, "app/status", AppStatus(app="app", status="on", by="test", at=datetime.now(UTC)))
    p.wait_for("every held change in the target", lambda: p.scim.count() == 7 and sum(
        u["name"]["givenName"].startswith("Changed") for u in p.scim.users()) == 5, timeout=60)
    p.wait_for("nothing held any more", lambda: _held(p) == 0, timeout=30)
    actions = _actions(p)
    assert (actions["create"], actions["update"]) == (7, 5), f"each change exactly once: {actions}"
    assert p.errors() == []


def test_removals_held_by_the_threshold_stay_held_after_a_kill(pipeline_factory: Factory) -> None:
    users = [user(i) for i in range(8)]
    p = pipeline_factory(users, app={**APP, "deletion_threshold": 3})
    p.wait_for("initial sync", lambda: p.scim.count() == 8)
    p.write_directory(users[:3])  # 5 users leave the source: over the threshold of 3
    # The report and the changelog record of "reported" are two writes: a kill between them
    # reports the removal again after the restart (at least once). Kill once both are durable.
    p.wait_for("5 removals held and reported",
               lambda: _actions(p)["stagedDelete"] == 5 and _held(p, reported=True) == 5, timeout=60)

    _kill_and_restart_writer(p)
    assert all(u.get("active", True) for u in p.scim.users()), "nothing removed after the restart"
    assert _actions(p)["stagedDelete"] == 5, "stagedDelete is not reported twice"

    send_control(p, "app/allow-deletes", AllowDeletes(app="app", before=datetime.now(UTC), by="test"))
    p.wait_for("exactly the held removals", lambda: sorted(
        u["userName"] for u in p.scim.users() if u.get("active", True)) == [
        f"user{i}@example.com" for i in range(3)], timeout=60)
    p.wait_for("nothing held any more", lambda: _held(p) == 0, timeout=30)
    actions = _actions(p)
    assert actions["disable"] + actions["delete"] == 5, f"each removal exactly once: {actions}"
