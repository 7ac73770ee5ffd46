"""Credentials for a target's SCIM API: a static bearer token, or OAuth2 client credentials.

Both give the ``Authorization`` header of the next request, and both can say whether a
401 is worth one more try: a static token cannot change, while OAuth2 fetches a fresh
token (the cached one may have been revoked or rotated before it expired). Secrets never
leave this module except inside that header: not in a repr, a message or a log line;
:meth:`redact` scrubs them from any text a target or token endpoint echoed back.

OAuth2 follows RFC 6749 section 4.4: ``POST token_url`` with ``grant_type=
client_credentials``, ``client_id``, ``client_secret`` (in the form body, which every
common provider accepts, Entra included) and ``scope``; the token is cached until shortly
before ``expires_in`` says it ends.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final, Protocol

import httpx
import msgspec

from services.runtime.errors import CredentialsError, RejectedError, TargetError, TransientError

__all__ = ["Auth", "BearerToken", "ClientCredentials", "check_token"]

_REDACTED: Final = "[redacted]"
_REMEMBERED_TOKENS = 4  # tokens to keep redacting after they were replaced
_MAX_MARGIN = 60.0  # refresh at most this long before expiry (less for short-lived tokens)
_DETAIL_LIMIT = 300


class Auth(Protocol):
    """What :class:`~services.scim.client.ScimClient` needs from credentials."""

    async def authorization(self) -> str:
        """The ``Authorization`` header value for the next request."""
        ...

    async def refresh(self, rejected: str) -> bool:
        """The target answered 401 to ``rejected`` (a header value): True if a retry with
        :meth:`authorization` may succeed."""
        ...

    def redact(self, text: str) -> str:
        """``text`` with every secret replaced by ``[redacted]``."""
        ...

    async def aclose(self) -> None: ...


def check_token(token: str) -> None:
    """Refuse early, without echoing it, a token httpx would reject as a header value."""
    usable = token.isascii() and token.isprintable() and not any(c.isspace() for c in token)
    if not token or not usable:
        raise ValueError("the bearer token must be non-empty printable ASCII without spaces")


class BearerToken:
    """A static bearer token (``target.token``)."""

    def __init__(self, token: str) -> None:
        check_token(token)
        self._token = token

    def __repr__(self) -> str:
        return f"BearerToken({_REDACTED})"

    async def authorization(self) -> str:
        return f"Bearer {self._token}"

    async def refresh(self, rejected: str) -> bool:
        return False  # the same token will be refused again

    def redact(self, text: str) -> str:
        return text.replace(self._token, _REDACTED)

    async def aclose(self) -> None:
        return None


class ClientCredentials:
    """OAuth2 client-credentials grant, with the token cached until shortly before it expires.

    One lock serialises fetches, so a burst of calls (or of 401s) makes one token request.
    """

    def __init__(self, token_url: str, client_id: str, client_secret: str, scope: str | None = None,
                 *, timeout: float = 10.0, transport: httpx.AsyncBaseTransport | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not client_secret:
            raise ValueError("the OAuth2 client secret must not be empty")
        self.token_url = token_url
        self.client_id = client_id
        self._secret = client_secret
        self._scope = scope
        self._clock = clock
        self._http = httpx.AsyncClient(timeout=timeout, transport=transport, follow_redirects=False)
        self._lock = asyncio.Lock()
        self._token: str | None = None
        self._expires_at = float("inf")
        self._old_tokens: deque[str] = deque(maxlen=_REMEMBERED_TOKENS)
        self.fetches = 0

    def __repr__(self) -> str:
        return f"ClientCredentials(token_url={self.token_url!r}, client_id={self.client_id!r})"

    async def authorization(self) -> str:
        async with self._lock:
            if self._token is None or self._clock() >= self._expires_at:
                await self._fetch()
            assert self._token is not None  # _fetch sets it or raises
            return f"Bearer {self._token}"

    async def refresh(self, rejected: str) -> bool:
        async with self._lock:
            if self._token is None or rejected == f"Bearer {self._token}":
                await self._fetch()
            return True  # a token other than the rejected one is ready now

    def redact(self, text: str) -> str:
        for secret in (self._secret, self._token, *self._old_tokens):
            if secret:
                text = text.replace(secret, _REDACTED)
        return text

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _fetch(self) -> None:
        """Get a new token from the token endpoint, or raise what went wrong (no secrets)."""
        self.fetches += 1
        response = await self._post()
        token, expires_in = self._parse(response)
        if self._token is not None:
            self._old_tokens.append(self._token)
        self._token = token
        margin = min(_MAX_MARGIN, expires_in / 10) if expires_in is not None else 0.0
        self._expires_at = (self._clock() + expires_in - margin) if expires_in is not None else float("inf")

    async def _post(self) -> httpx.Response:
        form = {"grant_type": "client_credentials", "client_id": self.client_id,
                "client_secret": self._secret}
        if self._scope:
            form["scope"] = self._scope
        where = f"OAuth2 token endpoint {self.token_url}"
        try:
            return await self._http.post(self.token_url, data=form, headers={"Accept": "application/json"})
        except httpx.TimeoutException as exc:
            raise TransientError(f"{where}: timed out") from exc
        except httpx.HTTPError as exc:
            raise TransientError(f"{where}: cannot reach it ({type(exc).__name__}: "
                                 f"{self.redact(str(exc))})") from exc

    def _parse(self, response: httpx.Response) -> tuple[str, float | None]:
        where = f"OAuth2 token endpoint {self.token_url} -> {response.status_code}"
        body = _json(response)
        if response.status_code != 200:
            raise self._refused(where, response.status_code, body)
        token = body.get("access_token")
        if not isinstance(token, str) or not token:
            raise RejectedError(f"{where}: the answer holds no access_token", status=response.status_code)
        token_type = body.get("token_type", "Bearer")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise RejectedError(f"{where}: token_type {token_type!r} is not supported (only Bearer)",
                                status=response.status_code)
        check_token(token)
        expires_in = body.get("expires_in")
        return token, float(expires_in) if isinstance(expires_in, int | float) and expires_in > 0 else None

    def _refused(self, where: str, status: int, body: dict[str, Any]) -> TargetError:
        error, description = body.get("error"), body.get("error_description")
        detail = self.redact(" ".join(str(p) for p in (error, description) if p)[:_DETAIL_LIMIT]) or None
        message = f"{where}: {detail}" if detail else where
        if status in (400, 401, 403):
            return CredentialsError(f"{message} (client id {self.client_id!r}: check the client id, "
                                    "secret and scope)", status=status, detail=detail)
        if status == 429 or status >= 500:
            return TransientError(message, status=status, detail=detail)
        return RejectedError(message, status=status, detail=detail)


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = msgspec.json.decode(response.content)
    except msgspec.DecodeError:
        return {}
    return body if isinstance(body, dict) else {}
