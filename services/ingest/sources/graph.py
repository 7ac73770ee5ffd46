"""The Microsoft Graph source: Entra ID users and groups through delta queries.

Microsoft's documented protocol, which this module follows and ``tests/support/graph_server.py``
reproduces for the tests:

- user: delta, https://learn.microsoft.com/en-us/graph/api/user-delta
- group: delta, https://learn.microsoft.com/en-us/graph/api/group-delta
- delta query overview, https://learn.microsoft.com/en-us/graph/delta-query-overview
- delta query for groups, https://learn.microsoft.com/en-us/graph/delta-query-groups
- client credentials, https://learn.microsoft.com/en-us/entra/identity-platform/v2-oauth2-client-creds-grant-flow
- throttling, https://learn.microsoft.com/en-us/graph/throttling

A *round* of one collection starts at ``/users/delta?$select=...`` (from scratch) or at the
last ``@odata.deltaLink``; it follows ``@odata.nextLink`` pages until a page carries a new
``@odata.deltaLink``. From scratch a round returns every object; from a deltaLink only what
changed since: changed objects with their selected properties, removed ones as
``{"id": ..., "@removed": {"reason": "changed" | "deleted"}}``. Groups carry
``members@delta``: member references (``{"@odata.type": "#microsoft.graph.user", "id": ...}``),
with ``@removed`` on a member that left; a large group may come back on several pages, each
with part of its members.

The source keeps an index of what it has seen (users' properties, groups' properties and
members), because a DirectoryChange carries an object's whole state and a user's group
memberships: a membership change upserts the group and each user who joined or left it.
The position is both deltaLinks (JSON), stored after each round whose changes are on the
topic. A restarted ingest first fills the index with a fresh enumeration (publishing
nothing), then resumes from the stored deltaLinks, so only what changed is published.

HTTP: app-only OAuth2 client credentials (:class:`services.runtime.http.ClientCredentials`, as
for SCIM targets: a plain RFC 6749 POST to the token endpoint; the token is cached until
shortly before it expires and refreshed on a 401); 429, 500 and 502-504 are retried after
``Retry-After`` (delay-seconds or an HTTP-date, at most five minutes) or, when Graph does not
say, after an exponential backoff with jitter (:func:`services.runtime.http.backoff_delay`),
so sources throttled together do not come back together; 410 Gone (the sync state expired:
Graph's "sync reset") makes the source enumerate from scratch, upserting everything and
deleting what disappeared. Links the server returns are followed only if they point at the
configured Graph URL, so the token is never sent elsewhere.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import structlog

from services.ingest.objects import ObjectType, Snapshot, SourceObject
from services.ingest.sources.base import (
    DirectorySource,
    OnChange,
    OnPosition,
    Operation,
    SourceError,
    SourceUnavailableError,
)
from services.runtime.config import GraphSource
from services.runtime.errors import TargetError, TransientError
from services.runtime.http import ClientCredentials, backoff_delay, parse_retry_after

__all__ = [
    "DEFAULT_GROUP_ATTRIBUTES",
    "DEFAULT_USER_ATTRIBUTES",
    "GraphDirectory",
    "GraphIndex",
    "GraphSourceError",
    "GraphUnavailableError",
    "delta_url",
    "group_attributes",
    "token_endpoint",
    "user_attributes",
]

log = structlog.get_logger("scimflow.ingest.graph")

DEFAULT_USER_ATTRIBUTES = (
    "userPrincipalName", "displayName", "givenName", "surname", "mail", "mailNickname", "jobTitle",
    "department", "employeeId", "accountEnabled", "officeLocation", "mobilePhone", "businessPhones",
    "preferredLanguage", "usageLocation", "city", "country", "companyName",
)
DEFAULT_GROUP_ATTRIBUTES = ("displayName", "description", "mail", "mailNickname", "securityEnabled",
                            "mailEnabled")
_MEMBER_TYPES = {"#microsoft.graph.user": "user", "#microsoft.graph.group": "group"}
_RETRY_STATUS = {429, 500, 502, 503, 504}
_RETRY_AFTER_CAP = 300.0  # longest Retry-After honoured (seconds)
_BACKOFF_INITIAL = 1.0  # first backoff step when Graph gives no Retry-After; doubles each time
_BACKOFF_MAX = 30.0


def token_endpoint(settings: GraphSource) -> str:
    """The configured token URL, or the tenant's v2.0 endpoint at login.microsoftonline.com."""
    default = f"https://login.microsoftonline.com/{quote(settings.tenant_id)}/oauth2/v2.0/token"
    return settings.token_url or default


