"""The Mappings section of an app: object mappings (enabled, actions, scoping filters) and
every attribute mapping (type, source or expression, target, matching precedence, apply,
default), as the running config has them."""

from __future__ import annotations

from aiohttp import web

from services.admin.console.app_pages import Handler
from services.admin.console.render import CONSOLE, application, render

__all__ = ["ROUTES"]


async def mappings(request: web.Request) -> web.Response:
    name = request.match_info["app"]
    config = application(request.app[CONSOLE].plane, name)
    return render(request, "mappings.html", app_name=name, config=config)


ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/apps/{app}/mappings", mappings),
]
