"""The whole pipeline from the push API: a client pushes SCIM resources and a BulkRequest to
the ingest's endpoint -> mapper -> writer -> real scim2-server, the three workers as real
processes on a real broker."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.ingest.push_source import BULK_REQUEST
from services.runtime.broker import Broker
from services.runtime.scim_target import ScimTarget
from tests.conftest import Pipeline
from tests.support.source_pipeline import start_pipeline, user_app

pytestmark = pytest.mark.e2e

TOKEN = "e2e-push-token-9c1d"
USERS = 50
USER = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _user(i: int, **extra: Any) -> dict[str, Any]:
    return {"schemas": [USER], "externalId": f"E{i:04d}", "userName": f"e{i}@contoso.com",
            "name": {"givenName": f"Given{i}", "familyName": f"Fam{i}"}, "displayName": f"Employee {i}",
            "active": True, **extra}


@pytest.fixture
def push_pipeline(broker: Broker, scim_target: ScimTarget,
                  tmp_path: Path) -> Iterator[tuple[Pipeline, str]]:
    port = _port()
    source = {"name": "hr-push", "type": "push", "token": "env:TEST_PUSH_TOKEN",
              "listen": f"127.0.0.1:{port}"}
    p = start_pipeline(broker, scim_target, tmp_path, [source], user_app(["G-ALL"]),
                       {"TEST_PUSH_TOKEN": TOKEN})
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
    operations = [{"method": "POST", "bulkId": f"u{i}", "path": "/Users", "data": _user(i)}
                  for i in range(USERS)]
    operations.append({"method": "POST", "bulkId": "g", "path": "/Groups",
                       "data": {"schemas": [GROUP], "externalId": "G-ALL", "displayName": "Everyone",
                                "members": [{"value": f"E{i:04d}"} for i in range(USERS)]}})
    operations.append({"method": "POST", "bulkId": "bad", "path": "/Users", "data": {"schemas": [USER]}})
    r = http.post("/scim/v2/Bulk", json={"schemas": [BULK_REQUEST], "Operations": operations})
    assert r.status_code == 200
    statuses = [op["status"] for op in r.json()["Operations"]]
    assert statuses == ["201"] * (USERS + 1) + ["400"]
    p.wait_for(f"{USERS} users in the target", lambda: p.scim.count() >= USERS, timeout=60)
    assert p.scim.by_username()["e0@contoso.com"]["name"]["givenName"] == "Given0"

    assert http.put("/scim/v2/Users/E0001", json=_user(1, displayName="Renamed One")).status_code == 200
    p.wait_for("the pushed change",
               lambda: p.scim.by_username()["e1@contoso.com"]["displayName"] == "Renamed One", timeout=20)
    assert http.put("/scim/v2/Users/E0002", json=_user(2, active=False)).status_code == 200
    p.wait_for("the pushed disable", lambda: p.scim.by_username()["e2@contoso.com"]["active"] is False,
               timeout=20)
    assert http.delete("/scim/v2/Users/E0003").status_code == 204
    p.wait_for("the pushed delete", lambda: "e3@contoso.com" not in p.scim.by_username(), timeout=20)
    [rejected] = [e for e in p.errors() if e.error_code == "PushRejected"]
    assert "externalId" in rejected.reason and TOKEN not in rejected.reason