def user_attributes(settings: GraphSource) -> tuple[str, ...]:
    return tuple(settings.user_attributes or DEFAULT_USER_ATTRIBUTES)


def group_attributes(settings: GraphSource) -> tuple[str, ...]:
    return tuple(settings.group_attributes or DEFAULT_GROUP_ATTRIBUTES)


def delta_url(settings: GraphSource, kind: ObjectType) -> str:
    """Where a round of ``kind`` starts from scratch, with the properties to ``$select``."""
    if kind == "user":
        select = ["id", *(a for a in user_attributes(settings) if a != "id")]
        return f"{settings.graph_url.rstrip('/')}/users/delta?$select={','.join(select)}"
    select = ["id", *(a for a in group_attributes(settings) if a not in ("id", "members")), "members"]
    return f"{settings.graph_url.rstrip('/')}/groups/delta?$select={','.join(select)}"


class GraphSourceError(SourceError):
    """Graph or the token endpoint refused what we asked (credentials, permissions, a bad
    property name): retrying will not help."""

    code = "GraphSourceFailed"
    recommended_action = ("Check the Graph source's tenant_id, client_id, client_secret and property "
                          "lists, and that the app has the User.Read.All and GroupMember.Read.All "
                          "application permissions with admin consent.")


class GraphUnavailableError(GraphSourceError, SourceUnavailableError):
    """Graph could not be reached, or kept throttling us; worth retrying."""

    code = "GraphUnavailable"
    recommended_action = "None needed if it recovers; otherwise check the network path to Graph."


class _ResyncRequiredError(GraphSourceError):
    """410 Gone: the delta token is no longer valid; enumerate from scratch."""


# -- the index (pure) ---------------------------------------------------------------------------


class GraphIndex:
    """Users and groups as the delta rounds described them; turns an item into the ids it changes."""

    def __init__(self) -> None:
        self.users: dict[str, dict[str, Any]] = {}
        self.groups: dict[str, dict[str, Any]] = {}
        self.members: dict[str, set[str]] = {}  # group id -> member ids (users and groups)
        self.member_of: dict[str, set[str]] = {}  # member id -> group ids
        self.blind = False
        """The index was filled from a fresh enumeration, and the round being applied is the
        stored deltaLinks' catch-up: a removal of an unknown id, or a member the index already
        lists, is still a change downstream has not seen."""

    def ids(self) -> set[tuple[ObjectType, str]]:
        return {("user", u) for u in self.users} | {("group", g) for g in self.groups}

    def apply_user(self, item: dict[str, Any]) -> list[tuple[Operation, ObjectType, str]]:
        """Apply one ``/users/delta`` item; the changes it makes, the user's first."""
        uid = str(item["id"])
        if "@removed" in item:
            if self.users.pop(uid, None) is None:
                return [("delete", "user", uid)] if self.blind else []
            groups = sorted(self.member_of.pop(uid, set()))
            for gid in groups:
                self.members.get(gid, set()).discard(uid)
            return [("delete", "user", uid), *(("upsert", "group", g) for g in groups)]
        known = uid in self.users
        self.users.setdefault(uid, {"id": uid}).update(_properties(item))
        if known:
            return [("upsert", "user", uid)]
        # A round reads users, then groups: a user made between the two reads is listed by a
        # group before the index knows it, and that group went out without it. Send it again.
        listing = sorted(g for g in self.member_of.get(uid, ()) if g in self.groups)
        return [("upsert", "user", uid), *(("upsert", "group", g) for g in listing)]

    def apply_group(self, item: dict[str, Any]) -> list[tuple[Operation, ObjectType, str]]:
        """Apply one ``/groups/delta`` item (possibly one page's share of a large group's members)."""
        gid = str(item["id"])
        if "@removed" in item:
            if self.groups.pop(gid, None) is None:
                return [("delete", "group", gid)] if self.blind else []
            members = sorted(self.members.pop(gid, set()))
            for member in members:
                self.member_of.get(member, set()).discard(gid)
            return [("delete", "group", gid), *(("upsert", "user", m) for m in members if m in self.users)]
        self.groups.setdefault(gid, {"id": gid}).update(_properties(item))
        changes: list[tuple[Operation, ObjectType, str]] = [("upsert", "group", gid)]
        for ref in item.get("members@delta") or []:
            kind = _MEMBER_TYPES.get(str(ref.get("@odata.type", "")))
            if kind is None or "id" not in ref:
                continue  # devices, service principals, contacts: not provisioned
            member = str(ref["id"])
            changed = self._set_member(gid, member, present="@removed" not in ref)
            if (changed or self.blind) and kind == "user":
                changes.append(("upsert", "user", member))
        return changes

    def object(self, kind: ObjectType, oid: str) -> SourceObject | None:
        if kind == "user":
            attrs = self.users.get(oid)
            if attrs is None:
                return None
            groups = tuple(sorted(g for g in self.member_of.get(oid, ()) if g in self.groups))
            return SourceObject("user", oid, dict(attrs), memberships=groups)
        attrs = self.groups.get(oid)
        if attrs is None:
            return None
        members = tuple(sorted(m for m in self.members.get(oid, ()) if m in self.users or m in self.groups))
        return SourceObject("group", oid, dict(attrs), members=members)

    def snapshot(self) -> Snapshot:
        objects = (self.object(kind, oid) for kind, oid in self.ids())
        return {obj.key: obj for obj in objects if obj is not None}

    def _set_member(self, gid: str, member: str, *, present: bool) -> bool:
        members = self.members.setdefault(gid, set())
        if present == (member in members):
            return False
        if present:
            members.add(member)
            self.member_of.setdefault(member, set()).add(gid)
        else:
            members.discard(member)
            self.member_of.get(member, set()).discard(gid)
        return True


