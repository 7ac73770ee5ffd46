"""The admin HTTP API (aiohttp): the control plane over HTTP, one route per CLI command.

Every route except ``/healthz`` and ``/metrics`` needs ``Authorization: Bearer <token>``
with one of the named tokens (401 otherwise). The token's name is the caller in the
audit trail; the token itself is never logged or echoed.

| route | CLI |
|---|---|
| ``GET /apps``, ``GET /apps/{app}`` | ``scimflow status [APP]`` |
| ``POST /apps/{app}/start`` / ``stop`` | ``scimflow start|stop APP`` |
| ``POST /apps/{app}/restart`` ``{"reset_links": bool}`` | ``scimflow restart APP [--reset-links]`` |
| ``POST /apps/{app}/provision`` ``{"id": ..., "type": "user"|"group"}`` | ``scimflow provision APP ID`` |
| ``POST /apps/{app}/test-connection`` | ``scimflow test-connection APP`` |
| ``POST /apps/{app}/allow-deletes`` | ``scimflow allow-deletes APP`` |
| ``GET /activity``, ``GET /errors`` ``?app=&status=&limit=`` | ``scimflow tail activity|errors`` |
| ``GET /apps/{app}/config`` ``?version=N`` | ``scimflow get app APP -o yaml`` |
| ``PUT /apps/{app}/config`` ``{"definition": {...}, "comment": ...}`` | ``scimflow apply -f FILE`` |
| ``DELETE /apps/{app}/config`` | (records the app's removal) |
| ``GET /apps/{app}/config/history`` | ``scimflow history APP`` |
| ``POST /apps/{app}/config/preview`` ``{"definition", "ids", "sample"}`` | ``apply --preview`` |
| ``POST /apps/{app}/config/evaluate`` ``{"id", "definition" (optional)}`` | ``expr --app --object`` |
| ``GET /apps/{app}/assignments`` | ``scimflow get assignments APP`` |
| ``POST /apps/{app}/assignments`` ``{"type": "user"|"group", "id": ...}`` | ``scimflow assign APP`` |
| ``DELETE /apps/{app}/assignments/{type}/{id}`` | ``scimflow unassign APP --group ID`` |

The config routes carry the app's version as ``ETag``; a ``PUT`` or ``DELETE`` with
``If-Match: "<version>"`` (or ``If-None-Match: *`` for a new app) that is no longer current
gets 409 with the current version; an invalid definition gets 400 with every problem and
its JSON path. Nothing is written in either case. The assignment routes edit one entry of
the app's ``assignments`` and write the result as the app's next version, with the same
``ETag``/``If-Match`` rules; adding an entry that is there already, or removing one that is
not, is a no-op (200, ``"changed": false``, nothing written), as HTTP's idempotent methods are.

Operations block on Kafka, so each runs in a worker thread; the event loop only serves.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.admin.auth import Tokens
from services.admin.console import mount_console
from services.admin.control import (
    AssignmentKind,
    BadRequestError,
    Caller,
    ControlPlane,
    NoSuchAppError,
    ProvisionFailedError,
)
from services.admin.refusals import REFUSALS, Refusals, audit_refused
from services.runtime import metrics
from services.runtime.config_store import DefinitionError, VersionConflictError
from services.runtime.errors import ScimflowError

__all__ = ["build_api"]

log = structlog.get_logger("scimflow.admin")

PLANE = web.AppKey("plane", ControlPlane)
TOKENS = web.AppKey("tokens", Tokens)
CALLER = web.RequestKey("caller", Caller)
_OPEN = frozenset({"/healthz", "/metrics"})
_CHANGES = frozenset({"POST", "PUT", "DELETE"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def build_api(plane: ControlPlane, tokens: Tokens) -> web.Application:
    """The aiohttp application; ``plane`` does the work, ``tokens`` say who may ask."""
    app = web.Application(middlewares=[_count, _errors, _config_errors, _auth])
    app[PLANE] = plane
    app[TOKENS] = tokens
    app[REFUSALS] = Refusals()
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/apps", _apps)
    app.router.add_get("/apps/{app}", _app)
    for action in ("start", "stop", "restart", "provision", "test-connection", "allow-deletes"):
        app.router.add_post(f"/apps/{{app}}/{action}", _ACTIONS[action])
    app.router.add_get("/apps/{app}/config", _get_config)
    app.router.add_put("/apps/{app}/config", _put_config)
    app.router.add_delete("/apps/{app}/config", _delete_config)
    app.router.add_get("/apps/{app}/config/history", _config_history)
    app.router.add_post("/apps/{app}/config/preview", _preview_config)
    app.router.add_post("/apps/{app}/config/evaluate", _evaluate_config)
    app.router.add_get("/apps/{app}/assignments", _get_assignments)
    app.router.add_post("/apps/{app}/assignments", _add_assignment)
    app.router.add_delete("/apps/{app}/assignments/{type}/{id}", _remove_assignment)
    app.router.add_get("/activity", _records("activity"))
    app.router.add_get("/errors", _records("errors"))
    app.on_cleanup.append(_close)
    mount_console(app, plane, tokens)
    return app


async def _close(app: web.Application) -> None:
    app[PLANE].close()


@web.middleware
async def _auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in _OPEN:
        return await handler(request)
    name = request.app[TOKENS].identify(request.headers.get("Authorization"))
    if name is None:
        log.warning("admin request refused", method=request.method, path=request.path,
                    remote=request.remote, reason="missing or invalid bearer token")
        if request.method in _CHANGES:
            await audit_refused(request, request.app[PLANE], "missing or invalid bearer token")
        return _json({"error": "missing or invalid bearer token"}, 401,
                     headers={"WWW-Authenticate": 'Bearer realm="scimflow"'})
    request[CALLER] = Caller(by=name, remote=request.remote)
    response = await handler(request)
    log.info("admin request", method=request.method, path=request.path, by=name,
             remote=request.remote, status=response.status)
    return response




@web.middleware
async def _count(request: web.Request, handler: Handler) -> web.StreamResponse:
    """``scimflow_admin_requests_total`` by route template (bounded) and status class."""
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    status: int | None = 500
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        status = exc.status
        raise
    else:
        status = response.status
    finally:
        metrics.ADMIN_REQUESTS.labels(route=route, status_class=metrics.status_class(status)).inc()
    return response


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except ProvisionFailedError as exc:
        return _json({"error": str(exc), "trace": exc.trace}, 404 if exc.not_found else 504)
    except NoSuchAppError as exc:
        return _json({"error": str(exc)}, 404)
    except BadRequestError as exc:
        return _json({"error": str(exc)}, 400)

    except ScimflowError as exc:
        log.warning("admin request failed", path=request.path, reason=str(exc))
        return _json({"error": str(exc)}, 503)
    except Exception:
        log.exception("admin request crashed", path=request.path)
        return _json({"error": "internal error; see the admin service's log"}, 500)


@web.middleware
async def _config_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The config routes' refusals: nothing was written, and the answer says why."""
    try:
        return await handler(request)
    except DefinitionError as exc:
        problems = [{"path": p.path, "message": p.message} for p in exc.problems]
        return _json({"error": "invalid definition: nothing was written", "problems": problems}, 400)
    except VersionConflictError as exc:
        return _json({"error": str(exc), "current_version": exc.current}, 409,
                     headers={"ETag": _etag(exc.current)})


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=msgspec.json.encode(body, enc_hook=str), status=status,
                        content_type="application/json", headers=headers)


