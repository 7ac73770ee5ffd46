"""Async SCIM 2.0 client for one target application: the verbs the writer and the admin API's
test connection call, on ``/Users``, ``/Groups`` and the documents beside them.

One :class:`ScimClient` per target app. Its verbs build what they send (a PatchOp from the
changed attributes in the app's dialect, a PUT body read-modify-written from the resource as
the target holds it, member deltas; see :mod:`services.scim.paths`) and hand it to the
app's :class:`~services.scim._transport.Transport`, which sends it through the quarantine
gate, a rate-limit slot and the credentials, retries it and turns failures into errors.
Every outcome a caller sees is a :class:`ScimResource` or an error of
``services.runtime.errors``, classified by what the writer does next
(:mod:`services.scim.errors` holds the table).

What targets do differently is handled here: paging by what each page really held,
PATCH chunked to ``max_patch_operations``, PUT (remembered) for a target that answers
405/501 to PATCH, one re-read and retry after a 412, and Entra's test connection.
"""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Final, Literal
from urllib.parse import quote

import httpx
import msgspec
import structlog

from services.runtime.config import Application, LoadedConfig, Quarantine, RateLimit
from services.runtime.errors import (
    ConfigError,
    ConflictError,
    RejectedError,
    TargetError,
    TransientError,
)
from services.runtime.http import ClientCredentials
from services.runtime.settings import Settings
from services.scim._transport import RETRY_AFTER_CAP, SCIM_JSON, Backoff, Transport, retry_after_raised
from services.scim.auth import Auth, BearerToken
from services.scim.errors import decode_json, describe, first_bytes
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
    "retry_after_raised",
]

Kind = Literal["user", "group"]
_ENDPOINTS: Final[dict[str, str]] = {"user": "Users", "group": "Groups"}
_PATCH_UNSUPPORTED = (405, 501)

log = structlog.get_logger("scimflow.writer")

_CONNECTION_HINTS = {
    404: ("; check the application's base URL: it must be the SCIM root that /Users hangs "
          "off (e.g. https://app.example.com/scim/v2), without /Users"),
}


class ScimResource(msgspec.Struct, frozen=True, kw_only=True):
    """A resource as the target returned it; ``etag`` is its version, when the target has one."""

    id: str
    body: dict[str, Any]
    etag: str | None = None


def attempts_of(exc: BaseException) -> int:
    """How many attempts the client made before raising ``exc`` (1 if it did not record it)."""
    value = getattr(exc, "attempts", 1)
    return value if isinstance(value, int) else 1