def _properties(item: dict[str, Any]) -> dict[str, Any]:
    """An item's properties, without OData annotations and delta-only fields."""
    return {k: v for k, v in item.items() if "@" not in k and not k.startswith("@")}


def encode_position(links: dict[str, str]) -> bytes:
    return json.dumps(links, sort_keys=True).encode()


def decode_position(position: bytes | None) -> dict[str, str] | None:
    """Both deltaLinks from a stored position; None (start from scratch) if it is not one."""
    if position is None:
        return None
    try:
        links = json.loads(position)
    except ValueError:
        return None
    if not isinstance(links, dict) or not all(isinstance(links.get(k), str) for k in ("user", "group")):
        return None
    return {"user": links["user"], "group": links["group"]}


# -- HTTP ------------------------------------------------------------------------------------


class _GraphClient:
    """Authenticated GETs against Graph: token caching, Retry-After, errors as ours."""

    def __init__(self, settings: GraphSource, client_secret: str,
                 http: httpx.AsyncClient | None = None) -> None:
        self.settings = settings
        self.http = http or httpx.AsyncClient(timeout=settings.timeout)
        self._credentials = ClientCredentials(token_endpoint(settings), settings.client_id,
                                              client_secret, settings.scope, http=self.http)
        origin = urlsplit(settings.graph_url)
        self._origin = (origin.scheme, origin.netloc)

    async def close(self) -> None:
        await self._credentials.aclose()
        await self.http.aclose()

    async def get(self, url: str, *, missing_ok: bool = False) -> dict[str, Any] | None:
        """GET one page or object; None for a 404 when ``missing_ok``."""
        self._check_link(url)
        refreshed = False
        for attempt in range(self.settings.max_retries + 1):
            response = await self._send(url)
            if response.status_code == 401 and not refreshed:
                refreshed = True  # expired or revoked: one fresh token
                await self._renew(response.request.headers.get("Authorization", ""))
                continue
            if response.status_code in _RETRY_STATUS and attempt < self.settings.max_retries:
                wait = _retry_wait(response, attempt)
                log.info("graph asked us to wait", status=response.status_code, retry_in=wait)
                await asyncio.sleep(wait)
                continue
            return self._result(url, response, missing_ok=missing_ok)
        raise GraphUnavailableError(f"Graph GET {_path(url)}: still failing after "
                                    f"{self.settings.max_retries} retries")

    async def _send(self, url: str) -> httpx.Response:
        headers = {"Authorization": await self._authorization(), "Accept": "application/json"}
        if self.settings.page_size:
            headers["Prefer"] = f"odata.maxpagesize={self.settings.page_size}"
        try:
            return await self.http.get(url, headers=headers)
        except httpx.TransportError as exc:
            raise GraphUnavailableError(f"Graph GET {_path(url)}: {type(exc).__name__}: {exc}") from None

    def _result(self, url: str, response: httpx.Response, *, missing_ok: bool) -> dict[str, Any] | None:
        status = response.status_code
        if status == 404 and missing_ok:
            return None
        if status == 410:
            raise _ResyncRequiredError(f"Graph GET {_path(url)}: 410 {_graph_error(response)}")
        if status in _RETRY_STATUS:
            raise GraphUnavailableError(f"Graph GET {_path(url)}: {status} {_graph_error(response)}")
        if status >= 400:
            raise GraphSourceError(f"Graph GET {_path(url)}: {status} {_graph_error(response)}")
        try:
            body = response.json()
        except ValueError:
            raise GraphSourceError(f"Graph GET {_path(url)}: the response is not JSON") from None
        if not isinstance(body, dict):
            raise GraphSourceError(f"Graph GET {_path(url)}: expected a JSON object")
        return body

    async def _authorization(self) -> str:
        """The ``Authorization`` header: the cached token, or a new one from the token endpoint."""
        try:
            return await self._credentials.authorization()
        except TargetError as exc:
            raise _token_error(exc) from exc

    async def _renew(self, rejected: str) -> None:
        """Graph refused ``rejected`` (a header value): fetch a new token unless one already was."""
        try:
            await self._credentials.refresh(rejected)
        except TargetError as exc:
            raise _token_error(exc) from exc

    def _check_link(self, url: str) -> None:
        parts = urlsplit(url)
        if (parts.scheme, parts.netloc) != self._origin:
            raise GraphSourceError(f"Graph returned a link outside {self.settings.graph_url}; not followed")


