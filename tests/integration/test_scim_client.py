"""ScimClient and services.scim.paths against a real SCIM server we did not write: scim2-server,
started as a subprocess by services.devstack.scim_target."""

from __future__ import annotations

import contextlib
import re
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from urllib.parse import parse_qs

import httpx
import pytest

from services.devstack.scim_target import ScimTarget, start_scim_target
from services.runtime.errors import (
    ConflictError,
    CredentialsError,
    NotFoundError,
    RejectedError,
    TransientError,
)
from services.scim.client import SCIM_JSON, ScimClient, attempts_of
from services.scim.paths import (
    CORE_USER,
    ENTERPRISE_USER,
    build_resource,
    patch_operations,
    read_path,
)
from tests.support.faultproxy import FaultProxy
from tests.support.fixtures import server_fixture
from tests.support.scim_client import NO_WAIT, unique

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

WORK_EMAIL = 'emails[type eq "work"].value'
MOBILE = 'phoneNumbers[type eq "mobile"].value'
DEPARTMENT = f"{ENTERPRISE_USER}:department"
MANAGER = f"{ENTERPRISE_USER}:manager"


scim_target = server_fixture(start_scim_target, scope="module",
                             doc="One server per module (start-up takes ~1 s); tests use unique user names.")


@pytest.fixture
async def client(scim_target: ScimTarget) -> AsyncIterator[ScimClient]:
    async with ScimClient(scim_target.base_url, scim_target.token, backoff=NO_WAIT) as c:
        yield c


