"""The whole pipeline from the push API: a client pushes SCIM resources and a BulkRequest to
the ingest's endpoint -> mapper -> writer -> real scim2-server, the three workers as real
processes on a real broker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.devstack.broker import Broker
from services.devstack.processes import free_ports
from services.devstack.scim_target import ScimTarget
from services.ingest.sources.push import BULK_REQUEST
from tests.conftest import Pipeline
from tests.support.source_pipeline import (
    find_user,
    is_member,
    loaded_groups,
    start_pipeline,
    target_groups,
    target_user,
    user_app,
    wait_for_directory,
)

pytestmark = pytest.mark.e2e

TOKEN = "e2e-push-token-9c1d"
CHANGE_WITHIN = 20.0
LOAD_WITHIN = 240.0
USERS, GROUPS = 1000, 50  # every user in one group; every group assigned (and provisioned)
PER = USERS // GROUPS
BULK = 500  # operations per BulkRequest (the endpoint takes at most 1,000)
USER = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"


def _user(i: int, **extra: Any) -> dict[str, Any]:
    return {"schemas": [USER], "externalId": _eid(i), "userName": _name(i),
            "name": {"givenName": f"Given{i}", "familyName": f"Fam{i}"}, "displayName": f"Employee {i}",
            "active": True, **extra}


@pytest.fixture
def push_pipeline(broker: Broker, scim_target: ScimTarget,
                  tmp_path: Path) -> Iterator[tuple[Pipeline, str]]:
    [port] = free_ports(1)
    source = {"name": "hr-push", "type": "push", "token": "env:TEST_PUSH_TOKEN",
              "listen": f"127.0.0.1:{port}"}
    app = user_app([_gid(g) for g in range(GROUPS)], group_name="displayName")
    p = start_pipeline(broker, scim_target, tmp_path, [source], app, {"TEST_PUSH_TOKEN": TOKEN})
    try:
        yield p, f"http://127.0.0.1:{port}"
    finally:
        p.sup.kill_all()


def test_pushed_bulk_lands_and_pushed_changes_follow(push_pipeline: tuple[Pipeline, str]) -> None:
    p, url = push_pipeline
    http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)

    def up() -> bool:
        try:
            empty = {"schemas": [BULK_REQUEST], "Operations": []}
            return http.post("/scim/v2/Bulk", json=empty).status_code == 200
        except httpx.TransportError:
            return False

    p.wait_for("the push endpoint", up, timeout=30)
    users = [{"method": "POST", "bulkId": f"u{i}", "path": "/Users", "data": _user(i)} for i in range(USERS)]
    groups = [{"method": "POST", "bulkId": f"g{g}", "path": "/Groups", "data": _group(g)}
              for g in range(GROUPS)]
    bad = {"method": "POST", "bulkId": "bad", "path": "/Users", "data": {"schemas": [USER]}}
    for chunk in (users[:BULK], users[BULK:], [*groups, bad]):
        r = http.post("/scim/v2/Bulk", json={"schemas": [BULK_REQUEST], "Operations": chunk})
        assert r.status_code == 200
        statuses = [op["status"] for op in r.json()["Operations"]]
        assert statuses == ["400" if op is bad else "201" for op in chunk]
    # Initial load: every user, every group, and each group's members, in the target.
    wait_for_directory(p, {_name(i) for i in range(USERS)}, _loaded_groups(), timeout=LOAD_WITHIN)
    assert target_user(p, _name(0))["name"]["givenName"] == "Given0"

    assert http.put("/scim/v2/Users/E0001", json=_user(1, displayName="Renamed One")).status_code == 200
    p.wait_for("the pushed change", lambda: target_user(p, _name(1))["displayName"] == "Renamed One",
               timeout=CHANGE_WITHIN)
    assert http.put("/scim/v2/Users/E0002", json=_user(2, active=False)).status_code == 200
    p.wait_for("the pushed disable", lambda: target_user(p, _name(2))["active"] is False,
               timeout=CHANGE_WITHIN)
    assert http.delete("/scim/v2/Users/E0003").status_code == 204
    p.wait_for("the pushed delete", lambda: find_user(p, _name(3)) is None, timeout=CHANGE_WITHIN)
    assert http.put("/scim/v2/Users/E0004", json=_user(4, userName="renamed@contoso.com")).status_code == 200
    p.wait_for("the pushed rename", lambda: find_user(p, "renamed@contoso.com") is not None,
               timeout=CHANGE_WITHIN)
    assert find_user(p, _name(4)) is None

    # A new user, pushed with its group; a user added to a second group.
    assert http.post("/scim/v2/Users", json=_user(USERS)).status_code == 201
    team0 = [m for m in _group(0)["members"] if m["value"] != _eid(3)] + [{"value": _eid(USERS)}]
    assert http.put(f"/scim/v2/Groups/{_gid(0)}", json={**_group(0), "members": team0}).status_code == 200
    team1 = [*_group(1)["members"], {"value": _eid(8)}]
    assert http.put(f"/scim/v2/Groups/{_gid(1)}", json={**_group(1), "members": team1}).status_code == 200
    p.wait_for("the new user a member of its group in the target",
               lambda: is_member(p, _name(USERS), "Team 0"), timeout=CHANGE_WITHIN)
    p.wait_for("the user a member of its second group in the target",
               lambda: is_member(p, _name(8), "Team 1"), timeout=CHANGE_WITHIN)
    expected = _loaded_groups()
    expected["Team 0"] = (expected["Team 0"] - {_name(3), _name(4)}) | {_name(USERS), "renamed@contoso.com"}
    expected["Team 1"] |= {_name(8)}
    assert target_groups(p) == expected

    [rejected] = p.errors()  # the bad operation, and nothing else
    assert rejected.error_code == "PushRejected"
    assert "externalId" in rejected.reason and TOKEN not in rejected.reason


def _eid(i: int) -> str:
    return f"E{i:04d}"


def _gid(g: int) -> str:
    return f"G{g:02d}"


def _name(i: int) -> str:
    return f"e{i}@contoso.com"


def _group(g: int) -> dict[str, Any]:
    return {"schemas": [GROUP], "externalId": _gid(g), "displayName": f"Team {g}",
            "members": [{"value": _eid(i)} for i in range(g * PER, (g + 1) * PER)]}


def _loaded_groups() -> dict[str, set[str]]:
    """The groups as loaded: displayName -> members' userNames."""
    return loaded_groups(lambda g: f"Team {g}", _name, users=USERS, groups=GROUPS)
