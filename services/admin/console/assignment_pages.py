"""The assignments of an app ("Users and groups" in the Settings of its Provisioning pane):
adding and removing one user or group.

Each change is the control plane's ``assign`` / ``unassign``, exactly what
``POST /apps/{app}/assignments`` and ``scimflow assign`` run: validated, written as the app's
next version on the config topic, audited with the diff. The form carries the version the
page showed, so a change someone else saved meanwhile is refused (409) instead of
silently built upon.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from aiohttp import web

from services.admin.console.app_pages import Handler
from services.admin.console.render import CONSOLE, application, run
from services.admin.control import AssignmentKind, BadRequestError

__all__ = ["ROUTES"]

_KINDS: dict[str, AssignmentKind] = {"user": "user", "group": "group"}


def _entry(form: Any) -> tuple[AssignmentKind, str, int]:
    """(type, id, the version the form was shown with) from an add or remove form."""
    kind = _KINDS.get(str(form.get("type", "")))
    object_id = str(form.get("id", "")).strip()
    version = str(form.get("version", ""))
    if kind is None or not object_id:
        raise BadRequestError("give a type of user or group and the source id to assign")
    if not version.isdigit():
        raise BadRequestError("the page's version is missing: reload the page and try again")
    return kind, object_id, int(version)


async def _change(request: web.Request, add: bool) -> web.Response:
    name = request.match_info["app"]
    application(request.app[CONSOLE].plane, name)
    form = await request.post()
    kind, object_id, expected = _entry(form)
    comment = str(form.get("comment", "")).strip() or (
        f"{kind} {object_id} {'assigned' if add else 'unassigned'} in the console")
    if add:
        result = await run(request, lambda p: p.assign(name, kind, object_id, expected=expected,
                                                       comment=comment))
    else:
        result = await run(request, lambda p: p.unassign(name, kind, object_id, expected=expected,
                                                         comment=comment))
    done = ("assigned" if add else "unassigned") if result["changed"] else "unchanged"
    raise web.HTTPSeeOther(f"/console/apps/{quote(name, safe='')}?done={done}"
                           f"&version={result['version']}#assignments")


async def assign(request: web.Request) -> web.Response:
    return await _change(request, add=True)


async def unassign(request: web.Request) -> web.Response:
    return await _change(request, add=False)


ROUTES: list[tuple[str, str, Handler]] = [
    ("POST", "/apps/{app}/assignments", assign),
    ("POST", "/apps/{app}/assignments/remove", unassign),
]