def _retry_wait(response: httpx.Response, attempt: int) -> float:
    """Seconds to wait before retrying after failed ``attempt`` (0-based): what Graph's
    ``Retry-After`` asks (capped), as Microsoft's throttling guidance says, else the jittered
    exponential backoff."""
    asked = parse_retry_after(response.headers.get("Retry-After"))
    if asked is not None:
        return min(_RETRY_AFTER_CAP, asked)
    return backoff_delay(attempt + 1, _BACKOFF_INITIAL, _BACKOFF_MAX)


def _token_error(exc: TargetError) -> GraphSourceError:
    """A token endpoint failure as the source's error: worth retrying, or not (credentials,
    a refused client, an unusable answer). The message holds no secret."""
    kind = GraphUnavailableError if isinstance(exc, TransientError) else GraphSourceError
    return kind(str(exc))


def _json_or_empty(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _graph_error(response: httpx.Response) -> str:
    error = _json_or_empty(response).get("error")
    if isinstance(error, dict):
        return f"{error.get('code', '')}: {error.get('message', '')}".strip(": ")
    return response.reason_phrase


def _path(url: str) -> str:
    return urlsplit(url).path  # tokens in the query string stay out of messages


# -- the source ---------------------------------------------------------------------------------


Change = tuple[Operation, ObjectType, str]


class GraphDirectory(DirectorySource):
    """An Entra ID tenant read through Graph delta queries; the position is both deltaLinks."""

    def __init__(self, settings: GraphSource, client_secret: str, *,
                 http: httpx.AsyncClient | None = None) -> None:
        """``client_secret`` is the resolved secret (``settings.client_secret`` is only its reference)."""
        self.name = settings.name
        self.settings = settings
        self.full_scan_interval = settings.full_scan_interval
        self.reconnect_initial = min(1.0, settings.poll_interval)
        self.reconnect_max = max(30.0, settings.poll_interval)
        self.client = _GraphClient(settings, client_secret, http)
        self.index = GraphIndex()
        self.links: dict[str, str] | None = None
        self._seeded = False
        self.rounds = 0
        """Completed incremental rounds (tests wait for them)."""

    async def start(self, position: bytes | None) -> None:
        self.links = decode_position(position)
        log.info("graph source starting", source=self.name, graph_url=self.settings.graph_url,
                 resumed=self.links is not None)

    async def scan(self) -> Snapshot:
        index = GraphIndex()
        await self._enumerate(index, None)
        return index.snapshot()

    async def watch(self, on_change: OnChange, on_position: OnPosition) -> None:
        while True:
            await self.sync(on_change, on_position)
            await asyncio.sleep(self.settings.poll_interval)

    async def sync(self, on_change: OnChange, on_position: OnPosition) -> None:
        """One round: from scratch without deltaLinks, else what changed since them."""
        if self.links is not None and not self._seeded:
            await self._seed()
        try:
            changes, links = await self._round(self.links)
        except _ResyncRequiredError as exc:
            log.warning("graph sync state expired; enumerating from scratch", source=self.name,
                        reason=str(exc))
            changes, links = await self._resync()
        await self._emit(changes, on_change)
        self.index.blind = False
        if links != self.links:
            await on_position(encode_position(links))
            self.links = links
        self._seeded = True
        self.rounds += 1

    async def fetch(self, object_id: str, object_type: ObjectType) -> SourceObject | None:
        """GET ``/users/{id}`` or ``/groups/{id}`` now; relations as the index knows them."""
        s = self.settings
        collection, select = (("users", user_attributes(s)) if object_type == "user"
                              else ("groups", group_attributes(s)))
        url = f"{s.graph_url.rstrip('/')}/{collection}/{quote(object_id)}?$select={','.join(('id', *select))}"
        body = await self.client.get(url, missing_ok=True)
        if body is None:
            return None
        known = self.index.object(object_type, object_id)
        attrs = {"id": object_id, **_properties(body)}
        if known is None:
            return SourceObject(object_type, object_id, attrs)
        return SourceObject(object_type, object_id, attrs, memberships=known.memberships,
                            members=known.members)

    async def close(self) -> None:
        await self.client.close()

    async def _seed(self) -> None:
        """Fill the index from a fresh enumeration before resuming (publishes nothing)."""
        index = GraphIndex()
        await self._enumerate(index, None)
        index.blind = True
        self.index = index
        log.info("graph index filled before resuming", source=self.name, users=len(index.users),
                 groups=len(index.groups))

    async def _round(self, links: dict[str, str] | None) -> tuple[list[Change], dict[str, str]]:
        if links is None:
            self.index = GraphIndex()
        return await self._enumerate(self.index, links)

    async def _resync(self) -> tuple[list[Change], dict[str, str]]:
        old, self.index = self.index, GraphIndex()
        changes, links = await self._enumerate(self.index, None)
        gone = old.ids() - self.index.ids()
        return [*changes, *(("delete", kind, oid) for kind, oid in sorted(gone))], links

    async def _enumerate(self, index: GraphIndex, links: dict[str, str] | None) -> tuple[list[Change],
                                                                                          dict[str, str]]:
        """Read every page of both collections, then apply them: users first, so that group
        members resolve. Nothing is applied if a page fails (the round is simply repeated)."""
        kinds: tuple[ObjectType, ObjectType] = ("user", "group")
        read = {kind: await self._pages(links[kind] if links else delta_url(self.settings, kind))
                for kind in kinds}
        changes: list[Change] = []
        for item in read["user"][0]:
            changes.extend(index.apply_user(item))
        for item in read["group"][0]:
            changes.extend(index.apply_group(item))
        return changes, {kind: read[kind][1] for kind in kinds}

    async def _pages(self, url: str) -> tuple[list[dict[str, Any]], str]:
        items: list[dict[str, Any]] = []
        next_url: str | None = url
        while next_url is not None:
            page = await self.client.get(next_url)
            if page is None:  # get returns None only with missing_ok
                raise GraphSourceError(f"Graph GET {_path(next_url)}: not found")
            value = page.get("value")
            if not isinstance(value, list):
                raise GraphSourceError(f"Graph GET {_path(next_url)}: the page has no `value` list")
            items.extend(v for v in value if isinstance(v, dict) and "id" in v)
            if "@odata.deltaLink" in page:
                return items, str(page["@odata.deltaLink"])
            next_url = page.get("@odata.nextLink")
        raise GraphSourceError(f"Graph GET {_path(url)}: a page had neither nextLink nor deltaLink")

    async def _emit(self, changes: Iterable[Change], on_change: OnChange) -> None:
        """Each changed object once, in its latest state (a deletion as its id)."""
        latest: dict[tuple[ObjectType, str], Operation] = {}
        for op, kind, oid in changes:
            latest.pop((kind, oid), None)
            latest[(kind, oid)] = op
        for (kind, oid), op in latest.items():
            if op == "delete":
                if self.index.object(kind, oid) is None:
                    await on_change("delete", SourceObject(kind, oid, {}))
                continue
            obj = self.index.object(kind, oid)
            if obj is not None:
                await on_change("upsert", obj)
