"""The deletion guard's count of a cycle's removals survives a writer's restart.

A writer that ran 3 removals of a cycle and was then killed (``kill -9``) comes back as a
new replica with an empty guard; only the control topic still knows what it removed (its
``RemovalTally``). The new process reads that topic from its start, as every writer does,
so its threshold counts the 3 already run: a threshold of 3 does not let 3 more through.
The SCIM target is a real scim2-server; the control topic is the recorded messages of the
first process handed to the second (what its control-topic follower would read).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import httpx
import msgspec
import pytest

from schemas.control import ControlMessage, RemovalTally
from services.devstack.scim_target import ScimTarget
from tests.support.writer_harness import Harness, application, harness, user_cmd

_control = msgspec.json.Decoder(ControlMessage)
THRESHOLD = 3


def _writer(scim_target: ScimTarget, managed: dict[bytes, bytes] | None = None) -> Harness:
    h = harness(scim_target.base_url, scim_target.token, application(deletion_threshold=THRESHOLD),
                managed=managed)
    guard = h.processor.app_state.guard
    guard.grace = timedelta(seconds=0.3)
    guard.peer_ttl = timedelta(seconds=0.5)  # the restart takes longer than a tally lives
    return h


async def _tick(h: Harness, seconds: float) -> None:
    end = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < end:
        await h.processor.app_state.tick_guard()
        await asyncio.sleep(0.1)
    await h.settle()


def _tallies(h: Harness) -> list[RemovalTally]:
    return [m for _, v in h.control_topic.sent if isinstance(m := _control.decode(v), RemovalTally)]


def _active(scim_target: ScimTarget) -> dict[str, bool]:
    users = httpx.get(f"{scim_target.base_url}/Users", params={"count": 100},
                      headers={"Authorization": f"Bearer {scim_target.token}"}).json()["Resources"]
    return {u["userName"]: u.get("active", True) for u in users}


@pytest.mark.anyio
async def test_removals_before_a_kill_still_count_after_the_restart(scim_target: ScimTarget) -> None:
    first = _writer(scim_target)
    await first.feed(*(user_cmd(i) for i in range(6)))
    await first.settle()
    await first.feed(*(user_cmd(i, operation="deprovision") for i in range(3)))
    await _tick(first, 1.0)
    assert sum(not a for a in _active(scim_target).values()) == 3  # 3 <= threshold: they ran
    history = _tallies(first)
    assert history[-1].count == 3
    await first.processor.close()  # killed: only its managed table and its tallies remain

    await asyncio.sleep(0.6)  # longer than a tally lives (peer_ttl): it did not come back at once
    second = _writer(scim_target, managed=first.managed)
    second.restore_links()
    for tally in history:  # the control topic, read from its start
        second.processor.app_state.on_tally(tally)
    await second.feed(*(user_cmd(i, operation="deprovision") for i in range(3, 6)))
    await _tick(second, 1.0)

    assert sum(not a for a in _active(scim_target).values()) == 3, "3 more ran after the restart"
    assert second.processor.app_state.guard.held("app")
    assert [r.action for r in second.activity()].count("stagedDelete") == 3

    # The cycle ends: the next one counts from zero, and the stopped replica's tally is
    # settled on the control topic, so no later start reads its 3 again.
    second.processor.app_state.guard.cycle_finished("app")
    await _tick(second, 0.3)
    settled = [t for t in _tallies(second) if t.replica == history[-1].replica]
    assert [t.count for t in settled] == [0]
    await second.processor.close()
