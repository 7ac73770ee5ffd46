"""Creates and updates through SCIM /Bulk against a target that offers it (scim2-server
does): an initial sync in a handful of requests, an update wave in a few, a group and its
new members in one bulk, per-operation failures handled one by one (and only those), and
a target whose /Bulk fails falling back to single calls. Counted at the wire (the proxy)."""

from __future__ import annotations

from typing import Any

import httpx
import msgspec
import pytest

from services.devstack.scim_target import ScimTarget
from tests.support.faultproxy import FaultProxy
from tests.support.scim_view import all_of
from tests.support.writer_harness import application, group_cmd, harness, user_cmd

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


def new_user(http: httpx.Client, user_name: str) -> dict[str, Any]:
    created: dict[str, Any] = http.post("/Users", json={
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": user_name}).json()
    return created


async def test_an_initial_sync_of_2000_users_and_50_groups_lands_in_few_requests(
        scim_target: ScimTarget, proxy: FaultProxy, http: httpx.Client) -> None:
    users = [user_cmd(i) for i in range(2000)]
    groups = [group_cmd(f"g{g}", f"Group {g}", [f"u{i}" for i in range(2000) if i % 50 == g])
              for g in range(50)]
    h = harness(proxy.url, scim_target.token, application(), writer_batch=256)
    await h.processor.learn()
    assert h.processor.writers["app"].batcher is not None  # scim2-server declares bulk
    await h.scan("initial", *users, *groups)
    await h.settle(wait=240)
    assert h.errors() == []
    landed = {u["userName"]: u["id"] for u in all_of(http, "Users")}
    assert len(landed) == 2000 and set(landed) == {f"u{i}@example.com" for i in range(2000)}
    members = {g["displayName"]: sorted(m["value"] for m in g.get("members", []))
               for g in all_of(http, "Groups")}
    assert members == {f"Group {g}": sorted(landed[f"u{i}@example.com"] for i in range(g, 2000, 50))
                       for g in range(50)}
    requests = len(proxy.log)
    assert requests <= 0.1 * 2000, f"{requests} requests for 2,000 users"
    assert proxy.requests("POST", "/Users$") == []  # every user in a bulk
    assert proxy.requests("PATCH") == []  # groups created with their members, or given them in a bulk
    assert len(proxy.requests("POST", "/Bulk$")) <= 0.05 * 2000


async def test_only_the_operations_that_failed_in_a_bulk_are_done_again(
        scim_target: ScimTarget, proxy: FaultProxy, http: httpx.Client) -> None:
    h = harness(proxy.url, scim_target.token, application())
    await h.processor.learn()
    await h._frames("scan", "start")
    await h.processor.writers["app"].discover("scan")  # the listing is done: u7 is not in it
    taken = new_user(http, "u7@example.com")  # created directly, between the listing and the bulk
    await h.feed(*(msgspec.structs.replace(user_cmd(i), cycle_id="scan") for i in range(20)))
    await h.settle()
    bulk = [op for e in proxy.requests("POST", "/Bulk$") for op in e.json()["Operations"]]
    assert [op["method"] for op in bulk].count("POST") == 20
    # The adopted account's update (its displayName) went in a bulk too.
    assert [op["path"] for op in bulk if op["method"] != "POST"] == [f"/Users/{taken['id']}"]
    # u7's create answered 409 in the bulk; it alone was looked up (by filter) and adopted.
    lookups = [e.query for e in proxy.requests("GET", "/Users$") if "filter" in e.query]
    assert len(lookups) == 1 and "u7" in lookups[0]
    actions = {a.source_id: a.action for a in h.activity()}
    assert actions.pop("u7") == "adopt" and set(actions.values()) == {"create"}
    assert h.state("u7").target_id == taken["id"]  # type: ignore[union-attr]
    assert len(all_of(http, "Users")) == 20
    assert h.errors() == []


async def test_a_bulk_endpoint_that_fails_falls_back_to_single_creates(
        scim_target: ScimTarget, proxy: FaultProxy, http: httpx.Client) -> None:
    proxy.fail(501, method="POST", path="/Bulk$")  # declared, but not implemented after all
    h = harness(proxy.url, scim_target.token, application())
    await h.processor.learn()
    await h.scan("initial", *(user_cmd(i) for i in range(30)))
    await h.settle()
    assert len(all_of(http, "Users")) == 30 and h.errors() == []
    assert len(proxy.requests("POST", "/Bulk$")) == 1  # not asked again after a 501
    assert len(proxy.requests("POST", "/Users$")) == 30
    assert h.processor.writers["app"].batcher is not None
    assert not h.processor.writers["app"].batcher.enabled


async def test_a_bulk_whose_answer_is_lost_creates_each_user_once(
        scim_target: ScimTarget, proxy: FaultProxy, http: httpx.Client) -> None:
    """The bulk landed but its answer did not come back: its creates are not sent again one
    by one (a target without uniqueness would hold two accounts); the writer looks each user
    up on its next attempt and adopts what the bulk created."""
    proxy.lose_answer(method="POST", path="/Bulk$", times=1)
    h = harness(proxy.url, scim_target.token, application())
    await h.processor.learn()
    await h.scan("initial", *(user_cmd(i) for i in range(10)))
    await h.settle(wait=60)
    names = [u["userName"] for u in all_of(http, "Users")]
    assert sorted(names) == sorted(f"u{i}@example.com" for i in range(10))  # each once
    assert proxy.requests("POST", "/Users$") == []  # no create sent again
    assert h.errors() == []


async def test_bulk_off_in_the_config_sends_single_creates(scim_target: ScimTarget,
                                                           proxy: FaultProxy) -> None:
    h = harness(proxy.url, scim_target.token, application(target_extra={"bulk": "off"}))
    await h.processor.learn()
    assert h.processor.writers["app"].batcher is None
    await h.scan("initial", *(user_cmd(i) for i in range(5)))
    await h.settle()
    assert len(proxy.requests("POST", "/Users$")) == 5 and proxy.requests("POST", "/Bulk$") == []


# -- updates and group members through /Bulk ----------------------------------------------


def set_nickname(http: httpx.Client, user_id: str) -> None:
    """An attribute scimflow does not map, set directly in the target (a new version too)."""
    http.patch(f"/Users/{user_id}", json={
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{"op": "add", "path": "nickName", "value": "kept"}]}).raise_for_status()


def delete_user(http: httpx.Client, user_id: str) -> None:
    http.delete(f"/Users/{user_id}").raise_for_status()


def renamed(i: int, scan: str) -> Any:
    return msgspec.structs.replace(user_cmd(i, displayName=f"Renamed {i}"), cycle_id=scan)


def ops_of(proxy: FaultProxy) -> list[dict[str, Any]]:
    return [op for e in proxy.requests("POST", "/Bulk$") for op in e.json()["Operations"]]


async def synced(proxy: FaultProxy, token: str, users: int, app: Any = None) -> Any:
    """A harness whose target holds ``users`` users created by an initial scan; log cleared."""
    h = harness(proxy.url, token, app or application(), writer_batch=256)
    await h.processor.learn()
    await h.scan("initial", *(user_cmd(i) for i in range(users)))
    await h.settle()
    assert h.errors() == []
    proxy.clear_log()
    return h


async def test_an_update_wave_goes_out_in_few_bulk_requests_and_lands_exactly(
        scim_target: ScimTarget, proxy: FaultProxy, http: httpx.Client) -> None:
    h = await synced(proxy, scim_target.token, 500)
    await h.scan("wave", *(renamed(i, "wave") for i in range(500)))
    await h.settle()
    assert h.errors() == []
    names = {u["userName"]: u.get("displayName") for u in all_of(http, "Users")}
    assert names == {f"u{i}@example.com": f"Renamed {i}" for i in range(500)}
    patches = [op for op in ops_of(proxy) if op["method"] == "PATCH"]
    assert len(patches) == 500
    assert all(op.get("version") for op in patches)  # each conditional on the listed ETag
    assert proxy.requests("PATCH") == []  # no single update
    bulks = len(proxy.requests("POST", "/Bulk$"))
    assert bulks <= 5, f"{bulks} bulk requests for 500 updates"
    assert {a.action for a in h.activity()[500:]} == {"update"}


async def test_put_updates_read_first_and_write_in_bulk_keeping_what_is_not_mapped(
        scim_target: ScimTarget, proxy: FaultProxy, http: httpx.Client) -> None:
    h = await synced(proxy, scim_target.token, 20, application(target_extra={"update_method": "put"}))
    ids = {u["userName"]: u["id"] for u in all_of(http, "Users")}
    set_nickname(http, ids["u4@example.com"])
    proxy.clear_log()
    await h.feed(*(user_cmd(i, displayName=f"Renamed {i}") for i in range(20)))
    await h.settle()
    assert h.errors() == []
    # Read-modify-write: one GET each, just before; the PUTs travel in bulk, each conditional.
    assert len(proxy.requests("GET", r"/Users/[^/]+$")) == 20
    puts = [op for op in ops_of(proxy) if op["method"] == "PUT"]
    assert len(puts) == 20 and all(op.get("version") for op in puts)
    assert proxy.requests("PUT") == []
    users = {u["userName"]: u for u in all_of(http, "Users")}
    assert {n: u["displayName"] for n, u in users.items()} == {
        f"u{i}@example.com": f"Renamed {i}" for i in range(20)}
    assert users["u4@example.com"]["nickName"] == "kept"


def failing(*ids: str, status: str = "503") -> Any:
    """A BulkResponse rewrite: the operations on these target ids answer ``status``."""
    def change(_: Any, answer: Any) -> Any:
        for entry in answer["Operations"]:
            if str(entry.get("location", "")).rsplit("/", 1)[-1] in ids:
                entry["status"] = status
                entry["response"] = {"schemas": ["urn:ietf:params:scim:api:messages:2.0:Error"],
                                     "status": status, "detail": "injected by the fault proxy"}
        return answer
    return change


async def test_operations_that_failed_in_a_bulk_of_updates_are_retried_singly_and_only_those(
        scim_target: ScimTarget, proxy: FaultProxy, http: httpx.Client) -> None:
    h = await synced(proxy, scim_target.token, 40)
    ids = {u["userName"]: u["id"] for u in all_of(http, "Users")}
    await h._frames("wave", "start")
    await h.processor.writers["app"].discover("wave")
    # After the listing: u3 deleted (404 in the bulk), u5 changed (its version is stale: 412),
    # and the bulk answers of u7 and u9 turned into 503s by the proxy.
    delete_user(http, ids["u3@example.com"])
    set_nickname(http, ids["u5@example.com"])
    proxy.rewrite(failing(ids["u7@example.com"], ids["u9@example.com"]), method="POST", path="/Bulk$")
    proxy.clear_log()
    await h.feed(*(renamed(i, "wave") for i in range(40)))
    await h.settle()
    assert h.errors() == []
    # Single calls went to these three only. u5's PATCH in the bulk was refused (412): re-read,
    # PATCHed once more. u7's and u9's were applied by the target, only their answers were
    # 503s: their single PATCH (its version now stale) gets 412, re-reads and PATCHes again.
    singles = {e.path.rsplit("/", 1)[-1] for e in proxy.requests(None, r"/Users/[^/]+$")}
    assert singles == {ids[f"u{i}@example.com"] for i in (5, 7, 9)}
    assert len(proxy.requests("GET", ids["u5@example.com"])) == 1
    assert len(proxy.requests("PATCH", ids["u5@example.com"])) == 1
    users = {u["userName"]: u for u in all_of(http, "Users")}
    assert {n: u["displayName"] for n, u in users.items()} == {
        f"u{i}@example.com": f"Renamed {i}" for i in range(40)}
    assert users["u5@example.com"]["nickName"] == "kept"
    recreated = h.state("u3")
    assert recreated is not None and recreated.target_id == users["u3@example.com"]["id"]
    assert recreated.target_id != ids["u3@example.com"]  # gone (404), so created again


@pytest.mark.parametrize("resolves", [False, True], ids=["ids-from-an-earlier-request", "target-resolves"])
async def test_a_group_and_its_new_members_go_in_one_bulk(
        scim_target: ScimTarget, proxy: FaultProxy, http: httpx.Client, resolves: bool) -> None:
    bulk = "references" if resolves else "auto"
    h = harness(proxy.url, scim_target.token, application(target_extra={"bulk": bulk}))
    await h.processor.learn()
    batcher = h.processor.writers["app"].batcher
    assert batcher is not None and batcher.resolves_references is resolves
    proxy.clear_log()
    team = group_cmd("g", "Team", [f"u{i}" for i in range(5)])
    await h.scan("initial", *(user_cmd(i) for i in range(5)), team)
    await h.settle()
    assert h.errors() == []
    # One send_bulk: one request when the target resolves bulkId references in it (scim2-server
    # does), else the users' request then the group's with their ids; no other write at all.
    writes = [e for e in proxy.log if e.method != "GET"]
    assert len(writes) == (1 if resolves else 2) and {e.path for e in writes} == {"/v2/Bulk"}
    group_op = next(op for op in ops_of(proxy) if op["path"] == "/Groups")
    refs = [m["value"].startswith("bulkId:") for m in group_op["data"]["members"]]
    assert refs == [resolves] * 5
    users = {u["userName"]: u["id"] for u in all_of(http, "Users")}
    (group,) = all_of(http, "Groups")
    assert sorted(m["value"] for m in group["members"]) == sorted(users.values())
    state = h.state("g")
    assert state is not None and state.attributes["members"] == sorted(users.values())
    assert next(a for a in h.activity() if a.source_id == "g").action == "create"


async def test_a_group_whose_new_member_fails_in_the_bulk_still_ends_right(
        scim_target: ScimTarget, proxy: FaultProxy, http: httpx.Client) -> None:
    h = harness(proxy.url, scim_target.token, application())
    await h.processor.learn()
    await h._frames("initial", "start")
    await h.processor.writers["app"].discover("initial")
    taken = new_user(http, "u2@example.com")  # after the listing: u2's bulk create answers 409
    await h.feed(*(msgspec.structs.replace(c, cycle_id="initial") for c in
                   [*(user_cmd(i) for i in range(5)), group_cmd("g", "Team", [f"u{i}" for i in range(5)])]))
    await h.settle()
    assert h.errors() == []
    users = {u["userName"]: u["id"] for u in all_of(http, "Users")}
    assert users["u2@example.com"] == taken["id"]  # adopted
    (group,) = all_of(http, "Groups")
    assert sorted(m["value"] for m in group["members"]) == sorted(users.values())
    assert proxy.requests("POST", "/Groups$") != []  # the group went singly, without the failed member
