"""ScimClient against a real scim2-server behind the fault proxy (tests/support/faultproxy.py):
throttling with Retry-After, transient failures, outages and quarantine, PUT fallback,
OAuth2 token refresh against a real local token endpoint, and every test-connection failure
a real server will not produce on demand. Waits are asserted on the proxy's timestamps."""

from __future__ import annotations

import asyncio
import email.utils
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

import httpx
import pytest

from services.devstack.scim_target import ScimTarget, start_scim_target
from services.runtime.config import Quarantine, RateLimit
from services.runtime.errors import CredentialsError, RejectedError, TransientError
from services.runtime.http import ClientCredentials
from services.scim.client import Backoff, ScimClient, ScimResource, attempts_of
from services.scim.errors import OutcomeUnknownError
from services.scim.paths import build_resource, read_path
from services.scim.quarantine import CREDENTIALS, FAILURE_RATIO, QuarantineEvent
from tests.support.faultproxy import FaultProxy
from tests.support.fixtures import server_fixture
from tests.support.scim_client import unique

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

FAST = Backoff(wait_initial=0.05, wait_max=0.2, wait_jitter=0.05)


scim_target = server_fixture(start_scim_target, scope="module",
                             doc="One server per module; tests use unique names.")


@pytest.fixture
def proxy(scim_target: ScimTarget) -> Iterator[FaultProxy]:
    with FaultProxy(scim_target.base_url, seed=7) as p:
        yield p


@pytest.fixture
async def client(scim_target: ScimTarget, proxy: FaultProxy) -> AsyncIterator[ScimClient]:
    async with ScimClient(proxy.url, scim_target.token, backoff=FAST) as c:
        yield c


def user(name: str | None = None) -> dict[str, object]:
    return build_resource({"userName": name or unique()})


def users_at_target(target: ScimTarget, prefix: str) -> list[str]:
    response = httpx.get(f"{target.base_url}/Users", params={"filter": f'userName sw "{prefix}"',
                                                              "count": 1000},
                         headers={"Authorization": f"Bearer {target.token}"})
    return [u["userName"] for u in response.json().get("Resources", [])]


async def create_once(c: ScimClient, name: str) -> ScimResource:
    """Create ``name`` as the writer does: after an unknown outcome, look it up before any
    new create (a reset POST may have landed)."""
    while True:
        try:
            return await c.create_user(user(name))
        except OutcomeUnknownError:
            found = await c.find_users("userName", name)
            if found:
                return found[0]


# -- throttling and transient failures ------------------------------------------------------


@pytest.mark.parametrize("retry_after", ["2", "date"])
async def test_retry_after_is_honoured(client: ScimClient, proxy: FaultProxy, retry_after: str) -> None:
    header = retry_after if retry_after != "date" else email.utils.format_datetime(
        datetime.now(UTC) + timedelta(seconds=3), usegmt=True)
    proxy.fail(429, retry_after=header, method="POST", times=1)
    created = await client.create_user(user())
    first, second = proxy.requests("POST")
    assert (first.status, second.status) == (429, 201)
    # an HTTP-date has whole seconds: "3 s from now" is at least 2 s after the first try
    assert second.at - first.at >= 2.0
    assert second.at - first.at < 4.0
    assert created.id


async def test_a_call_waiting_for_its_retry_holds_no_slot(scim_target: ScimTarget, proxy: FaultProxy) -> None:
    """One request in flight at most: while the first call waits out Retry-After, a second
    call goes through (no head-of-line blocking)."""
    proxy.fail(429, retry_after=2, method="POST", times=1)
    async with ScimClient(proxy.url, scim_target.token, backoff=FAST,
                          rate_limit=RateLimit(max_concurrency=1, max_requests_per_second=50)) as c:
        slow = asyncio.create_task(c.create_user(user()))
        await asyncio.sleep(0.3)
        started = time.monotonic()
        assert await c.find_users("userName", unique()) == []
        assert time.monotonic() - started < 1.0
        await slow
    assert [e.method for e in proxy.log] == ["POST", "GET", "POST"]


async def test_429s_lower_the_limits(scim_target: ScimTarget, proxy: FaultProxy) -> None:
    """An interval of answers most of which are 429s cuts the rate to 0.7 of what got through."""
    proxy.fail(429, retry_after=0, times=12)
    async with ScimClient(proxy.url, scim_target.token, backoff=FAST, attempts=20,
                          rate_limit=RateLimit(max_concurrency=8, max_requests_per_second=40)) as c:
        await asyncio.gather(*(c.find_users("userName", unique()) for _ in range(8)))
        assert c.limits is not None
        # Cut to int(0.7 * 8) = 5; each success after the cut regrows it by 1/concurrency, and
        # how many of the 8 calls succeed after the cut's interval closes depends on timing.
        assert c.limits.concurrency < 8
        assert c.limits.requests_per_second < 0.7 * 40


