"""The writer's processor against a real scim2-server: groups by deltas, deferred references,
retries without head-of-line blocking, escrow, rejections, dry run, restart, quarantine.

The processor runs in the test's event loop (tables are dicts, topics are recorders, see
tests/support/writer_harness.py); the SCIM client and the target are real, with the fault
proxy in between where a real server will not misbehave on demand.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import httpx
import msgspec
import pytest

from schemas import ManagedObject
from schemas.codecs import encode
from schemas.control import AppHealth, Restart
from services.devstack.scim_target import ScimTarget
from services.scim.client import ScimClient
from tests.support.faultproxy import FaultProxy
from tests.support.scim_view import all_of
from tests.support.writer_harness import MANAGER, Harness, application, group_cmd, harness, user_cmd

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


def target(scim_target: ScimTarget) -> httpx.Client:
    return httpx.Client(base_url=scim_target.base_url, timeout=10,
                        headers={"Authorization": f"Bearer {scim_target.token}"})


def member_ids(http: httpx.Client, group_id: str) -> set[str]:
    return {m["value"] for m in http.get(f"/Groups/{group_id}").json().get("members", [])}


def sent_members(proxy: FaultProxy) -> tuple[list[str], list[str]]:
    """Member ids added and removed by the PATCHes to /Groups the proxy saw."""
    added: list[str] = []
    removed: list[str] = []
    for entry in proxy.requests("PATCH", "/Groups/"):
        for op in entry.json()["Operations"]:
            if op["op"].lower() == "add":
                added.extend(m["value"] for m in op["value"])
            else:
                removed.append(op["path"].split('"')[1])
    return added, removed


async def test_group_of_1000_is_built_by_deltas_and_5_changes_send_only_those(
        scim_target: ScimTarget, proxy: FaultProxy) -> None:
    h = harness(proxy.url, scim_target.token, application(target={
        "base_url": "http://x/v2", "token": "env:T", "max_patch_operations": 250}))
    http = target(scim_target)
    links = seed_users(h, http, range(995))  # managed by scimflow, as if synced earlier
    ids = [f"u{i}" for i in range(1000)]
    await h.feed(group_cmd("g1", "Everyone", ids))  # u995..u999 are not provisioned yet
    await h.settle()
    group = h.state("g1")
    assert group is not None and len(member_ids(http, group.target_id)) == 995
    await h.feed(*(user_cmd(i) for i in range(995, 1000)))  # their links make the group run again
    await h.settle()
    links |= {f"u{i}": h.state(f"u{i}").target_id for i in range(995, 1000)}  # type: ignore[union-attr]
    assert member_ids(http, group.target_id) == set(links.values())
    created = [e.json() for e in proxy.requests("POST", "/Groups")]
    assert len(created) == 1 and "members" not in created[0]
    added, removed = sent_members(proxy)
    assert sorted(added) == sorted(links.values()) and removed == []  # each member sent once
    assert all(len(e.json()["Operations"][0]["value"]) <= 250 for e in proxy.requests("PATCH", "/Groups/"))

    proxy.clear_log()
    new = seed_users(h, http, range(1000, 1005))
    await h.feed(group_cmd("g1", "Everyone", ids[5:] + sorted(new)))
    await h.settle()
    added, removed = sent_members(proxy)
    assert sorted(added) == sorted(new.values())
    assert sorted(removed) == sorted(links[f"u{i}"] for i in range(5))
    assert member_ids(http, group.target_id) == {links[i] for i in ids[5:]} | set(new.values())
    assert [a.action for a in h.activity() if a.object_type == "group"] == ["create", "update", "update"]


def seed_users(h: Harness, http: httpx.Client, numbers: range) -> dict[str, str]:
    """Users created in the target directly and linked in the writer through its changelog
    path (as another replica's writes arrive): source id -> target id."""
    out = {}
    for i in numbers:
        body = {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": f"u{i}@example.com"}
        response = http.post("/Users", json=body)
        response.raise_for_status()
        now = datetime.now(UTC)
        state = ManagedObject(app="app", object_type="user", source_id=f"u{i}",
                              target_id=response.json()["id"], origin="created", created_at=now,
                              updated_at=now)
        h.processor.on_changelog(f"app/u{i}".encode(), encode(state))
        out[f"u{i}"] = state.target_id
    return out


async def test_group_rename_and_delete_follow_the_mapping_actions(scim_target: ScimTarget) -> None:
    h = harness(scim_target.base_url, scim_target.token)
    await h.feed(user_cmd(1))
    await h.settle()
    await h.feed(group_cmd("g1", "Sales", ["u1"]))
    await h.settle()
    await h.feed(group_cmd("g1", "Sales EMEA", ["u1"]))
    await h.settle()
    http = target(scim_target)
    state = h.state("g1")
    assert state is not None and state.attributes["displayName"] == "Sales EMEA"
    assert http.get(f"/Groups/{state.target_id}").json()["displayName"] == "Sales EMEA"
    assert len(all_of(http, "Groups")) == 1
    await h.feed(group_cmd("g1", "Sales EMEA", [], operation="delete"))
    await h.settle()
    assert http.get(f"/Groups/{state.target_id}").status_code == 404
    assert [a.action for a in h.activity() if a.object_type == "group"] == ["create", "update", "delete"]

    keep = harness(scim_target.base_url, scim_target.token, application(mappings={
        "user": {"attributes": [{"target": "userName", "source": "upn", "matching": 1}]},
        "group": {"actions": ["create", "update"],
                  "attributes": [{"target": "displayName", "source": "name", "matching": 1}]}}))
    await keep.feed(group_cmd("g2", "Kept", []))
    await keep.settle()
    await keep.feed(group_cmd("g2", "Kept", [], operation="deprovision"))
    await keep.settle()
    assert [g["displayName"] for g in all_of(http, "Groups")] == ["Kept"]
    assert keep.activity()[-1].action == "skip" and "no soft delete" in (keep.activity()[-1].reason or "")


async def test_manager_provisioned_after_the_report_is_set_without_restart(scim_target: ScimTarget) -> None:
    h = harness(scim_target.base_url, scim_target.token)
    await h.feed(user_cmd("report", manager="boss"))
    await h.settle()
    http = target(scim_target)
    report = h.state("report")
    assert report is not None
    assert MANAGER not in http.get(f"/Users/{report.target_id}").json().get(MANAGER.rsplit(":", 1)[0], {})
    await h.feed(user_cmd("boss"))
    await h.settle()
    boss = h.state("boss")
    assert boss is not None
    body = http.get(f"/Users/{report.target_id}").json()
    assert body[MANAGER.rsplit(":", 1)[0]]["manager"]["value"] == boss.target_id
    assert h.state("report").attributes[MANAGER] == boss.target_id  # type: ignore[union-attr]
    assert [(a.source_id, a.action) for a in h.activity()] == [
        ("report", "create"), ("boss", "create"), ("report", "update")]


async def test_waiting_object_does_not_block_its_partition_and_retry_after_is_honoured(
        scim_target: ScimTarget, proxy: FaultProxy) -> None:
    h = harness(proxy.url, scim_target.token, application(retries={"escrow_after": 5}))
    proxy.fail(429, retry_after="3", method="POST", path="/Users", times=1)
    started = time.monotonic()
    await h.feed(*(user_cmd(i) for i in range(30)))
    first_post = proxy.requests("POST", "/Users")
    while len(all_of(target(scim_target), "Users")) < 29:
        assert time.monotonic() - started < 10
        await h.processor.scheduler.drain()
    others_done = time.monotonic() - started
    assert others_done < 3, "the 29 other objects waited for the throttled one"
    assert h.pending_acks >= 1  # the waiting command's offset is not acknowledged
    await h.settle()
    posts = proxy.requests("POST", "/Users")
    throttled = next(e for e in posts if e.status == 429)
    name = throttled.json()["userName"]
    again = [e for e in posts if e.json()["userName"] == name and e.at > throttled.at]
    assert again and again[0].at - throttled.at >= 3.0
    assert len(all_of(target(scim_target), "Users")) == 30 and h.pending_acks == 0
    assert first_post is not None and h.errors() == []


async def test_newer_command_supersedes_a_waiting_one_and_nothing_runs_out_of_order(
        scim_target: ScimTarget, proxy: FaultProxy) -> None:
    h = harness(proxy.url, scim_target.token)
    proxy.fail(429, retry_after="5", method="POST", path="/Users", times=1)
    started = time.monotonic()
    await h.feed(user_cmd(1, displayName="Old"))
    await h.processor.scheduler.drain()  # returns while the object waits out its Retry-After
    assert [e.status for e in proxy.requests("POST", "/Users")] == [429]
    await h.feed(user_cmd(1, displayName="New"))
    await h.settle()
    assert time.monotonic() - started < 4, "the newer command waited for the superseded one"
    users = all_of(target(scim_target), "Users")
    assert [(u["userName"], u["displayName"]) for u in users] == [("u1@example.com", "New")]
    assert [a.action for a in h.activity()] == ["create"] and h.pending_acks == 0


async def test_30_percent_transient_failures_while_syncing_2000_users_end_exactly_right(
        scim_target: ScimTarget, proxy: FaultProxy) -> None:
    n = 2000
    h = harness(proxy.url, scim_target.token, application(retries={"escrow_after": 50}))
    proxy.fail(503, retry_after="1", probability=0.2)
    proxy.reset(probability=0.05)
    # The target creates the user, the answer is lost: the retry must not create it twice.
    proxy.lose_answer(method="POST", path="/Users", probability=0.05)
    await h.feed(*(user_cmd(i) for i in range(n)))
    await h.settle(wait=240)
    names = Counter(u["userName"] for u in all_of(target(scim_target), "Users"))
    assert names == Counter(f"u{i}@example.com" for i in range(n))  # none missing, no duplicate
    assert h.pending_acks == 0 and h.escrow == {} and h.errors() == []
    faults = Counter(e.fault for e in proxy.log if e.fault)
    calls = len(proxy.log)
    assert sum(faults.values()) > calls * 0.25, faults  # the run was really faulty
    assert faults["lost answer"] > 20 and faults["reset"] > 20, faults
    posts = proxy.requests("POST", "/Users")
    for entry in (e for e in posts if e.status == 503):  # the object's next POST waited out Retry-After
        name = entry.json()["userName"]
        later = [e for e in posts if e.at > entry.at and e.json()["userName"] == name]
        assert later and later[0].at - entry.at >= 1.0, name


async def test_permanently_rejected_object_is_reported_once_with_the_targets_message(
        scim_target: ScimTarget, proxy: FaultProxy) -> None:
    h = harness(proxy.url, scim_target.token)
    detail = json.dumps({"schemas": ["urn:ietf:params:scim:api:messages:2.0:Error"], "status": "400",
                         "detail": "userName u7 is on the deny list"})
    proxy.fail(400, body=detail, method="POST", path="/Users")
    await h.feed(user_cmd(7))
    await h.settle()
    posts = len(proxy.requests("POST", "/Users"))
    errors = h.errors()
    assert [e.error_code for e in errors] == ["RequestRejected"]
    assert "on the deny list" in errors[0].reason and errors[0].target_status == 400
    assert posts == 1 and h.pending_acks == 0 and h.escrow == {}


async def test_escrow_after_n_attempts_acks_reports_once_and_applies_when_target_recovers(
        scim_target: ScimTarget, proxy: FaultProxy) -> None:
    h = harness(proxy.url, scim_target.token, application(retries={"escrow_after": 3}))
    proxy.fail(503, method="POST", path="/Users")
    await h.feed(user_cmd(1), user_cmd(2))
    await h.settle()
    assert h.pending_acks == 0, "escrowed commands must not hold back their partition"
    errors = h.errors()
    assert sorted(e.source_id or "" for e in errors) == ["u1", "u2"]
    assert {e.error_code for e in errors} == {"ObjectEscrowed"} and all(e.attempts == 3 for e in errors)
    assert len(h.escrow) == 2
    await h.processor.scheduler.tick_escrow()  # not due yet: nothing happens
    assert len(proxy.requests("POST", "/Users")) == 6
    await asyncio.sleep(1.0)
    await h.processor.scheduler.tick_escrow()  # due, the target still fails: no second report
    await h.settle()
    assert len(h.errors()) == 2 and len(h.escrow) == 2
    proxy.clear()
    await asyncio.sleep(1.0)
    await h.processor.scheduler.tick_escrow()
    await h.settle()
    assert h.escrow == {}
    assert sorted(u["userName"] for u in all_of(target(scim_target), "Users")) == [
        "u1@example.com", "u2@example.com"]
    assert len(h.errors()) == 2


async def test_dry_run_writes_nothing_and_reports_what_a_real_run_does(scim_target: ScimTarget) -> None:
    http = target(scim_target)
    http.post("/Users", json={"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                              "userName": "u2@example.com", "displayName": "Old"}).raise_for_status()
    commands = [user_cmd(1), user_cmd(2), group_cmd("g1", "Team", ["u1", "u2"])]
    dry = harness(scim_target.base_url, scim_target.token, application(dry_run=True))
    await dry.feed(*commands)
    await dry.settle()
    assert len(all_of(http, "Users")) == 1 and all_of(http, "Groups") == []
    assert dry.managed == {}
    would = sorted((a.source_id, a.action, a.status) for a in dry.activity())
    assert would == [("g1", "create", "dryRun"), ("u1", "create", "dryRun"), ("u2", "adopt", "dryRun")]
    assert next(a for a in dry.activity() if a.source_id == "u2").modified_properties[0].name == "displayName"

    real = harness(scim_target.base_url, scim_target.token)
    await real.feed(*commands)
    await real.settle()
    first: dict[str, str] = {}
    for a in real.activity():  # the group may add its members later, in an update
        first.setdefault(a.source_id, a.action)
    assert sorted(first.items()) == [(s, a) for s, a, _ in would]
    assert len(all_of(http, "Users")) == 2 and len(all_of(http, "Groups")) == 1


async def test_restart_with_link_reset_matches_existing_accounts_without_duplicates(
        scim_target: ScimTarget) -> None:
    h = harness(scim_target.base_url, scim_target.token)
    await h.feed(*(user_cmd(i) for i in range(5)), group_cmd("g1", "Team", ["u0", "u1"]))
    await h.settle()
    before = {sid: h.state(sid).target_id for sid in ("u0", "g1")}  # type: ignore[union-attr]
    await h.processor.app_state.restart("app", reset_links=True)
    assert h.managed == {} and h.processor.links.target_id("app", "u0") is None
    await h.feed(*(user_cmd(i) for i in range(5)), group_cmd("g1", "Team", ["u0", "u1"]))
    await h.settle()
    http = target(scim_target)
    assert len(all_of(http, "Users")) == 5 and len(all_of(http, "Groups")) == 1
    assert {sid: h.state(sid).target_id for sid in ("u0", "g1")} == before  # type: ignore[union-attr]
    after = [(a.source_id, a.action) for a in h.activity()[7:]]
    assert sorted(s for s, a in after if a == "adopt") == ["g1", "u0", "u1", "u2", "u3", "u4"]
    assert all(action in ("adopt", "update") for _, action in after)  # no create: no duplicates
    members = http.get(f"/Groups/{before['g1']}").json()["members"]
    assert sorted(m["value"] for m in members) == sorted(
        h.state(sid).target_id for sid in ("u0", "u1"))  # type: ignore[union-attr]


async def test_quarantine_publishes_one_error_and_health_on_enter_and_leave(
        scim_target: ScimTarget, proxy: FaultProxy) -> None:
    app = application(target={"base_url": "http://x/v2", "token": "env:T",
                              "retries": {"attempts": 1, "escrow_after": 50, "initial_wait": 0.05,
                                          "max_wait": 0.2},
                              "quarantine": {"min_calls": 5, "failure_ratio": 0.8, "probe_initial": 0.5}})
    h = harness(proxy.url, scim_target.token, app)
    writer = h.processor.writers["app"]
    client = ScimClient(proxy.url, scim_target.token, attempts=1, app="app",
                        quarantine=app.target.quarantine)
    writer.client = client
    client.on_quarantine(h.processor.app_state.on_quarantine)
    proxy.outage(2.0, mode="503")
    await h.feed(*(user_cmd(i) for i in range(10)))
    await h.settle(wait=30)
    assert len(all_of(target(scim_target), "Users")) == 10
    assert [e.error_code for e in h.errors()] == ["AppQuarantined"]
    health = [v for k, v in h.control_topic.sent if k == b"app/health"]
    assert len(health) == 2
    assert b'"quarantined":true' in health[0] and b'"quarantined":false' in health[1]
    await client.aclose()


async def test_a_quarantine_left_behind_by_a_stopped_writer_is_cleared_at_start() -> None:
    h = harness("http://127.0.0.1:9/v2", "token-not-used")
    earlier = h.processor.app_state.started - timedelta(minutes=5)
    await h.processor.app_state.on_health(AppHealth(app="app", quarantined=True, reason="x", at=earlier))
    await h.processor.app_state.on_health(AppHealth(app="app", quarantined=True, reason="x",
                                          at=datetime.now(UTC)))  # this process's own: left alone
    sent = [(k, msgspec.json.decode(v, type=AppHealth)) for k, v in h.control_topic.sent]
    assert [(k, m.quarantined) for k, m in sent] == [(b"app/health", False)]
    await h.processor.close()


async def test_a_wait_for_a_manager_survives_a_restart_of_the_writer(scim_target: ScimTarget) -> None:
    h = harness(scim_target.base_url, scim_target.token)
    await h.feed(user_cmd("report", manager="boss"))
    await h.settle()
    stored = h.state("report")
    assert stored is not None and stored.deferred is not None  # the wait is in the managed state
    await h.processor.close()

    # A new process: same tables (as recovered from their changelogs), empty memory.
    again = harness(scim_target.base_url, scim_target.token)
    again.managed.update(h.managed)
    for key, value in h.managed.items():
        again.processor.on_changelog(key, value)
    again.processor.count_managed()  # the periodic gauge pass picks the wait up again
    assert len(again.processor.deferrals) == 1
    await again.feed(user_cmd("boss"))
    await again.settle()
    boss, report = again.state("boss"), again.state("report")
    assert boss is not None and report is not None
    assert report.attributes[MANAGER] == boss.target_id and report.deferred is None
    body = target(scim_target).get(f"/Users/{report.target_id}").json()
    assert body[MANAGER.rsplit(":", 1)[0]]["manager"]["value"] == boss.target_id
    await again.processor.close()


async def test_a_manager_provisioned_while_the_writer_was_down_is_set_after_its_restart(
        scim_target: ScimTarget) -> None:
    h = harness(scim_target.base_url, scim_target.token)
    await h.feed(user_cmd("report", manager="boss"))
    await h.settle()
    await h.processor.close()
    other = harness(scim_target.base_url, scim_target.token)  # e.g. the replica owning "boss"
    await other.feed(user_cmd("boss"))
    await other.settle()
    boss = other.state("boss")
    assert boss is not None

    again = harness(scim_target.base_url, scim_target.token)
    again.managed.update(h.managed)
    for key, value in [*h.managed.items(), *other.managed.items()]:
        again.processor.on_changelog(key, value)
    again.processor.count_managed()
    await asyncio.sleep(0.1)
    await again.settle()
    report = again.state("report")
    assert report is not None and report.attributes[MANAGER] == boss.target_id
    assert [(a.source_id, a.action) for a in again.activity()] == [("report", "update")]
    await other.processor.close()
    await again.processor.close()


async def test_a_restart_request_is_acted_on_once_and_not_again_when_the_topic_is_replayed() -> None:
    h = harness("http://127.0.0.1:9/v2", "token-not-used")
    h.managed[b"app/u1"] = b"{}"
    old = Restart(app="app", request_id="r0", reset_links=True, by="ops",
                  at=h.processor.app_state.started - timedelta(minutes=1))
    await h.processor.app_state.on_restart(old)  # read back from the compacted topic: done before
    assert b"app/u1" in h.managed
    new = Restart(app="app", request_id="r1", reset_links=True, by="ops", at=datetime.now(UTC))
    await h.processor.app_state.on_restart(new)
    assert h.managed == {}
    h.managed[b"app/u2"] = b"{}"
    await h.processor.app_state.on_restart(new)  # the same request again: nothing
    assert b"app/u2" in h.managed
    await h.processor.close()


async def test_updates_follow_the_apps_update_method_and_dialect(scim_target: ScimTarget,
                                                                 proxy: FaultProxy) -> None:
    h = harness(proxy.url, scim_target.token, application(target={
        "base_url": "http://x/v2", "token": "env:T", "update_method": "put", "dialect": "entra"}))
    await h.feed(user_cmd(1), group_cmd("g1", "Ops", []))
    await h.settle()
    await h.feed(user_cmd(1, displayName="Renamed"), group_cmd("g1", "Ops EMEA", []))
    await h.settle()
    assert {e.path.split("/")[-2] for e in proxy.requests("PUT")} == {"Users", "Groups"}
    assert proxy.requests("PATCH") == []
    http = target(scim_target)
    assert [u["displayName"] for u in all_of(http, "Users")] == ["Renamed"]
    assert [g["displayName"] for g in all_of(http, "Groups")] == ["Ops EMEA"]
