"""The push source: an HTTP endpoint in the ingest where an HR system or a script pushes identities.

Accepted, with ``Authorization: Bearer <token>`` (the source's secret; 401 without it):

- SCIM 2.0 resources (RFC 7643/7644): ``POST /scim/v2/Users`` and ``/Groups`` (upsert, 201),
  ``PUT /scim/v2/Users/{id}`` and ``/Groups/{id}`` (upsert, 200), ``DELETE`` of either (204);
- SCIM BulkRequests, ``POST /scim/v2/Bulk`` (also ``POST /bulkUpload``): the shape Entra's
  API-driven inbound provisioning accepts, ``urn:ietf:params:scim:api:messages:2.0:BulkRequest``
  with ``Operations`` of ``method``, ``bulkId``, ``path`` and ``data``; the answer is a
  BulkResponse with one status per operation (RFC 7644 section 3.7);
- scimflow's own DirectoryChange JSON, ``POST /changes``: one object or a list of them.

Each item is validated on its own. A bad one is answered with its reason (a SCIM error, or
its operation's status in the BulkResponse) and published as an ErrorRecord
(``PushRejected``); the others go on. A success is answered only once the change is on
the changes topic, so a client that got a 2xx never needs to push again.

SCIM attributes become the attribute names the mappings use (the Entra/Graph names, as the
file and Graph sources have them); docs/sources.md has the table. An object's id is its
``externalId`` (the HR system's stable key; the path id for PUT and DELETE). Users' group
memberships come from the groups pushed (their ``members``) or, if the pusher sends them, the
user's ``groups``; the source remembers what was pushed since the ingest started, so a
push source has no full scan (nothing to read in full) and ``fetch`` answers from that memory.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
import structlog
from aiohttp import web

from schemas import ErrorRecord
from services.ingest.objects import ObjectType, Snapshot, SourceObject
from services.ingest.sources.base import DirectorySource, OnChange, OnPosition, Operation, SourceError
from services.runtime.config import PushSource
from services.runtime.records import error_record

__all__ = [
    "BULK_REQUEST",
    "BULK_RESPONSE",
    "PushDirectory",
    "PushItem",
    "PushRejectedError",
    "parse_bulk",
    "parse_change",
    "parse_resource",
]

log = structlog.get_logger("scimflow.ingest.push")

BULK_REQUEST = "urn:ietf:params:scim:api:messages:2.0:BulkRequest"
BULK_RESPONSE = "urn:ietf:params:scim:api:messages:2.0:BulkResponse"
SCIM_ERROR = "urn:ietf:params:scim:api:messages:2.0:Error"
USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Group"
ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
_RESOURCE_TYPES: dict[str, ObjectType] = {"Users": "user", "Groups": "group"}
_JSON_TYPES = ("application/json", "application/scim+json")


_ALL_INTERFACES = "0.0.0.0"  # noqa: S104 - a pod is reached on its own IP; the host when ``listen`` has none


class PushRejectedError(SourceError):
    """One pushed item is not valid; it is answered and reported, the others go on."""

    code = "PushRejected"
    recommended_action = "Fix the item in the pushing system and push it again; the other items were applied."

    def __init__(self, reason: str, *, scim_type: str = "invalidValue", status: int = 400) -> None:
        super().__init__(reason)
        self.scim_type = scim_type
        self.status = status


@dataclass(frozen=True)
class PushItem:
    """One valid pushed change: an upsert of the object's whole state, or a delete."""

    operation: Operation
    object: SourceObject
    groups: tuple[str, ...] | None = None
    """A user's group ids, when the pusher sent them (else derived from pushed groups)."""


# -- parsing (pure) -----------------------------------------------------------------------------


