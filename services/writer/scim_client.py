"""Async SCIM 2.0 client for one target application — and THE place where an HTTP status
becomes a scimflow error.

One :class:`ScimClient` per target app holds one pooled ``httpx.AsyncClient``. Every
outcome a caller sees is a :class:`ScimResource` or an error of ``services.runtime.errors``,
classified by what the writer does next:

======================================  ==========================================
network error, timeout, 408, 429, 5xx   ``TransientError`` (retried here first)
401, 403                                ``CredentialsError``
404                                     ``NotFoundError``
409, 412                                ``ConflictError`` (look up and reconcile)
3xx, 501, other 4xx, malformed answer   ``RejectedError`` with the target's ``detail``
======================================  ==========================================

Transient errors are retried inside the client (stamina: exponential backoff with jitter,
or the target's ``Retry-After`` up to a cap) for at most ``attempts`` attempts; the error
finally raised says how many were made (:func:`attempts_of`). Other errors are raised at
once. The bearer token lives only in the pool's default headers: it is never put in a
message, a repr or a log line, and a target that echoes it back gets it redacted.
"""

from __future__ import annotations

import email.utils
import socket
import ssl
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from types import TracebackType
from typing import Any, Final
from urllib.parse import quote

import httpx
import msgspec
import stamina

from services.runtime import metrics
from services.runtime.config import Application, LoadedConfig
from services.runtime.errors import (
    ConfigError,
    ConflictError,
    CredentialsError,
    NotFoundError,
    RejectedError,
    TargetError,
    TransientError,
)
from services.runtime.settings import Settings
from services.writer.scim_paths import PATCH_OP, equality_filter

__all__ = [
    "SCIM_JSON",
    "Backoff",
    "ScimClient",
    "ScimResource",
    "attempts_of",
    "client_for",
    "parse_retry_after",
]

SCIM_JSON: Final = "application/scim+json"

_REDACTED = "[redacted]"
_DETAIL_LIMIT = 500
_TIMEOUT_PHASES = {
    httpx.ConnectTimeout: "connecting",
    httpx.ReadTimeout: "waiting for the answer",
    httpx.WriteTimeout: "sending the request",
    httpx.PoolTimeout: "waiting for a free connection (raise max_connections?)",
}
_CONNECTION_HINTS = {
    404: ("; check the application's base URL: it must be the SCIM root that /Users hangs "
          "off (e.g. https://app.example.com/scim/v2), without /Users"),
}


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
    retry_after_cap: float = 30.0
    """Longest ``Retry-After`` honoured inside one call: longer pauses are the writer's
    quarantine's job, not a call's that holds its Kafka partition meanwhile."""


def attempts_of(exc: BaseException) -> int:
    """How many attempts the client made before raising ``exc`` (1 if it did not record it)."""
    value = getattr(exc, "attempts", 1)
    return value if isinstance(value, int) else 1


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


