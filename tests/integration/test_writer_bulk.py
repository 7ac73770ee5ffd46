"""Creates through SCIM /Bulk against a target that offers it (scim2-server does): an
initial sync in a handful of requests, per-operation failures handled one by one, and a
target whose /Bulk fails falling back to single creates. Counted at the wire (the proxy)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import pytest

from services.runtime.scim_target import ScimTarget
from tests.support.faultproxy import FaultProxy
from tests.support.writer_harness import application, group_cmd, harness, user_cmd

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def proxy(scim_target: ScimTarget) -> Iterator[FaultProxy]:
    with FaultProxy(scim_target.base_url) as p:
        yield p


@pytest.fixture
def http(scim_target: ScimTarget) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=scim_target.base_url, timeout=30,
                      headers={"Authorization": f"Bearer {scim_target.token}"}) as client:
        yield client


def all_of(http: httpx.Client, kind: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while True:
        page = http.get(f"/{kind}", params={"startIndex": len(out) + 1, "count": 1000}).json()
        out.extend(page.get("Resources", []))
        if not page.get("Resources") or len(out) >= page["totalResults"]:
            return out


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


async def test_bulk_off_in_the_config_sends_single_creates(scim_target: ScimTarget,
                                                           proxy: FaultProxy) -> None:
    h = harness(proxy.url, scim_target.token, application(target_extra={"bulk": "off"}))
    await h.processor.learn()
    assert h.processor.writers["app"].batcher is None
    await h.scan("initial", *(user_cmd(i) for i in range(5)))
    await h.settle()
    assert len(proxy.requests("POST", "/Users$")) == 5 and proxy.requests("POST", "/Bulk$") == []
