"""ScimClient against answers a real server won't give on demand (httpx.MockTransport):
429 with Retry-After, timeouts, 5xx, odd bodies; and the token never leaking into errors.

Everything a real server does (CRUD, 404, 409, 401, wrong path) is tested against
scim2-server in tests/integration/test_scim_client.py.
"""

from __future__ import annotations

import base64
import email.utils
import json
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from stamina.instrumentation import RetryDetails, get_on_retry_hooks, set_on_retry_hooks

from services.runtime.config import load_config
from services.runtime.errors import (
    ConflictError,
    CredentialsError,
    NotFoundError,
    RejectedError,
    TargetError,
    TransientError,
)
from services.runtime.http import ClientCredentials
from services.runtime.settings import load_settings
from services.scim.client import (
    SCIM_JSON,
    Backoff,
    ScimClient,
    ScimResource,
    attempts_of,
    client_for,
)
from services.scim.ratelimit import Limits

pytestmark = pytest.mark.anyio

BASE = "https://app.example.com/scim/v2"
TOKEN = "s3cr3t-T0ken-value"
NO_WAIT = Backoff(wait_initial=0.0, wait_max=0.0, wait_jitter=0.0, retry_after_cap=0.0)
USER = {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "id": "u-1",
        "userName": "ada@example.com", "meta": {"version": 'W/"3"'}}

Handler = Callable[[httpx.Request], httpx.Response]


