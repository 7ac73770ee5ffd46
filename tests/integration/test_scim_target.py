"""The local SCIM target itself: scim2-server, stock or served by waitress with N threads."""

from __future__ import annotations

import asyncio

import httpx

from services.devstack.scim_target import start_scim_target

USER = "urn:ietf:params:scim:schemas:core:2.0:User"


async def _create_concurrently(base_url: str, token: str, n: int) -> set[str]:
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=10) as http:
        async def one(i: int) -> str:
            r = await http.post("/Users", json={"schemas": [USER], "userName": f"user{i}"})
            r.raise_for_status()
            assert r.http_version == "HTTP/1.1"
            created: str = r.json()["id"]
            return created

        return set(await asyncio.gather(*(one(i) for i in range(n))))


def test_threaded_target_keeps_every_concurrent_write() -> None:
    with start_scim_target(threads=8) as target:
        ids = asyncio.run(_create_concurrently(target.base_url, target.token, 120))
        listed = httpx.get(f"{target.base_url}/Users", params={"count": 500},
                           headers={"Authorization": f"Bearer {target.token}"}).json()
    assert len(ids) == 120
    assert {u["id"] for u in listed["Resources"]} == ids
    assert sorted(u["userName"] for u in listed["Resources"]) == sorted(f"user{i}" for i in range(120))


def test_threaded_target_still_requires_the_token() -> None:
    with start_scim_target(threads=2) as target:
        r = httpx.get(f"{target.base_url}/Users", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
