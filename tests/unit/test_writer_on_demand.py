"""Provision on demand of an object already in sync still reports its outcome and trace."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import msgspec

from schemas import ManagedObject, MatchingAttribute, ProvisioningCommand
from services.runtime.config import Application
from services.scim.client import ScimClient
from services.writer.apply import Outcome, Writer

APP = msgspec.convert({
    "name": "crm", "target": {"base_url": "http://127.0.0.1:9/v2", "token": "env:T"},
    "mappings": {"user": {"attributes": [{"target": "userName", "source": "upn", "matching": 1}]}},
}, Application)


def _command(*, on_demand: bool) -> ProvisioningCommand:
    return ProvisioningCommand(
        app="crm", object_type="user", source="hr", source_id="u1", operation="upsert",
        reason="user is assigned directly", attributes={"userName": "ada@example.com"},
        matching=[MatchingAttribute(target="userName", value="ada@example.com")],
        change_id="req-1", observed_at=datetime.now(UTC), on_demand=on_demand)


def _in_sync() -> ManagedObject:
    now = datetime.now(UTC)
    return ManagedObject(app="crm", object_type="user", source_id="u1", target_id="t-1",
                         attributes={"userName": "ada@example.com", "active": True},
                         origin="created", created_at=now, updated_at=now)


async def _handle(on_demand: bool) -> Outcome:
    # Port 9 (discard) answers nothing: the test fails if the writer calls the target at all.
    async with ScimClient(APP.target.base_url, "token") as client:
        return await Writer(APP, client).handle(_command(on_demand=on_demand), _in_sync())


def test_on_demand_in_sync_object_reports_skip_with_its_steps() -> None:
    outcome = asyncio.run(_handle(on_demand=True))
    activity = outcome.activity
    assert activity is not None
    assert (activity.action, activity.status, activity.change_id) == ("skip", "skipped", "req-1")
    assert [s.name for s in activity.steps] == ["import", "scope", "match", "action"]
    assert "already in sync" in activity.steps[-1].detail
    assert activity.target_id == "t-1"
    assert outcome.changed_state is False


def test_in_sync_object_without_a_request_reports_nothing() -> None:
    outcome = asyncio.run(_handle(on_demand=False))
    assert outcome.activity is None
