"""Live reload in the writer: a new version of one app, an added app, a removed app.

The processor runs in the test's event loop (tests/support/writer_harness.py) against a
real scim2-server; each app reaches it through its own fault proxy, which only counts
and logs the requests (and delays one, to catch a job in flight).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from services.devstack.scim_target import ScimTarget
from services.runtime import metrics
from services.runtime.config import Application
from tests.support.faultproxy import FaultProxy
from tests.support.writer_harness import Harness, application, for_app, harness, loaded_for, user_cmd

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

_V1: list[dict[str, Any]] = [{"target": "userName", "source": "upn", "matching": 1},
       {"target": "displayName", "source": "name"},
       {"target": "nickName", "source": "nick"}]
_V2: list[dict[str, Any]] = [{"target": "userName", "source": "upn", "matching": 1},
       {"target": "displayName", "source": "name"},
       {"target": "title", "source": "jobTitle"}]
"""Version 2 maps ``title`` (new) and no longer maps ``nickName``."""


@pytest.fixture
def proxy_b(scim_target: ScimTarget) -> Iterator[FaultProxy]:
    """A second proxy on the same target: app ``b``'s requests, counted apart from ``app``'s."""
    with FaultProxy(scim_target.base_url) as p:
        yield p


def app_version(name: str, url: str, attributes: list[dict[str, Any]], **overrides: Any) -> Application:
    return application(name=name, mappings={"user": {"attributes": attributes}},
                       target_extra={"base_url": url, "bulk": "off"}, **overrides)


async def two_apps(scim_target: ScimTarget, proxy: FaultProxy, proxy_b: FaultProxy) -> Harness:
    """``app`` (version 1, through ``proxy``) and ``b`` (added live, through ``proxy_b``), each
    with three users written."""
    h = harness(proxy.url, scim_target.token, app_version("app", proxy.url, _V1))
    b = app_version("b", proxy_b.url, _V1)
    await h.processor.set_application(b, loaded_for(b, scim_target.token))
    await h.feed(*(user_cmd(i, nickName=f"nick{i}") for i in range(3)))
    await h.feed(*for_app("b", *(user_cmd(f"b{i}", nickName=f"nick-b{i}") for i in range(3))))
    await h.settle()
    assert {a.action for a in h.activity()} == {"create"} and len(h.activity()) == 6
    await capabilities_read(h, "b")  # an added app's target is read at once
    return h


async def capabilities_read(h: Harness, app: str) -> None:
    for _ in range(100):
        if h.processor.writers[app].capabilities is not None:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the capabilities of {app}'s target were not read")


def patched_paths(proxy: FaultProxy) -> dict[str, set[str]]:
    """Per target id: the attribute paths its PATCH requests wrote."""
    written: dict[str, set[str]] = {}
    for entry in proxy.requests("PATCH", "/Users/"):
        paths = written.setdefault(entry.path.rsplit("/", 1)[-1], set())
        for op in entry.json()["Operations"]:
            paths.update([op["path"]] if op.get("path") else op["value"].keys())
    return written


def change_by_hand(http: httpx.Client, target_id: str, path: str, value: str) -> None:
    """An administrator's edit directly in the target."""
    http.patch(f"/Users/{target_id}", json={
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{"op": "replace", "path": path, "value": value}]}).raise_for_status()


def users(http: httpx.Client) -> dict[str, dict[str, Any]]:
    return {u["userName"]: u for u in http.get("/Users", params={"count": 100}).json()["Resources"]}