class ScimClient:
    """SCIM 2.0 calls on one target's ``/Users``, over one connection pool."""

    def __init__(self, base_url: str, token: str, *, timeout: float = 10.0,
                 max_connections: int = 32, attempts: int = 5, backoff: Backoff | None = None,
                 transport: httpx.AsyncBaseTransport | None = None, app: str = "") -> None:
        _check_token(token)
        self._app = app  # the metrics label; "" when used outside a writer (tests, tools)
        if attempts < 1:
            raise ValueError(f"attempts must be at least 1, not {attempts}")
        self._base = httpx.URL(base_url.rstrip("/") + "/")
        self._shown_base = _shown(self._base)
        self._token = token
        self._timeout = timeout
        self._attempts = attempts
        self._backoff = backoff or Backoff()
        self._http = httpx.AsyncClient(
            base_url=self._base,
            headers={"Authorization": f"Bearer {token}", "Accept": SCIM_JSON},
            timeout=timeout,
            limits=httpx.Limits(max_connections=max_connections,
                                max_keepalive_connections=max_connections),
            # A redirect means a wrong base URL: report it instead of following it.
            follow_redirects=False,
            transport=transport,
        )

    def __repr__(self) -> str:
        return f"ScimClient(base_url={self._shown_base!r})"

    async def __aenter__(self) -> ScimClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- operations ----------------------------------------------------------------------

    async def find_users(self, attribute: str, value: str) -> list[ScimResource]:
        """Users whose ``attribute`` (a mapping target path) equals ``value``.

        ``GET /Users?filter=<attribute> eq "<value>"``, following further pages if the
        target paginates the answer.
        """
        expression = equality_filter(attribute, value)
        found: dict[str, ScimResource] = {}
        while True:
            total, page = await self._search(expression, start=len(found) + 1 if found else None)
            new = {r.id: r for r in page if r.id not in found}
            found.update(new)
            # Stop on a page without news too: a target that ignores startIndex would loop.
            if not new or len(found) >= total:
                return list(found.values())

    async def get_user(self, id: str) -> ScimResource:
        return _resource(await self._call("GET", _user_path(id), ok=(200,)))

    async def create_user(self, body: Mapping[str, Any]) -> ScimResource:
        """``POST /Users``. A retried POST whose first try did land answers 409: callers
        treat ConflictError as "look it up and adopt it"."""
        return _resource(await self._call("POST", "Users", body=body, ok=(200, 201)))

    async def patch_user(self, id: str, operations: list[dict[str, Any]], *,
                         if_match: str | None = None) -> ScimResource | None:
        """Apply a PatchOp; the updated resource when the target returns it (200), else None
        (204). ``if_match`` makes the write conditional on the resource's ETag (412 ->
        ConflictError)."""
        if not operations:
            raise ValueError("a PATCH needs at least one operation; skip the call instead")
        path = _user_path(id)
        body = {"schemas": [PATCH_OP], "Operations": operations}
        headers = {"If-Match": if_match} if if_match else None
        response = await self._call("PATCH", path, body=body, ok=(200, 204), headers=headers)
        if response.status_code == 204 or not response.content.strip():
            return None
        return _resource(response)

    async def delete_user(self, id: str) -> None:
        await self._call("DELETE", _user_path(id), ok=(200, 204))

    async def test_connection(self, matching_attribute: str = "userName") -> None:
        """Entra's check: ``GET /Users?filter=<matching attribute> eq "<random GUID>"`` must
        answer 200 with an empty list. One attempt, no retries; raises a TargetError
        subclass whose message says exactly what failed."""
        expression = equality_filter(matching_attribute, str(uuid.uuid4()))
        try:
            total, page = await self._search(expression, attempts=1)
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

    # -- one request ---------------------------------------------------------------------

    async def _search(self, expression: str, *, start: int | None = None,
                      attempts: int | None = None) -> tuple[int, list[ScimResource]]:
        params = {"filter": expression}
        if start is not None:
            params["startIndex"] = str(start)
        response = await self._call("GET", "Users", params=params, ok=(200,), attempts=attempts)
        return _list_response(response)

    async def _call(self, method: str, path: str, *, ok: tuple[int, ...],
                    params: Mapping[str, str] | None = None, body: Mapping[str, Any] | None = None,
                    headers: Mapping[str, str] | None = None,
                    attempts: int | None = None) -> httpx.Response:
        """Send with retries; the 2xx response in ``ok``, or the mapped TargetError."""
        request = self._http.build_request(
            method, path, params=params, headers=_with_content_type(headers, body),
            content=None if body is None else msgspec.json.encode(body))
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
                    return await self._send_once(request, ok)
                except TargetError as exc:
                    _record_attempts(exc, attempt.num)
                    raise
        raise AssertionError("unreachable: stamina re-raises the last error")  # pragma: no cover

    async def _send_once(self, request: httpx.Request, ok: tuple[int, ...]) -> httpx.Response:
        where = _describe(request)
        started = time.perf_counter()
        try:
            response = await self._http.send(request)
        except httpx.HTTPError as exc:
            metrics.observe_target_request(self._app, request.method, None, time.perf_counter() - started)
            raise self._transport_error(where, exc) from exc
        metrics.observe_target_request(self._app, request.method, response.status_code,
                                       time.perf_counter() - started)
        if response.status_code in ok:
            return response
        raise self._status_error(where, response)

    def _retry_wait(self, exc: Exception) -> bool | float:
        """stamina's hook: retry only TransientError; wait what ``Retry-After`` asked, capped."""
        if not isinstance(exc, TransientError):
            return False
        if exc.retry_after is None:
            return True  # stamina's exponential backoff with jitter
        return min(exc.retry_after, self._backoff.retry_after_cap)

    # -- errors --------------------------------------------------------------------------

    def _transport_error(self, where: str, exc: httpx.HTTPError) -> TargetError:
        if isinstance(exc, httpx.TimeoutException):
            phase = _TIMEOUT_PHASES.get(type(exc), "waiting")
            return TransientError(f"{where}: timed out after {self._timeout:g}s {phase}")
        if isinstance(exc, httpx.UnsupportedProtocol):
            return RejectedError(f"{where}: unsupported URL scheme; use http:// or https://")
        if isinstance(exc, httpx.ConnectError):
            return TransientError(f"{where}: {self._describe_connect_error(exc)}")
        # The connection broke mid-exchange (reset, closed, garbled HTTP): worth a retry.
        return TransientError(f"{where}: {type(exc).__name__}: {self._redact(str(exc))}")

    def _describe_connect_error(self, exc: httpx.ConnectError) -> str:
        default_port = 443 if self._base.scheme == "https" else 80
        host, port = self._base.host, self._base.port or default_port
        for cause in _causes(exc):
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
        message += _status_hint(response)
        error_class = _error_class(status)
        retry_after = (parse_retry_after(response.headers.get("Retry-After"))
                       if error_class is TransientError else None)
        return error_class(self._redact(message), status=status, detail=detail,
                           retry_after=retry_after)

    def _redact(self, text: str) -> str:
        return text.replace(self._token, _REDACTED)