async def test_thirty_percent_transient_failures_every_call_eventually_succeeds(
        scim_target: ScimTarget, proxy: FaultProxy) -> None:
    # A create is retried in the call only after failures that prove it did not land
    # (429, 503 with Retry-After); resets hit the lookups (a reset create is an unknown
    # outcome: tests/integration/test_scim_create_outcome.py).
    proxy.fail(503, retry_after=0, probability=0.1)
    proxy.reset(method="GET", probability=0.2)
    proxy.fail(429, retry_after=0, probability=0.12)  # ~30 % of requests fail in all
    prefix = f"flaky-{uuid.uuid4().hex[:6]}"
    names = [f"{prefix}-{i}@example.com" for i in range(60)]
    async with ScimClient(proxy.url, scim_target.token, backoff=FAST, attempts=10,
                          rate_limit=RateLimit(max_concurrency=8, max_requests_per_second=500)) as c:
        created = await asyncio.gather(*(c.create_user(user(n)) for n in names))
        found = await asyncio.gather(*(c.find_users("userName", n) for n in names))
    assert len({r.id for r in created}) == 60
    assert all(len(hits) == 1 for hits in found)
    assert sorted(users_at_target(scim_target, prefix)) == sorted(names)  # none lost, none doubled
    faults = [e for e in proxy.log if e.fault]
    assert 0.15 < len(faults) / len(proxy.log) < 0.45


async def test_timeouts_are_transient_with_a_precise_message(scim_target: ScimTarget,
                                                             proxy: FaultProxy) -> None:
    proxy.delay(2.0)
    async with ScimClient(proxy.url, scim_target.token, timeout=0.3, attempts=2, backoff=FAST) as c:
        with pytest.raises(TransientError, match=r"timed out after 0.3s waiting for the answer") as info:
            await c.get_user("u-1")
    assert attempts_of(info.value) == 2


# -- outage and quarantine ------------------------------------------------------------------


async def test_an_outage_quarantines_the_app_and_nothing_is_lost(scim_target: ScimTarget,
                                                                  proxy: FaultProxy) -> None:
    events: list[QuarantineEvent] = []
    quarantine = Quarantine(failure_ratio=0.5, min_calls=4, window=30, probe_initial=0.5, probe_max=1.0)
    prefix = f"outage-{uuid.uuid4().hex[:6]}"
    names = [f"{prefix}-{i}@example.com" for i in range(20)]
    async with ScimClient(proxy.url, scim_target.token, backoff=FAST, attempts=3, app="outage-test",
                          quarantine=quarantine) as c:
        c.on_quarantine(events.append)
        proxy.outage(3.0)
        started = time.monotonic()
        created = await asyncio.gather(*(create_once(c, n) for n in names))
        elapsed = time.monotonic() - started
        assert not c.quarantine.active
    assert elapsed >= 2.5  # they waited the outage out...
    assert sorted(users_at_target(scim_target, prefix)) == sorted(names)  # ...and all landed
    assert len(created) == 20
    assert [(e.quarantined, e.reason) for e in events] == [(True, FAILURE_RATIO), (False, FAILURE_RATIO)]
    probes = [e for e in proxy.requests("GET", "/Users$") if "filter=userName" in e.query]
    assert len(probes) >= 2  # at least one probe failed during the outage, the last one passed
    assert probes[-1].status == 200
    outage_posts = [e for e in proxy.requests("POST") if e.fault == "outage"]
    assert 4 <= len(outage_posts) < 20 * 3  # calls stopped hammering once quarantined


async def test_refused_credentials_quarantine_at_once(scim_target: ScimTarget, proxy: FaultProxy) -> None:
    events: list[QuarantineEvent] = []
    async with ScimClient(proxy.url, "wrong-token", backoff=FAST,
                          quarantine=Quarantine(probe_initial=60)) as c:
        c.on_quarantine(events.append)
        with pytest.raises(CredentialsError):
            await c.create_user(user())
        assert c.quarantine.active
        assert c.quarantine.reason == CREDENTIALS
        waiting = asyncio.create_task(c.create_user(user()))
        await asyncio.sleep(0.3)
        assert not waiting.done()  # it waits at the gate; it is not failed or dropped
        waiting.cancel()
    assert len(events) == 1
    assert "wrong-token" not in events[0].detail
    assert len(proxy.requests("POST")) == 1


# -- PATCH -> PUT ----------------------------------------------------------------------------


async def test_a_405_to_patch_falls_back_to_put_and_remembers(client: ScimClient, proxy: FaultProxy) -> None:
    proxy.fail(405, method="PATCH")
    created = await client.create_user(build_resource({"userName": unique(), "title": "kept"}))
    await client.update("user", created.id, {"nickName": "first"}, current=created)
    assert client.uses_put
    current = await client.get_user(created.id)
    await client.update("user", current.id, {"nickName": "second"}, current=current)
    final = await client.get_user(created.id)
    assert [(e.method, e.status) for e in proxy.log if e.method in ("PATCH", "PUT")] == [
        ("PATCH", 405), ("PUT", 200), ("PUT", 200)]
    assert read_path(final.body, "nickName") == "second"
    assert read_path(final.body, "title") == "kept"


