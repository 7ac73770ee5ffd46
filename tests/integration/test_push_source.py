"""The push endpoint over real HTTP: the ingest loop runs a PushDirectory on a free port with a
recording publisher, and a client pushes SCIM resources, BulkRequests and DirectoryChange JSON."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from schemas import DirectoryChange, ErrorRecord
from services.ingest.sources.push import BULK_REQUEST, BULK_RESPONSE, PushDirectory
from services.ingest.worker import Publisher, SourceIngest
from services.runtime.config import PushSource

pytestmark = pytest.mark.integration

TOKEN = "push-test-token-4f1a"
USER = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"


class Recorded:
    def __init__(self) -> None:
        self.changes: list[DirectoryChange] = []
        self.errors: list[ErrorRecord] = []
        self.flushes = 0

    def publisher(self) -> Publisher:
        async def change(c: DirectoryChange) -> None:
            self.changes.append(c)

        async def error(e: ErrorRecord) -> None:
            self.errors.append(e)

        async def marker(m: Any) -> None:
            raise AssertionError("a push source runs no full scan")

        async def flush() -> None:
            self.flushes += 1

        return Publisher(change, marker, error, flush)

    def last(self, oid: str) -> DirectoryChange:
        return next(c for c in reversed(self.changes) if c.object_id == oid)


@contextlib.asynccontextmanager
async def pushing() -> AsyncIterator[tuple[httpx.AsyncClient, Recorded]]:
    recorded = Recorded()
    publisher = recorded.publisher()
    source = PushDirectory(PushSource(name="hr-push", token="env:PUSH_TOKEN", listen="127.0.0.1:0"), TOKEN,
                           publisher.error)
    ingest = SourceIngest(source, publisher)
    task = asyncio.create_task(ingest.run())
    await asyncio.wait_for(source.listening.wait(), 10)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{source.port}",
                                     headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            yield client, recorded
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def run(scenario: Callable[[httpx.AsyncClient, Recorded], Awaitable[None]]) -> None:
    async def main() -> None:
        async with pushing() as (client, recorded):
            await scenario(client, recorded)

    asyncio.run(main())


def scim_user(external_id: str, **extra: Any) -> dict[str, Any]:
    return {"schemas": [USER, ENTERPRISE], "externalId": external_id,
            "userName": f"{external_id}@contoso.com",
            "name": {"givenName": "Ada", "familyName": "Lovelace"}, "displayName": "Ada Lovelace",
            "emails": [{"type": "work", "value": f"{external_id}@contoso.com", "primary": True}],
            "title": "Engineer", "active": True,
            ENTERPRISE: {"employeeNumber": "1001", "department": "R&D", "manager": {"value": "E0"}}, **extra}


def test_without_the_token_nothing_is_accepted() -> None:
    async def scenario(client: httpx.AsyncClient, recorded: Recorded) -> None:
        for headers in ({"Authorization": "Bearer wrong"}, {"Authorization": ""}):
            r = await client.post("/scim/v2/Users", json=scim_user("E1"), headers=headers)
            assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
            assert TOKEN not in r.text
        assert recorded.changes == []

    run(scenario)


def test_scim_user_post_put_delete_become_changes_with_mapped_attributes() -> None:
    async def scenario(client: httpx.AsyncClient, recorded: Recorded) -> None:
        r = await client.post("/scim/v2/Users", json=scim_user("E1"),
                              headers={"Content-Type": "application/scim+json"})
        assert r.status_code == 201 and r.json()["id"] == "E1"
        created = recorded.last("E1")
        assert (created.source, created.object_type, created.operation) == ("hr-push", "user", "upsert")
        assert created.attributes == {
            "id": "E1", "userPrincipalName": "E1@contoso.com", "externalId": "E1",
            "displayName": "Ada Lovelace",
            "givenName": "Ada", "surname": "Lovelace", "mail": "E1@contoso.com", "jobTitle": "Engineer",
            "employeeId": "1001", "department": "R&D", "manager": "E0", "accountEnabled": True}
        assert recorded.flushes >= 1  # answered only once the change was on the topic
        r = await client.put("/scim/v2/Users/E1", json={**scim_user("E1"), "active": False})
        assert r.status_code == 200 and recorded.last("E1").attributes["accountEnabled"] is False
        r = await client.delete("/scim/v2/Users/E1")
        assert r.status_code == 204 and recorded.last("E1").operation == "delete"

    run(scenario)


def test_groups_give_their_members_memberships() -> None:
    async def scenario(client: httpx.AsyncClient, recorded: Recorded) -> None:
        await client.post("/scim/v2/Users", json=scim_user("E1"))
        await client.post("/scim/v2/Users", json=scim_user("E2"))
        group = {"schemas": [GROUP], "externalId": "G1", "displayName": "Staff", "members": [{"value": "E1"}]}
        assert (await client.post("/scim/v2/Groups", json=group)).status_code == 201
        assert recorded.last("G1").members == ["E1"]
        assert recorded.last("E1").memberships == ["G1"]
        group["members"] = [{"value": "E2"}]
        assert (await client.put("/scim/v2/Groups/G1", json=group)).status_code == 200
        assert recorded.last("E1").memberships == [] and recorded.last("E2").memberships == ["G1"]

    run(scenario)


def test_bulk_request_applies_the_good_operations_and_rejects_the_bad_ones_with_reasons() -> None:
    async def scenario(client: httpx.AsyncClient, recorded: Recorded) -> None:
        bulk = {"schemas": [BULK_REQUEST], "Operations": [
            {"method": "POST", "bulkId": "b1", "path": "/Users", "data": scim_user("E1")},
            {"method": "POST", "bulkId": "b2", "path": "/Users", "data": {**scim_user("E2"), "userName": ""}},
            {"method": "POST", "bulkId": "b3", "path": "/Users", "data": scim_user("E3", active="yes")},
            {"method": "PATCH", "bulkId": "b4", "path": "/Users/E1", "data": {}},
            {"method": "POST", "bulkId": "b5", "path": "/Devices", "data": {}},
            {"method": "PUT", "bulkId": "b6", "path": "/Users/E6", "data": scim_user("ignored")},
            {"method": "DELETE", "bulkId": "b7", "path": "/Users/E9"},
        ]}
        r = await client.post("/scim/v2/Bulk", json=bulk)
        assert r.status_code == 200
        body = r.json()
        assert body["schemas"] == [BULK_RESPONSE]
        statuses = {op["bulkId"]: op["status"] for op in body["Operations"]}
        assert statuses == {"b1": "201", "b2": "400", "b3": "400", "b4": "501", "b5": "400", "b6": "200",
                            "b7": "204"}
        reasons = {op["bulkId"]: op["response"]["detail"] for op in body["Operations"] if "response" in op}
        assert "userName" in reasons["b2"] and "active" in reasons["b3"] and "PATCH" in reasons["b4"]
        assert "/Devices" in reasons["b5"]
        assert [(c.object_id, c.operation) for c in recorded.changes] == [("E1", "upsert"), ("E6", "upsert"),
                                                                          ("E9", "delete")]
        assert len(recorded.errors) == 4
        assert all(e.error_code == "PushRejected" and e.payload for e in recorded.errors)
        assert any("userName" in e.reason for e in recorded.errors)
        assert all(TOKEN not in (e.reason + (e.payload or "")) for e in recorded.errors)

    run(scenario)


def test_directory_change_json_and_bad_json() -> None:
    async def scenario(client: httpx.AsyncClient, recorded: Recorded) -> None:
        change = {"object_type": "user", "object_id": "u-1", "operation": "upsert",
                  "attributes": {"userPrincipalName": "u1@contoso.com"}, "memberships": ["g-1"]}
        r = await client.post("/changes", json=[change, {**change, "object_type": "device"}])
        assert r.status_code == 200
        assert [res["status"] for res in r.json()["results"]] == [200, 400]
        assert recorded.last("u-1").memberships == ["g-1"]
        assert recorded.last("u-1").attributes["userPrincipalName"] == "u1@contoso.com"
        r = await client.post("/changes", content=b"{not json", headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and "not JSON" in r.json()["detail"]
        r = await client.post("/changes", content=b"x", headers={"Content-Type": "text/plain"})
        assert r.status_code == 415

    run(scenario)