class ScimClient:
    """SCIM 2.0 calls on one target's ``/Users`` and ``/Groups``, over one connection pool.

    ``auth`` is a static bearer token (a ``str``) or an :class:`~services.scim.auth.Auth`.
    ``rate_limit`` and ``quarantine`` (the app's config) turn on adaptive limits and the
    quarantine gate; left None (tools, most tests) there is neither.
    """

    def __init__(self, base_url: str, auth: Auth | str, *, timeout: float = 10.0,
                 max_connections: int = 32, attempts: int = 5, backoff: Backoff | None = None,
                 transport: httpx.AsyncBaseTransport | None = None, app: str = "",
                 dialect: Literal["rfc7644", "entra"] = "rfc7644",
                 update_method: Literal["patch", "put"] = "patch", max_patch_operations: int = 100,
                 page_size: int | None = None, rate_limit: RateLimit | None = None,
                 quarantine: Quarantine | None = None) -> None:
        if attempts < 1:
            raise ValueError(f"attempts must be at least 1, not {attempts}")
        if max_patch_operations < 1:
            raise ValueError(f"max_patch_operations must be at least 1, not {max_patch_operations}")
        self._app = app  # the metrics label; "" when used outside a writer (tests, tools)
        self.dialect = dialect
        self.max_patch_operations = max_patch_operations
        self.page_size = page_size
        self.uses_put = update_method == "put"
        """PUT instead of PATCH for updates: configured, or learnt from a 405/501 to PATCH."""
        self.limiter = (RateLimiter(rate_limit.max_concurrency, rate_limit.max_requests_per_second,
                                    per_operation=rate_limit.per_operation(), app=app)
                        if rate_limit is not None else None)
        self.quarantine = QuarantineGate(quarantine or Quarantine(), app=app, probe=self._probe)
        self._transport = Transport(
            httpx.URL(base_url.rstrip("/") + "/"), BearerToken(auth) if isinstance(auth, str) else auth,
            timeout=timeout, max_connections=max_connections, attempts=attempts,
            backoff=backoff or Backoff(), app=app, limiter=self.limiter, gate=self.quarantine,
            quarantining=quarantine is not None, transport=transport)
        self._shown_base = self._transport.shown_base

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
        await self._transport.aclose()

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
        gives a partial listing, and absence from it proves nothing). ``Retry-After`` is
        waited out here even within :func:`retry_after_raised`: a listing has nothing to
        re-queue, and one cut short costs a lookup per object."""
        with retry_after_raised(False):
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
        """``POST /<Kind>``, retried only when the failure proves it did not land; after a
        failure that does not (a lost answer), OutcomeUnknownError (a TransientError): the
        caller looks the object up before creating it again. A 409 means it exists:
        callers treat ConflictError as "look it up and adopt it"."""
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
        """One request, as built here, through the transport (gate, slot, credentials,
        retries); the 2xx response in ``ok``, or the TargetError. ``direct`` calls (test
        connection, quarantine probes) skip the gate and do not count in its window."""
        return await self._transport.call(method, path, ok=ok, params=params, body=body,
                                          headers=headers, attempts=attempts, direct=direct)

    def _redact(self, text: str) -> str:
        return self._transport.redact(text)


# -- helpers without state ---------------------------------------------------------------


def _path(kind: Kind, id: str) -> str:
    # Quote everything: an id such as "../Groups" must not leave its endpoint.
    return f"{_ENDPOINTS[kind]}/{quote(id, safe='')}"


def _as_resource(id: str, body: Mapping[str, Any]) -> ScimResource:
    """A resource body the caller kept, with the version its ``meta`` holds as the ETag."""
    meta = body.get("meta")
    version = meta.get("version") if isinstance(meta, Mapping) else None
    return ScimResource(id=id, body=dict(body), etag=version if isinstance(version, str) else None)


def _json_object(response: httpx.Response) -> dict[str, Any]:
    """The JSON object of a successful answer. Anything else (an HTML page from a proxy,
    truncated JSON) is transient: retried with backoff, then escrowed. The message says what
    came back, without guessing why."""
    body = decode_json(response.content)
    if isinstance(body, dict):
        return body
    content_type = response.headers.get("Content-Type") or "none"
    what = "JSON that is not an object" if body is not None else "not JSON"
    raise TransientError(
        f"{describe(response.request)} -> {response.status_code} with a body that is {what} "
        f"(Content-Type: {content_type}, {len(response.content)} bytes, starting "
        f"{first_bytes(response.content)})",
        status=response.status_code)


def _members_of(resource: Mapping[str, Any]) -> builtins.list[dict[str, Any]]:
    """A group's ``members`` as the target returned them (case-insensitive attribute name)."""
    value = next((v for k, v in resource.items() if isinstance(k, str) and k.lower() == "members"), None)
    return [m for m in value if isinstance(m, dict)] if isinstance(value, builtins.list) else []


def _resource(response: httpx.Response) -> ScimResource:
    return _to_resource(response, _json_object(response), response.headers.get("ETag"))


def _to_resource(response: httpx.Response, body: dict[str, Any], etag: str | None) -> ScimResource:
    resource_id = body.get("id")
    if not isinstance(resource_id, str) or not resource_id:
        raise RejectedError(f"{describe(response.request)} -> {response.status_code}: the "
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
        raise RejectedError(f"{describe(response.request)} -> {response.status_code}: the "
                            "answer is JSON but not a "
                            "SCIM ListResponse (no totalResults/Resources)",
                            status=response.status_code)
    resources = [_to_resource(response, item, None)
                 for item in items if isinstance(item, dict)]
    return (total if isinstance(total, int) else len(resources)), resources


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
                        retry_after_cap=min(RETRY_AFTER_CAP, retries.max_wait)),
        dialect=target.dialect, update_method=target.update_method,
        max_patch_operations=target.max_patch_operations, page_size=target.page_size,
        rate_limit=target.rate_limit, quarantine=target.quarantine)
