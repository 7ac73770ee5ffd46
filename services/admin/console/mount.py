"""Hooks the console into the admin service under ``/console``.

The API's middlewares want an ``Authorization`` header and answer JSON; a browser has a
session cookie and wants pages. So the console puts its own middleware first: for a
``/console`` path it authenticates the cookie, checks the CSRF token of a post, and calls
the matched console handler itself, turning failures into pages. Every other path goes on
to the API's middlewares untouched.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote

import structlog
from aiohttp import web

from services.admin.auth import Tokens
from services.admin.console import app_pages, assignment_pages, mapping_pages, report_pages, scoping_pages
from services.admin.console.render import CALLER, CONSOLE, Console, is_htmx, render, run
from services.admin.console.session import CSRF_FIELD, csrf_ok, session_name
from services.admin.control import BadRequestError, Caller, ControlPlane, NoSuchAppError
from services.admin.refusals import audit_refused, route_action
from services.runtime.config_store import DefinitionError, VersionConflictError
from services.runtime.errors import ScimflowError

__all__ = ["PREFIX", "mount_console"]

log = structlog.get_logger("scimflow.console")

PREFIX = "/console"
_STATIC = Path(__file__).parent / "static"
_OPEN = frozenset({f"{PREFIX}/login"})


def mount_console(app: web.Application, plane: ControlPlane, tokens: Tokens) -> None:
    """Serve the web console from ``app`` (the admin API's application) under ``/console``."""
    app[CONSOLE] = Console(plane, tokens, os.environ.get("SCIMFLOW_GRAFANA_URL") or None)
    app.middlewares.insert(0, _console)
    app.router.add_static(f"{PREFIX}/static", _STATIC, name="console-static")
    app.router.add_get(PREFIX, _home)
    for method, path, handler in (*app_pages.ROUTES, *assignment_pages.ROUTES, *report_pages.ROUTES,
                                 *mapping_pages.ROUTES, *scoping_pages.ROUTES):
        app.router.add_route(method, PREFIX + path, handler)


async def _home(_: web.Request) -> web.Response:
    raise web.HTTPFound(f"{PREFIX}/")


def _ours(path: str) -> bool:
    return path == PREFIX or path.startswith(f"{PREFIX}/")


@web.middleware
async def _console(request: web.Request, handler: app_pages.Handler) -> web.StreamResponse:
    if not _ours(request.path):
        return await handler(request)
    target = request.match_info.handler
    if request.path.startswith(f"{PREFIX}/static/") or request.path in _OPEN:
        return await _pages(request, target)
    name = session_name(request, request.app[CONSOLE].tokens)
    if name is None:
        return await _refuse(request)
    request[CALLER] = Caller(by=name, remote=request.remote)
    if request.method == "POST" and not csrf_ok(request, str((await request.post()).get(CSRF_FIELD, ""))):
        await run(request, lambda p: p.audit(_action(request), _app(request),
                                             {"error": "missing or wrong CSRF token"}, "rejected"))
        return render(request, "error.html", status=403, title="Refused",
                      message="This form was not sent by this console session (the CSRF token is "
                              "missing or wrong). Reload the page and try again.")
    response = await _pages(request, target)
    log.info("console request", method=request.method, path=request.path, by=name,
             remote=request.remote, status=response.status)
    return response


async def _refuse(request: web.Request) -> web.StreamResponse:
    """No session: a page asks to log in; anything else is 401 (and an attempt to change
    something is audited, as on the API)."""
    log.warning("console request refused", method=request.method, path=request.path,
                remote=request.remote, reason="no valid session")
    if request.method == "GET" and not is_htmx(request):
        raise web.HTTPSeeOther(f"{PREFIX}/login?next={quote(request.path_qs, safe='/')}")
    if request.method == "POST":
        await audit_refused(request, request.app[CONSOLE].plane, "no console session", prefix="console:")
    response = app_pages.login_page(request, status=401, error="Log in to continue.")
    response.headers["HX-Redirect"] = f"{PREFIX}/login"
    return response


def _action(request: web.Request) -> str:
    # The route's name (a fixed set), never a string from the request's path.
    resource = request.match_info.route.resource
    return "console:" + route_action(resource.canonical if resource is not None else None)


def _app(request: web.Request) -> str | None:
    return request.match_info.get("app")


async def _pages(request: web.Request, target: app_pages.Handler) -> web.StreamResponse:
    """The handler's page, or a page that says what went wrong."""
    try:
        return await target(request)
    except web.HTTPException:
        raise
    except ScimflowError as exc:
        status, title, message = _failure(exc)
        if status >= 500:
            log.warning("console request failed", path=request.path, reason=str(exc))
        return render(request, "error.html", status=status, title=title, message=message)
    except Exception:
        log.exception("console request crashed", path=request.path)
        return render(request, "error.html", status=500, title="Error",
                      message="Internal error; see the admin service's log.")


def _failure(exc: ScimflowError) -> tuple[int, str, str]:
    """The status, title and message of the page for a failed operation."""
    if isinstance(exc, DefinitionError):
        problems = "; ".join(f"{p.path}: {p.message}" for p in exc.problems)
        return 400, "Not valid", f"Nothing was written: {problems}"
    if isinstance(exc, VersionConflictError):
        return 409, "Changed meanwhile", f"Nothing was written: {exc}"
    if isinstance(exc, NoSuchAppError):
        return 404, "Not found", str(exc)
    if isinstance(exc, BadRequestError):
        return 400, "Not accepted", str(exc)
    return 503, "Unavailable", str(exc)
