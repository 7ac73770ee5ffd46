"""Groups and manager references through the whole pipeline (file source -> ingest ->
mapper -> writer -> real scim2-server), with the fault proxy counting what the writer sends."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import APP, Pipeline, user
from tests.support.faultproxy import FaultProxy
from tests.support.writer_harness import MANAGER

pytestmark = pytest.mark.e2e

Factory = Callable[..., Pipeline]
ENTERPRISE = MANAGER.rsplit(":", 1)[0]


def group_app(proxy: FaultProxy) -> dict[str, Any]:
    user_mapping = APP["mappings"]["user"]  # type: ignore[index]
    return {
        **APP, "scope": "all", "deletion_threshold": 0,
        # Single calls (not /Bulk): the test follows each group's own POST and PATCHes.
        "target": {"base_url": proxy.url, "token": "env:TEST_SCIM_TOKEN", "bulk": "off"},
        "mappings": {
            "user": {"attributes": [*user_mapping["attributes"],
                                    {"target": MANAGER, "source": "manager", "reference": "user"}]},
            "group": {"attributes": [{"target": "displayName", "source": "displayName", "matching": 1},
                                     {"target": "externalId", "source": "id"}]},
        },
    }


def test_groups_get_members_as_deltas_and_reports_get_their_manager(pipeline_factory: Factory,
                                                                    proxy: FaultProxy) -> None:
    # Every report names u00029 as manager; u00029 may well be created after its reports.
    users = [user(i, manager="u00029") for i in range(29)] + [user(29)]
    team = [f"u{i:05d}" for i in range(10)]
    groups = [{"id": "g-all", "displayName": "All", "members": [u["id"] for u in users]},
              {"id": "g-team", "displayName": "Team", "members": team}]
    p = pipeline_factory(users, app=group_app(proxy), groups=groups)
    p.wait_for("30 users", lambda: p.scim.count() == 30)
    p.wait_for("both groups with their members", lambda: _members(p) == {"All": 30, "Team": 10})
    by_name = p.scim.by_username()
    boss = by_name["user29@example.com"]["id"]
    p.wait_for("every report's manager", lambda: all(
        _manager(u) == boss for n, u in p.scim.by_username().items() if n != "user29@example.com"))
    for body in (e.json() for e in proxy.requests("POST", "/Groups")):
        assert "members" not in body, "groups are created without members"
    assert len(proxy.requests("POST", "/Groups")) == 2

    proxy.clear_log()
    new_team = [*team[2:], "u00020", "u00021", "u00022"]
    p.write_directory(users, [groups[0], {**groups[1], "members": new_team}])
    p.wait_for("the new team", lambda: _member_names(p, "Team") == {
        f"user{int(s[1:])}@example.com" for s in new_team})
    patches = proxy.requests("PATCH", "/Groups/")
    sent = [op for e in patches for op in e.json()["Operations"]]
    added = [m["value"] for op in sent if op["op"].lower() == "add" for m in op["value"]]
    removed = [op["path"] for op in sent if op["op"].lower() == "remove"]
    assert sorted(added) == sorted(by_name[f"user{i}@example.com"]["id"] for i in (20, 21, 22))
    assert len(removed) == 2 and all(by_name[f"user{i}@example.com"]["id"] in " ".join(removed)
                                     for i in (0, 1))
    assert p.errors() == []


def _groups(p: Pipeline) -> list[dict[str, Any]]:
    resources: list[dict[str, Any]] = p.scim.http.get("/Groups").json().get("Resources", [])
    return resources


def _members(p: Pipeline) -> dict[str, int]:
    return {g["displayName"]: len(g.get("members", [])) for g in _groups(p)}


def _member_names(p: Pipeline, group: str) -> set[str]:
    names = {u["id"]: u["userName"] for u in p.scim.users()}
    found = next((g for g in _groups(p) if g["displayName"] == group), {})
    return {names.get(m["value"], "?") for m in found.get("members", [])}


def _manager(body: dict[str, Any]) -> str | None:
    value = body.get(ENTERPRISE, {}).get("manager", {}).get("value")
    return str(value) if value else None
