"""The Graph source's waits and tokens, with answers Graph gives only when it is unhappy
(httpx.MockTransport): ``Retry-After`` as an HTTP-date, no ``Retry-After`` at all, a token
endpoint that is down. The documented protocol itself (pages, deltaLinks, 429 with
delay-seconds, 410, revoked tokens) runs against tests/support/graph_server.py in
tests/integration/test_graph_source.py."""

from __future__ import annotations

import asyncio
import email.utils
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import structlog

from services.ingest.objects import SourceObject
from services.ingest.sources.base import Operation
from services.ingest.sources.graph import (
    GraphDirectory,
    GraphSourceError,
    GraphUnavailableError,
    _retry_wait,
)
from services.runtime.config import GraphSource

GRAPH = "https://graph.example.com/v1.0"
TOKEN_URL = "https://login.example.com/contoso/oauth2/v2.0/token"
SECRET = "gr4ph-cl1ent-s3cret"
SETTINGS = GraphSource(name="entra", tenant_id="contoso", client_id="scimflow",
                       client_secret="env:GRAPH_SECRET", graph_url=GRAPH, token_url=TOKEN_URL,
                       user_attributes=["displayName"])

Handler = Callable[[httpx.Request], httpx.Response]


def http_date(offset: timedelta) -> str:
    return email.utils.format_datetime(datetime.now(UTC) + offset, usegmt=True)


def answer(status: int, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, headers=headers, request=httpx.Request("GET", f"{GRAPH}/users/delta"))


class FakeGraph:
    """Tokens from the token endpoint; ``throttled`` 429s with ``retry_after`` before each
    collection's one page; every request recorded."""

    def __init__(self, *, throttled: int = 0, retry_after: str | None = None,
                 token_status: int = 200) -> None:
        self.throttled = throttled
        self.retry_after = retry_after
        self.token_status = token_status
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url == TOKEN_URL:
            if self.token_status != 200:
                return httpx.Response(self.token_status, json={"error": "temporarily_unavailable"})
            return httpx.Response(200, json={"access_token": "tok-1", "token_type": "Bearer",
                                             "expires_in": 3599})
        if self.throttled:
            self.throttled -= 1
            headers = {"Retry-After": self.retry_after} if self.retry_after is not None else {}
            return httpx.Response(429, headers=headers, json={"error": {"code": "TooManyRequests"}})
        collection = request.url.path.rsplit("/", 2)[-2]
        item = {"id": f"{collection}-1", "displayName": "One"}
        return httpx.Response(200, json={"value": [item],
                                         "@odata.deltaLink": f"{GRAPH}/{collection}/delta?$deltatoken=d"})


async def one_round(graph: FakeGraph) -> list[tuple[Operation, SourceObject]]:
    changes: list[tuple[Operation, SourceObject]] = []

    async def on_change(op: Operation, obj: SourceObject) -> None:
        changes.append((op, obj))

    async def on_position(position: bytes) -> None:
        return None

    source = GraphDirectory(SETTINGS, SECRET, http=httpx.AsyncClient(transport=httpx.MockTransport(graph)))
    await source.start(None)
    try:
        await source.sync(on_change, on_position)
    finally:
        await source.close()
    return changes


def test_a_retry_after_http_date_is_honoured() -> None:
    # A date already past means "now": the old parser read only delay-seconds and backed
    # off a whole second instead.
    graph = FakeGraph(throttled=1, retry_after=http_date(-timedelta(minutes=1)))
    with structlog.testing.capture_logs() as logs:
        changes = asyncio.run(one_round(graph))
    waits = [entry["retry_in"] for entry in logs if entry["event"] == "graph asked us to wait"]
    assert waits == [0.0]
    assert {obj.object_id for _, obj in changes} == {"users-1", "groups-1"}


def test_a_future_retry_after_http_date_is_waited_for_up_to_five_minutes() -> None:
    assert 85.0 <= _retry_wait(answer(429, {"Retry-After": http_date(timedelta(seconds=90))}), 0) <= 90.0
    assert _retry_wait(answer(503, {"Retry-After": http_date(timedelta(hours=1))}), 0) == 300.0
    assert _retry_wait(answer(429, {"Retry-After": "7"}), 4) == 7.0  # exactly what Graph asked


def test_without_retry_after_the_backoff_grows_with_jitter() -> None:
    random.seed(11)
    for attempt, step in [(0, 1.0), (1, 2.0), (3, 8.0), (5, 30.0), (9, 30.0)]:
        waits = {_retry_wait(answer(503), attempt) for _ in range(100)}
        assert all(step / 2 <= wait <= step for wait in waits)
        assert len(waits) > 90  # jittered: sources throttled together come back apart


def test_a_down_token_endpoint_is_worth_retrying_and_shows_no_secret() -> None:
    graph = FakeGraph(token_status=503)
    with pytest.raises(GraphUnavailableError) as failure:
        asyncio.run(one_round(graph))
    assert "503" in str(failure.value) and SECRET not in str(failure.value)
    assert isinstance(failure.value, GraphSourceError)
    token_request = graph.requests[0]
    assert token_request.url == TOKEN_URL and b"grant_type=client_credentials" in token_request.content