class Script:
    """A MockTransport handler answering from a list, one answer per request, recording them."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers[min(len(self.requests), len(self.answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        return answer


def client(handler: Handler, *, attempts: int = 3, backoff: Backoff = NO_WAIT) -> ScimClient:
    return ScimClient(BASE, TOKEN, attempts=attempts, backoff=backoff,
                      transport=httpx.MockTransport(handler))


def scim(status: int, body: object = None, **headers: str) -> httpx.Response:
    content = b"" if body is None else json.dumps(body).encode()
    return httpx.Response(status, content=content,
                          headers={"Content-Type": SCIM_JSON, **headers})


def scim_error(status: int, detail: str, scim_type: str | None = None, **headers: str) -> httpx.Response:
    body = {"schemas": ["urn:ietf:params:scim:api:messages:2.0:Error"], "status": str(status),
            "detail": detail, **({"scimType": scim_type} if scim_type else {})}
    return scim(status, body, **headers)


@pytest.fixture
def retry_waits() -> Iterator[list[float]]:
    """The wait stamina scheduled before each retry."""
    waits: list[float] = []
    previous = get_on_retry_hooks()

    def record(details: RetryDetails) -> None:
        waits.append(details.wait_for)

    set_on_retry_hooks([record])
    yield waits
    set_on_retry_hooks(previous)


# -- transient: retried --------------------------------------------------------------------


async def test_429_with_retry_after_seconds_is_retried_then_succeeds(retry_waits: list[float]) -> None:
    # wait_initial=5 would make a test run slow if Retry-After: 0 were not what is honoured.
    script = Script(scim_error(429, "slow down", **{"Retry-After": "0"}), scim(200, USER))
    async with client(script, backoff=Backoff(wait_initial=5.0, wait_jitter=0.0)) as c:
        user = await c.get_user("u-1")
    assert user == ScimResource(id="u-1", body=USER, etag='W/"3"')
    assert len(script.requests) == 2
    assert retry_waits == [0.0]


async def test_a_retry_after_beyond_the_cap_is_raised_at_once_for_the_writer_to_requeue(
        retry_waits: list[float]) -> None:
    # Waiting an hour inside the call would hold the object's partition: raise instead.
    script = Script(scim_error(429, "slow down", **{"Retry-After": "3600"}), scim(200, USER))
    async with client(script, attempts=5, backoff=Backoff(retry_after_cap=30.0)) as c:
        with pytest.raises(TransientError) as info:
            await c.get_user("u-1")
    assert len(script.requests) == 1
    assert retry_waits == []
    assert info.value.retry_after == 3600.0
    assert attempts_of(info.value) == 1


async def test_429_with_retry_after_http_date_is_retried_then_succeeds(
        retry_waits: list[float]) -> None:
    soon = email.utils.format_datetime(datetime.now(UTC) + timedelta(seconds=1), usegmt=True)
    script = Script(scim_error(429, "slow down", **{"Retry-After": soon}), scim(200, USER))
    async with client(script, backoff=Backoff(retry_after_cap=30.0)) as c:
        assert (await c.get_user("u-1")).id == "u-1"
    assert len(retry_waits) == 1
    assert 0.0 <= retry_waits[0] <= 1.0  # HTTP-dates have whole seconds


async def test_429_every_time_raises_transient_with_retry_after_and_attempts() -> None:
    script = Script(scim_error(429, "quota exceeded", **{"Retry-After": "0"}))
    async with client(script, attempts=4) as c:
        with pytest.raises(TransientError) as info:
            await c.find_users("userName", "ada@example.com")
    assert len(script.requests) == 4
    assert attempts_of(info.value) == 4
    assert info.value.attempts == 4
    assert info.value.status == 429
    assert info.value.retry_after == 0.0
    assert "429 Too Many Requests: quota exceeded" in str(info.value)


async def test_a_long_http_date_retry_after_is_reported_in_seconds() -> None:
    later = email.utils.format_datetime(datetime.now(UTC) + timedelta(seconds=90), usegmt=True)
    script = Script(scim_error(429, "quota exceeded", **{"Retry-After": later}))
    async with client(script, attempts=4, backoff=Backoff(retry_after_cap=30.0)) as c:
        with pytest.raises(TransientError) as info:
            await c.find_users("userName", "ada@example.com")
    assert len(script.requests) == 1
    assert info.value.retry_after is not None
    assert 85 <= info.value.retry_after <= 90


async def test_timeouts_raise_transient_after_all_attempts() -> None:
    script = Script(httpx.ReadTimeout("timed out"))
    async with client(script, attempts=3) as c:
        with pytest.raises(TransientError, match="timed out after 10s waiting for the answer") as info:
            await c.get_user("u-1")  # a create is not sent again: test_scim_create_outcome.py
    assert len(script.requests) == 3
    assert attempts_of(info.value) == 3
    assert isinstance(info.value.__cause__, httpx.ReadTimeout)
    assert info.value.status is None


async def test_500_is_retried_then_succeeds() -> None:
    # a create is sent again only after answers that say it was not handled (here 408, 429)
    script = Script(scim_error(408, "slow"), scim_error(429, "busy"), scim(201, USER))
    async with client(script, attempts=3) as c:
        assert (await c.create_user({"userName": "ada@example.com"})).id == "u-1"
    assert len(script.requests) == 3
    # a retried request is the same request: same body, same media type
    assert {r.content for r in script.requests} == {b'{"userName":"ada@example.com"}'}
    assert {r.headers["Content-Type"] for r in script.requests} == {SCIM_JSON}


async def test_dropped_connection_is_transient() -> None:
    script = Script(httpx.RemoteProtocolError("Server disconnected without sending a response."))
    async with client(script, attempts=2) as c:
        with pytest.raises(TransientError, match="RemoteProtocolError: Server disconnected"):
            await c.delete_user("u-1")
    assert len(script.requests) == 2


# -- not transient: raised at once ---------------------------------------------------------


async def test_400_is_not_retried_and_carries_the_scim_detail() -> None:
    script = Script(scim_error(400, "Attribute 'userName' is required", "invalidValue"))
    async with client(script, attempts=5) as c:
        with pytest.raises(RejectedError) as info:
            await c.create_user({"displayName": "x"})
    assert len(script.requests) == 1
    assert attempts_of(info.value) == 1
    assert info.value.status == 400
    assert info.value.detail == "Attribute 'userName' is required"
    assert str(info.value) == (f"POST {BASE}/Users -> 400 Bad Request [invalidValue]: "
                               "Attribute 'userName' is required")


@pytest.mark.parametrize(
    ("status", "error_class"),
    [(401, CredentialsError), (403, CredentialsError), (404, NotFoundError), (409, ConflictError),
     (412, ConflictError), (400, RejectedError), (422, RejectedError), (501, RejectedError)],
)
async def test_status_maps_to_error_class_without_retry(status: int,
                                                         error_class: type[TargetError]) -> None:
    script = Script(scim_error(status, "nope"))
    async with client(script) as c:
        with pytest.raises(TargetError) as info:
            await c.patch_user("u-1", [{"op": "replace", "path": "active", "value": False}])
    assert type(info.value) is error_class
    assert (info.value.status, info.value.detail) == (status, "nope")
    assert len(script.requests) == 1


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
async def test_transient_statuses_are_retried(status: int) -> None:
    script = Script(scim_error(status, "later"))
    async with client(script, attempts=2) as c:
        with pytest.raises(TransientError):
            await c.get_user("u-1")
    assert len(script.requests) == 2


async def test_non_scim_error_pages_are_summarised() -> None:
    page = httpx.Response(502, text="<html><body>Bad gateway</body></html>",
                          headers={"Content-Type": "text/html"})
    async with client(Script(page), attempts=1) as c:
        with pytest.raises(TransientError) as info:
            await c.get_user("u-1")
    # What scimflow says about the page is not presented as what the target said.
    assert info.value.detail is None
    assert "Content-Type text/html, starting '<html><body>Bad gateway</body></html>'" in str(info.value)


async def test_a_200_that_is_not_json_is_transient_and_says_what_came_back() -> None:
    # Transient, not rejected: the writer parks the object, retries with backoff, then escrows.
    truncated = httpx.Response(200, text='{"id": "u-1", "userNa', headers={"Content-Type": SCIM_JSON})
    async with client(Script(truncated)) as c:
        with pytest.raises(TransientError) as info:
            await c.get_user("u-1")
    message = str(info.value)
    assert "200 with a body that is not JSON" in message
    assert "application/scim+json" in message and "starting '{\"id\": \"u-1\", \"userNa'" in message
    assert "base URL" not in message  # no guessing at the cause


async def test_redirect_is_reported_not_followed() -> None:
    script = Script(httpx.Response(301, headers={"Location": "https://new.example.com/scim/v2/Users"}))
    async with client(script) as c:
        with pytest.raises(RejectedError, match=re.escape("redirected to https://new.example.com/scim/v2/Users")):
            await c.get_user("u-1")
    assert len(script.requests) == 1


# -- the token never leaks -----------------------------------------------------------------


def echo_token(request: httpx.Request) -> httpx.Response:
    return scim_error(400, f"bad header {request.headers['Authorization']}", "invalidValue")


async def test_token_is_redacted_from_an_echoing_target() -> None:
    async with client(echo_token) as c:
        with pytest.raises(RejectedError) as info:
            await c.get_user("u-1")
    error = info.value
    for text in (str(error), repr(error), error.detail or "", repr(c)):
        assert TOKEN not in text
    assert error.detail == "bad header Bearer [redacted]"


@pytest.mark.parametrize("disguise", [
    str.upper,
    lambda t: t[:12],
    lambda t: base64.b64encode(f"client:{t}".encode()).decode(),
])
async def test_a_disguised_echo_of_the_token_is_redacted_too(disguise: Callable[[str], str]) -> None:
    def echo(request: httpx.Request) -> httpx.Response:
        return scim_error(400, f"credential {disguise(TOKEN)} does not match", "invalidValue")

    async with client(echo) as c:
        with pytest.raises(RejectedError) as info:
            await c.get_user("u-1")
    assert info.value.detail == "credential [redacted] does not match"
    assert disguise(TOKEN) not in str(info.value)


async def test_token_is_redacted_from_transport_errors() -> None:
    script = Script(httpx.ConnectError(f"proxy said no to {TOKEN}"))
    async with client(script, attempts=1) as c:
        with pytest.raises(TransientError) as info:
            await c.get_user("u-1")
    assert TOKEN not in str(info.value)
    assert TOKEN not in repr(info.value)
    cause = info.value.__cause__
    assert isinstance(cause, httpx.ConnectError)
    assert TOKEN not in repr(cause.request.headers)  # httpx masks Authorization itself


def test_token_is_never_in_the_client_repr() -> None:
    c = ScimClient("https://user:pw@app.example.com/scim/v2", TOKEN)
    assert repr(c) == "ScimClient(base_url='https://app.example.com/scim/v2/')"


@pytest.mark.parametrize("token", ["", "two words", "line\nbreak", "naïve"])
def test_unusable_tokens_are_refused_without_echoing_them(token: str) -> None:
    with pytest.raises(ValueError, match="bearer token must be") as info:
        ScimClient(BASE, token)
    if token:
        assert token not in str(info.value)


# -- request shapes and answers a real server won't give on demand --------------------------


async def test_find_users_escapes_the_value_and_sends_scim_headers() -> None:
    script = Script(scim(200, {"totalResults": 0, "Resources": []}))
    async with client(script) as c:
        assert await c.find_users("userName", 'o"hara\\x') == []
    request = script.requests[0]
    assert request.url.params["filter"] == 'userName eq "o\\"hara\\\\x"'
    assert request.headers["Accept"] == SCIM_JSON
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"


async def test_a_targets_cookies_are_never_sent_back() -> None:
    empty = {"totalResults": 0, "Resources": []}
    script = Script(scim(200, empty, **{"Set-Cookie": "session=abc123; Path=/"}), scim(200, empty))
    async with client(script) as c:
        await c.find_users("userName", "a@example.com")
        await c.find_users("userName", "b@example.com")
    assert [r.headers.get("Cookie") for r in script.requests] == [None, None]


async def test_find_users_follows_pages() -> None:
    def paged(request: httpx.Request) -> httpx.Response:
        start = int(request.url.params.get("startIndex", "1"))
        user = {**USER, "id": f"u-{start}"}
        return scim(200, {"totalResults": 3, "startIndex": start, "itemsPerPage": 1,
                          "Resources": [user]})

    async with client(paged) as c:
        found = await c.find_users("urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:"
                                   "department", "R&D")
    assert [u.id for u in found] == ["u-1", "u-2", "u-3"]


async def test_find_users_stops_when_a_target_ignores_start_index() -> None:
    script = Script(scim(200, {"totalResults": 5, "Resources": [USER]}))
    async with client(script) as c:
        assert [u.id for u in await c.find_users("userName", "ada@example.com")] == ["u-1"]
    assert len(script.requests) == 2


async def test_patch_accepts_200_with_body_and_204() -> None:
    script = Script(scim(200, {**USER, "active": False}), httpx.Response(204))
    op = [{"op": "replace", "path": "active", "value": False}]
    async with client(script) as c:
        updated = await c.patch_user("u-1", op, if_match='W/"3"')
        assert updated is not None
        assert updated.body["active"] is False
        assert await c.patch_user("u-1", op) is None
    first: dict[str, Any] = json.loads(script.requests[0].content)
    assert first == {"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": op}
    assert script.requests[0].headers["If-Match"] == 'W/"3"'
    assert "If-Match" not in script.requests[1].headers


async def test_an_empty_patch_is_refused_before_any_call() -> None:
    script = Script(httpx.Response(204))
    async with client(script) as c:
        with pytest.raises(ValueError, match="at least one operation"):
            await c.patch_user("u-1", [])
    assert script.requests == []


async def test_ids_cannot_escape_the_users_endpoint() -> None:
    script = Script(scim(200, USER))
    async with client(script) as c:
        await c.get_user("../Groups/g-1")
    assert script.requests[0].url.raw_path == b"/scim/v2/Users/..%2FGroups%2Fg-1"


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (httpx.Response(200, text="<html>Welcome</html>", headers={"Content-Type": "text/html"}),
         "not JSON (Content-Type: text/html"),
        (scim(200, {"status": "ok"}), "not a SCIM ListResponse"),
        (scim(200, {"totalResults": 1, "Resources": [USER]}),
         "returned 1 user(s) instead of none: the target ignores or misapplies the filter"),
    ],
)
async def test_connection_rejects_answers_that_are_not_an_empty_list(
        answer: httpx.Response, message: str) -> None:
    async with client(Script(answer)) as c:
        with pytest.raises(TargetError, match="test connection failed") as info:
            await c.test_connection()
    assert message in str(info.value)


async def test_connection_does_not_retry() -> None:
    script = Script(scim_error(503, "maintenance"))
    async with client(script, attempts=5) as c:
        with pytest.raises(TransientError, match=r"test connection failed: .* 503 Service"):
            await c.test_connection("externalId")
    assert len(script.requests) == 1
    assert script.requests[0].url.params["filter"].startswith('externalId eq "')


async def test_resources_without_id_are_rejected() -> None:
    async with client(Script(scim(201, {"userName": "x"}))) as c:
        with pytest.raises(RejectedError, match="resource without an `id`"):
            await c.create_user({"userName": "x"})


# -- client_for: one constructor, every target setting --------------------------------------

APP_CONFIG = """\
sources:
  - {name: hr, type: file, path: dir.yaml}
