"""Async SCIM 2.0 client for one target application — and THE place where an HTTP status
becomes a scimflow error.

One :class:`ScimClient` per target app holds one pooled ``httpx.AsyncClient`` whose transport
is aiohttp's (httpx-aiohttp): the same httpx API and errors, with aiohttp's C-accelerated
HTTP/1.1 parser and connection pool underneath, which cost the writer about a third of the
CPU per request that httpcore's pure-Python stack does. Every
outcome a caller sees is a :class:`ScimResource` or an error of ``services.runtime.errors``,
classified by what the writer does next:

======================================  ==========================================
network error, timeout, 408, 429, 5xx   ``TransientError`` (retried here first)
401, 403 (after one token refresh)      ``CredentialsError`` (app quarantined at once)
404                                     ``NotFoundError``
409, 412                                ``ConflictError`` (look up and reconcile)
3xx, 501, other 4xx, malformed answer   ``RejectedError`` with the target's ``detail``
======================================  ==========================================

Every request goes through three stages, in this order:

1. the **quarantine gate** (:mod:`services.scim.quarantine`): closed while the app is
   quarantined; calls wait there, nothing is dropped;
2. a **rate-limit slot** (:mod:`services.scim.ratelimit`): at most the current AIMD
   concurrency in flight, paced to the current requests/s; held only while the request is
   on the wire;
3. the request itself, with the ``Authorization`` header of :mod:`services.scim.auth`
   (a 401 refreshes an OAuth2 token and is retried once).

Transient errors are retried here (stamina: exponential backoff with jitter, or exactly the
target's ``Retry-After``) for at most ``attempts`` attempts; while a call waits for its next
attempt it holds no slot, so other objects keep flowing. A ``Retry-After`` longer than
``Backoff.retry_after_cap`` is not waited for inside the call: the TransientError is raised
at once with its ``retry_after``, so the writer can re-queue the object instead of holding
its partition. Every TargetError says how many attempts were made (``attempts``).
Credentials never appear in a message, a repr or a log line, and a target that echoes them
back gets them redacted.
"""

from __future__ import annotations

import builtins
import socket
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from http import HTTPStatus
from types import TracebackType
from typing import Any, Final, Literal
from urllib.parse import quote

import aiohttp
import httpx
import msgspec
import stamina
import structlog
from httpx_aiohttp import AiohttpTransport

from services.runtime import metrics
from services.runtime.config import Application, LoadedConfig, Quarantine, RateLimit
from services.runtime.errors import (
    ConfigError,
    ConflictError,
    CredentialsError,
    NotFoundError,
    RejectedError,
    TargetError,
    TransientError,
)
from services.runtime.http import ClientCredentials, parse_retry_after
from services.runtime.settings import Settings
from services.scim.auth import Auth, BearerToken
from services.scim.paths import (
    PATCH_OP,
    apply_changes,
    chunked,
    equality_filter,
    member_operations,
    patch_operations,
)
from services.scim.quarantine import QuarantineEvent, QuarantineGate
from services.scim.ratelimit import Limits, RateLimiter

__all__ = [
    "SCIM_JSON",
    "Backoff",
    "Kind",
    "ScimClient",
    "ScimResource",
    "attempts_of",
    "client_for",
]

SCIM_JSON: Final = "application/scim+json"

Kind = Literal["user", "group"]
_ENDPOINTS: Final[dict[str, str]] = {"user": "Users", "group": "Groups"}
_PATCH_UNSUPPORTED = (405, 501)

log = structlog.get_logger("scimflow.writer")

_DETAIL_LIMIT = 500
_RETRY_AFTER_CAP = 30.0
_TIMEOUT_PHASES: Final[dict[type[Exception], str]] = {
    httpx.ConnectTimeout: "connecting",
    httpx.ReadTimeout: "waiting for the answer",
    httpx.WriteTimeout: "sending the request",
    httpx.PoolTimeout: "waiting for a free connection (raise max_connections?)",
    aiohttp.ConnectionTimeoutError: "connecting",  # before its base class, ServerTimeoutError
    aiohttp.ServerTimeoutError: "waiting for the answer",
    httpx.TimeoutException: "waiting",
}
_BAD_SCHEME = (httpx.UnsupportedProtocol, aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError)
_CONNECT_FAILED = (httpx.ConnectError, aiohttp.ClientConnectorError)
_CONNECTION_HINTS = {
    404: ("; check the application's base URL: it must be the SCIM root that /Users hangs "
          "off (e.g. https://app.example.com/scim/v2), without /Users"),
}


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