# -- OAuth2 ------------------------------------------------------------------------------------


class TokenServer:
    """A real OAuth2 token endpoint on a loopback port, handing out ``tokens`` in turn (the
    last one again and again), recording every form it was sent."""

    def __init__(self, tokens: list[str], expires_in: int = 3600) -> None:
        self.tokens = tokens
        self.forms: list[dict[str, list[str]]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                server.forms.append(parse_qs(self.rfile.read(length).decode()))
                token = server.tokens[min(len(server.forms), len(server.tokens)) - 1]
                body = json.dumps({"access_token": token, "token_type": "Bearer",
                                   "expires_in": expires_in}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._http.server_address[1]}/oauth2/token"
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)

    def __enter__(self) -> TokenServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.shutdown()
        self._http.server_close()


async def test_oauth2_token_is_fetched_cached_and_refreshed_on_401(scim_target: ScimTarget,
                                                                  proxy: FaultProxy) -> None:
    # The first token is stale (scim2-server refuses it); the rotated one is the real one.
    with TokenServer(["stale-token", scim_target.token]) as tokens:
        auth = ClientCredentials(tokens.url, "scimflow", "the-client-secret", "scim")
        async with ScimClient(proxy.url, auth, backoff=FAST) as c:
            created = await c.create_user(user())
            assert (await c.get_user(created.id)).id == created.id
    assert [(e.method, e.status) for e in proxy.log] == [("POST", 401), ("POST", 201), ("GET", 200)]
    assert len(tokens.forms) == 2  # one fetch, one refresh; then the cached token
    assert tokens.forms[0]["client_secret"] == ["the-client-secret"]
    assert tokens.forms[0]["scope"] == ["scim"]


async def test_oauth2_token_refused_after_a_refresh_is_a_credentials_error(scim_target: ScimTarget,
                                                                          proxy: FaultProxy) -> None:
    with TokenServer(["bad-1", "bad-2"]) as tokens:
        auth = ClientCredentials(tokens.url, "scimflow", "the-client-secret")
        async with ScimClient(proxy.url, auth, backoff=FAST) as c:
            with pytest.raises(CredentialsError) as info:
                await c.find_users("userName", unique())
    message = str(info.value)
    assert "401 Unauthorized" in message
    assert "also a freshly fetched one" in message
    assert "bad-2" not in message
    assert "the-client-secret" not in message
    assert [e.status for e in proxy.log] == [401, 401]  # one retry after one refresh, no more


# -- test connection: every way it fails --------------------------------------------------------


@pytest.mark.parametrize(("status", "body", "content_type", "error", "expected"), [
    (403, None, "application/scim+json", CredentialsError,
     r"-> 403 Forbidden: .*\(the token was accepted but is not allowed to do this\)"),
    (200, "<html><body>Welcome</body></html>", "text/html", TransientError,
     r"-> 200 with a body that is not JSON \(Content-Type: text/html, 33 bytes, starting "
     r"'<html><body>Welcome</body></html>'\)"),
    (200, '{"users": []}', "application/json", RejectedError,
     r"the answer is JSON but not a SCIM ListResponse"),
    (503, None, "application/scim+json", TransientError, r"-> 503 Service Unavailable"),
])
async def test_connection_failure_messages(client: ScimClient, proxy: FaultProxy, status: int,
                                           body: str | None, content_type: str,
                                           error: type[Exception], expected: str) -> None:
    proxy.fail(status, body=body, content_type=content_type)
    with pytest.raises(error, match=rf"^test connection failed: GET {proxy.url}/Users.*{expected}"):
        await client.test_connection()
    assert len(proxy.log) == 1  # one attempt, no retries


async def test_connection_timeout_message(scim_target: ScimTarget, proxy: FaultProxy) -> None:
    proxy.delay(2.0)
    async with ScimClient(proxy.url, scim_target.token, timeout=0.3) as c:
        with pytest.raises(TransientError, match=r"^test connection failed: .* timed out after 0.3s"):
            await c.test_connection()


async def test_connection_reset_message(client: ScimClient, proxy: FaultProxy) -> None:
    proxy.reset()
    with pytest.raises(TransientError, match=r"^test connection failed: GET .*ServerDisconnectedError"):
        await client.test_connection()


async def test_connection_finds_users_for_a_random_guid(client: ScimClient, proxy: FaultProxy) -> None:
    listing = {"schemas": ["urn:ietf:params:scim:api:messages:2.0:ListResponse"], "totalResults": 1,
               "Resources": [{"id": "x", "userName": "someone"}]}
    proxy.fail(200, body=json.dumps(listing))
    with pytest.raises(RejectedError, match=r"returned 1 user\(s\) instead of none"):
        await client.test_connection()
