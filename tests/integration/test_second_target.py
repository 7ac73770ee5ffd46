"""scimflow's SCIM client against a second real SCIM server we did not write: SCIMMY
(tests/support/scimmy_target.py), with its own filter parser, PatchOp implementation and
paging. The same lifecycle as tests/integration/test_scim_client.py runs on scim2-server;
where SCIMMY reads RFC 7644 differently, a test says so by name (docs/targets.md lists them).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

import httpx
import pytest

from services.devstack.scim_target import ScimTarget
from services.runtime.errors import ConflictError, CredentialsError, NotFoundError, RejectedError
from services.scim.client import ScimClient
from services.scim.paths import CORE_GROUP, CORE_USER, ENTERPRISE_USER, build_resource, read_path
from tests.support.scim_client import NO_WAIT, unique

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

WORK_EMAIL = 'emails[type eq "work"].value'
MOBILE = 'phoneNumbers[type eq "mobile"].value'
DEPARTMENT = f"{ENTERPRISE_USER}:department"
MANAGER = f"{ENTERPRISE_USER}:manager"
SCIMMY_PAGE = 20  # SCIMMY's ListResponse page size when the request names no count


@pytest.fixture
async def client(scimmy_target: ScimTarget) -> AsyncIterator[ScimClient]:
    async with ScimClient(scimmy_target.base_url, scimmy_target.token, backoff=NO_WAIT) as c:
        yield c


def ada(name: str) -> dict[str, Any]:
    return build_resource({
        "userName": name, "externalId": f"ext-{name}", "active": True, "displayName": "Ada",
        "name.givenName": "Ada", "name.familyName": "Lovelace", WORK_EMAIL: name,
        DEPARTMENT: "Engineering", MANAGER: "m-1", "title": "Analyst",
    })


# -- connection and discovery --------------------------------------------------------------


async def test_test_connection_passes_and_discovery_documents_are_read(client: ScimClient) -> None:
    await client.test_connection()
    config = await client.get_document("ServiceProviderConfig")
    assert config["patch"]["supported"] is True and config["filter"]["supported"] is True
    assert config["etag"]["supported"] is False
    types = await client.get_document("ResourceTypes")
    assert {r["name"] for r in types["Resources"]} == {"User", "Group"}
    user_type = next(r for r in types["Resources"] if r["name"] == "User")
    assert user_type["schemaExtensions"] == [{"schema": ENTERPRISE_USER, "required": False}]


async def test_wrong_token_is_a_credentials_error_that_does_not_echo_it(
        scimmy_target: ScimTarget) -> None:
    wrong = "not-the-token-" + uuid.uuid4().hex
    async with ScimClient(scimmy_target.base_url, wrong, backoff=NO_WAIT) as c:
        with pytest.raises(CredentialsError) as caught:
            await c.test_connection()
    assert caught.value.status == 401
    assert "refused the bearer token" in str(caught.value)
    assert wrong not in str(caught.value)


# -- users: create, match, update, disable, delete -----------------------------------------


async def test_created_user_is_found_by_username_and_by_external_id(client: ScimClient) -> None:
    name = unique("ada")
    created = await client.create("user", ada(name))
    assert created.id and created.body["userName"] == name
    assert [r.id for r in await client.find("user", "userName", name)] == [created.id]
    assert [r.id for r in await client.find("user", "externalId", f"ext-{name}")] == [created.id]
    assert await client.find("user", "userName", unique("nobody")) == []
    got = await client.get("user", created.id)
    assert read_path(got.body, WORK_EMAIL) == name
    assert read_path(got.body, DEPARTMENT) == "Engineering"
    assert read_path(got.body, MANAGER) == "m-1"


async def test_username_filter_is_case_sensitive_on_scimmy(client: ScimClient) -> None:
    """RFC 7643 declares userName caseExact=false, so `userName eq "ADA@…"` should find
    ada@…; SCIMMY compares exactly (scim2-server does not). A source whose case differs
    from the target's will not match there."""
    name = unique("ada")
    await client.create("user", ada(name))
    assert await client.find("user", "userName", name.upper()) == []


