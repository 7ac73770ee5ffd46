"""send_bulk against the two real SCIM servers we did not write: scim2-server and SCIMMY.

Whether bulk is used is decided from what the target declares in /ServiceProviderConfig
(``capabilities.discover`` -> ``bulk_limits``), with the limits it declares. Measured:

- scim2-server 0.8.3 declares ``bulk: {supported: true, maxOperations: 1000,
  maxPayloadSize: 1048576}`` and implements it: bulkId references (forward ones too),
  per-operation errors (409 ``uniqueness``, 400 ``invalidValue``, 412 on a stale
  ``version``, 404), failOnErrors (the operations after it are left out of the answer),
  413 for too many operations or bytes, no ``response`` body on success (only
  ``location`` and ``version``). A circle of references is refused with 409.
- SCIMMY 1.3.5 (scimmy-routers 1.3.2) declares the same limits and implements it too,
  with relative ``location``s (``/scim/v2/Users/<id>``), but gets ``bulkId:`` references
  within one request wrong: an operation with several references has only the last one
  resolved, the others stored as the literal ``bulkId:`` text, and a 201 (shown below);
  and any forward reference is taken for a circular one, which creates the referring
  resource twice. send_bulk therefore sends referents first and, unless told the target
  resolves references, puts the referring operations in a later request with real ids.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from services.devstack.scim_target import ScimTarget
from services.runtime.errors import ConflictError, RejectedError, TargetError
from services.scim import client as scim_client
from services.scim.capabilities import discover
from services.scim.client import Backoff, ScimClient
from services.writer.bulk import BulkLimits, BulkOperation, bulk_limits, send_bulk

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

USER = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
NO_WAIT = Backoff(wait_initial=0.0, wait_max=0.0, wait_jitter=0.0)
DECLARED = BulkLimits(max_operations=1000, max_payload_size=1048576)


@dataclass(frozen=True)
class Target:
    name: str
    server: ScimTarget

    @property
    def resolves_references(self) -> bool:
        """Whether it resolves several ``bulkId:`` references in one request (measured)."""
        return self.name == "scim2-server"


@pytest.fixture(params=["scim2-server", "scimmy"])
def target(request: pytest.FixtureRequest) -> Target:
    fixture = "scim_target" if request.param == "scim2-server" else "scimmy_target"
    return Target(request.param, request.getfixturevalue(fixture))


@pytest.fixture
async def client(target: Target) -> AsyncIterator[ScimClient]:
    async with ScimClient(target.server.base_url, target.server.token, backoff=NO_WAIT) as c:
        yield c


class ClientTransport:
    """ScimClient as a BulkTransport, counting requests: its ``post_document`` once it has
    one, until then the same code through its private ``_call`` (proposed for scim_client.py)."""

    def __init__(self, client: ScimClient) -> None:
        self.client = client
        self.requests = 0

    async def post_document(self, path: str, body: Mapping[str, Any], *,
                            attempts: int | None = None) -> dict[str, Any]:
        self.requests += 1
        post = getattr(self.client, "post_document", None)
        if post is not None:
            answer: dict[str, Any] = await post(path, body, attempts=attempts)
            return answer
        response = await self.client._call("POST", path.lstrip("/"), body=body, ok=(200,),
                                           attempts=attempts)
        return scim_client._json_object(response)

    def redact(self, text: str) -> str:
        return self.client._redact(text)


async def limits_of(client: ScimClient) -> BulkLimits:
    """The target's bulk limits, from what it declares; a target without bulk fails here."""
    limits = bulk_limits(await discover(client))
    assert limits is not None, "the target does not declare bulk support"
    return limits


def new_user(n: int) -> BulkOperation:
    return BulkOperation("POST", "/Users", bulk_id=f"u{n}", data={
        "schemas": [USER], "userName": f"bulk{n}@example.com", "displayName": f"Bulk User {n}",
        "name": {"givenName": f"Given{n}", "familyName": f"Family{n}"}})


def new_group(name: str, members: range) -> BulkOperation:
    return BulkOperation("POST", "/Groups", bulk_id=name, data={
        "schemas": [GROUP], "displayName": name,
        "members": [{"value": f"bulkId:u{n}"} for n in members]})


async def test_both_targets_declare_bulk_with_rfc_example_limits(client: ScimClient) -> None:
    assert await limits_of(client) == DECLARED


