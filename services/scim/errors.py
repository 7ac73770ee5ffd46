"""THE place where a SCIM target's HTTP status becomes a scimflow error, and how that error
tells what the target said.

A single call (:mod:`services.scim._transport`) and each operation of a ``/Bulk`` request
(``services.writer.bulk``) are classified by the same table, by what the writer does next:

======================================  ==========================================
408, 429, 5xx (not 501)                 ``TransientError`` (retried, with ``Retry-After``)
401, 403 (after one token refresh)      ``CredentialsError`` (app quarantined at once)
404                                     ``NotFoundError``
409, 412                                ``ConflictError`` (look up and reconcile)
3xx, 501, other 4xx                     ``RejectedError`` with the target's ``detail``
======================================  ==========================================

Network errors and timeouts are TransientErrors too (the transport says which phase
failed); a successful answer whose body is not the JSON object it should be is transient as
well (an HTML page from a proxy), while JSON of the wrong shape is rejected. Messages carry
the target's ``detail`` and ``scimType``, trimmed; credentials are redacted by the caller's
``redact``, and URLs are shown without userinfo or query (the query holds searched values).
"""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus

import httpx
import msgspec

from services.runtime.errors import (
    ConflictError,
    CredentialsError,
    NotFoundError,
    RejectedError,
    TargetError,
    TransientError,
)
from services.runtime.http import parse_retry_after

__all__ = ["NotSentError", "OutcomeUnknownError", "decode_json", "describe", "error_class", "first_bytes",
           "not_landed", "shown", "status_error"]

_DETAIL_LIMIT = 500


class NotSentError(TransientError):
    """The request never reached the target: the connection could not be made (refused,
    DNS, TLS, connect timeout, no free pooled connection). Safe to send again, even a create."""


class OutcomeUnknownError(TransientError):
    """A create (POST) was sent but its answer was lost (read timeout, connection reset
    after sending, a 5xx that does not say the request was refused): it may have landed.
    Not retried inside the call, since a target without a uniqueness constraint would get
    two accounts; the writer looks the object up before any new create (``_unsure``)."""

    code = "OutcomeUnknown"
    recommended_action = "None needed: scimflow looks the object up before creating it again."


def not_landed(error: TargetError) -> bool:
    """Whether ``error`` proves the request was not applied, so even a create may be sent
    again: it never left (NotSentError), or the target refused it without handling it:
    408 (it did not receive the whole request, RFC 9110 §15.5.9), 429 (rate limited,
    RFC 6585 §4), or 503 *with* Retry-After (deliberate load shedding, RFC 9110 §15.6.4).
    A bare 503 is not enough: proxies answer it when the upstream dropped the connection
    after reading the request (Envoy's "reset before headers"). RFC 7644 §3.12 lists no
    retry semantics of its own, so HTTP's apply."""
    if isinstance(error, NotSentError):
        return True
    if error.status in (408, 429):
        return True
    return error.status == 503 and error.retry_after is not None


def error_class(status: int) -> type[TargetError]:
    """The TargetError subclass of an HTTP ``status`` that is not a success: the table."""
    if status in (401, 403):
        return CredentialsError
    if status == 404:
        return NotFoundError
    if status in (409, 412):  # 412: our If-Match lost a race: re-read and reconcile
        return ConflictError
    if status in (408, 429) or (status >= 500 and status != 501):
        return TransientError  # 501: the target does not implement it; a retry won't help
    return RejectedError


def status_error(where: str, response: httpx.Response, *, redact: Callable[[str], str],
                 oauth2: bool) -> TargetError:
    """The error of an answer whose status is not the expected one: its class from the
    table, what the target said (redacted), a hint for statuses with a usual cause, and the
    ``Retry-After`` of a transient one."""
    status = response.status_code
    detail, scim_type = _scim_error(response)
    detail = redact(detail) if detail else None
    message = f"{where} -> {status} {_reason(response)}"
    message += f" [{scim_type}]" if scim_type else ""
    message += f": {detail}" if detail else ""
    if detail is None and response.content.strip():
        content_type = response.headers.get("Content-Type") or "none"
        message += (f" (answered with Content-Type {content_type}, starting "
                    f"{redact(first_bytes(response.content))})")
    message += _status_hint(response, oauth2=oauth2)
    kind = error_class(status)
    retry_after = (parse_retry_after(response.headers.get("Retry-After"))
                   if kind is TransientError else None)
    return kind(redact(message), status=status, detail=detail, retry_after=retry_after)


def shown(url: httpx.URL) -> str:
    """A URL fit for messages: no userinfo, no query (it holds searched values)."""
    return str(url.copy_with(userinfo=b"", query=None))


def describe(request: httpx.Request) -> str:
    """``METHOD url`` of a request, fit for messages."""
    return f"{request.method} {shown(request.url)}"


def first_bytes(content: bytes, limit: int = 80) -> str:
    """The start of a body, quoted, for a message about an answer that is not what it should be."""
    text = content[:limit].decode("utf-8", "replace")
    return repr(" ".join(text.split())) + ("..." if len(content) > limit else "")


def decode_json(content: bytes) -> object:
    """The JSON value of a body; None when it is not JSON."""
    try:
        return msgspec.json.decode(content)
    except msgspec.DecodeError:
        return None


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
    body = decode_json(response.content)
    if isinstance(body, dict):
        detail, scim_type = body.get("detail"), body.get("scimType")
        return (str(detail)[:_DETAIL_LIMIT] if detail else None,
                str(scim_type) if scim_type else None)
    if "html" in response.headers.get("Content-Type", "").lower():
        return None, None
    text = " ".join(response.text.split())
    return (text[:_DETAIL_LIMIT] or None), None
