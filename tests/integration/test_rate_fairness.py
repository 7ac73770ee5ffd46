"""Fair sharing of the writer's window between apps: an app limited to 5 requests/s does not
hold the window slots another app's commands need (a real scim2-server, the real writer
processor and SCIM clients; only the Kafka topics are stand-ins, see writer_harness)."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from schemas import ActivityRecord, ProvisioningCommand
from services.devstack.scim_target import ScimTarget
from services.runtime.settings import load_settings
from services.scim.client import Backoff, ScimClient
from services.writer.apply import Writer
from services.writer.worker import CommandProcessor
from tests.support.writer_harness import PARTITIONS, Harness, Recorder, application, for_app, user_cmd

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

SLOW, FAST = "slow", "fast"
USERS = 40


class FastDone(Recorder):
    """The activity topic, and an event set once every user of the fast app was written."""

    def __init__(self) -> None:
        super().__init__()
        self.fast_done = asyncio.Event()
        self._fast = 0

    async def send(self, *, key: bytes, value: bytes) -> None:
        await super().send(key=key, value=value)
        record = msgspec.json.decode(value, type=ActivityRecord)
        self._fast += record.app == FAST and record.status == "success"
        if self._fast >= USERS:
            self.fast_done.set()


def two_apps(base_url: str, token: str, *, writer_batch: int) -> tuple[Harness, FastDone]:
    """One processor for two apps on the same target: ``slow`` limited to 5 requests/s,
    ``fast`` with the default limits."""
    writers = {}
    for name, limit in ((SLOW, {"max_requests_per_second": 5}), (FAST, {})):
        app = application(name=name, target_extra={"base_url": base_url, "rate_limit": limit})
        client = ScimClient(base_url, token, app=name, attempts=3, rate_limit=app.target.rate_limit,
                            backoff=Backoff(wait_initial=0.01, wait_max=0.05, wait_jitter=0.01))
        writers[name] = Writer(app, client)
    settings = load_settings({}, partitions=PARTITIONS, writer_batch=writer_batch)
    managed: dict[bytes, bytes] = {}
    escrow: dict[bytes, bytes] = {}
    activity, errors, control = FastDone(), Recorder(), Recorder()
    processor = CommandProcessor(settings, writers, managed, activity=activity, errors=errors,
                                 escrow=escrow, control=control)
    return Harness(processor, managed, escrow, activity, errors, control), activity


def command(app: str, i: int) -> ProvisioningCommand:
    return for_app(app, user_cmd(f"{app}{i}"))[0]


async def test_a_rate_limited_app_does_not_hold_back_another(scim_target: ScimTarget) -> None:
    h, activity = two_apps(scim_target.base_url, scim_target.token, writer_batch=16)
    try:
        # Interleaved as a full sync of both apps arrives: the slow app's commands first.
        for i in range(USERS):
            await h.feed(command(SLOW, i), command(FAST, i))
        await asyncio.wait_for(activity.fast_done.wait(), timeout=60)
        slow_done = sum(1 for r in h.activity() if r.app == SLOW and r.status == "success")
        # Each slow user is a lookup and a create: 2.5 users/s. The fast app's 40 users took
        # a moment, in which the slow app wrote a handful; held back to the slow app's pace,
        # the fast app would have finished along with most of the slow app's users.
        assert slow_done <= USERS // 4, slow_done
        slow = h.processor.writers[SLOW].client.limiter
        assert slow is not None and slow.limits.requests_per_second == 5
        await h.settle(wait=60)
        assert sum(1 for r in h.activity() if r.app == SLOW and r.status == "success") == USERS
        assert not h.errors()
        assert h.pending_acks == 0
    finally:
        for writer in h.processor.writers.values():
            await writer.client.aclose()