async def test_users_and_groups_referring_to_them_in_as_few_requests_as_possible(
        client: ScimClient, target: Target) -> None:
    limits = await limits_of(client)
    # Groups first: their members come later in the list, as a writer may batch them.
    ops = [new_group("evens", range(0, 250, 2)), new_group("all", range(250)),
           *(new_user(n) for n in range(250))]
    transport = ClientTransport(client)
    results = await send_bulk(transport, ops, max_operations=limits.max_operations,
                              max_payload_size=limits.max_payload_size,
                              target_resolves_references=target.resolves_references)
    # One request where the target resolves the groups' references; else the groups
    # follow in a second one, with the users' ids.
    assert transport.requests == (1 if target.resolves_references else 2)
    assert [r.error for r in results] == [None] * 252
    assert [r.status for r in results] == [201] * 252
    await assert_target_holds(client, results)


async def test_groups_sent_after_their_members_get_the_members_real_ids(client: ScimClient) -> None:
    """Under a small payload limit, the groups go in later requests than their members,
    with the ids the earlier answers gave in place of ``bulkId:``."""
    ops = [new_group("evens", range(0, 250, 2)), new_group("all", range(250)),
           *(new_user(n) for n in range(250))]
    transport = ClientTransport(client)
    results = await send_bulk(transport, ops, max_operations=1000, max_payload_size=16_000)
    assert transport.requests > 3
    assert [r.error for r in results] == [None] * 252
    await assert_target_holds(client, results)


async def assert_target_holds(client: ScimClient, results: list[Any]) -> None:
    """The target holds exactly the 250 users and the 2 groups, with their members."""
    user_ids = {r.bulk_id: r.id for r in results[2:]}
    users, complete = await client.list_all("user")
    assert complete
    assert {u.body["userName"]: u.id for u in users} == {
        f"bulk{n}@example.com": user_ids[f"u{n}"] for n in range(250)}
    groups, complete = await client.list_all("group")
    assert complete
    members = {g.body["displayName"]: sorted(m["value"] for m in g.body.get("members", []))
               for g in groups}
    assert members == {"evens": sorted(user_ids[f"u{n}"] for n in range(0, 250, 2)),
                       "all": sorted(user_ids[f"u{n}"] for n in range(250))}
    assert {g.id for g in groups} == {results[0].id, results[1].id}


async def test_scimmy_resolves_only_the_last_reference_of_an_operation(
        scimmy_target: ScimTarget) -> None:
    """Why references wait for a later request by default: SCIMMY answers 201 for a group
    whose members it stored as ``bulkId:`` text, all but the last."""
    async with ScimClient(scimmy_target.base_url, scimmy_target.token, backoff=NO_WAIT) as client:
        ops = [*(new_user(n) for n in range(3)), new_group("trio", range(3))]
        results = await send_bulk(ClientTransport(client), ops, max_operations=10,
                                  max_payload_size=None, target_resolves_references=True)
        assert [r.status for r in results] == [201] * 4
        group = await client.get("group", results[3].id or "")
    assert [m["value"] for m in group.body["members"]] == ["bulkId:u0", "bulkId:u1", results[2].id]


async def test_only_the_invalid_operations_fail(client: ScimClient) -> None:
    limits = await limits_of(client)
    await client.create("user", {"schemas": [USER], "userName": "bulk3@example.com"})
    no_user_name = BulkOperation("POST", "/Users", bulk_id="bad",
                                 data={"schemas": [USER], "displayName": "no userName"})
    ops = [new_user(n) for n in range(6)] + [no_user_name]
    results = await send_bulk(ClientTransport(client), ops, max_operations=limits.max_operations,
                              max_payload_size=limits.max_payload_size)
    assert [type(r.error) if r.error else None for r in results] == [
        None, None, None, ConflictError, None, None, RejectedError]
    assert [r.status for r in results] == [201, 201, 201, 409, 201, 201, 400]
    conflict = results[3].error
    assert conflict is not None
    assert "[uniqueness]" in str(conflict)
    assert conflict.detail
    users, _ = await client.list_all("user")
    assert len(users) == 6  # five from the bulk and the one created before


async def test_a_request_over_the_declared_limits_fails_as_a_whole(client: ScimClient) -> None:
    """What the writer meets when a target's limits are not what it declared: the 413 of
    the whole request is every operation's error, and nothing is applied."""
    limits = await limits_of(client)
    ops = [BulkOperation("DELETE", f"/Users/missing-{n}") for n in range(limits.max_operations + 1)]
    transport = ClientTransport(client)
    results = await send_bulk(transport, ops, max_operations=limits.max_operations + 1,
                              max_payload_size=None)
    assert transport.requests == 1
    errors = [r.error for r in results]
    assert all(isinstance(e, RejectedError) and e.status == 413 for e in errors)
    assert len({id(e) for e in errors}) == len(errors)
    assert isinstance(errors[0], TargetError)
    assert "maxOperations" in str(errors[0])
