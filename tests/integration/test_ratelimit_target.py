"""The adaptive rate against a real scim2-server behind the fault proxy's token bucket: it
finds the published limit and stays near it, and the bucket itself answers as documented."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from services.devstack.scim_target import ScimTarget
from services.runtime.config import RateLimit
from services.scim.client import ScimClient
from tests.support.faultproxy import FaultProxy
from tests.support.scim_client import NO_WAIT, unique

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


def test_the_token_bucket_answers_429_with_retry_after_beyond_its_rate(
        scim_target: ScimTarget, proxy: FaultProxy) -> None:
    proxy.token_bucket(0.2, burst=2)  # a token every 5 s
    headers = {"Authorization": f"Bearer {scim_target.token}"}
    answers = [httpx.get(f"{proxy.url}/Users", headers=headers) for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 429, 429]
    assert 1 <= int(answers[2].headers["Retry-After"]) <= 5


async def test_the_client_settles_near_a_targets_limit(scim_target: ScimTarget, proxy: FaultProxy) -> None:
    proxy.token_bucket(40, burst=40)
    deadline = time.monotonic() + 12
    async with ScimClient(proxy.url, scim_target.token, backoff=NO_WAIT, attempts=20,
                          rate_limit=RateLimit(max_concurrency=8, max_requests_per_second=400)) as c:

        async def job() -> None:
            while time.monotonic() < deadline:
                await c.find_users("userName", unique())

        await asyncio.gather(*(job() for _ in range(32)))
        assert c.limits is not None
        assert c.limits.requests_per_second < 100  # found: far below the configured 400
    late = [e for e in proxy.log if deadline - 6 <= e.at < deadline]
    passed = sum(e.status != 429 for e in late) / 6
    share = sum(e.status == 429 for e in late) / len(late)
    assert passed >= 0.7 * 40, (passed, share)
    assert share < 0.15, (passed, share)
