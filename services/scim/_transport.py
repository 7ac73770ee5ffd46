"""One HTTP exchange with a SCIM target: what every request of :mod:`services.scim.client`
goes through, whatever its verb. It sends the request it is given (the client built the
body), and returns the answer or raises a TargetError.

One :class:`Transport` per target app holds one pooled ``httpx.AsyncClient`` whose transport
is aiohttp's (httpx-aiohttp): the same httpx API and errors, with aiohttp's C-accelerated
HTTP/1.1 parser and connection pool underneath, which cost the writer about a third of the
CPU per request that httpcore's pure-Python stack does.

Every request goes through three stages, in this order:

1. the **quarantine gate** (:mod:`services.scim.quarantine`): closed while the app is
   quarantined; calls wait there, nothing is dropped;
2. a **rate-limit turn and slot** (:mod:`services.scim.ratelimit`): the request waits for
   its turn at the app's adaptive requests/s (and its operation's configured maximum),
   then takes one of the current concurrency's in-flight slots, held only while it is on
   the wire; every answer feeds the adaptive rate;
3. the request itself, with the ``Authorization`` header of :mod:`services.scim.auth`
   (a 401 refreshes an OAuth2 token and is retried once).

An answer with an unexpected status becomes the error :mod:`services.scim.errors` gives it;
a network error or a timeout is a TransientError that says what failed (DNS, refused, TLS,
which phase timed out). Transient errors are retried here (stamina: exponential backoff with
jitter, or exactly the target's ``Retry-After``) for at most ``attempts`` attempts; while a
call waits for its next attempt it holds no slot, so other objects keep flowing. A
``Retry-After`` longer than ``Backoff.retry_after_cap`` is not waited for inside the call:
the TransientError is raised at once with its ``retry_after``, so the writer can re-queue
the object instead of holding its partition.

A create (POST) is retried here only after a failure that proves it did not land: the
connection could not be made (NotSentError), or 408, 429, 503 with ``Retry-After``. Any other
failure after it was sent (read timeout, reset, another 5xx) raises OutcomeUnknownError at
once: the writer looks the object up before any new create, since a target without a
uniqueness constraint would otherwise get two accounts. Every TargetError says how many attempts were
made (``attempts``). Credentials never appear in a message, a repr or a log line, and a
target that echoes them back gets them redacted.

Calls made within :func:`retry_after_raised` (the writer's object jobs) wait out no
``Retry-After`` at all: the TransientError is raised at once, and the writer parks the
object (no window slot, and not counted as work in progress). A call waiting inside the
client is in progress: a scan's end frame waits for it, and while it waits the writer's
consumer reads nothing, so random 429s with ``Retry-After: 1`` stalled every partition
for a second or more at each of a scan's frames. A listing waits them out all the same:
it has no object to park, and a cut-short listing costs a lookup per object.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
import httpx
import msgspec
import stamina
from httpx_aiohttp import AiohttpTransport

from services.runtime import metrics
from services.runtime.errors import RejectedError, TargetError, TransientError
from services.runtime.http import ClientCredentials
from services.scim.auth import Auth
from services.scim.errors import NotSentError, OutcomeUnknownError, describe, not_landed, shown, status_error
from services.scim.quarantine import QuarantineGate
from services.scim.ratelimit import RateLimiter, operation_of

__all__ = ["RETRY_AFTER_CAP", "SCIM_JSON", "Backoff", "Transport", "retry_after_raised"]

SCIM_JSON: Final = "application/scim+json"
RETRY_AFTER_CAP = 30.0

_TIMEOUT_PHASES: Final[dict[type[Exception], str]] = {
    httpx.ConnectTimeout: "connecting",
    httpx.ReadTimeout: "waiting for the answer",
    httpx.WriteTimeout: "sending the request",
    httpx.PoolTimeout: "waiting for a free connection (raise max_connections?)",
    aiohttp.ConnectionTimeoutError: "connecting",  # before its base class, ServerTimeoutError
    aiohttp.ServerTimeoutError: "waiting for the answer",
    httpx.TimeoutException: "waiting",
}
_RETRY_AFTER_RAISED: ContextVar[bool] = ContextVar("scimflow_retry_after_raised", default=False)
_BAD_SCHEME = (httpx.UnsupportedProtocol, aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError)
_CONNECT_FAILED = (httpx.ConnectError, aiohttp.ClientConnectorError)
# Failures before a single byte of the request left: connecting, or waiting for a connection.
_UNSENT = (*_CONNECT_FAILED, httpx.ConnectTimeout, httpx.PoolTimeout, aiohttp.ConnectionTimeoutError)
# Methods whose repetition may apply twice (RFC 9110 §9.2.2): only a create is not idempotent here.
_NOT_IDEMPOTENT = frozenset({"POST"})


@dataclass(frozen=True, slots=True)
class Backoff:
    """Waits between attempts (seconds). Tests pass zeros."""

    wait_initial: float = 0.5
    wait_max: float = 10.0
    wait_jitter: float = 1.0
    retry_after_cap: float = RETRY_AFTER_CAP
    """Longest ``Retry-After`` waited for inside one call; a longer one is raised at once
    (with ``retry_after``) for the writer to re-queue the object: a call must not hold its
    Kafka partition for minutes."""


@contextmanager
def retry_after_raised(raised: bool = True) -> Iterator[None]:
    """Within: a call answered with ``Retry-After`` raises its TransientError (with
    ``retry_after``) at once instead of waiting inside the call, for a caller that re-queues
    its work and holds nothing meanwhile; ``raised=False`` waits again (up to the cap).
    Tasks started within inherit it (a context variable)."""
    token = _RETRY_AFTER_RAISED.set(raised)
    try:
        yield
    finally:
        _RETRY_AFTER_RAISED.reset(token)


class _NoCookies(httpx.Cookies):
    def extract_cookies(self, response: httpx.Response) -> None:
        return None


_NO_COOKIES: Final = _NoCookies()


class _StatelessClient(httpx.AsyncClient):
    """An httpx client that neither keeps nor sends cookies. SCIM is stateless (the
    credentials ride on every request), and parsing each answer's cookies with
    http.cookiejar was a third of the client's CPU per request."""

    @property
    def cookies(self) -> httpx.Cookies:
        return _NO_COOKIES

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        return None


