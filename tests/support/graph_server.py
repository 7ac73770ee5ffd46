"""A local Microsoft Graph for tests: the delta query protocol over real HTTP (aiohttp, in a thread).

It follows Microsoft's documented shapes (the same pages ``services/ingest/sources/graph.py``
cites): ``GET /v1.0/users/delta`` and ``/v1.0/groups/delta`` with ``$select``; pages of
``page_size`` objects (or ``Prefer: odata.maxpagesize``) linked by ``@odata.nextLink``
(``$skiptoken``), the last one carrying ``@odata.deltaLink`` (``$deltatoken``); from a
deltaLink only what changed since: changed objects with their selected properties,
removed ones as ``{"id", "@removed": {"reason": "changed"|"deleted"}}``; groups with
``members@delta`` (``{"@odata.type": "#microsoft.graph.user", "id"}``, ``"@removed":
{"reason": "deleted"}`` on a member that left) when ``members`` is selected, a large
group's members split over several items; ``GET /v1.0/users/{id}`` and ``/groups/{id}``;
app-only tokens from ``POST /{tenant}/oauth2/v2.0/token`` (client credentials). On demand:
429 with ``Retry-After`` (``throttle``), 410 Gone for every deltaLink issued so far
(``expire_delta_tokens``: Graph's sync reset), 401 for every token issued so far
(``revoke_tokens``).
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from services.devstack.processes import free_port

__all__ = ["FakeGraph", "start_graph_server"]

_USER = "#microsoft.graph.user"
_GROUP = "#microsoft.graph.group"


@dataclass
class _Event:
    seq: int
    kind: str  # "user", "group" or "member"
    oid: str
    removed: str | None = None  # the @removed reason
    member: str | None = None
    member_type: str | None = None


@dataclass
class _Session:
    items: list[dict[str, Any]]
    collection: str
    seq: int
    select: list[str] | None


@dataclass
class FakeGraph:
    """The tenant's state, its change log, and the knobs tests turn."""

    port: int
    tenant_id: str = "contoso-tenant"
    client_id: str = "scimflow-app"
    client_secret: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    page_size: int = 100
    member_chunk: int = 20
    """Members per group item in an enumeration; a larger group spans several items."""
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)
    members: dict[str, dict[str, str]] = field(default_factory=dict)  # group -> member -> @odata.type
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path?query)
    throttled: list[float] = field(default_factory=list)
    _log: list[_Event] = field(default_factory=list)
    _seq: int = 0
    _sessions: dict[str, _Session] = field(default_factory=dict)
    _delta_tokens: dict[str, tuple[str, int, list[str] | None]] = field(default_factory=dict)
    _tokens: set[str] = field(default_factory=set)
    _throttle: int = 0
    _retry_after: int = 1
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1.0"

    @property
    def token_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{self.tenant_id}/oauth2/v2.0/token"

    # -- changing the tenant -----------------------------------------------------------------

    def add_user(self, **props: Any) -> str:
        oid = str(props.pop("id", None) or uuid.uuid4())
        with self.lock:
            self.users[oid] = {"id": oid, **props}
            self._record("user", oid)
        return oid

    def update_user(self, oid: str, **props: Any) -> None:
        with self.lock:
            self.users[oid].update(props)
            self._record("user", oid)

    def delete_user(self, oid: str, *, permanent: bool = False) -> None:
        """Delete a user: ``changed`` (soft, restorable) or ``deleted`` (permanent), as Graph says."""
        with self.lock:
            del self.users[oid]
            for members in self.members.values():
                members.pop(oid, None)  # Graph drops it from groups without a group delta entry
            self._record("user", oid, removed="deleted" if permanent else "changed")

    def add_group(self, members: list[str] | None = None, **props: Any) -> str:
        oid = str(props.pop("id", None) or uuid.uuid4())
        with self.lock:
            self.groups[oid] = {"id": oid, **props}
            self.members[oid] = {}
            self._record("group", oid)
            for member in members or []:
                self._set_member(oid, member, present=True)
        return oid

    def update_group(self, oid: str, **props: Any) -> None:
        with self.lock:
            self.groups[oid].update(props)
            self._record("group", oid)

    def delete_group(self, oid: str) -> None:
        with self.lock:
            del self.groups[oid]
            self.members.pop(oid, None)
            self._record("group", oid, removed="changed")

    def add_member(self, gid: str, member: str) -> None:
        with self.lock:
            self._set_member(gid, member, present=True)

    def remove_member(self, gid: str, member: str) -> None:
        with self.lock:
            self._set_member(gid, member, present=False)

    # -- knobs --------------------------------------------------------------------------------

    def throttle(self, count: int, retry_after: int = 1) -> None:
        """The next ``count`` Graph requests get 429 with ``Retry-After: retry_after``."""
        with self.lock:
            self._throttle, self._retry_after = count, retry_after

    def expire_delta_tokens(self) -> None:
        """Every deltaLink issued so far now gets 410 Gone (the client must start over)."""
        with self.lock:
            self._delta_tokens.clear()

    def revoke_tokens(self) -> None:
        with self.lock:
            self._tokens.clear()

    def delta_requests(self, collection: str) -> list[str]:
        """The ``/{collection}/delta`` requests so far (path and query)."""
        with self.lock:
            return [p for m, p in self.requests if p.startswith(f"/v1.0/{collection}/delta")]

    # -- internals ----------------------------------------------------------------------------

    def _record(self, kind: str, oid: str, **extra: Any) -> None:
        self._seq += 1
        self._log.append(_Event(self._seq, kind, oid, **extra))

    def _set_member(self, gid: str, member: str, *, present: bool) -> None:
        kind = _GROUP if member in self.groups else _USER
        if present:
            self.members[gid][member] = kind
        else:
            self.members[gid].pop(member, None)
        self._record("member", gid, member=member, member_type=kind, removed=None if present else "deleted")

    def _select(self, props: dict[str, Any], select: list[str] | None) -> dict[str, Any]:
        if select is None:
            return {k: v for k, v in props.items() if k != "members"}
        return {"id": props["id"], **{k: props.get(k) for k in select if k not in ("id", "members")}}

    def _enumerate(self, collection: str, select: list[str] | None) -> list[dict[str, Any]]:
        if collection == "users":
            return [self._select(u, select) for u in self.users.values()]
        items: list[dict[str, Any]] = []
        with_members = select is None or "members" in select
        for gid, props in self.groups.items():
            refs = [{"@odata.type": t, "id": m} for m, t in self.members.get(gid, {}).items()]
            chunks = [refs[i:i + self.member_chunk] for i in range(0, len(refs), self.member_chunk)] or [[]]
            for chunk in chunks:
                item = self._select(props, select)
                if with_members:
                    item["members@delta"] = chunk
                items.append(item)
        return items

    def _changes(self, collection: str, since: int, select: list[str] | None) -> list[dict[str, Any]]:
        kind = "user" if collection == "users" else "group"
        touched: dict[str, list[_Event]] = {}
        for event in self._log:
            if event.seq > since and (event.kind == kind or (kind == "group" and event.kind == "member")):
                touched.setdefault(event.oid, []).append(event)
        items = []
        for oid, events in touched.items():
            removal = next((e for e in reversed(events) if e.kind == kind and e.removed), None)
            current = self.users.get(oid) if kind == "user" else self.groups.get(oid)
            if current is None:
                items.append({"@odata.type": f"#microsoft.graph.{kind}", "id": oid,
                              "@removed": {"reason": removal.removed if removal else "deleted"}})
                continue
            item = self._select(current, select)
            if kind == "group" and (select is None or "members" in select):
                item["members@delta"] = _member_delta(events)
            items.append(item)
        return items