async def test_patch_brings_each_kind_of_path_and_removes_with_none(client: ScimClient) -> None:
    created = await client.create("user", ada(unique("ada")))
    new_mail = unique("augusta")
    await client.update("user", created.id, {
        "name.givenName": "Augusta", WORK_EMAIL: new_mail, MOBILE: "+44 20 7946 0000",
        DEPARTMENT: "Mathematics", "displayName": "Augusta Ada"}, current=created)
    got = await client.get("user", created.id)
    assert read_path(got.body, "name.givenName") == "Augusta"
    assert read_path(got.body, "name.familyName") == "Lovelace"  # untouched
    assert read_path(got.body, WORK_EMAIL) == new_mail
    assert read_path(got.body, MOBILE) == "+44 20 7946 0000"
    assert read_path(got.body, DEPARTMENT) == "Mathematics"
    assert got.body["displayName"] == "Augusta Ada"

    await client.update("user", created.id, {"title": None, MANAGER: None}, current=got)
    removed = await client.get("user", created.id)
    assert "title" not in removed.body
    assert read_path(removed.body, MANAGER) is None
    assert read_path(removed.body, DEPARTMENT) == "Mathematics"


@pytest.mark.parametrize("method", ["patch", "put"])
async def test_disable_and_update_by_patch_or_put(scimmy_target: ScimTarget,
                                                  method: Literal["patch", "put"]) -> None:
    async with ScimClient(scimmy_target.base_url, scimmy_target.token, backoff=NO_WAIT,
                          update_method=method) as c:
        created = await c.create("user", ada(unique("ada")))
        await c.update("user", created.id, {"active": False, "title": "Countess"}, current=created)
        got = await c.get("user", created.id)
        disabled = await c.list("user", "active eq false")
    assert got.body["active"] is False and got.body["title"] == "Countess"
    assert got.body["userName"] == created.body["userName"]  # a PUT kept what it did not change
    assert read_path(got.body, DEPARTMENT) == "Engineering"
    assert got.body["meta"]["created"] == created.body["meta"]["created"]
    assert [r.id for r in disabled] == [created.id]


async def test_delete_then_get_patch_and_delete_are_not_found(client: ScimClient) -> None:
    created = await client.create("user", ada(unique("ada")))
    await client.delete("user", created.id)
    with pytest.raises(NotFoundError):
        await client.get("user", created.id)
    with pytest.raises(NotFoundError):
        await client.update("user", created.id, {"title": "Ghost"}, current=created)
    with pytest.raises(NotFoundError):
        await client.delete("user", created.id)


async def test_duplicate_username_conflicts_and_invalid_writes_are_rejected_with_detail(
        client: ScimClient) -> None:
    name = unique("ada")
    created = await client.create("user", ada(name))
    with pytest.raises(ConflictError) as conflict:
        await client.create("user", ada(name))
    assert conflict.value.status == 409
    with pytest.raises(RejectedError) as missing:
        await client.create("user", {"schemas": [CORE_USER], "displayName": "no userName"})
    assert missing.value.status == 400 and "userName" in (missing.value.detail or "")
    with pytest.raises(RejectedError) as immutable:
        await client.patch("user", created.id, [{"op": "replace", "path": "id", "value": "x"}])
    assert immutable.value.status == 400 and "[mutability]" in str(immutable.value)


