"""The writer against what the target really holds: restarts without churn, re-adoption
without writes, read-modify-write PUT, drift repair, discovery paging, and lookups that
are verified before any account is written.

Every test counts what reached the target through the fault proxy (a recorder unless a
test programs a fault), so "no write" is measured at the wire, not inferred.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from schemas import ProvisioningCommand
from services.devstack.scim_target import ScimTarget
from tests.support.faultproxy import FaultProxy
from tests.support.scim_view import all_of
from tests.support.writer_harness import Harness, application, group_cmd, harness, user_cmd

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

WRITES = ("POST", "PUT", "PATCH", "DELETE")


PATCH_OP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
CORE_USER = "urn:ietf:params:scim:schemas:core:2.0:User"


def new_user(http: httpx.Client, **body: Any) -> dict[str, Any]:
    """An account made directly in the target (scimflow did not create it)."""
    created: dict[str, Any] = http.post("/Users", json={"schemas": [CORE_USER], **body}).json()
    return created


def edit(http: httpx.Client, path: str, *operations: dict[str, Any]) -> None:
    """A change made directly in the target, as an admin of the app would."""
    http.patch(path, json={"schemas": [PATCH_OP], "Operations": list(operations)}).raise_for_status()


def read(http: httpx.Client, path: str) -> dict[str, Any]:
    found: dict[str, Any] = http.get(path).json()
    return found


def remove(http: httpx.Client, path: str) -> None:
    http.delete(path).raise_for_status()


def writes(proxy: FaultProxy) -> list[str]:
    return [f"{e.method} {e.path}" for e in proxy.log if e.method in WRITES]


def members_by_group(http: httpx.Client) -> dict[str, list[str]]:
    """Group name -> member ids, duplicates kept (a target that stores one twice shows it)."""
    groups = all_of(http, "Groups")
    return {g["displayName"]: sorted(m["value"] for m in g.get("members", [])) for g in groups}


def directory(users: int, groups: int) -> list[ProvisioningCommand]:
    """``users`` users spread over ``groups`` groups (each user in one), groups last."""
    commands = [user_cmd(i) for i in range(users)]
    for g in range(groups):
        members = [f"u{i}" for i in range(users) if i % groups == g]
        commands.append(group_cmd(f"g{g}", f"Group {g}", members))
    return commands


async def synced(target: ScimTarget, proxy: FaultProxy, commands: list[ProvisioningCommand],
                 **app: Any) -> Harness:
    h = harness(proxy.url, target.token, application(**app))
    await h.scan("initial", *commands)
    await h.settle(wait=120)
    assert h.errors() == [], [e.reason for e in h.errors()]
    return h


# -- restarts and lost state -------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["commands-before-links", "links-before-commands", "writer-alone"])
async def test_a_restart_with_state_kept_writes_nothing(scim_target: ScimTarget, proxy: FaultProxy,
                                                        http: httpx.Client, order: str) -> None:
    # 1,000 users in 50 groups; then the writer restarts on the same state. Whether the other
    # services replay their commands before the writer's links are back, after, or not at all,
    # nothing is written (before the fix every group lost and regained all its members).
    commands = directory(1000, 50)
    first = await synced(scim_target, proxy, commands)
    before = members_by_group(http)
    assert sum(len(m) for m in before.values()) == 1000
    proxy.clear_log()

    again = harness(proxy.url, scim_target.token, application(), managed=first.managed, restoring=True)
    if order == "commands-before-links":
        feeding = asyncio.ensure_future(again.feed(*commands))
        await asyncio.sleep(0.2)
        # Taken (the consumer never stalls on it) but held: not one request before the state.
        assert again.processor.scheduler.jobs and proxy.log == []
        again.restore_links()
        await feeding
    elif order == "links-before-commands":
        again.restore_links()
        await again.feed(*commands)
    else:
        again.restore_links()
    await again.settle(wait=120)
    assert writes(proxy) == []
    assert [a for a in again.activity() if a.status != "skipped"] == []
    assert members_by_group(http) == before


async def test_a_full_scan_after_a_restart_reads_the_target_once_and_writes_nothing(
        scim_target: ScimTarget, proxy: FaultProxy, http: httpx.Client) -> None:
    commands = directory(300, 10)
    first = await synced(scim_target, proxy, commands)
    proxy.clear_log()
    again = harness(proxy.url, scim_target.token, application(), managed=first.managed, restoring=True)
    again.restore_links()
    await again.scan("second", *commands)
    await again.settle(wait=60)
    assert writes(proxy) == []
    # Discovery listed users and groups page by page; no object needed a lookup of its own.
    assert all("filter=" not in e.query for e in proxy.requests("GET"))
    assert again.errors() == []


async def test_state_lost_readoption_writes_nothing_and_adds_no_member_twice(
        scim_target: ScimTarget, proxy: FaultProxy, http: httpx.Client) -> None:
    commands = directory(200, 5)
    await synced(scim_target, proxy, commands)
    before = members_by_group(http)
    proxy.clear_log()
    fresh = harness(proxy.url, scim_target.token, application())  # e.g. a fresh embedded broker
    await fresh.scan("after-loss", *commands)
    await fresh.settle(wait=60)
    assert writes(proxy) == []
    assert members_by_group(http) == before
    assert {a.action for a in fresh.activity()} == {"adopt"}
    assert len(fresh.managed) == 205


async def test_readoption_without_a_scan_looks_each_object_up_and_writes_nothing(
        scim_target: ScimTarget, proxy: FaultProxy, http: httpx.Client) -> None:
    commands = directory(40, 2)
    await synced(scim_target, proxy, commands)
    before = members_by_group(http)
    proxy.clear_log()
    fresh = harness(proxy.url, scim_target.token, application())
    await fresh.feed(*commands)  # incremental: no discovery, one filter lookup per object
    await fresh.settle()
    assert writes(proxy) == []
    assert members_by_group(http) == before
    assert len(proxy.requests("GET", "/Users$")) == 40


# -- read-modify-write PUT -----------------------------------------------------------------------------


async def test_put_renaming_a_group_keeps_every_member(scim_target: ScimTarget, proxy: FaultProxy,
                                                      http: httpx.Client) -> None:
    users = [user_cmd(i) for i in range(43)]
    group = group_cmd("g1", "Before", [f"u{i}" for i in range(43)])
    h = harness(proxy.url, scim_target.token, application(target_extra={"update_method": "put"}))
    await h.feed(*users, group)
    await h.settle()
    assert len(members_by_group(http)["Before"]) == 43
    await h.feed(group_cmd("g1", "After", [f"u{i}" for i in range(43)]))
    await h.settle()
    assert len(members_by_group(http)["After"]) == 43
    assert "PATCH" not in {e.method for e in proxy.log}
    put = proxy.requests("PUT", "/Groups/")[-1]
    assert len(put.json()["members"]) == 43 and put.json()["displayName"] == "After"
    assert h.errors() == []


@pytest.mark.parametrize("method", ["patch", "put"])
async def test_an_attribute_scimflow_does_not_map_survives_every_update(
        scim_target: ScimTarget, proxy: FaultProxy, http: httpx.Client, method: str) -> None:
    created = new_user(http, userName="u1@example.com", nickName="Nicky")
    h = harness(proxy.url, scim_target.token, application(target_extra={"update_method": method}))
    await h.feed(user_cmd(1, displayName="One"))
    await h.settle()
    await h.feed(user_cmd(1, displayName="Uno"))
    await h.settle()
    now = read(http, f"/Users/{created['id']}")
    assert (now["displayName"], now["nickName"]) == ("Uno", "Nicky")
    assert [a.action for a in h.activity()] == ["adopt", "update"]


# -- drift -------------------------------------------------------------------------------------------------


async def test_a_full_scan_repairs_drift_and_leaves_unmanaged_accounts_alone(
        scim_target: ScimTarget, proxy: FaultProxy, http: httpx.Client) -> None:
    commands = [user_cmd(i) for i in range(5)]
    h = await synced(scim_target, proxy, commands)
    ids = {a.source_id: a.target_id for a in h.activity()}
    unmanaged = new_user(http, userName="admin@example.com", displayName="Admin")
    edit(http, f"/Users/{ids['u1']}", {"op": "replace", "path": "displayName", "value": "Edited there"})
    edit(http, f"/Users/{ids['u2']}", {"op": "replace", "path": "active", "value": False})
    remove(http, f"/Users/{ids['u3']}")
    proxy.clear_log()

    await h.scan("scan-2", *commands)
    await h.settle()
    users = {u["userName"]: u for u in all_of(http, "Users")}
    assert users["u1@example.com"]["displayName"] == "User u1"
    assert users["u2@example.com"]["active"] is True
    assert "u3@example.com" in users
    repairs = {a.source_id: a for a in h.activity()[len(commands):]}
    assert {s: (a.action, a.status) for s, a in repairs.items()} == dict.fromkeys(
        ("u1", "u2", "u3"), ("repair", "success"))
    assert {p.name for p in repairs["u1"].modified_properties} == {"displayName"}
    assert repairs["u1"].modified_properties[0].old_value == "Edited there"
    assert {p.name: p.new_value for p in repairs["u2"].modified_properties} == {"active": True}
    assert all(unmanaged["id"] not in e.path for e in proxy.log)
    assert users["admin@example.com"]["displayName"] == "Admin"
    # Once repaired, the next scan finds nothing to do.
    proxy.clear_log()
    await h.scan("scan-3", *commands)
    await h.settle()
    assert writes(proxy) == []


async def test_drift_report_only_reports(scim_target: ScimTarget, proxy: FaultProxy,
                                         http: httpx.Client) -> None:
    commands = [user_cmd(i) for i in range(3)]
    h = await synced(scim_target, proxy, commands, drift="report")
    target_id = h.activity()[1].target_id
    edit(http, f"/Users/{target_id}", {"op": "replace", "path": "displayName", "value": "Edited"})
    proxy.clear_log()
    await h.scan("scan-2", *commands)
    await h.settle()
    assert writes(proxy) == []
    reported = h.activity()[3:]
    assert [(a.action, a.status, a.target_id) for a in reported] == [("repair", "skipped", target_id)]
    assert reported[0].modified_properties[0].old_value == "Edited"
    assert read(http, f"/Users/{target_id}")["displayName"] == "Edited"


async def test_members_removed_in_the_target_are_added_back_by_the_scan(
        scim_target: ScimTarget, proxy: FaultProxy, http: httpx.Client) -> None:
    commands = directory(10, 1)
    h = await synced(scim_target, proxy, commands)
    group = all_of(http, "Groups")[0]
    gone = group["members"][0]["value"]
    edit(http, f"/Groups/{group['id']}", {"op": "remove", "path": f'members[value eq "{gone}"]'})
    assert len(members_by_group(http)["Group 0"]) == 9
    done = len(h.activity())
    await h.scan("scan-2", *commands)
    await h.settle()
    assert len(members_by_group(http)["Group 0"]) == 10
    (repair,) = h.activity()[done:]
    assert (repair.action, repair.source_id) == ("repair", "g0")
    assert "members changed directly in the target (+1 -0 members)" in (repair.reason or "")


# -- discovery paging ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("page", [20, 50])
async def test_discovery_follows_targets_that_ignore_count(scim_target: ScimTarget, proxy: FaultProxy,
                                                           http: httpx.Client, page: int) -> None:
    commands = [user_cmd(i) for i in range(130)]
    first = await synced(scim_target, proxy, commands)
    proxy.page_size(page)
    proxy.clear_log()
    fresh = harness(proxy.url, scim_target.token, application())  # state lost: re-adopt all 130
    await fresh.scan("paged", *commands)
    await fresh.settle()
    lists = proxy.requests("GET", "/Users$")
    assert len(lists) == -(-130 // page)  # every page once, no per-object lookup
    assert writes(proxy) == []
    assert {a.target_id for a in fresh.activity()} == {a.target_id for a in first.activity()}


async def test_an_initial_sync_costs_one_request_per_new_user(scim_target: ScimTarget,
                                                              proxy: FaultProxy) -> None:
    h = harness(proxy.url, scim_target.token, application())
    await h.scan("initial", *(user_cmd(i) for i in range(200)))
    await h.settle()
    assert len(proxy.requests("POST", "/Users$")) == 200
    assert len(proxy.log) <= 200 + 2  # the two listings (users, groups), no lookup per user


# -- verified lookups ----------------------------------------------------------------------------------------


def _admin(http: httpx.Client) -> dict[str, Any]:
    return new_user(http, userName="admin@example.com", displayName="Administrator")


async def test_a_target_that_ignores_filter_never_gets_an_account_taken_over(
        scim_target: ScimTarget, proxy: FaultProxy, http: httpx.Client) -> None:
    admin = _admin(http)
    listing = {"schemas": ["urn:ietf:params:scim:api:messages:2.0:ListResponse"], "totalResults": 1,
               "Resources": [admin]}
    proxy.fail(200, body=json.dumps(listing), method="GET", path="/Users$")  # every filter: the admin
    h = harness(proxy.url, scim_target.token, application())
    await h.feed(*(user_cmd(i) for i in range(20)))
    await h.settle()
    assert [e for e in proxy.log if admin["id"] in e.path] == []
    assert writes(proxy) == []
    errors = h.errors()
    assert len(errors) == 20 and {e.error_code for e in errors} == {"IdentityMismatch"}
    assert "ignores or misapplies the filter" in errors[0].reason
    assert h.managed == {}
    assert read(http, f"/Users/{admin['id']}")["displayName"] == "Administrator"


async def test_a_create_answered_with_another_account_is_not_linked(
        scim_target: ScimTarget, proxy: FaultProxy, http: httpx.Client) -> None:
    admin = _admin(http)
    proxy.fail(201, body=json.dumps(admin), method="POST", path="/Users$")
    h = harness(proxy.url, scim_target.token, application())
    await h.feed(user_cmd(1), user_cmd(2))
    await h.settle()
    # Later commands for the same objects go nowhere near the admin account either.
    await h.feed(user_cmd(1, displayName="Changed"), user_cmd(2, operation="deprovision"))
    await h.settle()
    assert [e for e in proxy.log if admin["id"] in e.path] == []
    assert {e.error_code for e in h.errors()} == {"IdentityMismatch"}
    assert len([e for e in h.errors() if e.source_id == "u1"]) == 2
    assert "another account" in h.errors()[0].reason
    assert h.managed == {}


async def test_a_target_id_is_linked_to_one_source_object_only(scim_target: ScimTarget, proxy: FaultProxy,
                                                              http: httpx.Client) -> None:
    # Two source users whose names differ only in Unicode normalization are one identity: the
    # second one may not take over the account of the first.
    h = harness(proxy.url, scim_target.token, application())
    await h.feed(user_cmd("a", userName="jos\u00e9@example.com"))
    await h.settle()
    await h.feed(user_cmd("b", userName="jose\u0301@example.com"))
    await h.settle()
    (error,) = h.errors()
    assert error.error_code == "IdentityMismatch" and error.source_id == "b"
    assert "already linked to source object a" in error.reason
    assert len(all_of(http, "Users")) == 1
    assert h.state("b") is None


async def test_a_409_that_no_lookup_explains_is_one_error_with_bounded_retries(
        scim_target: ScimTarget, proxy: FaultProxy) -> None:
    proxy.fail(409, method="POST", path="/Groups$")
    h = harness(proxy.url, scim_target.token, application(retries={"escrow_after": 3}))
    await h.feed(group_cmd("g1", "Ghost", []))
    await h.settle(wait=30)
    posts = proxy.requests("POST", "/Groups$")
    assert len(posts) == 3  # one per attempt until escrow, never a tight loop
    (error,) = h.errors()
    assert error.error_code == "ObjectEscrowed"
    assert "does not find the object" in error.reason and "`displayName eq`" in error.reason
    assert "supports `eq` filters" in error.recommended_action
    assert [a.action for a in h.activity()] == ["create"]


async def test_a_user_enabled_again_in_the_target_is_disabled_again_by_the_scan(
        scim_target: ScimTarget, proxy: FaultProxy, http: httpx.Client) -> None:
    h = await synced(scim_target, proxy, [user_cmd(1)])
    await h.feed(user_cmd(1, operation="deprovision"))
    await h.settle()
    target_id = h.activity()[0].target_id
    assert read(http, f"/Users/{target_id}")["active"] is False
    edit(http, f"/Users/{target_id}", {"op": "replace", "path": "active", "value": True})
    await h.scan("scan-2", user_cmd(1, operation="deprovision"))
    await h.settle()
    assert read(http, f"/Users/{target_id}")["active"] is False
    last = h.activity()[-1]
    assert (last.action, last.status) == ("repair", "success")
    assert [(p.name, p.old_value, p.new_value) for p in last.modified_properties] == [("active", True, False)]


async def test_a_create_whose_answer_was_lost_in_a_scan_is_looked_up_not_sent_again(
        scim_target: ScimTarget, proxy: FaultProxy, http: httpx.Client) -> None:
    # The scan's listing was taken before these creates: after one whose answer was lost
    # (it landed), only a lookup on the target can tell. scim2-server takes a second
    # account with the same userName, so a blind retry would show here as a duplicate.
    proxy.lose_answer(method="POST", path="/Users$", times=20)
    h = harness(proxy.url, scim_target.token, application(retries={"escrow_after": 50}))
    await h.scan("initial", *(user_cmd(i) for i in range(100)))
    await h.settle(wait=120)
    names = sorted(u["userName"] for u in all_of(http, "Users"))
    assert names == sorted(f"u{i}@example.com" for i in range(100))  # each once
    assert sum(e.fault == "lost answer" for e in proxy.log) == 20
    assert h.errors() == [] and h.escrow == {}
