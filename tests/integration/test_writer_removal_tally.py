"""The deletion threshold holds for an app as a whole, however many writer replicas share it.

Two CommandProcessors stand for two writer replicas, each owning half of the objects; the
control topic between them is a pump that hands each one the other's RemovalTally messages
(what every replica's control-topic follower does). The SCIM target is a real scim2-server.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import httpx
import msgspec
import pytest

from schemas.control import AllowDeletes, ControlMessage, RemovalTally
from services.devstack.scim_target import ScimTarget
from tests.support.writer_harness import Harness, application, harness, user_cmd

_control = msgspec.json.Decoder(ControlMessage)


def _replicas(scim_target: ScimTarget, threshold: int) -> tuple[Harness, Harness]:
    app = application(deletion_threshold=threshold)
    a, b = (harness(scim_target.base_url, scim_target.token, app) for _ in range(2))
    for h in (a, b):
        h.processor.app_state.guard.grace = timedelta(seconds=0.5)
    return a, b


async def _run_guards(a: Harness, b: Harness, seconds: float, *, exchange: bool) -> None:
    """Tick both guards (the writer's 0.5 s timer, faster) and deliver each one's tallies."""
    seen = {id(a): 0, id(b): 0}
    end = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < end:
        for me, peer in ((a, b), (b, a)):
            await me.processor.app_state.tick_guard()
            sent = me.control_topic.sent[seen[id(me)]:]
            seen[id(me)] += len(sent)
            for _, value in sent:
                message = _control.decode(value)
                if exchange and isinstance(message, RemovalTally):
                    peer.processor.app_state.on_tally(message)
        await asyncio.sleep(0.1)
    await asyncio.gather(a.settle(), b.settle())


def _active(scim_target: ScimTarget) -> dict[str, bool]:
    users = httpx.get(f"{scim_target.base_url}/Users", params={"count": 100},
                      headers={"Authorization": f"Bearer {scim_target.token}"}).json()["Resources"]
    return {u["userName"]: u.get("active", True) for u in users}


async def _provision_and_remove(a: Harness, b: Harness) -> None:
    await a.feed(*(user_cmd(i) for i in range(4)))
    await b.feed(*(user_cmd(i) for i in range(4, 8)))
    await asyncio.gather(a.settle(), b.settle())
    await a.feed(*(user_cmd(i, operation="deprovision") for i in range(4)))
    await b.feed(*(user_cmd(i, operation="deprovision") for i in range(4, 8)))


@pytest.mark.anyio
async def test_a_burst_spread_over_two_replicas_is_held_on_both(scim_target: ScimTarget) -> None:
    a, b = _replicas(scim_target, threshold=5)
    await _provision_and_remove(a, b)  # 8 removals, 4 per replica: each alone is under 5
    await _run_guards(a, b, 1.5, exchange=True)

    assert a.processor.app_state.guard.held("app") and b.processor.app_state.guard.held("app")
    for h in (a, b):
        assert sorted(r.action for r in h.activity() if r.action == "stagedDelete") == ["stagedDelete"] * 4
    assert all(_active(scim_target).values()), "no account may be disabled while held"

    allowed = AllowDeletes(app="app", before=datetime.now(UTC), by="test")
    for h in (a, b):
        h.processor.app_state.allow_deletes(allowed)
    await _run_guards(a, b, 1.0, exchange=True)
    active = _active(scim_target)
    assert len(active) == 8 and not any(active.values())  # exactly the 8, after the allow
    assert not a.processor.app_state.guard.held("app") and not b.processor.app_state.guard.held("app")


@pytest.mark.anyio
async def test_without_the_tallies_each_replica_alone_would_let_them_through(
        scim_target: ScimTarget) -> None:
    # The control: the same burst, tallies not delivered. This is the gap the tallies close.
    a, b = _replicas(scim_target, threshold=5)
    await _provision_and_remove(a, b)
    await _run_guards(a, b, 1.5, exchange=False)
    assert not any(_active(scim_target).values())
    sent = [_control.decode(v) for _, v in a.control_topic.sent]
    tallies = [m for m in sent if isinstance(m, RemovalTally)]
    assert tallies and tallies[0].count == 4 and tallies[0].replica == a.processor.app_state.replica