def _plane(request: web.Request) -> ControlPlane:
    caller: Caller = request[CALLER]
    return request.app[PLANE].as_caller(caller)


async def _run(request: web.Request, call: Callable[[ControlPlane], Any]) -> web.Response:
    plane = _plane(request)
    return _json(await asyncio.to_thread(call, plane))


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json(loads=json.loads)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequestError(f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequestError("the body must be a JSON object")
    return body


async def _healthz(_: web.Request) -> web.Response:
    return _json({"ok": True})


async def _metrics(_: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _apps(request: web.Request) -> web.Response:
    return await _run(request, lambda p: p.status())


async def _app(request: web.Request) -> web.Response:
    name = request.match_info["app"]
    return await _run(request, lambda p: p.status(name)[0])


async def _start(request: web.Request) -> web.Response:
    name = request.match_info["app"]
    return await _run(request, lambda p: p.set_status(name, "on"))


async def _stop(request: web.Request) -> web.Response:
    name = request.match_info["app"]
    return await _run(request, lambda p: p.set_status(name, "off"))


async def _restart(request: web.Request) -> web.Response:
    name = request.match_info["app"]
    reset = (await _body(request)).get("reset_links", False)
    if not isinstance(reset, bool):
        raise BadRequestError("reset_links must be true or false")
    return await _run(request, lambda p: p.restart(name, reset_links=reset))


async def _provision(request: web.Request) -> web.Response:
    name = request.match_info["app"]
    body = await _body(request)
    object_id, kind, timeout = body.get("id"), body.get("type", "user"), body.get("timeout")
    if not isinstance(object_id, str) or not object_id or kind not in ("user", "group"):
        raise BadRequestError('expected {"id": "<source object id>", "type": "user" or "group"}')
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float)):
        raise BadRequestError("timeout must be a number of seconds")
    return await _run(request, lambda p: p.provision(name, object_id, kind, timeout=timeout))


async def _test_connection(request: web.Request) -> web.Response:
    name = request.match_info["app"]
    return await _run(request, lambda p: p.test_connection(name))


async def _allow_deletes(request: web.Request) -> web.Response:
    name = request.match_info["app"]
    return await _run(request, lambda p: p.allow_deletes(name))


_ACTIONS: dict[str, Handler] = {
    "start": _start, "stop": _stop, "restart": _restart, "provision": _provision,
    "test-connection": _test_connection, "allow-deletes": _allow_deletes,
}