@contextlib.contextmanager
def socket_bound_but_not_listening() -> Iterator[int]:
    """A loopback port nobody listens on, held so that no other process takes it meanwhile."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


# -- the lifecycle the writer drives -------------------------------------------------------


async def test_create_find_patch_get_delete(client: ScimClient) -> None:
    name = unique("ada")
    created = await client.create_user(build_resource({
        "userName": name, "active": True, "name.givenName": "Ada", "name.familyName": "Lovelace",
        WORK_EMAIL: name, DEPARTMENT: "Engineering", MANAGER: "m-1",
    }))
    assert created.id
    assert created.etag is not None
    assert read_path(created.body, MANAGER) == "m-1"

    # userName is not case-exact: Entra-style matching finds it whatever the case
    found = await client.find_users("userName", name.upper())
    assert [u.id for u in found] == [created.id]

    ops = patch_operations({"name.givenName": "Augusta", WORK_EMAIL: f"new-{name}",
                            "active": False, DEPARTMENT: "Research"}, current=created.body)
    assert await client.patch_user(created.id, ops) is None  # scim2-server answers 204

    current = await client.get_user(created.id)
    assert read_path(current.body, "name.givenName") == "Augusta"
    assert read_path(current.body, "name.familyName") == "Lovelace"
    assert read_path(current.body, WORK_EMAIL) == f"new-{name}"
    assert read_path(current.body, "active") is False
    assert read_path(current.body, DEPARTMENT) == "Research"
    assert current.etag not in (None, created.etag)

    await client.delete_user(created.id)
    with pytest.raises(NotFoundError) as info:
        await client.get_user(created.id)
    assert info.value.status == 404
    assert attempts_of(info.value) == 1
    with pytest.raises(NotFoundError):
        await client.delete_user(created.id)


async def test_find_by_other_matching_attributes(client: ScimClient) -> None:
    name, external_id = unique(), str(uuid.uuid4())
    created = await client.create_user(build_resource(
        {"userName": name, "externalId": external_id, WORK_EMAIL: name}))
    for attribute, value in [("externalId", external_id), (WORK_EMAIL, name),
                             ("userName", name)]:
        assert [u.id for u in await client.find_users(attribute, value)] == [created.id]
    assert await client.find_users("externalId", external_id.upper()) == []  # case-exact
    assert await client.find_users("userName", unique()) == []


async def test_find_escapes_quotes_and_backslashes(client: ScimClient) -> None:
    name = f'o"hara\\{uuid.uuid4().hex[:6]}'
    created = await client.create_user(build_resource({"userName": name}))
    assert [u.id for u in await client.find_users("userName", name)] == [created.id]


async def test_patch_adds_a_filtered_element_that_does_not_exist_yet(client: ScimClient) -> None:
    created = await client.create_user(build_resource({"userName": unique(), WORK_EMAIL: "w@x"}))

    # RFC 7644 §3.5.2.3: a replace whose filter matches nothing fails with noTarget...
    with pytest.raises(RejectedError, match=r"\[noTarget\]") as info:
        await client.patch_user(created.id, patch_operations({MOBILE: "+1 555 0100"}))
    assert info.value.status == 400

    # ...which is why patch_operations adds the whole element when given the current state.
    ops = patch_operations({MOBILE: "+1 555 0100"}, current=created.body)
    await client.patch_user(created.id, ops)
    current = await client.get_user(created.id)
    assert read_path(current.body, MOBILE) == "+1 555 0100"

    # and removing an email removes the element, not just its address
    await client.patch_user(created.id, patch_operations({WORK_EMAIL: None}, current=current.body))
    assert read_path((await client.get_user(created.id)).body, "emails") is None


async def test_patch_with_a_stale_etag_is_a_conflict(client: ScimClient) -> None:
    created = await client.create_user(build_resource({"userName": unique()}))
    await client.patch_user(created.id, patch_operations({"displayName": "first"}))
    with pytest.raises(ConflictError) as info:
        await client.patch_user(created.id, patch_operations({"displayName": "second"}),
                                if_match=created.etag)
    assert info.value.status == 412


# -- errors a real server gives ------------------------------------------------------------


async def test_creating_the_same_user_name_twice_is_a_conflict(client: ScimClient) -> None:
    name = unique()
    await client.create_user(build_resource({"userName": name}))
    for duplicate in (name, name.upper()):  # uniqueness is case-insensitive, like userName
        with pytest.raises(ConflictError) as info:
            await client.create_user(build_resource({"userName": duplicate}))
        assert info.value.status == 409
        assert "[uniqueness]" in str(info.value)
        assert attempts_of(info.value) == 1


async def test_invalid_body_is_rejected_with_the_targets_detail(client: ScimClient) -> None:
    with pytest.raises(RejectedError) as info:
        await client.create_user(build_resource({"userName": unique(), "active": "maybe"}))
    assert info.value.status == 400
    assert info.value.detail is not None
    assert "active" in info.value.detail


async def test_wrong_token_is_a_credentials_error(scim_target: ScimTarget) -> None:
    async with ScimClient(scim_target.base_url, "not-the-token", backoff=NO_WAIT) as c:
        with pytest.raises(CredentialsError) as info:
            await c.find_users("userName", "anyone@example.com")
    assert info.value.status == 401
    assert "refused the bearer token" in str(info.value)
    assert "not-the-token" not in str(info.value)
    assert scim_target.token not in repr(info.value)


# -- test connection -----------------------------------------------------------------------


async def test_connection_succeeds(client: ScimClient) -> None:
    await client.test_connection()
    await client.test_connection("externalId")


async def test_connection_to_a_wrong_path_says_to_check_the_base_url(
        scim_target: ScimTarget) -> None:
    wrong = scim_target.base_url.replace("/v2", "/scim/v2")
    async with ScimClient(wrong, scim_target.token) as c:
        with pytest.raises(NotFoundError) as info:
            await c.test_connection()
    message = str(info.value)
    assert message.startswith(f"test connection failed: GET {wrong}/Users -> 404 Not Found")
    assert "check the application's base URL" in message


async def test_connection_with_a_wrong_token(scim_target: ScimTarget) -> None:
    async with ScimClient(scim_target.base_url, "wrong") as c:
        with pytest.raises(CredentialsError, match=r"test connection failed: .* 401 Unauthorized"):
            await c.test_connection()


async def test_connection_refused_is_reported_precisely() -> None:
    with socket_bound_but_not_listening() as port:
        async with ScimClient(f"http://127.0.0.1:{port}/v2", "t", attempts=5) as c:
            with pytest.raises(TransientError) as info:
                await c.test_connection()
    assert f"connection refused by 127.0.0.1:{port}: nothing is listening there" in str(info.value)
    assert attempts_of(info.value) == 1  # a test connection is one attempt
    # The chain is kept for the log: down to the operating system's refusal.
    chain: list[BaseException] = []
    cause: BaseException | None = info.value
    while cause is not None:
        chain.append(cause)
        cause = cause.__cause__
    assert any(isinstance(c, ConnectionRefusedError) for c in chain)


async def test_unknown_host_is_reported_precisely() -> None:
    # .invalid never resolves (RFC 6761), online or off.
    async with ScimClient("https://scim.example.invalid/v2", "t") as c:
        with pytest.raises(TransientError, match=re.escape("cannot resolve host 'scim.example.invalid'")):
            await c.test_connection()


async def test_tls_to_a_plain_http_port_is_reported_precisely(scim_target: ScimTarget) -> None:
    https = scim_target.base_url.replace("http://", "https://")
    async with ScimClient(https, scim_target.token) as c:
        with pytest.raises(TransientError, match=r"TLS handshake with .* failed"):
            await c.test_connection()


# -- the target process itself -------------------------------------------------------------


async def test_each_target_starts_empty_and_stops(scim_target: ScimTarget) -> None:
    name = unique()
    async with ScimClient(scim_target.base_url, scim_target.token) as c:
        await c.create_user(build_resource({"userName": name}))
    with start_scim_target(token="fixed-token") as other:
        assert other.base_url != scim_target.base_url
        assert other.token == "fixed-token"
        assert "fixed-token" not in repr(other)
        async with ScimClient(other.base_url, other.token) as c:
            assert await c.find_users("userName", name) == []
    assert not other.running
    other.stop()  # idempotent



def test_target_starts_with_a_token_that_looks_like_an_option() -> None:
    # secrets.token_urlsafe() starts with "-" about once in 64 starts; argparse must not
    # take it for an option (this once failed a whole CI run).
    with start_scim_target(token="-looks-like-an-option") as target:
        assert target.running


# -- groups and the generic resource API ---------------------------------------------------


@pytest.fixture
def recorder(scim_target: ScimTarget) -> Iterator[FaultProxy]:
    """A fault proxy without faults: it only records what the client sent."""
    with FaultProxy(scim_target.base_url) as proxy:
        yield proxy


def bulk_create_users(target: ScimTarget, count: int) -> list[str]:
    """Create ``count`` users with SCIM Bulk requests (test setup, not the code under test)."""
    ids: list[str] = []
    for start in range(0, count, 400):  # scim2-server takes at most 1 MiB per bulk request
        operations = [{"method": "POST", "path": "/Users", "bulkId": str(i),
                       "data": {"schemas": [CORE_USER], "userName": unique(f"m{i}")}}
                      for i in range(start, min(count, start + 400))]
        response = httpx.post(
            f"{target.base_url}/Bulk", timeout=60, json={
                "schemas": ["urn:ietf:params:scim:api:messages:2.0:BulkRequest"], "Operations": operations},
            headers={"Authorization": f"Bearer {target.token}", "Content-Type": SCIM_JSON})
        response.raise_for_status()
        ids += [op["location"].rsplit("/", 1)[1] for op in response.json()["Operations"]]
    assert len(set(ids)) == count
    return ids


def members_at_target(target: ScimTarget, group_id: str) -> set[str]:
    response = httpx.get(f"{target.base_url}/Groups/{group_id}",
                         headers={"Authorization": f"Bearer {target.token}"})
    response.raise_for_status()
    return {m["value"] for m in response.json().get("members", [])}


async def test_group_lifecycle(client: ScimClient) -> None:
    name = unique("group")
    created = await client.create("group", build_resource({"displayName": name, "externalId": name},
                                                          schemas_for="Group"))
    assert created.etag is not None
    assert [g.id for g in await client.find("group", "displayName", name)] == [created.id]
    assert [g.id for g in await client.find("group", "externalId", name)] == [created.id]

    await client.update("group", created.id, {"displayName": f"{name}-renamed"}, current=created)
    renamed = await client.get("group", created.id)
    assert read_path(renamed.body, "displayName") == f"{name}-renamed"
    assert read_path(renamed.body, "externalId") == name

    await client.delete("group", created.id)
    with pytest.raises(NotFoundError):
        await client.get("group", created.id)


async def test_a_thousand_members_by_deltas_then_five_changes_send_only_those(
        scim_target: ScimTarget, recorder: FaultProxy) -> None:
    user_ids = bulk_create_users(scim_target, 1005)
    first, later = user_ids[:1000], user_ids[1000:]
    async with ScimClient(recorder.url, scim_target.token, backoff=NO_WAIT,
                          max_patch_operations=100) as c:
        group = await c.create("group", build_resource({"displayName": unique("big")}, schemas_for="Group"))
        await c.patch_members(group.id, add=first, remove=[])
        patches = recorder.requests("PATCH", f"/Groups/{group.id}$")
        assert len(patches) == 10
        assert all(len(p.json()["Operations"][0]["value"]) == 100 for p in patches)
        assert members_at_target(scim_target, group.id) == set(first)

        recorder.clear_log()
        removed = first[:3]
        await c.patch_members(group.id, add=later[:2], remove=removed)
    sent = [p.json()["Operations"] for p in recorder.requests("PATCH")]
    assert sent == [
        [{"op": "add", "path": "members", "value": [{"value": later[0]}, {"value": later[1]}]}],
        [{"op": "remove", "path": f'members[value eq "{m}"]'} for m in removed],
    ]
    assert members_at_target(scim_target, group.id) == set(first[3:]) | set(later[:2])


async def test_list_follows_the_targets_pages(scim_target: ScimTarget, recorder: FaultProxy) -> None:
    async with ScimClient(recorder.url, scim_target.token, page_size=3) as c:
        tag = uuid.uuid4().hex[:8]
        created = {(await c.create_user(build_resource({"userName": f"{tag}-{i}",
                                                        "title": tag}))).id for i in range(7)}
        recorder.clear_log()
        found = await c.list("user", f'title eq "{tag}"')
    assert {r.id for r in found} == created
    pages = recorder.requests("GET", "/Users$")
    assert [parse_qs(p.query)["startIndex"] for p in pages[1:]] == [["4"], ["7"]]
    assert all(parse_qs(p.query)["count"] == ["3"] for p in pages)


async def test_update_by_put_keeps_what_it_does_not_change(scim_target: ScimTarget) -> None:
    async with ScimClient(scim_target.base_url, scim_target.token, update_method="put") as c:
        created = await c.create_user(build_resource({"userName": unique(), "title": "kept",
                                                      "name.givenName": "Ada", WORK_EMAIL: "w@x"}))
        await c.update("user", created.id, {"name.givenName": "Augusta", WORK_EMAIL: None,
                                            DEPARTMENT: "R&D"}, current=created)
        current = await c.get_user(created.id)
    assert read_path(current.body, "name.givenName") == "Augusta"
    assert read_path(current.body, "title") == "kept"
    assert read_path(current.body, "emails") in (None, [])
    assert read_path(current.body, DEPARTMENT) == "R&D"


@pytest.mark.parametrize("method", ["patch", "put"])
async def test_a_stale_etag_is_re_read_and_the_update_retried_once(
        scim_target: ScimTarget, recorder: FaultProxy, method: str) -> None:
    async with ScimClient(recorder.url, scim_target.token, update_method=method) as c:  # type: ignore[arg-type]
        created = await c.create_user(build_resource({"userName": unique(), "title": "v1"}))
        await c.update("user", created.id, {"nickName": "someone else"}, current=created)  # now stale
        recorder.clear_log()
        await c.update("user", created.id, {"title": "v2"}, current=created)
        current = await c.get_user(created.id)
    # A PATCH with the stale ETag gets 412 and is re-read; a PUT is read-modify-write, so it
    # is built from a GET just before and never sent stale.
    expected = ([("PATCH", 412), ("GET", 200), ("PATCH", 204)] if method == "patch"
                else [("GET", 200), ("PUT", 200), ("GET", 200)])
    assert [(e.method, e.status) for e in recorder.log][:3] == expected
    assert read_path(current.body, "title") == "v2"
    assert read_path(current.body, "nickName") == "someone else"


async def test_an_update_that_changes_nothing_sends_nothing(scim_target: ScimTarget,
                                                           recorder: FaultProxy) -> None:
    async with ScimClient(recorder.url, scim_target.token) as c:
        created = await c.create_user(build_resource({"userName": unique()}))
        recorder.clear_log()
        await c.update("user", created.id, {}, current=created)
        await c.update("user", created.id, {"nickName": None}, current=created)  # already absent
    assert recorder.log == []


async def test_large_patches_are_chunked(scim_target: ScimTarget, recorder: FaultProxy) -> None:
    async with ScimClient(recorder.url, scim_target.token, max_patch_operations=2) as c:
        created = await c.create_user(build_resource({"userName": unique()}))
        changes = {"title": "t", "nickName": "n", "displayName": "d", "locale": "en-GB", "timezone": "UTC"}
        recorder.clear_log()
        await c.update("user", created.id, changes, current=created)
        current = await c.get_user(created.id)
    assert [len(p.json()["Operations"]) for p in recorder.requests("PATCH")] == [2, 2, 1]
    assert all(read_path(current.body, k) == v for k, v in changes.items())


async def test_entra_dialect_member_shapes_reach_the_target(scim_target: ScimTarget) -> None:
    users = bulk_create_users(scim_target, 2)
    async with ScimClient(scim_target.base_url, scim_target.token, dialect="entra") as c:
        group = await c.create("group", build_resource({"displayName": unique("g")}, schemas_for="Group"))
        await c.patch_members(group.id, add=users, remove=[])
        assert members_at_target(scim_target, group.id) == set(users)
        # scim2-server is strict RFC 7644: a remove with a value (Entra's shape) is refused,
        # with the target's own words; that is why the dialect is per app.
        with pytest.raises(RejectedError, match="remove operation carries no value"):
            await c.patch_members(group.id, add=[], remove=users[:1])
