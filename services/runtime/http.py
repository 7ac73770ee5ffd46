"""What every outbound HTTP client of scimflow shares: how long a server asked us to wait
(``Retry-After``), how long to back off when it did not say (exponential, with jitter), and
OAuth2 client-credentials tokens.

The SCIM client (:mod:`services.scim`) and the Microsoft Graph source both use them, so a
``Retry-After`` is read the same way (delay-seconds or an HTTP-date) wherever it arrives,
and a token is fetched, cached, refreshed and kept out of messages the same way for a target
application as for Graph.

OAuth2 follows RFC 6749 section 4.4: ``POST token_url`` with ``grant_type=
client_credentials``, ``client_id``, ``client_secret`` (in the form body, which every
common provider accepts, Entra included) and ``scope``; the token is cached until shortly
before ``expires_in`` says it ends. Secrets never leave :class:`ClientCredentials` except
inside the ``Authorization`` header: not in a repr, a message or a log line;
:meth:`ClientCredentials.redact` scrubs them from any text a server echoed back.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import msgspec

from services.runtime.errors import CredentialsError, RejectedError, TargetError, TransientError
from services.runtime.redaction import Redactor

__all__ = ["ClientCredentials", "backoff_delay", "check_token", "parse_retry_after"]

_REMEMBERED_TOKENS = 4  # tokens to keep redacting after they were replaced
_MAX_MARGIN = 60.0  # refresh at most this long before expiry (less for short-lived tokens)
_DETAIL_LIMIT = 300


# -- waiting -----------------------------------------------------------------------------


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delay-seconds or an HTTP-date
    (RFC 9110 §10.2.3). None when absent or unreadable; never negative."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)  # HTTP-dates are always GMT
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def backoff_delay(attempt: int, initial: float, maximum: float, *, retry_after: float | None = None,
                  rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based).

    The step doubles from ``initial`` up to ``maximum``. "Equal jitter": half the step is
    fixed, half random, so the wait still grows with each attempt while clients that failed
    together do not come back together. A ``Retry-After`` from the server is a floor: it
    said when it can take the request again, asking sooner only earns another refusal.
    """
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, not {attempt}")
    step = min(maximum, initial * 2.0 ** (attempt - 1))
    jittered = step / 2 + step / 2 * rand()
    if retry_after is not None and retry_after > jittered:
        return retry_after
    return jittered


# -- OAuth2 client credentials -------------------------------------------------------------


def check_token(token: str) -> None:
    """Refuse early, without echoing it, a token httpx would reject as a header value."""
    usable = token.isascii() and token.isprintable() and not any(c.isspace() for c in token)
    if not token or not usable:
        raise ValueError("the bearer token must be non-empty printable ASCII without spaces")


class ClientCredentials:
    """OAuth2 client-credentials grant, with the token cached until shortly before it expires.

    It gives the ``Authorization`` header of the next request, and after a 401 says whether
    one more try is worth it (always: a token other than the refused one is fetched, since
    the cached one may have been revoked or rotated before it expired). One lock serialises
    fetches, so a burst of calls (or of 401s) makes one token request. Failures are
    TargetErrors: CredentialsError (the endpoint refused the client), TransientError
    (unreachable, 429, 5xx), RejectedError (an answer without a usable token).

    ``http`` shares the caller's client for the token requests (it stays the caller's to
    close); otherwise one of its own is made, over ``transport`` when given.
    """

    def __init__(self, token_url: str, client_id: str, client_secret: str, scope: str | None = None,
                 *, timeout: float = 10.0, transport: httpx.AsyncBaseTransport | None = None,
                 http: httpx.AsyncClient | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not client_secret:
            raise ValueError("the OAuth2 client secret must not be empty")
        self.token_url = token_url
        self.client_id = client_id
        self._secret = client_secret
        self._scope = scope
        self._clock = clock
        self._owns_http = http is None
        self._http = http or httpx.AsyncClient(timeout=timeout, transport=transport, follow_redirects=False)
        self._lock = asyncio.Lock()
        self._token: str | None = None
        self._expires_at = float("inf")
        self._old_tokens: deque[str] = deque(maxlen=_REMEMBERED_TOKENS)
        self._redact = Redactor([client_secret])
        self.fetches = 0

    def __repr__(self) -> str:
        return f"ClientCredentials(token_url={self.token_url!r}, client_id={self.client_id!r})"

    async def authorization(self) -> str:
        """The ``Authorization`` header value for the next request."""
        async with self._lock:
            if self._token is None or self._clock() >= self._expires_at:
                await self._fetch()
            assert self._token is not None  # _fetch sets it or raises
            return f"Bearer {self._token}"

    async def refresh(self, rejected: str) -> bool:
        """The server answered 401 to ``rejected`` (a header value): fetch a new token unless
        another call already replaced that one. True: a retry may succeed."""
        async with self._lock:
            if self._token is None or rejected == f"Bearer {self._token}":
                await self._fetch()
            return True  # a token other than the rejected one is ready now

    def redact(self, text: str) -> str:
        """``text`` without the secret, recent tokens or anything shaped like a credential."""
        return self._redact(text)

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def _fetch(self) -> None:
        """Get a new token from the token endpoint, or raise what went wrong (no secrets)."""
        self.fetches += 1
        response = await self._post()
        token, expires_in = self._parse(response)
        if self._token is not None:
            self._old_tokens.append(self._token)
        self._token = token
        self._redact = Redactor([self._secret, token, *self._old_tokens])
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
