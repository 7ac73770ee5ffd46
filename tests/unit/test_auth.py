"""Credentials: the OAuth2 client-credentials grant (token endpoint answers scripted with
httpx.MockTransport; tests/integration/test_scim_client_faults.py runs a real token server)
and secrets never leaking."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from urllib.parse import parse_qs

import httpx
import pytest

from services.runtime.errors import CredentialsError, RejectedError, TransientError
from services.runtime.http import ClientCredentials
from services.scim.auth import BearerToken

pytestmark = pytest.mark.anyio

URL = "https://login.example.com/oauth2/token"
SECRET = "cl1ent-s3cret-value"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class TokenEndpoint:
    """Hands out token-1, token-2, ...; records the forms it received."""

    def __init__(self, expires_in: int | None = 100, status: int = 200, body: object = None) -> None:
        self.forms: list[dict[str, list[str]]] = []
        self.expires_in = expires_in
        self.status = status
        self.body = body

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.forms.append(parse_qs(request.content.decode()))
        if self.body is not None or self.status != 200:
            return httpx.Response(self.status, json=self.body)
        answer: dict[str, object] = {"access_token": f"token-{len(self.forms)}", "token_type": "Bearer"}
        if self.expires_in is not None:
            answer["expires_in"] = self.expires_in
        return httpx.Response(200, json=answer)


def credentials(handler: Callable[[httpx.Request], httpx.Response], clock: Clock | None = None,
                scope: str | None = "scim.write") -> ClientCredentials:
    return ClientCredentials(URL, "scimflow", SECRET, scope, transport=httpx.MockTransport(handler),
                             clock=clock or Clock())


async def test_the_grant_sends_the_client_credentials_and_scope() -> None:
    endpoint = TokenEndpoint()
    auth = credentials(endpoint)
    assert await auth.authorization() == "Bearer token-1"
    assert endpoint.forms == [{"grant_type": ["client_credentials"], "client_id": ["scimflow"],
                               "client_secret": [SECRET], "scope": ["scim.write"]}]


async def test_the_token_is_cached_until_shortly_before_it_expires() -> None:
    endpoint, clock = TokenEndpoint(expires_in=100), Clock()
    auth = credentials(endpoint, clock)
    assert await auth.authorization() == "Bearer token-1"
    clock.now = 89.0  # refreshed 10 % (at most 60 s) before expiry
    assert await auth.authorization() == "Bearer token-1"
    clock.now = 91.0
    assert await auth.authorization() == "Bearer token-2"
    assert auth.fetches == 2


async def test_a_token_without_expiry_is_kept_until_refused() -> None:
    endpoint, clock = TokenEndpoint(expires_in=None), Clock()
    auth = credentials(endpoint, clock)
    await auth.authorization()
    clock.now = 1e9
    assert await auth.authorization() == "Bearer token-1"
    assert await auth.refresh("Bearer token-1")
    assert await auth.authorization() == "Bearer token-2"


async def test_a_burst_of_calls_and_of_401s_makes_one_token_request_each() -> None:
    endpoint = TokenEndpoint()
    auth = credentials(endpoint)
    assert set(await asyncio.gather(*(auth.authorization() for _ in range(10)))) == {"Bearer token-1"}
    # ten calls refused with token-1: one refresh; the others find token-2 already there
    assert all(await asyncio.gather(*(auth.refresh("Bearer token-1") for _ in range(10))))
    assert await auth.authorization() == "Bearer token-2"
    assert auth.fetches == 2


async def test_refused_client_credentials_are_a_credentials_error_without_the_secret() -> None:
    endpoint = TokenEndpoint(status=401, body={"error": "invalid_client",
                                               "error_description": f"bad secret {SECRET}"})
    auth = credentials(endpoint)
    with pytest.raises(CredentialsError) as info:
        await auth.authorization()
    message = str(info.value)
    assert "OAuth2 token endpoint https://login.example.com/oauth2/token -> 401" in message
    assert "invalid_client" in message
    assert "'scimflow'" in message
    assert SECRET not in message
    assert info.value.detail is not None
    assert SECRET not in info.value.detail
    assert SECRET not in repr(auth)


@pytest.mark.parametrize(("status", "error"), [(503, TransientError), (429, TransientError),
                                               (404, RejectedError), (400, CredentialsError)])
async def test_token_endpoint_statuses_map_to_error_classes(status: int, error: type[Exception]) -> None:
    auth = credentials(TokenEndpoint(status=status, body={"error": "x"}))
    with pytest.raises(error):
        await auth.authorization()


async def test_an_unreachable_token_endpoint_is_transient() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(TransientError, match="cannot reach it"):
        await credentials(refuse).authorization()


@pytest.mark.parametrize("body", [{"token_type": "Bearer"}, {"access_token": "t", "token_type": "mac"},
                                  {"access_token": ""}])
async def test_unusable_token_answers_are_rejected(body: dict[str, str]) -> None:
    auth = credentials(TokenEndpoint(body=body))
    with pytest.raises(RejectedError):
        await auth.authorization()


async def test_tokens_are_redacted_even_after_rotation() -> None:
    endpoint = TokenEndpoint()
    auth = credentials(endpoint)
    await auth.authorization()
    await auth.refresh("Bearer token-1")
    text = json.dumps({"echo": ["token-1", "token-2", SECRET]})
    assert auth.redact(text) == json.dumps({"echo": ["[redacted]"] * 3})


async def test_a_bearer_token_cannot_be_refreshed_and_never_shows() -> None:
    auth = BearerToken("static-T0ken")
    assert await auth.authorization() == "Bearer static-T0ken"
    assert not await auth.refresh("Bearer static-T0ken")
    assert "static-T0ken" not in repr(auth)
    assert auth.redact("x static-T0ken y") == "x [redacted] y"