applications:
  - name: crm
    target:
      base_url: https://crm.example.com/scim/v2
      oauth2: {token_url: "https://login.example.com/token", client_id: scimflow,
               client_secret: env:CRM_SECRET, scope: scim}
      dialect: entra
      update_method: put
      max_patch_operations: 25
      page_size: 200
      rate_limit: {max_concurrency: 4, max_requests_per_second: 10}
      retries: {attempts: 7, initial_wait: 0.25, max_wait: 8}
      quarantine: {failure_ratio: 0.6, min_calls: 10, probe_initial: 2}
    mappings:
      user:
        attributes:
          - {target: userName, source: upn, matching: 1}
"""


async def test_client_for_applies_every_target_setting(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRM_SECRET", "crm-client-s3cret")
    (tmp_path / "scimflow.yaml").write_text(APP_CONFIG)
    loaded = load_config(tmp_path / "scimflow.yaml")
    async with client_for(loaded.config.applications[0], loaded, load_settings({})) as c:
        assert c.dialect == "entra"
        assert c.uses_put
        assert c.max_patch_operations == 25
        assert c.page_size == 200
        assert c.limits == Limits(4, 10.0)
        assert c.quarantine.settings.failure_ratio == 0.6
        assert c._transport._attempts == 7
        assert c._transport._backoff.wait_initial == 0.25
        assert c._transport._backoff.retry_after_cap == 8.0  # never longer than retries.max_wait
        assert isinstance(c._transport.auth, ClientCredentials)
        assert "crm-client-s3cret" not in repr(c._transport.auth)
        assert "crm-client-s3cret" not in repr(c)


# -- updates -----------------------------------------------------------------------------------


async def test_a_second_412_after_re_reading_is_a_conflict() -> None:
    script = Script(scim_error(412, "changed"), scim(200, USER, ETag='W/"4"'),
                    scim_error(412, "changed again"))
    async with client(script) as c:
        with pytest.raises(ConflictError) as info:
            await c.update("user", "u-1", {"title": "x"}, current=USER)
    assert info.value.status == 412
    assert [(r.method, r.headers.get("If-Match")) for r in script.requests] == [
        ("PATCH", 'W/"3"'), ("GET", None), ("PATCH", 'W/"4"')]


async def test_501_to_patch_falls_back_to_a_read_modify_write_put() -> None:
    # The target holds an attribute scimflow does not map (nickName) and a newer version
    # than the caller's copy: the PUT is built from a GET just before, never from memory.
    now = {**USER, "nickName": "Ada", "meta": {"version": 'W/"7"'}}
    script = Script(scim_error(501, "PATCH not implemented"), scim(200, now, ETag='W/"7"'),
                    scim(200, {**now, "title": "x"}))
    async with client(script) as c:
        answer = await c.update("user", "u-1", {"title": "x"}, current=USER)
        assert c.uses_put
    assert [r.method for r in script.requests] == ["PATCH", "GET", "PUT"]
    put = script.requests[2]
    assert put.headers["If-Match"] == 'W/"7"'
    assert json.loads(put.content) == {"schemas": USER["schemas"], "id": "u-1", "nickName": "Ada",
                                       "userName": "ada@example.com", "title": "x"}
    assert answer is not None and answer.body["title"] == "x"


async def test_members_on_a_patchless_target_are_a_put_of_the_group_as_it_is() -> None:
    group = {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "id": "g-1",
             "displayName": "Staff", "members": [{"value": "u1"}, {"value": "u2"}, {"value": "x9"}]}
    script = Script(scim_error(405, "no PATCH here"), scim(200, group), scim(200, group))
    async with client(script) as c:
        await c.patch_members("g-1", add=["u3", "u1"], remove=["u2"])
    assert [r.method for r in script.requests] == ["PATCH", "GET", "PUT"]
    body = json.loads(script.requests[2].content)
    assert body["displayName"] == "Staff"
    # u1 not added twice, u2 removed, x9 (not ours) kept, u3 added.
    assert [m["value"] for m in body["members"]] == ["u1", "x9", "u3"]


async def test_a_refused_member_put_names_the_settings_to_change() -> None:
    group = {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "id": "g-1", "displayName": "S"}
    script = Script(scim_error(501, "no PATCH"), scim(200, group), scim_error(400, "members are read-only"))
    async with client(script) as c:
        with pytest.raises(RejectedError, match=r"check the application's `dialect`.*`update_method`"):
            await c.patch_members("g-1", add=["u3"], remove=[])


async def test_group_members_are_patched_in_chunks_on_the_group() -> None:
    script = Script(scim(204))
    async with ScimClient(BASE, TOKEN, max_patch_operations=100, backoff=NO_WAIT,
                          transport=httpx.MockTransport(script)) as c:
        await c.patch_members("g/1", add=[f"u{i}" for i in range(250)], remove=[])
    assert [r.url.raw_path for r in script.requests] == [b"/scim/v2/Groups/g%2F1"] * 3
    assert [len(json.loads(r.content)["Operations"][0]["value"]) for r in script.requests] == [100, 100, 50]
