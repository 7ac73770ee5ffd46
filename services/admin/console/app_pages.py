"""Log in and out, the Applications list, and each app's Provisioning pane with its actions
(Entra's order: mode, admin credentials with Test Connection, mappings, settings, sync
details, held removals), plus Provision on demand.

Every action goes through the control plane's public operations for the logged-in token's
name, so it is audited exactly as the same action through the API or the CLI.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from aiohttp import web

from services.admin.console.render import CONSOLE, application, is_htmx, parse_time, render, run
from services.admin.console.session import (
    clear_session,
    keep_login_csrf,
    login_csrf,
    login_csrf_ok,
    start_session,
)
from services.admin.control import BadRequestError, Caller, ControlPlane, NoSuchAppError, ProvisionFailedError
from services.runtime.config_store import load_app
from services.runtime.errors import ScimflowError

__all__ = ["ROUTES", "Handler", "live_config"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_HOME = "/console/"

_DONE = {
    "on": "Provisioning turned on: the workers resume this app within seconds.",
    "off": "Provisioning turned off: the workers pause this app within seconds.",
    "restart": "Clear current state and restart requested: the next cycle is a full initial cycle.",
    "restart-links": "Clear current state and restart requested, with the links to target objects reset.",
    "allow-deletes": "The held removals are allowed: the writer applies them now.",
    "assigned": "Assignment added: version {version} on the config topic, applied live by the workers.",
    "unassigned": "Assignment removed: version {version} on the config topic, applied live by the workers.",
    "unchanged": "Nothing changed (already so in version {version}): nothing was written.",
}


# -- login -----------------------------------------------------------------------------------

def login_page(request: web.Request, *, status: int = 200, target: str | None = None,
               error: str | None = None) -> web.Response:
    """The login form, with a CSRF token in the form and the same one in a cookie."""
    token = login_csrf(request)
    page = render(request, "login.html", status=status, login_csrf=token, error=error,
                  next=target or _next(request.query.get("next")))
    keep_login_csrf(request, page, token)
    return page


async def login_form(request: web.Request) -> web.Response:
    return login_page(request)


async def login(request: web.Request) -> web.Response:
    form = await request.post()
    target = _next(str(form.get("next", "")))
    token = str(form.get("token", "")).strip()
    if not login_csrf_ok(request, str(form.get("csrf", ""))):
        return login_page(request, status=403, target=target, error="The login form expired; try again.")
    name = request.app[CONSOLE].tokens.identify(f"Bearer {token}") if token else None
    who = Caller(by=name or "<unauthenticated>", remote=request.remote)
    plane = request.app[CONSOLE].plane
    await asyncio.to_thread(lambda: plane.as_caller(who).audit(
        "console-login", None, {}, "succeeded" if name else "rejected"))
    if name is None:
        return login_page(request, status=401, target=target,
                          error="That token is not one of the admin tokens.")
    response = web.HTTPSeeOther(target)
    start_session(response, request, token)
    raise response


def _next(value: str | None) -> str:
    """Where to go after logging in: a console path only (no open redirect)."""
    if value and value.startswith("/console/") and not value.startswith("//"):
        return value
    return _HOME


async def logout(request: web.Request) -> web.Response:
    response = web.HTTPSeeOther("/console/login")
    clear_session(response)
    raise response


# -- applications ----------------------------------------------------------------------------

async def apps(request: web.Request) -> web.Response:
    query = request.query.get("q", "").strip()
    reports, errors = await asyncio.gather(run(request, lambda p: p.status()),
                                           run(request, lambda p: p.records("errors", limit=10_000)))
    recent = _errors_since(errors, datetime.now(UTC) - timedelta(hours=1))
    shown = [r for r in reports if query.casefold() in r["app"].casefold()]
    return render(request, "apps.html", apps=shown, q=query, errors_last_hour=recent,
                  total=len(reports))


def _errors_since(errors: list[dict[str, Any]], since: datetime) -> Counter[str]:
    counts: Counter[str] = Counter()
    for e in errors:
        at = parse_time(e.get("at"))
        if at is not None and at >= since:
            counts[e.get("app") or "-"] += 1
    return counts


async def app_pane(request: web.Request, **extra: Any) -> web.Response:
    name = request.match_info["app"]
    started_with = application(request.app[CONSOLE].plane, name)
    report, assigned, live = await asyncio.gather(run(request, lambda p: p.status(name)[0]),
                                                  run(request, lambda p: _assignments(p, name)),
                                                  run(request, lambda p: live_config(p, name)))
    version = request.query.get("version", "")
    done = _DONE.get(request.query.get("done", ""), "").format(version=version if version.isdigit() else "?")
    config = live["app"] if live and live["app"] is not None else started_with
    return render(request, "app.html", app=report, config=config, live=live, done=done, assigned=assigned,
                  **extra)


def live_config(plane: ControlPlane, name: str) -> dict[str, Any] | None:
    """The app's current version on the config topic (what the workers run, and what
    ``GET /apps/{app}/config`` answers), loaded with its defaults as ``app``; None before its
    first version there. ``app`` None (and ``problem``): this version no longer loads here
    (a ``${VAR}`` unset), so the pane shows the config file's as it started."""
    try:
        found = plane.config_get(name)
    except NoSuchAppError:
        return None
    try:
        [app] = load_app(found["definition"], plane.load).config.applications
    except ScimflowError as exc:
        return {**found, "app": None, "problem": str(exc)}
    return {**found, "app": app, "problem": None}