class ScimResource(msgspec.Struct, frozen=True, kw_only=True):
    """A resource as the target returned it; ``etag`` is its version, when the target has one."""

    id: str
    body: dict[str, Any]
    etag: str | None = None


@dataclass(frozen=True, slots=True)
class Backoff:
    """Waits between attempts (seconds). Tests pass zeros."""

    wait_initial: float = 0.5
    wait_max: float = 10.0
    wait_jitter: float = 1.0
    retry_after_cap: float = _RETRY_AFTER_CAP
    """Longest ``Retry-After`` waited for inside one call; a longer one is raised at once
    (with ``retry_after``) for the writer to re-queue the object: a call must not hold its
    Kafka partition for minutes."""


def attempts_of(exc: BaseException) -> int:
    """How many attempts the client made before raising ``exc`` (1 if it did not record it)."""
    value = getattr(exc, "attempts", 1)
    return value if isinstance(value, int) else 1


class ScimClient:
    """SCIM 2.0 calls on one target's ``/Users`` and ``/Groups``, over one connection pool.

    ``auth`` is a static bearer token (a ``str``) or an :class:`~services.scim.auth.Auth`.
    ``rate_limit`` and ``quarantine`` (the app's config) turn on AIMD limits and the
    quarantine gate; left None (tools, most tests) there is neither.
    """

    def __init__(self, base_url: str, auth: Auth | str, *, timeout: float = 10.0,
                 max_connections: int = 32, attempts: int = 5, backoff: Backoff | None = None,
                 transport: httpx.AsyncBaseTransport | None = None, app: str = "",
                 dialect: Literal["rfc7644", "entra"] = "rfc7644",
                 update_method: Literal["patch", "put"] = "patch", max_patch_operations: int = 100,
                 page_size: int | None = None, rate_limit: RateLimit | None = None,
                 quarantine: Quarantine | None = None) -> None:
        self._auth: Auth = BearerToken(auth) if isinstance(auth, str) else auth
        self._app = app  # the metrics label; "" when used outside a writer (tests, tools)
        if attempts < 1:
            raise ValueError(f"attempts must be at least 1, not {attempts}")
        if max_patch_operations < 1:
            raise ValueError(f"max_patch_operations must be at least 1, not {max_patch_operations}")
        self._base = httpx.URL(base_url.rstrip("/") + "/")
        self._shown_base = _shown(self._base)
        self._collections: dict[str, httpx.URL] = {}
        self._timeout = timeout
        self._attempts = attempts
        self._backoff = backoff or Backoff()
        self.dialect = dialect
        self.max_patch_operations = max_patch_operations
        self.page_size = page_size
        self.uses_put = update_method == "put"
        """PUT instead of PATCH for updates: configured, or learnt from a 405/501 to PATCH."""
        self.limiter = (RateLimiter(rate_limit.max_concurrency, rate_limit.max_requests_per_second,
                                    app=app)
                        if rate_limit is not None else None)
        self._quarantining = quarantine is not None
        self.quarantine = QuarantineGate(quarantine or Quarantine(), app=app, probe=self._probe)
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._http = _StatelessClient(
            base_url=self._base,
            headers={"Accept": SCIM_JSON},
            timeout=timeout,
            limits=limits,
            # A redirect means a wrong base URL: report it instead of following it.
            follow_redirects=False,
            transport=transport or AiohttpTransport(limits=limits),
        )

    def __repr__(self) -> str:
        return f"ScimClient(base_url={self._shown_base!r})"

    @property
    def app(self) -> str:
        """The application this client writes to ("" outside a writer)."""
        return self._app

    async def __aenter__(self) -> ScimClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.quarantine.aclose()
        await self._http.aclose()
        await self._auth.aclose()

    @property
    def limits(self) -> Limits | None:
        """The rate limits in force now (None when unlimited)."""
        return self.limiter.limits if self.limiter is not None else None

    def on_quarantine(self, listener: Callable[[QuarantineEvent], None]) -> None:
        """Call ``listener`` when the app enters quarantine (once per reason) and leaves it."""
        self.quarantine.on_quarantine(listener)

    # -- resources of any kind -----------------------------------------------------------

    async def find(self, kind: Kind, attribute: str, value: str) -> builtins.list[ScimResource]:
        """Resources whose ``attribute`` (a mapping target path) equals ``value``:
        ``GET /<Kind>?filter=<attribute> eq "<value>"``, following every page."""
        return await self.list(kind, equality_filter(attribute, value))

    async def list(self, kind: Kind, filter: str | None = None) -> builtins.list[ScimResource]:
        """Every resource of ``kind`` (matching the SCIM ``filter``, if given), page by page,
        with whatever page size the target chooses (``page_size`` only asks for one)."""
        return (await self._list_pages(kind, filter))[0]

    async def list_all(self, kind: Kind) -> tuple[builtins.list[ScimResource], bool]:
        """Every resource of ``kind`` (discovery), and whether the listing is complete: it
        reached ``totalResults`` (a target that caps results or ignores ``startIndex``
        gives a partial listing, and absence from it proves nothing)."""
        return await self._list_pages(kind, None)

    async def _list_pages(self, kind: Kind, filter: str | None) -> tuple[builtins.list[ScimResource], bool]:
        """Follow ``startIndex`` by what each page really held (targets default to 20 or 50
        per page and ignore ``count``) until ``totalResults``."""
        found: dict[str, ScimResource] = {}
        while True:
            total, page = await self._page(kind, filter, start=len(found) + 1 if found else None)
            new = {r.id: r for r in page if r.id not in found}
            found.update(new)
            # Stop on a page without news too: a target that ignores startIndex would loop.
            if not new or len(found) >= total:
                return builtins.list(found.values()), len(found) >= total

    async def get(self, kind: Kind, id: str) -> ScimResource:
        return _resource(await self._call("GET", _path(kind, id), ok=(200,)))

    async def get_document(self, path: str) -> dict[str, Any]:
        """``GET <base>/<path>`` of a JSON document that is not a User or Group, such as
        ``ServiceProviderConfig``, ``ResourceTypes`` or ``Schemas`` (RFC 7644 §4).
        One attempt past the quarantine gate, as a test connection is."""
        response = await self._call("GET", path.lstrip("/"), ok=(200,), attempts=1, direct=True)
        return _json_object(response)

    async def post_document(self, path: str, body: Mapping[str, Any], *,
                            attempts: int | None = None) -> dict[str, Any]:
        """``POST <base>/<path>`` of a JSON message that is not a User or Group, such as a
        BulkRequest (RFC 7644 §3.7), through the quarantine gate, a rate-limit slot, the
        token refresh and the error classification of every call. ``attempts`` (default:
        the client's) bounds the retries: a bulk passes 1, since a retried bulk whose first
        try landed would apply its operations twice."""
        response = await self._call("POST", path.lstrip("/"), body=body, ok=(200,), attempts=attempts)
        return _json_object(response)

    def redact(self, text: str) -> str:
        """``text`` without this client's credentials (for what a target said)."""
        return self._redact(text)

    async def create(self, kind: Kind, body: Mapping[str, Any]) -> ScimResource:
        """``POST /<Kind>``. A retried POST whose first try did land answers 409: callers
        treat ConflictError as "look it up and adopt it"."""
        return _resource(await self._call("POST", _ENDPOINTS[kind], body=body, ok=(200, 201)))

    async def delete(self, kind: Kind, id: str) -> None:
        await self._call("DELETE", _path(kind, id), ok=(200, 204))

    async def update(self, kind: Kind, id: str, changes: Mapping[str, Any], *,
                     current: ScimResource | Mapping[str, Any] | None = None) -> ScimResource | None:
        """Bring the changed attributes (``{target path: value}``, None removes) to the target.

        PATCH of the changed attributes in the app's dialect, chunked to
        ``max_patch_operations`` per request (``current``, the resource as the target last
        returned it, tells which multi-valued elements exist). Or, when the app is set to
        PUT or answered 405/501 to a PATCH (remembered): read-modify-write, a GET of the
        resource just before, the changes applied to it, and a PUT conditional on its ETag,
        so nothing the target holds that scimflow does not map is lost. On 412 the resource
        is read again and the update retried once. Returns the resource when the target
        answered with it (what it kept), else None.
        """
        if not changes:
            return None
        if current is not None and not isinstance(current, ScimResource):
            current = _as_resource(id, current)
        try:
            return await self._update_once(kind, id, changes, current)
        except ConflictError as exc:
            if exc.status != 412:
                raise
            log.info("resource changed meanwhile (412); re-reading it and updating once more",
                     app=self._app, path=_path(kind, id))
            return await self._update_once(kind, id, changes, await self.get(kind, id))

    async def patch(self, kind: Kind, id: str, operations: Sequence[Mapping[str, Any]], *,
                    if_match: str | None = None) -> ScimResource | None:
        """Send PatchOp ``operations``, at most ``max_patch_operations`` per request. The
        updated resource when the target returns it (200), else None (204). ``if_match``
        makes the (first) write conditional on the resource's ETag (412 -> ConflictError)."""
        if not operations:
            raise ValueError("a PATCH needs at least one operation; skip the call instead")
        result: ScimResource | None = None
        etag = if_match
        for chunk in chunked(operations, self.max_patch_operations):
            result, etag = await self._patch_once(kind, id, chunk, etag)
        return result

    async def patch_members(self, group_id: str, add: Sequence[str], remove: Sequence[str]) -> None:
        """Add and remove group members by their target ids: the deltas only, never the
        whole list, at most ``max_patch_operations`` members per request. A target that
        refuses PATCH (405/501, or set to PUT) gets a read-modify-write PUT of the group."""
        if not self.uses_put:
            requests = member_operations(add, remove, dialect=self.dialect,
                                         max_values=self.max_patch_operations)
            try:
                for operations in requests:
                    await self._patch_once("group", group_id, operations, None)
            except RejectedError as exc:
                if exc.status not in _PATCH_UNSUPPORTED:
                    raise
                self._patch_refused(exc)
            else:
                return
        try:
            await self._put_members(group_id, add, remove)
        except ConflictError as exc:
            if exc.status != 412:
                raise
            await self._put_members(group_id, add, remove)

    async def _put_members(self, group_id: str, add: Sequence[str], remove: Sequence[str]) -> None:
        group = await self.get("group", group_id)
        gone = set(remove)
        kept = [m for m in _members_of(group.body) if str(m.get("value")) not in gone]
        present = {str(m.get("value")) for m in kept}
        members = kept + [{"value": m} for m in add if m not in present]
        try:
            await self._put("group", group, {"members": members})
        except RejectedError as exc:
            raise type(exc)(f"{exc}; the target refuses member PATCH and this PUT of the whole group: "
                            "check the application's `dialect` (rfc7644 or entra) and "
                            "`update_method` settings against what the target documents",
                            status=exc.status, detail=exc.detail, attempts=exc.attempts) from exc

    # -- users: what the writer's worker calls -------------------------------------------

    async def find_users(self, attribute: str, value: str) -> builtins.list[ScimResource]:
        return await self.find("user", attribute, value)

    async def get_user(self, id: str) -> ScimResource:
        return await self.get("user", id)

    async def create_user(self, body: Mapping[str, Any]) -> ScimResource:
        return await self.create("user", body)

    async def patch_user(self, id: str, operations: builtins.list[dict[str, Any]], *,
                         if_match: str | None = None) -> ScimResource | None:
        return await self.patch("user", id, operations, if_match=if_match)

    async def delete_user(self, id: str) -> None:
        await self.delete("user", id)

    # -- test connection -------------------------------------------------------------------

    async def test_connection(self, matching_attribute: str = "userName") -> None:
        """Entra's check: ``GET /Users?filter=<matching attribute> eq "<random GUID>"`` must
        answer 200 with an empty list. One attempt, no retries, past the quarantine gate;
        raises a TargetError subclass whose message says exactly what failed."""
        expression = equality_filter(matching_attribute, str(uuid.uuid4()))
        try:
            total, page = await self._page("user", expression, direct=True)
        except TargetError as exc:
            # Chain to the library error (DNS, TLS, ...) as any other call does.
            raise _connection_failed(exc) from (exc.__cause__ or exc)
        if total or page:
            raise RejectedError(
                f"test connection failed: GET {self._shown_base}Users?filter="
                f'{matching_attribute} eq "<random GUID>" returned {max(total, len(page))} '
                "user(s) instead of none: the target ignores or misapplies the filter, so "
                "scimflow could not match existing accounts and would create duplicates",
                status=200)

    async def _probe(self) -> None:
        """The quarantine gate's probe: the test connection."""
        await self.test_connection()

    # -- updates -------------------------------------------------------------------------

    async def _update_once(self, kind: Kind, id: str, changes: Mapping[str, Any],
                           current: ScimResource | None) -> ScimResource | None:
        if not self.uses_put:
            operations = patch_operations(changes, dialect=self.dialect,
                                          current=current.body if current is not None else None)
            if not operations:
                return None  # the target already holds every value
            try:
                return await self.patch(kind, id, operations, if_match=current.etag if current else None)
            except RejectedError as exc:
                if exc.status not in _PATCH_UNSUPPORTED:
                    raise
                self._patch_refused(exc)
        # Read-modify-write: the resource as the target holds it now, never a remembered one.
        return await self._put(kind, await self.get(kind, id), changes)

    def _patch_refused(self, exc: RejectedError) -> None:
        log.warning("target refused PATCH; using PUT (read-modify-write) for its updates from now on",
                    app=self._app, target=self._shown_base, status=exc.status)
        self.uses_put = True

    async def _put(self, kind: Kind, resource: ScimResource,
                   changes: Mapping[str, Any]) -> ScimResource | None:
        body = apply_changes(resource.body, changes)
        headers = {"If-Match": resource.etag} if resource.etag else None
        response = await self._call("PUT", _path(kind, resource.id), body=body, ok=(200, 204),
                                    headers=headers)
        return _resource(response) if response.status_code == 200 and response.content.strip() else None

    async def _patch_once(self, kind: Kind, id: str, operations: Sequence[Mapping[str, Any]],
                          if_match: str | None) -> tuple[ScimResource | None, str | None]:
        """One PATCH request: (the resource if returned, its new ETag if known)."""
        body = {"schemas": [PATCH_OP], "Operations": builtins.list(operations)}
        headers = {"If-Match": if_match} if if_match else None
        response = await self._call("PATCH", _path(kind, id), body=body, ok=(200, 204), headers=headers)
        if response.status_code == 204 or not response.content.strip():
            return None, response.headers.get("ETag")
        resource = _resource(response)
        return resource, resource.etag

    # -- one request ---------------------------------------------------------------------

    async def _page(self, kind: Kind, expression: str | None, *, start: int | None = None,
                    direct: bool = False) -> tuple[int, builtins.list[ScimResource]]:
        params: dict[str, str] = {}
        if expression is not None:
            params["filter"] = expression
        if start is not None:
            params["startIndex"] = str(start)
        if self.page_size is not None:
            params["count"] = str(self.page_size)
        response = await self._call("GET", _ENDPOINTS[kind], params=params, ok=(200,),
                                    attempts=1 if direct else None, direct=direct)
        return _list_response(response)

    async def _call(self, method: str, path: str, *, ok: tuple[int, ...],
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
                    raise
        raise AssertionError("unreachable: stamina re-raises the last error")  # pragma: no cover

    async def _attempt(self, request: _Request) -> httpx.Response:
        """One attempt: gate, slot, send (and resend once after a token refresh on 401)."""
        if not request.direct:
            await self.quarantine.wait()
        try:
            response = await self._exchange(request)
            if response.status_code == 401 and await self._auth.refresh(
                    response.request.headers.get("Authorization", "")):
                response = await self._exchange(request)
            if response.status_code not in request.ok:
                raise self._status_error(_describe(response.request), response)
        except TargetError as exc:
            self._observe(exc, request)
            raise
        self._observe(None, request)
        return response

    async def _exchange(self, request: _Request) -> httpx.Response:
        """Send one HTTP request within a rate-limit slot; transport failures become TargetErrors."""
        headers = {**request.headers, "Authorization": await self._auth.authorization()}
        built = self._http.build_request(request.method, self._url(request.path), params=request.params,
                                         headers=headers, content=request.content)
        async with self._slot():
            started = time.perf_counter()
            try:
                response = await self._http.send(built)
            except httpx.HTTPError as exc:
                metrics.observe_target_request(self._app, built.method, None, time.perf_counter() - started)
                raise self._transport_error(_describe(built), exc) from exc
        metrics.observe_target_request(self._app, built.method, response.status_code,
                                       time.perf_counter() - started)
        return response

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

    def _slot(self) -> AbstractAsyncContextManager[None]:
        return self.limiter.slot() if self.limiter is not None else _no_slot()

    def _observe(self, exc: TargetError | None, request: _Request) -> None:
        """Feed one outcome to the AIMD limits and the quarantine window."""
        if self.limiter is not None:
            if exc is not None and exc.status == 429:
                self.limiter.throttled()
            elif exc is None or not isinstance(exc, TransientError):
                self.limiter.succeeded()
        if request.direct or not self._quarantining:
            return
        if exc is None:
            self.quarantine.succeeded()
        else:
            self.quarantine.failed(exc)

    def _retry_wait(self, exc: Exception) -> bool | float:
        """stamina's hook: retry only TransientError; wait what ``Retry-After`` asked, unless
        that is longer than the cap (then give up now: the writer re-queues the object)."""
        if not isinstance(exc, TransientError):
            return False
        if exc.retry_after is None:
            return True  # stamina's exponential backoff with jitter
        return exc.retry_after if exc.retry_after <= self._backoff.retry_after_cap else False

    # -- errors --------------------------------------------------------------------------

    def _transport_error(self, where: str, exc: httpx.HTTPError) -> TargetError:
        # httpx-aiohttp maps aiohttp's errors onto httpx's coarsely (a reset becomes a
        # ConnectTimeout): judge by aiohttp's own error when there is one.
        failure: Exception = exc.__cause__ if isinstance(exc.__cause__, aiohttp.ClientError) else exc
        phase = next((p for kind, p in _TIMEOUT_PHASES.items() if isinstance(failure, kind)), None)
        if phase is not None:
            return TransientError(f"{where}: timed out after {self._timeout:g}s {phase}")
        if isinstance(failure, _BAD_SCHEME):
            return RejectedError(f"{where}: unsupported URL scheme; use http:// or https://")
        if isinstance(failure, _CONNECT_FAILED):
            return TransientError(f"{where}: {self._describe_connect_error(exc)}")
        # The connection broke mid-exchange (reset, closed, garbled HTTP): worth a retry.
        return TransientError(f"{where}: {type(failure).__name__}: {self._redact(str(failure))}")

    def _describe_connect_error(self, exc: httpx.HTTPError) -> str:
        default_port = 443 if self._base.scheme == "https" else 80
        host, port = self._base.host, self._base.port or default_port
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
        return f"cannot connect to {host}:{port}: {self._redact(str(exc))}"

    def _status_error(self, where: str, response: httpx.Response) -> TargetError:
        status = response.status_code
        detail, scim_type = _scim_error(response)
        detail = self._redact(detail) if detail else None
        message = f"{where} -> {status} {_reason(response)}"
        message += f" [{scim_type}]" if scim_type else ""
        message += f": {detail}" if detail else ""
        if detail is None and response.content.strip():
            content_type = response.headers.get("Content-Type") or "none"
            message += (f" (answered with Content-Type {content_type}, starting "
                        f"{self._redact(_first_bytes(response.content))})")
        message += _status_hint(response, oauth2=isinstance(self._auth, ClientCredentials))
        error_class = _error_class(status)
        retry_after = (parse_retry_after(response.headers.get("Retry-After"))
                       if error_class is TransientError else None)
        return error_class(self._redact(message), status=status, detail=detail,
                           retry_after=retry_after)

    def _redact(self, text: str) -> str:
        return self._auth.redact(text)


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


@asynccontextmanager
async def _no_slot() -> AsyncIterator[None]:
    yield


# -- helpers without state ---------------------------------------------------------------


def _path(kind: Kind, id: str) -> str:
    # Quote everything: an id such as "../Groups" must not leave its endpoint.
    return f"{_ENDPOINTS[kind]}/{quote(id, safe='')}"


def _as_resource(id: str, body: Mapping[str, Any]) -> ScimResource:
    """A resource body the caller kept, with the version its ``meta`` holds as the ETag."""
    meta = body.get("meta")
    version = meta.get("version") if isinstance(meta, Mapping) else None
    return ScimResource(id=id, body=dict(body), etag=version if isinstance(version, str) else None)


def _with_content_type(headers: Mapping[str, str] | None,
                       body: Mapping[str, Any] | None) -> dict[str, str]:
    merged = dict(headers or {})
    if body is not None:
        merged["Content-Type"] = SCIM_JSON
    return merged


def _error_class(status: int) -> type[TargetError]:
    if status in (401, 403):
        return CredentialsError
    if status == 404:
        return NotFoundError
    if status in (409, 412):  # 412: our If-Match lost a race: re-read and reconcile
        return ConflictError
    if status in (408, 429) or (status >= 500 and status != 501):
        return TransientError  # 501: the target does not implement it; a retry won't help
    return RejectedError


def _status_hint(response: httpx.Response, *, oauth2: bool) -> str:
    status = response.status_code
    if status == 401:
        return (" (the target refused the OAuth2 access token, also a freshly fetched one)" if oauth2
                else " (the target refused the bearer token)")
    if status == 403:
        return " (the token was accepted but is not allowed to do this)"
    if 300 <= status < 400:
        location = httpx.URL(response.headers.get("Location", "")).copy_with(query=None)
        return f" (redirected to {location}; set the base URL to the final address)"
    return ""


def _reason(response: httpx.Response) -> str:
    try:
        return HTTPStatus(response.status_code).phrase
    except ValueError:
        return response.reason_phrase or "(unknown status)"


def _scim_error(response: httpx.Response) -> tuple[str | None, str | None]:
    """(detail, scimType) of a SCIM error answer; a trimmed text for a plain-text one. An
    HTML page has no detail: what scimflow says about it is not what the target said."""
    body = _decode(response.content)
    if isinstance(body, dict):
        detail, scim_type = body.get("detail"), body.get("scimType")
        return (str(detail)[:_DETAIL_LIMIT] if detail else None,
                str(scim_type) if scim_type else None)
    if "html" in response.headers.get("Content-Type", "").lower():
        return None, None
    text = " ".join(response.text.split())
    return (text[:_DETAIL_LIMIT] or None), None


def _decode(content: bytes) -> object:
    try:
        return msgspec.json.decode(content)
    except msgspec.DecodeError:
        return None


def _shown(url: httpx.URL) -> str:
    """A URL fit for messages: no userinfo, no query (it holds searched values)."""
    return str(url.copy_with(userinfo=b"", query=None))


def _describe(request: httpx.Request) -> str:
    return f"{request.method} {_shown(request.url)}"


def _json_object(response: httpx.Response) -> dict[str, Any]:
    """The JSON object of a successful answer. Anything else (an HTML page from a proxy,
    truncated JSON) is transient: retried with backoff, then escrowed. The message says what
    came back, without guessing why."""
    body = _decode(response.content)
    if isinstance(body, dict):
        return body
    content_type = response.headers.get("Content-Type") or "none"
    what = "JSON that is not an object" if body is not None else "not JSON"
    raise TransientError(
        f"{_describe(response.request)} -> {response.status_code} with a body that is {what} "
        f"(Content-Type: {content_type}, {len(response.content)} bytes, starting "
        f"{_first_bytes(response.content)})",
        status=response.status_code)


def _first_bytes(content: bytes, limit: int = 80) -> str:
    text = content[:limit].decode("utf-8", "replace")
    return repr(" ".join(text.split())) + ("..." if len(content) > limit else "")


def _members_of(resource: Mapping[str, Any]) -> builtins.list[dict[str, Any]]:
    """A group's ``members`` as the target returned them (case-insensitive attribute name)."""
    value = next((v for k, v in resource.items() if isinstance(k, str) and k.lower() == "members"), None)
    return [m for m in value if isinstance(m, dict)] if isinstance(value, builtins.list) else []


def _resource(response: httpx.Response) -> ScimResource:
    return _to_resource(response, _json_object(response), response.headers.get("ETag"))


def _to_resource(response: httpx.Response, body: dict[str, Any], etag: str | None) -> ScimResource:
    resource_id = body.get("id")
    if not isinstance(resource_id, str) or not resource_id:
        raise RejectedError(f"{_describe(response.request)} -> {response.status_code}: the "
                            "target returned a resource without an `id`",
                            status=response.status_code)
    meta = body.get("meta")
    version = meta.get("version") if isinstance(meta, dict) else None
    return ScimResource(id=resource_id, body=body,
                        etag=etag or (version if isinstance(version, str) else None))


def _list_response(response: httpx.Response) -> tuple[int, list[ScimResource]]:
    """(totalResults, resources of this page) of a SCIM ListResponse."""
    body = _json_object(response)
    items = body.get("Resources", body.get("resources", []))
    total = body.get("totalResults")
    if not isinstance(items, list) or not (isinstance(total, int) or "Resources" in body):
        raise RejectedError(f"{_describe(response.request)} -> {response.status_code}: the "
                            "answer is JSON but not a "
                            "SCIM ListResponse (no totalResults/Resources)",
                            status=response.status_code)
    resources = [_to_resource(response, item, None)
                 for item in items if isinstance(item, dict)]
    return (total if isinstance(total, int) else len(resources)), resources


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from (httpx -> httpcore -> OSError)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _connection_failed(exc: TargetError) -> TargetError:
    """The same error class, its message prefixed and completed for a test connection."""
    hint = _CONNECTION_HINTS.get(exc.status or 0, "")
    return type(exc)(f"test connection failed: {exc}{hint}", status=exc.status,
                     detail=exc.detail, retry_after=exc.retry_after, attempts=exc.attempts)


def client_for(app: Application, loaded: LoadedConfig, settings: Settings, *,
               transport: httpx.AsyncBaseTransport | None = None) -> ScimClient:
    """The client of one configured application, with its credentials resolved and all of
    its target settings (dialect, update method, paging, limits, retries, quarantine)."""
    target = app.target
    auth: Auth
    if target.oauth2 is not None:
        oauth2 = target.oauth2
        auth = ClientCredentials(oauth2.token_url, oauth2.client_id,
                                 loaded.secret(oauth2.client_secret).reveal(), oauth2.scope,
                                 timeout=target.timeout)
    elif target.token is not None:
        auth = BearerToken(loaded.secret(target.token).reveal())
    else:  # config validation requires one of them; say so if it was bypassed
        raise ConfigError(f"application {app.name}: the target needs `token` or `oauth2`",
                          file=loaded.file)
    retries = target.retries
    return ScimClient(
        target.base_url, auth, timeout=target.timeout, max_connections=target.max_connections,
        attempts=retries.attempts, app=app.name, transport=transport,
        backoff=Backoff(wait_initial=retries.initial_wait, wait_max=retries.max_wait,
                        wait_jitter=retries.initial_wait,
                        retry_after_cap=min(_RETRY_AFTER_CAP, retries.max_wait)),
        dialect=target.dialect, update_method=target.update_method,
        max_patch_operations=target.max_patch_operations, page_size=target.page_size,
        rate_limit=target.rate_limit, quarantine=target.quarantine)
