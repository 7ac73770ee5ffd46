"""The CLI's HTTP client of the admin API: requests it sends, and each error status turned
into the error the CLI prints (httpx.MockTransport stands in for the server here; the real
one is in tests/integration/test_admin_api.py)."""

from __future__ import annotations

import json
import re

import httpx
import pytest

from services.admin.client import ApiClient, ApiError
from services.admin.control import BadRequestError, NoSuchAppError, ProvisionFailedError

TOKEN = "client-secret-token"


def client(status: int, body: object, seen: list[httpx.Request] | None = None) -> ApiClient:
    def handle(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        return httpx.Response(status, json=body)
    return ApiClient("http://admin.example:8088/", TOKEN, transport=httpx.MockTransport(handle))


def test_requests_carry_the_token_and_the_parameters() -> None:
    seen: list[httpx.Request] = []
    api = client(200, {"ok": True}, seen)
    api.restart("crm", reset_links=True)
    api.provision("crm", "g1", "group", timeout=3)
    api.set_status("crm", "off")
    assert [(r.method, r.url.path) for r in seen] == [
        ("POST", "/apps/crm/restart"), ("POST", "/apps/crm/provision"), ("POST", "/apps/crm/stop")]
    assert json.loads(seen[0].content) == {"reset_links": True}
    assert json.loads(seen[1].content) == {"id": "g1", "type": "group", "timeout": 3}
    assert all(r.headers["Authorization"] == f"Bearer {TOKEN}" for r in seen)
    seen.clear()
    client(200, [], seen).records("errors", app="crm", limit=5)
    assert seen[0].url.params == httpx.QueryParams({"app": "crm", "limit": "5"})
    assert TOKEN not in repr(api)


@pytest.mark.parametrize(("status", "body", "error", "text"), [
    (401, {"error": "missing or invalid bearer token"}, ApiError, "refused the token (401)"),
    (404, {"error": "no application named 'x'"}, NoSuchAppError, "no application named 'x'"),
    (400, {"error": "reset_links must be true or false"}, BadRequestError, "reset_links"),
    (503, {"error": "broker did not answer"}, ApiError, "broker did not answer (HTTP 503)"),
    (504, {"error": "no outcome within 5 s", "trace": {"outcome": "timeout"}}, ProvisionFailedError,
     "no outcome within 5 s"),
])
def test_error_statuses_become_clear_errors(status: int, body: object, error: type[Exception],
                                            text: str) -> None:
    with pytest.raises(error, match=re.escape(text)) as info:
        client(status, body).status("crm")
    assert TOKEN not in str(info.value)


def test_an_unreachable_api_is_one_clear_error() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)
    api = ApiClient("http://127.0.0.1:1", TOKEN, transport=httpx.MockTransport(refuse))
    with pytest.raises(ApiError, match=re.escape("cannot reach the admin API at http://127.0.0.1:1")):
        api.status()