async def test_a_new_mapping_patches_exactly_the_changed_attribute_and_leaves_unmapped_ones(
        scim_target: ScimTarget, proxy: FaultProxy, proxy_b: FaultProxy, http: httpx.Client) -> None:
    h = await two_apps(scim_target, proxy, proxy_b)
    before = dict(h.processor.writers)
    proxy.clear_log()
    proxy_b.clear_log()

    v2 = app_version("app", proxy.url, _V2, drift="repair")
    await h.processor.set_application(v2, loaded_for(v2, scim_target.token))
    # The mapper's full scan after the change: displayName unchanged, title new, no nickName.
    await h.scan("cycle-v2", *(user_cmd(i, title=f"Engineer {i}") for i in range(3)))
    await h.settle()

    ids = {h.state(f"u{i}").target_id: i for i in range(3)}  # type: ignore[union-attr]
    assert patched_paths(proxy) == {target_id: {"title"} for target_id in ids}
    assert len(proxy.requests("PATCH")) == 3 and not proxy.requests("POST") and not proxy.requests("PUT")
    seen = users(http)
    for i in range(3):
        assert seen[f"u{i}@example.com"]["title"] == f"Engineer {i}"
        assert seen[f"u{i}@example.com"]["nickName"] == f"nick{i}"  # no longer mapped: left as it is
    assert proxy_b.log == []  # the other app: not a single request
    assert h.processor.writers["b"] is before["b"]
    assert h.processor.writers["app"].client is before["app"].client  # same target: client kept
    assert h.errors() == []

    # Under version 2, scimflow owns title, not nickName: a change of nickName in the target
    # is nobody's drift any more; one of title is repaired.
    first = h.state("u0").target_id  # type: ignore[union-attr]
    for path in ("nickName", "title"):
        change_by_hand(http, first, path, "changed by hand")
    proxy.clear_log()
    await h.scan("cycle-v2-again", *(user_cmd(i, title=f"Engineer {i}") for i in range(3)))
    await h.settle()
    assert patched_paths(proxy) == {first: {"title"}}
    after = users(http)["u0@example.com"]
    assert (after["title"], after["nickName"]) == ("Engineer 0", "changed by hand")
    assert proxy_b.log == []


async def test_a_new_target_gets_a_new_client_once_the_jobs_in_flight_are_done(
        scim_target: ScimTarget, proxy: FaultProxy, proxy_b: FaultProxy) -> None:
    h = await two_apps(scim_target, proxy, proxy_b)
    old = h.processor.writers["app"]
    proxy_b.clear_log()
    with FaultProxy(scim_target.base_url) as moved:
        proxy.delay(1.0, method="PATCH", path="/Users/")
        await h.feed(user_cmd(0, nickName="in flight"))
        await asyncio.sleep(0.3)  # the PATCH is on its way through the old client
        v2 = app_version("app", moved.url, _V1)
        await h.processor.set_application(v2, loaded_for(v2, scim_target.token))
        new = h.processor.writers["app"]
        assert new.client is not old.client
        assert not old.client._transport._http.is_closed  # the job in flight still holds it
        await h.feed(user_cmd(1, nickName="after the change"))
        await h.settle()
        await asyncio.sleep(0.2)

        assert [e.status for e in proxy.requests("PATCH")] == [204]  # finished, not cut off
        assert [e.path.rsplit("/", 1)[-1] for e in moved.requests("PATCH")] == [h.state("u1").target_id]  # type: ignore[union-attr]
        assert old.client._transport._http.is_closed
        # The new target's capabilities are read for this app, and for no other.
        await capabilities_read(h, "app")
        assert moved.requests("GET", "/ServiceProviderConfig")
        assert proxy_b.log == []
    assert {a.status for a in h.activity()} == {"success"}
    assert h.errors() == []