def _assignments(plane: ControlPlane, name: str) -> dict[str, Any] | None:
    """The app's assignments on the config topic, or None before its first version there
    (nothing to edit yet: the pane shows the config file's)."""
    try:
        return plane.assignments(name)
    except NoSuchAppError:
        return None


async def sync_details(request: web.Request) -> web.Response:
    name = request.match_info["app"]
    report = await run(request, lambda p: p.status(name)[0])
    return render(request, "_sync.html", app=report)


async def test_connection(request: web.Request) -> web.Response:
    name = request.match_info["app"]
    result = await run(request, lambda p: p.test_connection(name))
    if is_htmx(request):
        return render(request, "_test_result.html", result=result)
    return await app_pane(request, test_result=result)


async def set_status(request: web.Request) -> web.Response:
    name = request.match_info["app"]
    wanted = str((await request.post()).get("status", ""))
    if wanted not in ("on", "off"):
        raise BadRequestError("status must be on or off")
    status: Literal["on", "off"] = "on" if wanted == "on" else "off"
    await run(request, lambda p: p.set_status(name, status))
    raise web.HTTPSeeOther(f"/console/apps/{name}?done={status}")


async def restart(request: web.Request) -> web.Response:
    name = request.match_info["app"]
    form = await request.post()
    if form.get("confirm") != "yes":
        raise BadRequestError("tick the confirmation to clear the current state and restart")
    reset = form.get("reset_links") == "yes"
    await run(request, lambda p: p.restart(name, reset_links=reset))
    raise web.HTTPSeeOther(f"/console/apps/{name}?done={'restart-links' if reset else 'restart'}")


async def allow_deletes(request: web.Request) -> web.Response:
    name = request.match_info["app"]
    await run(request, lambda p: p.allow_deletes(name))
    raise web.HTTPSeeOther(f"/console/apps/{name}?done=allow-deletes")


# -- provision on demand ---------------------------------------------------------------------

async def provision_form(request: web.Request) -> web.Response:
    name = request.match_info["app"]
    application(request.app[CONSOLE].plane, name)
    return render(request, "provision.html", app_name=name, trace=None, object_id="", object_type="user")


async def provision(request: web.Request) -> web.Response:
    name = request.match_info["app"]
    form = await request.post()
    object_id = str(form.get("object_id", "")).strip()
    kind: Literal["user", "group"] = "group" if form.get("object_type") == "group" else "user"
    if not object_id:
        raise BadRequestError("give the source id of a user or a group")
    error = None
    try:
        trace = await run(request, lambda p: p.provision(name, object_id, kind))
    except ProvisionFailedError as exc:
        trace, error = exc.trace, str(exc)
    return render(request, "provision.html", app_name=name, trace=trace, error=error,
                  object_id=object_id, object_type=kind)


ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/login", login_form),
    ("POST", "/login", login),
    ("POST", "/logout", logout),
    ("GET", "/", apps),
    ("GET", "/apps/{app}", app_pane),
    ("GET", "/apps/{app}/sync", sync_details),
    ("POST", "/apps/{app}/test-connection", test_connection),
    ("POST", "/apps/{app}/status", set_status),
    ("POST", "/apps/{app}/restart", restart),
    ("POST", "/apps/{app}/allow-deletes", allow_deletes),
    ("GET", "/apps/{app}/provision", provision_form),
    ("POST", "/apps/{app}/provision", provision),
]
