"""The demo SCIM target of `scimflow up` remembers its users and groups from one start to
the next (``start_scim_target(resources_file=...)``), even when it was killed."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path
from typing import Any

import httpx

from services.devstack.scim_target import start_scim_target

USER = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
PATCH = "urn:ietf:params:scim:api:messages:2.0:PatchOp"


def test_what_the_target_acknowledged_survives_a_kill(tmp_path: Path) -> None:
    kept = tmp_path / "resources.json"
    with start_scim_target(resources_file=kept) as target, _client(target) as http:
        ada = _created(http.post("/Users", json={"schemas": [USER, ENTERPRISE], "userName": "ada",
                                                 ENTERPRISE: {"department": "R&D"}}))
        gone = _created(http.post("/Users", json={"schemas": [USER], "userName": "gone"}))
        group = _created(http.post("/Groups", json={"schemas": [GROUP], "displayName": "eng",
                                                    "members": [{"value": ada["id"]}]}))
        http.patch(f"/Users/{ada['id']}", json={
            "schemas": [PATCH], "Operations": [{"op": "replace", "path": "title", "value": "Chief"}],
        }).raise_for_status()
        http.delete(f"/Users/{gone['id']}").raise_for_status()
        before = http.get(f"/Users/{ada['id']}").json()
        os.killpg(target.pid, signal.SIGKILL)  # no clean stop: nothing is saved on the way out

    with start_scim_target(resources_file=kept) as target, _client(target) as http:
        users = http.get("/Users").json()["Resources"]
        groups = http.get("/Groups").json()["Resources"]
        clash = http.post("/Users", json={"schemas": [USER], "userName": "ada"})
        later = _created(http.post("/Users", json={"schemas": [USER], "userName": "grace"}))

    assert [(u["id"], u["userName"], u.get("title"), u[ENTERPRISE]) for u in users] == [
        (ada["id"], "ada", "Chief", {"department": "R&D"})]
    assert _without_location(users[0]["meta"]) == _without_location(before["meta"])
    assert [(g["id"], g["members"]) for g in groups] == [(group["id"], [{"value": ada["id"]}])]
    assert clash.status_code == 409  # userName's uniqueness still holds for what was loaded
    # ETags never repeat across restarts: a stale If-Match cannot pass by coincidence.
    assert _version(later) > _version(before)


def _client(target: Any) -> httpx.Client:
    return httpx.Client(base_url=target.base_url, timeout=10,
                        headers={"Authorization": f"Bearer {target.token}"})


def _created(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def _without_location(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in meta.items() if k != "location"}  # names the port, which changed


def _version(resource: dict[str, Any]) -> int:
    return int(re.sub(r"\D", "", resource["meta"]["version"]))