# -- helpers without state ---------------------------------------------------------------


def _check_token(token: str) -> None:
    # Refuse early, and without echoing it, a token httpx would reject as a header value.
    usable = token.isascii() and token.isprintable() and not any(c.isspace() for c in token)
    if not token or not usable:
        raise ValueError("the bearer token must be non-empty printable ASCII without spaces")


def _user_path(id: str) -> str:
    # Quote everything: an id such as "../Groups" must not leave /Users.
    return f"Users/{quote(id, safe='')}"


def _with_content_type(headers: Mapping[str, str] | None,
                       body: Mapping[str, Any] | None) -> dict[str, str]:
    merged = dict(headers or {})
    if body is not None:
        merged["Content-Type"] = SCIM_JSON
    return merged


def _record_attempts(exc: TargetError, attempts: int) -> None:
    # errors.py (not ours) declares no `attempts`; read it back with attempts_of().
    setattr(exc, "attempts", attempts)  # noqa: B010


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


def _status_hint(response: httpx.Response) -> str:
    status = response.status_code
    if status == 401:
        return " (the target refused the bearer token)"
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
    """(detail, scimType) of a SCIM error answer; a trimmed text for anything else."""
    body = _decode(response.content)
    if isinstance(body, dict):
        detail, scim_type = body.get("detail"), body.get("scimType")
        return (str(detail)[:_DETAIL_LIMIT] if detail else None,
                str(scim_type) if scim_type else None)
    if "html" in response.headers.get("Content-Type", "").lower():
        return "an HTML page, not a SCIM error", None
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
    body = _decode(response.content)
    if isinstance(body, dict):
        return body
    content_type = response.headers.get("Content-Type") or "none"
    raise RejectedError(
        f"{_describe(response.request)} -> {response.status_code}: the answer is not SCIM "
        f"JSON (Content-Type: {content_type}); is the base URL the SCIM root?",
        status=response.status_code)


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
    failed = type(exc)(f"test connection failed: {exc}{hint}", status=exc.status,
                       detail=exc.detail, retry_after=exc.retry_after)
    _record_attempts(failed, attempts_of(exc))
    return failed


def client_for(app: Application, loaded: LoadedConfig, settings: Settings) -> ScimClient:
    """The client of one configured application, with its credentials resolved."""
    target = app.target
    if target.token is None:
        raise ConfigError(f"application {app.name}: OAuth2 client credentials are not supported yet",
                          file=loaded.file)
    return ScimClient(target.base_url, loaded.secret(target.token).reveal(), timeout=target.timeout,
                      max_connections=target.max_connections, attempts=settings.target_attempts,
                      app=app.name)