async def test_a_removed_app_writes_nothing_and_keeps_its_state_and_accounts(
        scim_target: ScimTarget, proxy: FaultProxy, proxy_b: FaultProxy, http: httpx.Client) -> None:
    h = await two_apps(scim_target, proxy, proxy_b)
    links = {i: h.state(f"b{i}", app="b").target_id for i in range(3)}  # type: ignore[union-attr]
    b = h.processor.writers["b"]
    skipped = metrics.REMOVED_APP_COMMANDS.labels(app="b")._value.get()
    proxy_b.clear_log()
    records = len(h.activity())

    await h.processor.remove_application("b")
    # Its commands still in the topic: a change, a deletion, and a full scan that names no
    # object of it (a sweep would remove all three).
    await h.feed(*for_app("b", user_cmd("b0", nickName="changed"), user_cmd("b1", operation="delete")))
    await h.scan("cycle-b", app="b")
    await h.feed(user_cmd(2, nickName="app goes on"))
    await h.settle()
    await asyncio.sleep(0.2)

    assert proxy_b.log == []
    assert [a.app for a in h.activity()[records:]] == ["app"]  # only the other app's write
    assert h.errors() == []
    assert metrics.REMOVED_APP_COMMANDS.labels(app="b")._value.get() - skipped == 2
    assert h.pending_acks == 0  # skipped commands are acknowledged, not stuck
    assert b.client._transport._http.is_closed
    seen = users(http)
    for i in range(3):
        account = seen[f"b{i}@example.com"]
        assert (account["id"], account["active"], account["nickName"]) == (links[i], True, f"nick-b{i}")
        assert h.state(f"b{i}", app="b") is not None  # its managed state stays

    # Added again: it resumes with its links (a PATCH to the same account, no lookup, no create).
    b2 = app_version("b", proxy_b.url, _V1)
    await h.processor.set_application(b2, loaded_for(b2, scim_target.token))
    await h.feed(*for_app("b", user_cmd("b0", nickName="back")))
    await h.settle()
    assert [(e.method, e.path.rsplit("/", 1)[-1]) for e in proxy_b.requests()
            if not e.path.endswith(("ServiceProviderConfig", "ResourceTypes", "Schemas"))] \
        == [("PATCH", links[0])]
    assert users(http)["b0@example.com"]["nickName"] == "back"


async def test_status_off_in_a_new_version_holds_that_app_only_and_on_applies_what_waited(
        scim_target: ScimTarget, proxy: FaultProxy, proxy_b: FaultProxy, http: httpx.Client) -> None:
    h = await two_apps(scim_target, proxy, proxy_b)
    proxy.clear_log()
    proxy_b.clear_log()
    off = app_version("app", proxy.url, _V1, status="off")
    await h.processor.set_application(off, loaded_for(off, scim_target.token))
    await h.feed(user_cmd(0, nickName="while off"))
    await h.feed(*for_app("b", user_cmd("b0", nickName="b goes on")))
    await h.settle()
    assert proxy.log == [] and len(proxy_b.requests("PATCH")) == 1

    on = app_version("app", proxy.url, _V1, status="on")
    await h.processor.set_application(on, loaded_for(on, scim_target.token))
    await h.settle()
    assert len(proxy.requests("PATCH")) == 1
    assert users(http)["u0@example.com"]["nickName"] == "while off"


async def test_an_attribute_mapped_again_is_owned_again_and_written(
        scim_target: ScimTarget, proxy: FaultProxy, proxy_b: FaultProxy, http: httpx.Client) -> None:
    h = await two_apps(scim_target, proxy, proxy_b)
    proxy_b.clear_log()
    v2 = app_version("app", proxy.url, _V2, drift="repair")
    await h.processor.set_application(v2, loaded_for(v2, scim_target.token))
    await h.scan("cycle-v2", *(user_cmd(i, title=f"Engineer {i}") for i in range(3)))
    await h.settle()
    state = h.state("u0")
    assert state is not None and "nickName" not in state.attributes and "title" in state.attributes
    change_by_hand(http, state.target_id, "nickName", "changed while unmapped")

    # Version 3 maps nickName again, with the value scimflow wrote under version 1: the
    # account that differs gets it, the others (which hold it already) get no request.
    proxy.clear_log()
    records = len(h.activity())
    v3 = app_version("app", proxy.url, [*_V2, {"target": "nickName", "source": "nick"}], drift="repair")
    await h.processor.set_application(v3, loaded_for(v3, scim_target.token))
    await h.scan("cycle-v3", *(user_cmd(i, title=f"Engineer {i}", nickName=f"nick{i}") for i in range(3)))
    await h.settle()
    assert patched_paths(proxy) == {state.target_id: {"nickName"}}
    assert users(http)["u0@example.com"]["nickName"] == "nick0"
    # Written as the new mapping's value, not as drift: nobody owned it while it changed.
    assert [(a.action, a.source_id) for a in h.activity()[records:]] == [("update", "u0")]
    assert proxy_b.log == []
