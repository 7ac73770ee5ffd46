"""ScimClient and scim_paths against a real SCIM server we did not write: scim2-server,
started as a subprocess by services.runtime.scim_target."""

from __future__ import annotations

import contextlib
import re
import socket
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from services.runtime.errors import (
    ConflictError,
    CredentialsError,
    NotFoundError,
    RejectedError,
    TransientError,
)
from services.runtime.scim_target import ScimTarget, start_scim_target
from services.writer.scim_client import Backoff, ScimClient, attempts_of
from services.writer.scim_paths import (
    ENTERPRISE_USER,
    build_resource,
    patch_operations,
    read_path,
)

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

WORK_EMAIL = 'emails[type eq "work"].value'
MOBILE = 'phoneNumbers[type eq "mobile"].value'
DEPARTMENT = f"{ENTERPRISE_USER}:department"
MANAGER = f"{ENTERPRISE_USER}:manager"
NO_WAIT = Backoff(wait_initial=0.0, wait_max=0.0, wait_jitter=0.0)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def scim_target() -> Iterator[ScimTarget]:
    """One server per module (start-up takes ~1 s); tests use unique user names."""
    with start_scim_target() as target:
        yield target


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


def unique(prefix: str = "user") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}@example.com"


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
    assert isinstance(info.value.__cause__, httpx.ConnectError)


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
