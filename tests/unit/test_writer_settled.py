"""Commands that change nothing are done at once, without a job (an unchanged full scan is
a million of them); anything that could write, store, report or wait still runs as a job.

``Writer.settled`` must never say "nothing to do" where ``Writer.handle`` would do
something: each case below is checked against ``handle`` itself. The target is port 9
(discard): a call to it fails the case.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest

from schemas import ManagedObject, MatchingAttribute, ProvisioningCommand
from schemas.codecs import encode
from services.runtime.config import Application
from services.runtime.errors import TransientError
from services.runtime.kafka import partition_for
from services.runtime.settings import load_settings
from services.scim.client import ScimClient, ScimResource
from services.writer.apply import Writer
from services.writer.discovery import TargetSnapshot, _Listing
from services.writer.worker import CommandProcessor
from tests.support.writer_harness import Recorder

PARTITIONS = 3
KEY = b"crm/u1"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _app(**extra: Any) -> Application:
    return msgspec.convert({
        "name": "crm", "target": {"base_url": "http://127.0.0.1:9/v2", "token": "env:T"},
        "mappings": {"user": {"attributes": [
            {"target": "userName", "source": "upn", "matching": 1},
            {"target": "displayName", "source": "name"}]}}, **extra,
    }, Application)


def _command(name: str = "Ada", **changes: Any) -> ProvisioningCommand:
    command = ProvisioningCommand(
        app="crm", object_type="user", source="hr", source_id="u1", operation="upsert",
        reason="in scope", attributes={"userName": "ada@example.com", "displayName": name},
        matching=[MatchingAttribute(target="userName", value="ada@example.com")],
        change_id="c-1", observed_at=T0)
    return msgspec.structs.replace(command, **changes)


def _state(**changes: Any) -> ManagedObject:
    state = ManagedObject(app="crm", object_type="user", source_id="u1", target_id="t-1",
                          attributes={"userName": "ada@example.com", "displayName": "Ada",
                                      "active": True},
                          origin="created", created_at=T0, updated_at=T0)
    return msgspec.structs.replace(state, **changes)


CASES: dict[str, tuple[ProvisioningCommand, ManagedObject | None, dict[str, Any]]] = {
    "unchanged": (_command(), _state(), {}),
    "a changed value": (_command("Ada L."), _state(), {}),
    "never managed": (_command(), None, {}),
    "disabled in the target, enabled in the source": (_command(), _state(attributes={
        "userName": "ada@example.com", "displayName": "Ada", "active": False}), {}),
    "an attribute no longer mapped": (_command(), _state(attributes={
        "userName": "ada@example.com", "displayName": "Ada", "active": True, "title": "Dr"}), {}),
    "out of scope": (_command(operation="disable", attributes={}), _state(), {}),
    "on demand": (_command(on_demand=True), _state(), {}),
    "dry run": (_command(), _state(), {"dry_run": True}),
    "a group": (_command(object_type="group"), _state(object_type="group"), {}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_settled_only_where_handle_does_nothing(case: str) -> None:
    command, state, extra = CASES[case]

    async def run() -> tuple[bool, bool]:
        async with ScimClient("http://127.0.0.1:9/v2", "token", timeout=1.0) as client:
            writer = Writer(_app(**extra), client)
            settled = writer.settled(command, state)
            try:
                outcome = await asyncio.wait_for(writer.handle(command, state), 0.5)
            except (TransientError, TimeoutError):
                return settled, False  # it called the target (retrying there): not nothing
            quiet = (outcome.activity is None and outcome.error is None and outcome.retry is None
                     and not outcome.changed_state)
            return settled, quiet

    settled, quiet = asyncio.run(run())
    assert settled == (case == "unchanged")
    assert not settled or quiet  # never "nothing to do" where handle does something


def _event(command: ProvisioningCommand, offset: int) -> Any:
    return SimpleNamespace(key=KEY, value=encode(command), message=SimpleNamespace(
        partition=partition_for(KEY, PARTITIONS), offset=offset, generation_id=1))


class _Processor:
    """A processor over a dict as its managed table, one app on port 9, acks recorded."""

    def __init__(self, state: ManagedObject | None, **extra: Any) -> None:
        self.client = ScimClient("http://127.0.0.1:9/v2", "token", timeout=1.0)
        self.processor = CommandProcessor(
            load_settings({}, partitions=PARTITIONS), {"crm": Writer(_app(**extra), self.client)},
            {} if state is None else {KEY: encode(state)}, activity=Recorder(), errors=Recorder())
        self.acked: list[int] = []

    async def _ack(self, event: Any) -> None:
        self.acked.append(event.message.offset)

    async def submit(self, command: ProvisioningCommand, offset: int = 0) -> bool:
        """Submit; True if it was acknowledged at once, without a job (a job is cancelled
        before it runs: its target is port 9)."""
        await self.processor.submit(_event(command, offset), self._ack)
        ran_as_job = self.processor.scheduler.busy(KEY)
        for task in list(self.processor.scheduler.jobs):
            task.cancel()
        await asyncio.sleep(0)
        return not ran_as_job and offset in self.acked


def test_an_unchanged_command_is_acknowledged_at_once_without_a_job() -> None:
    async def run() -> tuple[bool, list[int]]:
        p = _Processor(_state())
        done = await p.submit(_command())
        await p.client.aclose()
        return done, p.acked

    assert asyncio.run(run()) == (True, [0])


@pytest.mark.parametrize("why", ["changed", "not restored", "off", "escrowed", "busy",
                                 "revoked", "held for the guard", "waiting for a link"])
def test_a_command_that_may_do_something_runs_as_a_job(why: str) -> None:
    async def run() -> bool:
        p = _Processor(_state())
        processor = p.processor
        command = _command("Ada L." if why == "changed" else "Ada")
        if why == "not restored":
            processor.restored.clear()
        elif why == "off":
            processor.app_state.paused["crm"] = {}
        elif why == "escrowed":
            processor.scheduler.escrow.put(KEY, command, 3, TransientError("503"), T0)
        elif why == "busy":
            processor.scheduler.tails[KEY] = asyncio.get_running_loop().create_future()  # type: ignore[assignment]
        elif why == "revoked":
            processor.scheduler.owns, processor.scheduler.owned = (lambda _: False), frozenset()
            processor.scheduler.owns_generation = 1
        elif why == "held for the guard":
            processor.app_state.held.put(KEY, command, "removal", T0)
        elif why == "waiting for a link":
            command = msgspec.structs.replace(command, references={"manager": "u2"})
        done = await p.submit(command)
        processor.scheduler.tails.pop(KEY, None)
        await p.client.aclose()
        return done

    assert asyncio.run(run()) is False


def test_a_scan_command_is_done_at_once_only_once_its_listing_is_over() -> None:
    async def run() -> list[bool]:
        done = []
        for over in (False, True):
            p = _Processor(_state())
            if over:  # an older scan's late command: decided without its listing, at once
                p.processor.writers["crm"]._cycles.append("scan-1")
            done.append(await p.submit(_command(cycle_id="scan-1")))
            await p.client.aclose()
        return done

    assert asyncio.run(run()) == [False, True]


@pytest.mark.parametrize("listed_name", ["Ada", "Someone else"])
def test_a_listing_that_shows_the_account_changed_in_the_target_is_not_settled(listed_name: str) -> None:
    body = {"id": "t-1", "userName": "ada@example.com", "displayName": listed_name, "active": True}
    listing = _Listing({"t-1": ScimResource(id="t-1", body=body)}, complete=True)
    snapshot = TargetSnapshot("scan-1", {"user": listing}, 0.0, T0 + timedelta(hours=1))

    async def run() -> bool:
        async with ScimClient("http://127.0.0.1:9/v2", "token") as client:
            writer = Writer(_app(drift="repair"), client)
            writer.snapshot = snapshot
            return writer.settled(_command(cycle_id="scan-1"), _state())

    assert asyncio.run(run()) is (listed_name == "Ada")
