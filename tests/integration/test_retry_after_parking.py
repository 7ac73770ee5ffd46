"""A ``Retry-After`` parks the writer's object instead of holding the consumer: a real
scim2-server behind the fault proxy (tests/support/faultproxy.py), the real writer processor
and SCIM client (only the Kafka topics are stand-ins, see writer_harness).

A call that waits out a ``Retry-After`` inside the client is work in progress, and a scan's
end frame waits for all of it (``Scheduler.drain``) while the consumer reads nothing: with
random 429s and ``Retry-After: 1`` the pipeline stalled a second or more at every frame.
"""

from __future__ import annotations

import pytest

from services.devstack.scim_target import ScimTarget
from services.runtime.errors import TransientError
from services.scim.client import Backoff, ScimClient, retry_after_raised
from services.scim.paths import build_resource
from tests.support.faultproxy import FaultProxy
from tests.support.writer_harness import application, harness, user_cmd

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

RETRY_AFTER = 2


async def test_a_scan_frame_does_not_wait_for_an_object_waiting_out_retry_after(
        scim_target: ScimTarget) -> None:
    with FaultProxy(scim_target.base_url) as proxy:
        # Three attempts per call: before, the client waited the Retry-After out in the call.
        app = application(retries={"attempts": 3, "max_wait": 10.0})
        h = harness(proxy.url, scim_target.token, app)
        proxy.fail(429, retry_after=str(RETRY_AFTER), method="POST", path="/Users", times=1)
        await h.scan("c1", *(user_cmd(i) for i in range(3)))
        # The end frames are taken: the throttled object waits parked, not in a call, so
        # the consumer did not wait for its retry (nor did any other frame).
        throttled = [e for e in proxy.requests("POST", "/Users") if e.status == 429]
        assert len(throttled) == 1
        assert len(proxy.requests("POST", "/Users")) == 3, "the retry ran before the frame was taken"
        await h.settle(wait=30)
        posts = proxy.requests("POST", "/Users")
        assert [e.status for e in posts].count(201) == 3
        retried = next(e for e in posts[3:] if e.body == throttled[0].body)
        assert retried.at - throttled[0].at >= RETRY_AFTER  # the Retry-After is honoured all the same
        assert sorted(r.source_id for r in h.activity() if r.status == "success") == ["u0", "u1", "u2"]
        assert not h.errors()
        assert h.pending_acks == 0


async def test_retry_after_raised_applies_to_writes_but_not_to_a_listing(scim_target: ScimTarget) -> None:
    with FaultProxy(scim_target.base_url) as proxy:
        async with ScimClient(proxy.url, scim_target.token, attempts=3,
                              backoff=Backoff(wait_initial=0.01, wait_max=0.05, wait_jitter=0.01)) as client:
            await client.create_user(build_resource({"userName": "listed@example.com"}))
            proxy.fail(429, retry_after="1", times=2)
            with retry_after_raised():
                with pytest.raises(TransientError) as raised:
                    await client.create_user(build_resource({"userName": "parked@example.com"}))
                assert raised.value.retry_after == 1
                assert raised.value.attempts == 1  # given back at once, for the writer to park
                # A listing has no object to park: it waits the Retry-After out and completes.
                resources, complete = await client.list_all("user")
        assert complete
        assert [r.body["userName"] for r in resources] == ["listed@example.com"]
        assert [e.status for e in proxy.requests("GET", "/Users")] == [429, 200]