# -- groups --------------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", ["rfc7644", "entra"])
async def test_group_members_are_added_and_removed_by_delta(
        scimmy_target: ScimTarget, dialect: Literal["rfc7644", "entra"]) -> None:
    # Two members per request: the five adds go out as three PATCHes.
    async with ScimClient(scimmy_target.base_url, scimmy_target.token, backoff=NO_WAIT,
                          dialect=dialect, max_patch_operations=2) as c:
        users = [await c.create("user", build_resource({"userName": unique()})) for _ in range(5)]
        ids = [u.id for u in users]
        group = await c.create("group", {"schemas": [CORE_GROUP], "displayName": f"Team {dialect}",
                                         "externalId": "g-team"})
        await c.patch_members(group.id, ids, [])
        assert _members(await c.get("group", group.id)) == set(ids)
        await c.patch_members(group.id, [], ids[:3])
        assert _members(await c.get("group", group.id)) == set(ids[3:])
        await c.patch_members(group.id, ids[:1], ids[3:4])
        assert _members(await c.get("group", group.id)) == {ids[0], ids[4]}
        found = await c.find("group", "displayName", f"Team {dialect}")
    assert [g.id for g in found] == [group.id]


def _members(group: Any) -> set[str]:
    return {m["value"] for m in group.body.get("members", [])}


# -- lists and paging ----------------------------------------------------------------------


@pytest.mark.parametrize("page_size", [None, 7])
async def test_list_follows_every_page(scimmy_target: ScimTarget, page_size: int | None) -> None:
    async with ScimClient(scimmy_target.base_url, scimmy_target.token, backoff=NO_WAIT,
                          page_size=page_size) as c:
        created = {(await c.create("user", build_resource({"userName": f"page-{i:02d}@x.test"}))).id
                   for i in range(2 * SCIMMY_PAGE + 5)}
        listed = await c.list("user")
        filtered = await c.list("user", 'userName sw "page-1"')
    assert len(listed) == len(created) and {r.id for r in listed} == created
    assert sorted(r.body["userName"] for r in filtered) == [f"page-1{i}@x.test" for i in range(10)]


def test_a_start_index_past_the_end_answers_the_first_page_on_scimmy(
        scimmy_target: ScimTarget) -> None:
    """RFC 7644 §3.4.2.4: a startIndex past totalResults gives an empty page. SCIMMY's
    ListResponse slices only when startIndex is within the results, so it answers the
    first page again; ScimClient.list stops on a page without new ids, which this needs."""
    headers = {"Authorization": f"Bearer {scimmy_target.token}"}
    with httpx.Client(base_url=scimmy_target.base_url, headers=headers, timeout=10) as http:
        for i in range(3):
            http.post("/Users", json={"schemas": [CORE_USER], "userName": f"u{i}@x.test"}).raise_for_status()
        page = http.get("/Users", params={"startIndex": 10, "count": 2}).json()
    assert page["totalResults"] == 3 and page["startIndex"] == 10
    assert [r["userName"] for r in page["Resources"]] == ["u0@x.test", "u1@x.test"]


# -- filter string literals ----------------------------------------------------------------


async def test_filter_literals_with_json_escapes_do_not_match_on_scimmy(client: ScimClient) -> None:
    """scimflow writes filter values as JSON strings (RFC 7644 §3.4.2.2), escaping `"` and
    `\\`. SCIMMY's filter parser does not unescape them: a `"` makes the filter invalid
    (400) and a `\\` or a control character never matches. scim2-server finds all three."""
    quoted, backslash, tab = 'o"brien@x.test', "back\\slash@x.test", "tab\there@x.test"
    for name in (quoted, backslash, tab):
        await client.create("user", build_resource({"userName": name}))
    with pytest.raises(RejectedError) as invalid:
        await client.find("user", "userName", quoted)
    assert invalid.value.status == 400 and "[invalidFilter]" in str(invalid.value)
    assert await client.find("user", "userName", backslash) == []
    assert await client.find("user", "userName", tab) == []
    # Plain names with spaces, parentheses, operators and non-ASCII letters do match.
    for name in ("two words (and or)@x.test", "ünïcødé@x.test", "it's@x.test"):
        created = await client.create("user", build_resource({"userName": name}))
        assert [r.id for r in await client.find("user", "userName", name)] == [created.id]