def _etag(version: int) -> str:
    return f'"{version}"'


def _expected(request: web.Request) -> int | None:
    """The version a change is based on: ``If-Match: "4"``; ``If-None-Match: *``: none (0)."""
    if request.headers.get("If-None-Match", "").strip() == "*":
        return 0
    value = request.headers.get("If-Match", "").strip().removeprefix("W/").strip('"')
    if value in ("", "*"):
        return None
    if not value.isdigit():
        raise BadRequestError('If-Match must be an ETag of this API: "<version>"')
    return int(value)


def _versioned(body: dict[str, Any], version: int, status: int = 200) -> web.Response:
    return _json(body, status, headers={"ETag": _etag(version)})


async def _get_config(request: web.Request) -> web.Response:
    name, raw = request.match_info["app"], request.query.get("version")
    if raw is not None and not raw.isdigit():
        raise BadRequestError("version must be a whole number")
    version = None if raw is None else int(raw)
    found = await asyncio.to_thread(lambda: _plane(request).config_get(name, version))
    return _versioned(found, found["version"])


async def _put_config(request: web.Request) -> web.Response:
    name, expected = request.match_info["app"], _expected(request)
    body = await _body(request)
    comment = body.get("comment", "")
    if "definition" not in body or not isinstance(comment, str):
        raise BadRequestError('expected {"definition": {...the application...}, "comment": "why"}')
    plane = _plane(request)
    result = await asyncio.to_thread(plane.config_put, name, body["definition"], expected=expected,
                                     comment=comment)
    return _versioned(result, result["version"], 201 if result["action"] == "create" else 200)


async def _preview_config(request: web.Request) -> web.Response:
    name = request.match_info["app"]
    body = await _body(request)
    ids, sample = body.get("ids"), body.get("sample", 5)
    ids_ok = ids is None or (isinstance(ids, list) and all(isinstance(i, str) for i in ids))
    sample_ok = isinstance(sample, int) and not isinstance(sample, bool) and sample >= 0
    if "definition" not in body or not ids_ok or not sample_ok:
        raise BadRequestError('expected {"definition": {...}, "ids": ["..."] (optional), "sample": N}')
    return await _run(request, lambda p: p.config_preview(name, body["definition"], ids=ids, sample=sample))


async def _evaluate_config(request: web.Request) -> web.Response:
    """The SCIM resource one source object maps to (the live version, or ``definition``)."""
    name = request.match_info["app"]
    body = await _body(request)
    object_id = body.get("id")
    if not isinstance(object_id, str) or not object_id.strip():
        raise BadRequestError('expected {"id": "<source object id>", "definition": {...} (optional)}')
    definition = body.get("definition")
    return await _run(request, lambda p: p.config_evaluate(name, object_id.strip(), definition))


async def _delete_config(request: web.Request) -> web.Response:
    name, expected = request.match_info["app"], _expected(request)
    comment = request.query.get("comment", "")
    plane = _plane(request)
    result = await asyncio.to_thread(plane.config_remove, name, expected=expected, comment=comment)
    return _versioned(result, result["version"])


async def _config_history(request: web.Request) -> web.Response:
    name = request.match_info["app"]
    return await _run(request, lambda p: p.config_history(name))


_KINDS: dict[str, AssignmentKind] = {"user": "user", "group": "group"}


async def _get_assignments(request: web.Request) -> web.Response:
    name = request.match_info["app"]
    found = await asyncio.to_thread(lambda: _plane(request).assignments(name))
    return _versioned(found, found["version"])


async def _add_assignment(request: web.Request) -> web.Response:
    name, expected = request.match_info["app"], _expected(request)
    body = await _body(request)
    kind, object_id, comment = body.get("type"), body.get("id"), body.get("comment", "")
    if kind not in ("user", "group") or not isinstance(object_id, str) or not isinstance(comment, str):
        raise BadRequestError('expected {"type": "user" or "group", "id": "<source object id>", '
                              '"comment": "why"}')
    plane = _plane(request)
    result = await asyncio.to_thread(plane.assign, name, kind, object_id, expected=expected,
                                     comment=comment)
    return _versioned(result, result["version"], 201 if result["changed"] else 200)


async def _remove_assignment(request: web.Request) -> web.Response:
    name, expected = request.match_info["app"], _expected(request)
    kind, object_id = _KINDS.get(request.match_info["type"]), request.match_info["id"]
    if kind is None:
        raise BadRequestError("expected /assignments/user/<id> or /assignments/group/<id>")
    plane = _plane(request)
    result = await asyncio.to_thread(plane.unassign, name, kind, object_id, expected=expected,
                                     comment=request.query.get("comment", ""))
    return _versioned(result, result["version"])


def _records(kind: str) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        q = request.query
        try:
            limit = int(q.get("limit", "100"))
        except ValueError:
            raise BadRequestError("limit must be a whole number") from None
        return await _run(request, lambda p: p.records(kind, app=q.get("app") or None,
                                                         status=q.get("status") or None, limit=limit))
    return handler