@dataclass(frozen=True, slots=True)
class _Request:
    """One logical request, re-sent as is by every attempt (with a fresh Authorization)."""

    method: str
    path: str
    ok: tuple[int, ...]
    params: Mapping[str, str] | None
    content: bytes | None
    headers: dict[str, str]
    direct: bool


class Transport:
    """Requests to one target: gate, slot, credentials, retries, errors. ``quarantining``
    says whether outcomes count in the ``gate``'s window (the app configured a quarantine)."""

    def __init__(self, base_url: httpx.URL, auth: Auth, *, timeout: float, max_connections: int,
                 attempts: int, backoff: Backoff, app: str, limiter: RateLimiter | None,
                 gate: QuarantineGate, quarantining: bool,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.base = base_url
        self.shown_base = shown(base_url)
        self._auth = auth
        self._app = app  # the metrics label; "" when used outside a writer (tests, tools)
        self._timeout = timeout
        self._attempts = attempts
        self._backoff = backoff
        self._limiter = limiter
        self._gate = gate
        self._quarantining = quarantining
        self._collections: dict[str, httpx.URL] = {}
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._http = _StatelessClient(
            base_url=base_url,
            headers={"Accept": SCIM_JSON},
            timeout=timeout,
            limits=limits,
            # A redirect means a wrong base URL: report it instead of following it.
            follow_redirects=False,
            transport=transport or AiohttpTransport(limits=limits),
        )

    @property
    def auth(self) -> Auth:
        return self._auth

    async def aclose(self) -> None:
        await self._http.aclose()
        await self._auth.aclose()

    def redact(self, text: str) -> str:
        """``text`` without this target's credentials."""
        return self._auth.redact(text)

    async def call(self, method: str, path: str, *, ok: tuple[int, ...],
                   params: Mapping[str, str] | None = None, body: Mapping[str, Any] | None = None,
                   headers: Mapping[str, str] | None = None, attempts: int | None = None,
                   direct: bool = False) -> httpx.Response:
        """Send with retries; the 2xx response in ``ok``, or the mapped TargetError.

        ``direct`` calls (test connection, quarantine probes) skip the gate and do not count
        in the quarantine's window.
        """
        request = _Request(method, path, ok, params, None if body is None else msgspec.json.encode(body),
                           _with_content_type(headers, body), direct)
        backoff = self._backoff
        retrying = stamina.retry_context(
            on=self._retry_wait, attempts=attempts or self._attempts, timeout=None,
            wait_initial=backoff.wait_initial, wait_max=backoff.wait_max,
            wait_jitter=backoff.wait_jitter)
        async for attempt in retrying:
            if attempt.num > 1:
                metrics.TARGET_RETRIES.labels(app=self._app).inc()
            with attempt:
                try:
                    return await self._attempt(request)
                except TargetError as exc:
                    exc.attempts = attempt.num
                    if request.method in _NOT_IDEMPOTENT and isinstance(exc, TransientError) \
                            and not not_landed(exc):
                        raise _unknown_outcome(exc) from exc
                    raise
        raise AssertionError("unreachable: stamina re-raises the last error")  # pragma: no cover

    async def _attempt(self, request: _Request) -> httpx.Response:
        """One attempt: gate, slot, send (and resend once after a token refresh on 401)."""
        if not request.direct:
            await self._gate.wait()
        sent_at: float | None = None
        try:
            response, sent_at = await self._exchange(request)
            if response.status_code == 401 and await self._auth.refresh(
                    response.request.headers.get("Authorization", "")):
                response, sent_at = await self._exchange(request)
            if response.status_code not in request.ok:
                raise status_error(describe(response.request), response, redact=self.redact,
                                   oauth2=isinstance(self._auth, ClientCredentials))
        except TargetError as exc:
            self._observe(exc, request, sent_at)
            raise
        self._observe(None, request, sent_at)
        return response

    async def _exchange(self, request: _Request) -> tuple[httpx.Response, float]:
        """Send one HTTP request within a rate-limit slot; transport failures become
        TargetErrors. Returns the answer and when (``time.monotonic``) it was sent."""
        headers = {**request.headers, "Authorization": await self._auth.authorization()}
        built = self._http.build_request(request.method, self._url(request.path), params=request.params,
                                         headers=headers, content=request.content)
        async with self._slot(request.method):
            sent_at, started = time.monotonic(), time.perf_counter()
            try:
                response = await self._http.send(built)
            except httpx.HTTPError as exc:
                metrics.observe_target_request(self._app, built.method, None, time.perf_counter() - started)
                raise self._transport_error(describe(built), exc) from exc
        metrics.observe_target_request(self._app, built.method, response.status_code,
                                       time.perf_counter() - started)
        return response, sent_at

    def _url(self, path: str) -> httpx.URL | str:
        """The absolute URL of a collection (``Users``, ``Groups``), parsed once: httpx
        parses a relative path three times per request, a sixth of the client's CPU.
        Other paths (they carry an id) go to httpx as they are."""
        if "/" in path:
            return path
        url = self._collections.get(path)
        if url is None:
            url = self._collections[path] = self._http.build_request("GET", path).url
        return url

    def _slot(self, method: str) -> AbstractAsyncContextManager[None]:
        return self._limiter.slot(operation_of(method)) if self._limiter is not None else _no_slot()

    def _observe(self, exc: TargetError | None, request: _Request, sent_at: float | None) -> None:
        """Feed one outcome to the adaptive rate (any answer of the target, to a request sent
        at ``sent_at``; a failure without one, such as a timeout, says nothing about its rate)
        and the quarantine window."""
        if self._limiter is not None and (exc is None or exc.status is not None):
            self._limiter.answered(throttled=exc is not None and exc.status == 429, sent_at=sent_at)
        if request.direct or not self._quarantining:
            return
        if exc is None:
            self._gate.succeeded()
        else:
            self._gate.failed(exc)

    def _retry_wait(self, exc: Exception) -> bool | float:
        """stamina's hook: retry only TransientError; wait what ``Retry-After`` asked, unless
        that is longer than the cap or the caller asked for it raised (then give up now:
        the writer re-queues the object)."""
        if not isinstance(exc, TransientError) or isinstance(exc, OutcomeUnknownError):
            return False  # an OutcomeUnknownError may have landed: the caller looks it up
        if exc.retry_after is None:
            return True  # stamina's exponential backoff with jitter
        if _RETRY_AFTER_RAISED.get():
            return False  # the caller parks its work for that long (see retry_after_raised)
        return exc.retry_after if exc.retry_after <= self._backoff.retry_after_cap else False

    # -- transport failures ----------------------------------------------------------------

    def _transport_error(self, where: str, exc: httpx.HTTPError) -> TargetError:
        # httpx-aiohttp maps aiohttp's errors onto httpx's coarsely (a reset becomes a
        # ConnectTimeout): judge by aiohttp's own error when there is one.
        failure: Exception = exc.__cause__ if isinstance(exc.__cause__, aiohttp.ClientError) else exc
        phase = next((p for kind, p in _TIMEOUT_PHASES.items() if isinstance(failure, kind)), None)
        # Judged by the failure itself: httpx-aiohttp reports a reset mid-exchange as a ConnectTimeout.
        kind = NotSentError if isinstance(failure, _UNSENT) else TransientError
        if phase is not None:
            return kind(f"{where}: timed out after {self._timeout:g}s {phase}")
        if isinstance(failure, _BAD_SCHEME):
            return RejectedError(f"{where}: unsupported URL scheme; use http:// or https://")
        if isinstance(failure, _CONNECT_FAILED):
            return NotSentError(f"{where}: {self._describe_connect_error(exc)}")
        # The connection broke mid-exchange (reset, closed, garbled HTTP): worth a retry.
        return TransientError(f"{where}: {type(failure).__name__}: {self.redact(str(failure))}")

    def _describe_connect_error(self, exc: httpx.HTTPError) -> str:
        default_port = 443 if self.base.scheme == "https" else 80
        host, port = self.base.host, self.base.port or default_port
        for cause in _causes(exc):
            if isinstance(cause, aiohttp.ClientError):
                continue  # aiohttp's wrappers subclass ssl's errors; the OS's error is further down
            if isinstance(cause, socket.gaierror):
                return f"cannot resolve host {host!r}: DNS lookup failed ({cause.strerror})"
            if isinstance(cause, ConnectionRefusedError):
                return f"connection refused by {host}:{port}: nothing is listening there"
            if isinstance(cause, ssl.SSLCertVerificationError):
                return f"TLS certificate of {host} is not trusted: {cause.verify_message}"
            if isinstance(cause, ssl.SSLError):
                return (f"TLS handshake with {host}:{port} failed ({cause.reason}); "
                        "does it speak HTTPS on that port?")
        return f"cannot connect to {host}:{port}: {self.redact(str(exc))}"


def _unknown_outcome(exc: TargetError) -> OutcomeUnknownError:
    """``exc`` of a create that was sent and may have landed, as the error that says so."""
    return OutcomeUnknownError(f"{exc}; the create may have been applied (outcome unknown, "
                               "not sent again: it will be looked up first)",
                               status=exc.status, detail=exc.detail, retry_after=exc.retry_after,
                               attempts=exc.attempts)


@asynccontextmanager
async def _no_slot() -> AsyncIterator[None]:
    yield


def _with_content_type(headers: Mapping[str, str] | None,
                       body: Mapping[str, Any] | None) -> dict[str, str]:
    merged = dict(headers or {})
    if body is not None:
        merged["Content-Type"] = SCIM_JSON
    return merged


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from (httpx -> httpcore -> OSError)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__