def parse_resource(kind: ObjectType, data: Any, path_id: str | None = None) -> PushItem:
    """A SCIM User or Group resource as an upsert; PushRejectedError says what is wrong."""
    if not isinstance(data, dict):
        raise PushRejectedError("the resource must be a JSON object", scim_type="invalidSyntax")
    schemas = data.get("schemas")
    expected = USER_SCHEMA if kind == "user" else GROUP_SCHEMA
    if not isinstance(schemas, list) or expected not in schemas:
        raise PushRejectedError(f"`schemas` must list {expected}", scim_type="invalidSyntax")
    oid = path_id or _text(data.get("externalId")) or _text(data.get("id"))
    if not oid:
        raise PushRejectedError("the resource needs an `externalId` (the stable id in the pushing system)")
    if kind == "user":
        attrs, groups = _user_attributes(data), _refs(data.get("groups"), "groups")
        attrs["id"] = oid
        return PushItem("upsert", SourceObject("user", oid, attrs), groups=groups)
    if not _text(data.get("displayName")):
        raise PushRejectedError("a Group needs a `displayName`")
    members = _refs(data.get("members"), "members") or ()
    attrs = {"id": oid, "displayName": data["displayName"]}
    if _text(data.get("externalId")):
        attrs["externalId"] = data["externalId"]
    return PushItem("upsert", SourceObject("group", oid, attrs, members=tuple(dict.fromkeys(members))))


def _user_attributes(data: dict[str, Any]) -> dict[str, Any]:
    """SCIM User attributes under the names the mappings use (see docs/sources.md)."""
    if not _text(data.get("userName")):
        raise PushRejectedError("a User needs a `userName`")
    if "active" in data and not isinstance(data["active"], bool):
        raise PushRejectedError("`active` must be true or false")
    name = _object(data, "name")
    enterprise = _object(data, ENTERPRISE)
    manager = enterprise.get("manager")
    address = _typed(data, "addresses", "work") or {}
    attrs: dict[str, Any] = {
        "userPrincipalName": data["userName"],
        "externalId": data.get("externalId"),
        "displayName": data.get("displayName"),
        "givenName": name.get("givenName"),
        "surname": name.get("familyName"),
        "middleName": name.get("middleName"),
        "mail": _value(_typed(data, "emails", "work")),
        "jobTitle": data.get("title"),
        "employeeType": data.get("userType"),
        "preferredLanguage": data.get("preferredLanguage"),
        "usageLocation": data.get("locale"),
        "telephoneNumber": _value(_typed(data, "phoneNumbers", "work")),
        "mobile": _value(_typed(data, "phoneNumbers", "mobile")),
        "streetAddress": address.get("streetAddress"),
        "city": address.get("locality"),
        "state": address.get("region"),
        "postalCode": address.get("postalCode"),
        "country": address.get("country"),
        "employeeId": enterprise.get("employeeNumber"),
        "department": enterprise.get("department"),
        "companyName": enterprise.get("organization"),
        "division": enterprise.get("division"),
        "costCenter": enterprise.get("costCenter"),
        "manager": manager.get("value") if isinstance(manager, dict) else manager,
        "accountEnabled": data.get("active", True),
    }
    return {k: v for k, v in attrs.items() if v is not None}


def _object(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key) or {}
    if not isinstance(value, dict):
        raise PushRejectedError(f"`{key}` must be an object")
    return value


def _typed(data: dict[str, Any], key: str, wanted: str) -> dict[str, Any] | None:
    """The multi-valued entry of ``type`` ``wanted``; for ``work``, else the primary or an untyped one."""
    values = data.get(key) or []
    if not isinstance(values, list) or not all(isinstance(v, dict) for v in values):
        raise PushRejectedError(f"`{key}` must be a list of objects")
    typed = [v for v in values if v.get("type") == wanted]
    if typed or wanted != "work":
        return typed[0] if typed else None
    plain = [v for v in values if v.get("primary") is True or v.get("type") in (None, "", "other")]
    primary = [v for v in plain if v.get("primary") is True]
    found: dict[str, Any] | None = (primary or plain or [None])[0]
    return found


def _value(entry: dict[str, Any] | None) -> Any:
    return None if entry is None else entry.get("value")