def _member_delta(events: list[_Event]) -> list[dict[str, Any]]:
    last: dict[str, _Event] = {}
    for event in events:
        if event.kind == "member" and event.member is not None:
            last[event.member] = event
    out = []
    for member, event in last.items():
        ref: dict[str, Any] = {"@odata.type": event.member_type, "id": member}
        if event.removed:
            ref["@removed"] = {"reason": event.removed}
        out.append(ref)
    return out


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)


def _app(graph: FakeGraph) -> web.Application:
    async def token(request: web.Request) -> web.Response:
        form = await request.post()
        if request.match_info["tenant"] != graph.tenant_id:
            return web.json_response({"error": "invalid_request", "error_description": "tenant"}, status=400)
        if form.get("grant_type") != "client_credentials":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        if form.get("client_id") != graph.client_id or form.get("client_secret") != graph.client_secret:
            return web.json_response({"error": "invalid_client",
                                      "error_description": "AADSTS7000215: Invalid client secret provided."},
                                     status=401)
        access = secrets.token_urlsafe(24)
        with graph.lock:
            graph._tokens.add(access)
        return web.json_response({"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599,
                                  "access_token": access})

    def gate(request: web.Request) -> web.Response | None:
        with graph.lock:
            graph.requests.append((request.method, request.path_qs))
            auth = request.headers.get("Authorization", "")
            if not auth.startswith("Bearer ") or auth[7:] not in graph._tokens:
                return _error(401, "InvalidAuthenticationToken", "Access token is empty or invalid.")
            if graph._throttle > 0:
                graph._throttle -= 1
                graph.throttled.append(asyncio.get_running_loop().time())
                return _error(429, "TooManyRequests", "Too many requests.",
                              {"Retry-After": str(graph._retry_after)})
        return None

    def page_size(request: web.Request) -> int:
        prefer = request.headers.get("Prefer", "")
        for part in prefer.split(","):
            name, _, value = part.strip().partition("=")
            if name == "odata.maxpagesize" and value.isdigit():
                return max(1, int(value))
        return graph.page_size

    def page(request: web.Request, token: str, offset: int) -> web.Response:
        session = graph._sessions[token]
        size = page_size(request)
        chunk = session.items[offset:offset + size]
        base = f"{graph.url}/{session.collection}/delta"
        context = f"{graph.url}/$metadata#{session.collection}"
        body: dict[str, Any] = {"@odata.context": context, "value": chunk}
        if offset + size < len(session.items):
            body["@odata.nextLink"] = f"{base}?$skiptoken={token}.{offset + size}"
        else:
            delta = secrets.token_urlsafe(12)
            graph._delta_tokens[delta] = (session.collection, session.seq, session.select)
            body["@odata.deltaLink"] = f"{base}?$deltatoken={delta}"
            del graph._sessions[token]
        return web.json_response(body)

    async def delta(request: web.Request) -> web.Response:
        if (denied := gate(request)) is not None:
            return denied
        collection = request.match_info["collection"]
        q = request.query
        with graph.lock:
            if "$skiptoken" in q:
                token, _, offset = q["$skiptoken"].rpartition(".")
                if token not in graph._sessions:
                    return _error(400, "Request_BadRequest", "Invalid skiptoken.")
                return page(request, token, int(offset))
            if "$deltatoken" in q:
                known = graph._delta_tokens.get(q["$deltatoken"])
                if known is None or known[0] != collection:
                    fresh = f"{graph.url}/{collection}/delta"
                    return _error(410, "syncStateNotFound", "Resync required: the sync state is not found.",
                                  {"Location": fresh})
                _, since, select = known
                items = graph._changes(collection, since, select)
            else:
                select = q["$select"].split(",") if "$select" in q else None
                items = graph._enumerate(collection, select)
            token = secrets.token_urlsafe(12)
            graph._sessions[token] = _Session(items, collection, graph._seq, select)
            return page(request, token, 0)

    async def one(request: web.Request) -> web.Response:
        if (denied := gate(request)) is not None:
            return denied
        collection, oid = request.match_info["collection"], request.match_info["id"]
        select = request.query["$select"].split(",") if "$select" in request.query else None
        with graph.lock:
            props = (graph.users if collection == "users" else graph.groups).get(oid)
            if props is None:
                return _error(404, "Request_ResourceNotFound",
                              f"Resource '{oid}' does not exist or one of its queried reference-property "
                              "objects are not present.")
            return web.json_response({"@odata.context": f"{graph.url}/$metadata#{collection}/$entity",
                                      **graph._select(props, select)})

    app = web.Application()
    app.router.add_post("/{tenant}/oauth2/v2.0/token", token)
    app.router.add_get("/v1.0/{collection:users|groups}/delta", delta)
    app.router.add_get("/v1.0/{collection:users|groups}/{id}", one)
    return app


@contextmanager
def start_graph_server(**settings: Any) -> Iterator[FakeGraph]:
    """A FakeGraph serving on a free loopback port until the block ends."""
    graph = FakeGraph(port=free_port(), **settings)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    runner = web.AppRunner(_app(graph), access_log=None)

    async def serve() -> None:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", graph.port).start()
        ready.set()

    def main() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(serve())
        loop.run_forever()

    thread = threading.Thread(target=main, name="fake-graph", daemon=True)
    thread.start()
    if not ready.wait(10):
        raise RuntimeError("the fake Graph server did not start")
    try:
        yield graph
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