def _refs(values: Any, key: str) -> tuple[str, ...] | None:
    if values is None:
        return None
    if not isinstance(values, list) or not all(isinstance(v, dict) and _text(v.get("value")) for v in values):
        raise PushRejectedError(f"`{key}` must be a list of objects with a `value` (an id)")
    return tuple(str(v["value"]) for v in values)


def _text(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


class _PushedChange(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    """DirectoryChange JSON as a client writes it: the fields that describe the object."""

    object_type: Literal["user", "group"]
    object_id: Any
    operation: Literal["upsert", "delete"]
    attributes: dict[str, Any] = {}
    memberships: list[str] = []
    members: list[str] = []


def parse_change(data: Any) -> PushItem:
    """One DirectoryChange (the ``type`` tag, ``source``, ids and times may be left out)."""
    try:
        change = msgspec.convert(data, _PushedChange)
    except msgspec.ValidationError as exc:
        raise PushRejectedError(f"not a DirectoryChange: {exc}", scim_type="invalidSyntax") from None
    oid = _text(change.object_id) if isinstance(change.object_id, str) else None
    if oid is None:
        raise PushRejectedError("`object_id` must be a non-empty string")
    obj = SourceObject(change.object_type, oid, {"id": oid, **change.attributes},
                       memberships=tuple(change.memberships), members=tuple(change.members))
    groups = tuple(change.memberships) if change.object_type == "user" else None
    return PushItem(change.operation, obj, groups=groups)


@dataclass(frozen=True)
class BulkOperation:
    """One operation of a BulkRequest: its echo fields, and the item or why it was rejected."""

    method: str
    bulk_id: str | None
    path: str
    item: PushItem | None
    error: PushRejectedError | None = None


def parse_bulk(body: Any, max_operations: int = 1000) -> tuple[list[BulkOperation], int | None]:
    """A BulkRequest's operations, each parsed on its own; and its ``failOnErrors``. A request
    that is not a BulkRequest at all raises PushRejectedError."""
    if not isinstance(body, dict) or BULK_REQUEST not in (body.get("schemas") or []):
        raise PushRejectedError(f"expected a BulkRequest (`schemas`: [{BULK_REQUEST!r}])",
                                scim_type="invalidSyntax")
    operations = body.get("Operations")
    if not isinstance(operations, list):
        raise PushRejectedError("a BulkRequest needs an `Operations` list", scim_type="invalidSyntax")
    if len(operations) > max_operations:
        raise PushRejectedError(f"{len(operations)} operations; at most {max_operations} per request",
                                scim_type="tooMany", status=413)
    fail_on = body.get("failOnErrors")
    return [_bulk_operation(op) for op in operations], fail_on if isinstance(fail_on, int) else None


def _bulk_operation(op: Any) -> BulkOperation:
    if not isinstance(op, dict):
        return BulkOperation("", None, "", None, PushRejectedError("an operation must be a JSON object"))
    method, bulk_id, path = str(op.get("method", "")).upper(), op.get("bulkId"), str(op.get("path", ""))
    try:
        kind, path_id = _scim_path(path)
        item = _bulk_item(method, bulk_id, kind, path_id, op.get("data"))
    except PushRejectedError as exc:
        return BulkOperation(method, bulk_id, path, None, exc)
    return BulkOperation(method, bulk_id, path, item)


def _bulk_item(method: str, bulk_id: Any, kind: ObjectType, path_id: str | None, data: Any) -> PushItem:
    if method == "POST":
        if path_id is not None:
            raise PushRejectedError("POST goes to /Users or /Groups, without an id")
        if not _text(bulk_id):
            raise PushRejectedError("a POST operation needs a `bulkId`")
        return parse_resource(kind, data)
    if method == "PUT":
        if path_id is None:
            raise PushRejectedError("PUT goes to /Users/{id} or /Groups/{id}")
        return parse_resource(kind, data, path_id)
    if method == "DELETE":
        if path_id is None:
            raise PushRejectedError("DELETE goes to /Users/{id} or /Groups/{id}")
        return PushItem("delete", SourceObject(kind, path_id, {}))
    if method == "PATCH":
        raise PushRejectedError("PATCH is not supported: send the whole resource with PUT (or POST)",
                                scim_type="invalidSyntax", status=501)
    raise PushRejectedError(f"unknown method {method!r}: expected POST, PUT or DELETE",
                            scim_type="invalidSyntax")


def _scim_path(path: str) -> tuple[ObjectType, str | None]:
    parts = [p for p in path.strip().split("/") if p]
    if not parts or parts[0] not in _RESOURCE_TYPES or len(parts) > 2:
        raise PushRejectedError(f"unknown path {path!r}: expected /Users, /Groups, /Users/{{id}} or "
                                "/Groups/{id}", scim_type="invalidPath")
    return _RESOURCE_TYPES[parts[0]], parts[1] if len(parts) == 2 else None


# -- what was pushed (the index) ------------------------------------------------------------------


class _Pushed:
    """Users and groups pushed since start; turns a pushed item into the source objects it changes."""

    def __init__(self) -> None:
        self.users: dict[str, SourceObject] = {}
        self.groups: dict[str, SourceObject] = {}
        self.explicit: dict[str, tuple[str, ...]] = {}  # user -> groups the pusher gave

    def apply(self, item: PushItem) -> list[tuple[Operation, SourceObject]]:
        obj = item.object
        if obj.object_type == "user":
            return self._user(item)
        old = self.groups.pop(obj.object_id, None)
        before = set(old.members) if old else set()
        after = set(obj.members) if item.operation == "upsert" else set()
        if item.operation == "upsert":
            self.groups[obj.object_id] = obj
        changes: list[tuple[Operation, SourceObject]] = [(item.operation, obj)]
        for uid in sorted(before ^ after):
            if uid in self.users and uid not in self.explicit:
                changes.append(("upsert", self.user(uid)))
        return changes

    def _user(self, item: PushItem) -> list[tuple[Operation, SourceObject]]:
        uid = item.object.object_id
        if item.operation == "delete":
            self.users.pop(uid, None)
            self.explicit.pop(uid, None)
            return [("delete", item.object)]
        self.users[uid] = item.object
        if item.groups is not None:
            self.explicit[uid] = item.groups
        else:
            self.explicit.pop(uid, None)
        return [("upsert", self.user(uid))]

    def user(self, uid: str) -> SourceObject:
        obj = self.users[uid]
        groups = self.explicit.get(uid)
        if groups is None:
            groups = tuple(sorted(g for g, group in self.groups.items() if uid in group.members))
        return SourceObject("user", uid, obj.attributes, memberships=tuple(groups))

    def get(self, kind: ObjectType, oid: str) -> SourceObject | None:
        if kind == "user":
            return self.user(oid) if oid in self.users else None
        return self.groups.get(oid)


# -- the endpoint --------------------------------------------------------------------------------


Report = Callable[[ErrorRecord], Awaitable[None]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class PushDirectory(DirectorySource):
    """The HTTP endpoint as a source: ``watch`` serves until cancelled."""

    scans = False
    resumable = False

    def __init__(self, settings: PushSource, token: str, report: Report) -> None:
        """``token`` is the resolved bearer token (``settings.token`` is only its reference)."""
        self.name = settings.name
        self.settings = settings
        self.host, self.listen_port = _listen_address(settings.listen)
        self._token = token
        self._report = report
        self._pushed = _Pushed()
        self._on_change: OnChange | None = None
        self._on_position: OnPosition | None = None
        self._lock = asyncio.Lock()  # items apply to the index and go out in arrival order
        self.listening = asyncio.Event()
        self.port: int | None = None

    async def scan(self) -> Snapshot:
        """What was pushed since start (not used for full scans: a push source has none)."""
        users = (self._pushed.user(u) for u in self._pushed.users)
        return {obj.key: obj for obj in [*users, *self._pushed.groups.values()]}

    async def fetch(self, object_id: str, object_type: ObjectType) -> SourceObject | None:
        return self._pushed.get(object_type, object_id)

    async def watch(self, on_change: OnChange, on_position: OnPosition) -> None:
        self._on_change, self._on_position = on_change, on_position
        runner = web.AppRunner(self._app(), access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.listen_port)
            try:
                await site.start()
            except OSError as exc:
                raise SourceError(f"push source {self.name}: cannot listen on "
                                  f"{self.host}:{self.listen_port}: {exc.strerror}") from None
            self.port = _bound_port(site) or self.listen_port
            self.listening.set()
            log.info("push endpoint listening", source=self.name, host=self.host, port=self.port)
            await asyncio.Event().wait()  # serve until cancelled
        finally:
            self.listening.clear()
            await runner.cleanup()

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=self.settings.max_payload_bytes,
                              middlewares=[self._authenticate])
        for kind in _RESOURCE_TYPES:
            app.router.add_post(f"/scim/v2/{kind}", self._post)
            app.router.add_put(f"/scim/v2/{kind}/{{id}}", self._put)
            app.router.add_delete(f"/scim/v2/{kind}/{{id}}", self._delete)
        app.router.add_post("/scim/v2/Bulk", self._bulk)
        app.router.add_post("/bulkUpload", self._bulk)
        app.router.add_post("/changes", self._changes)
        return app

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        given = request.headers.get("Authorization", "")
        expected = f"Bearer {self._token}"
        if not self._token or not hmac.compare_digest(given.encode(), expected.encode()):
            return _scim_error(401, "a valid bearer token is required",
                               headers={"WWW-Authenticate": "Bearer"})
        return await handler(request)

    async def _post(self, request: web.Request) -> web.Response:
        return await self._one(request, lambda body: parse_resource(_kind(request), body), 201)

    async def _put(self, request: web.Request) -> web.Response:
        path_id = request.match_info["id"]
        return await self._one(request, lambda body: parse_resource(_kind(request), body, path_id), 200)

    async def _delete(self, request: web.Request) -> web.Response:
        item = PushItem("delete", SourceObject(_kind(request), request.match_info["id"], {}))
        await self._apply([item])
        return web.Response(status=204)

    async def _one(self, request: web.Request, parse: Callable[[Any], PushItem], status: int) -> web.Response:
        body = await _json(request)
        try:
            item = parse(body)
        except PushRejectedError as exc:
            await self._rejected(exc, body, request.path)
            return _scim_error(exc.status, str(exc), exc.scim_type)
        await self._apply([item])
        return web.json_response(_echo(item, body), status=status, content_type="application/scim+json")

    async def _bulk(self, request: web.Request) -> web.Response:
        body = await _json(request)
        try:
            operations, fail_on = parse_bulk(body, self.settings.max_bulk_operations)
        except PushRejectedError as exc:
            await self._rejected(exc, body, request.path)
            return _scim_error(exc.status, str(exc), exc.scim_type)
        results, errors = [], 0
        for op, raw in zip(operations, body["Operations"], strict=True):
            if fail_on is not None and errors >= fail_on:
                break  # RFC 7644 3.7.3: stop after failOnErrors errors
            if op.error is not None:
                errors += 1
                await self._rejected(op.error, raw, f"{request.path} {op.method} {op.path}")
            elif op.item is not None:
                await self._apply([op.item], flush=False)
            results.append(_bulk_result(op))
        await self._flush()
        return web.json_response({"schemas": [BULK_RESPONSE], "Operations": results},
                                 content_type="application/scim+json")

    async def _changes(self, request: web.Request) -> web.Response:
        body = await _json(request)
        items = body if isinstance(body, list) else [body]
        results: list[dict[str, Any]] = []
        for raw in items:
            try:
                item = parse_change(raw)
            except PushRejectedError as exc:
                await self._rejected(exc, raw, request.path)
                results.append({"status": exc.status, "detail": str(exc)})
                continue
            await self._apply([item], flush=False)
            results.append({"status": 200, "object_id": item.object.object_id})
        await self._flush()
        # One change: its own status. A list: 200, with each change's status in `results`.
        status = int(results[0]["status"]) if not isinstance(body, list) else 200
        return web.json_response({"results": results}, status=status)

    async def _apply(self, items: list[PushItem], *, flush: bool = True) -> None:
        if self._on_change is None:
            raise SourceError(f"push source {self.name}: not watching")
        async with self._lock:
            for item in items:
                for op, obj in self._pushed.apply(item):
                    await self._on_change(op, obj)
        if flush:
            await self._flush()

    async def _flush(self) -> None:
        if self._on_position is not None:
            await self._on_position(b"")  # returns once the changes are on the topic

    async def _rejected(self, exc: PushRejectedError, item: Any, where: str) -> None:
        log.info("pushed item rejected", source=self.name, where=where, reason=str(exc))
        payload = msgspec.json.encode(item).decode("utf-8", "replace")[:10_000]
        await self._report(error_record("ingest", exc.code, f"source {self.name}: {where}: {exc}",
                                        exc.recommended_action, payload=payload))


def _kind(request: web.Request) -> ObjectType:
    return "user" if request.path.split("/")[3] == "Users" else "group"


async def _json(request: web.Request) -> Any:
    if request.content_type not in _JSON_TYPES:
        raise web.HTTPUnsupportedMediaType(
            text=msgspec.json.encode({"schemas": [SCIM_ERROR], "status": "415",
                                      "detail": "send application/scim+json or application/json"}).decode(),
            content_type="application/scim+json")
    try:
        return msgspec.json.decode(await request.read())
    except msgspec.DecodeError as exc:
        raise web.HTTPBadRequest(
            text=msgspec.json.encode({"schemas": [SCIM_ERROR], "status": "400", "scimType": "invalidSyntax",
                                      "detail": f"not JSON: {exc}"}).decode(),
            content_type="application/scim+json") from None


def _scim_error(status: int, detail: str, scim_type: str | None = None,
                headers: dict[str, str] | None = None) -> web.Response:
    body: dict[str, Any] = {"schemas": [SCIM_ERROR], "status": str(status), "detail": detail}
    if scim_type and status == 400:
        body["scimType"] = scim_type
    return web.json_response(body, status=status, headers=headers, content_type="application/scim+json")


def _echo(item: PushItem, body: Any) -> Any:
    resource = dict(body) if isinstance(body, dict) else {}
    resource["id"] = item.object.object_id
    return resource


def _bulk_result(op: BulkOperation) -> dict[str, Any]:
    result: dict[str, Any] = {"method": op.method}
    if op.bulk_id is not None:
        result["bulkId"] = op.bulk_id
    if op.error is not None:
        result["status"] = str(op.error.status)
        result["response"] = {"schemas": [SCIM_ERROR], "status": str(op.error.status),
                              "scimType": op.error.scim_type, "detail": str(op.error)}
        return result
    if op.item is None:
        raise RuntimeError("a bulk operation without item or error")  # parse_bulk sets one of them
    kind = "Users" if op.item.object.object_type == "user" else "Groups"
    result["location"] = f"/scim/v2/{kind}/{op.item.object.object_id}"
    result["status"] = {"POST": "201", "PUT": "200", "DELETE": "204"}[op.method]
    return result


def _bound_port(site: web.TCPSite) -> int | None:
    server = site._server  # aiohttp keeps the asyncio server here; the port matters when it was 0
    sockets = getattr(server, "sockets", None) or []
    return int(sockets[0].getsockname()[1]) if sockets else None


def _listen_address(listen: str) -> tuple[str, int]:
    """``host:port`` as the host (all interfaces when empty) and the port."""
    host, _, port = listen.rpartition(":")
    return host or _ALL_INTERFACES, int(port)
