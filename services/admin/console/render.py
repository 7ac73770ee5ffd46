"""The console's shared state and how a page is rendered.

Jinja2 with autoescape on for every template: source data (names, reasons, payloads)
contains quotes, angle brackets and unicode, and must reach the browser as text.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import jinja2
from aiohttp import web

from services.admin.auth import Tokens
from services.admin.console.session import CSRF_FIELD, CSRF_HEADER, csrf_for
from services.admin.control import Caller, ControlPlane, NoSuchAppError

__all__ = ["CALLER", "CONSOLE", "Console", "application", "is_htmx", "parse_time", "render", "run", "when"]

T = TypeVar("T")


@dataclass
class Console:
    """What every console page needs: the control plane, the tokens, the optional Grafana link."""

    plane: ControlPlane
    tokens: Tokens
    grafana_url: str | None = None


CONSOLE = web.AppKey("console", Console)
CALLER = web.RequestKey("console_caller", Caller)


def parse_time(value: Any) -> datetime | None:
    """A record's timestamp (ISO text once the record went through ``to_builtins``)."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def when(value: Any) -> str:
    """A timestamp as people read it: ``2026-12-04 13:56:02 UTC`` (or an em dash)."""
    at = parse_time(value)
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if at else "—"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("services.admin.console", "templates"),
                             autoescape=True, trim_blocks=True, lstrip_blocks=True)
    env.filters["when"] = when
    return env


_ENV = _environment()


def is_htmx(request: web.Request) -> bool:
    return request.headers.get("HX-Request") == "true"


def render(request: web.Request, template: str, *, status: int = 200, **context: Any) -> web.Response:
    """One page (or an htmx fragment), with what every page shows: who, CSRF, links."""
    console = request.app[CONSOLE]
    caller = request.get(CALLER)
    html = _ENV.get_template(template).render(
        user=caller.by if caller else None, csrf=csrf_for(request), csrf_field=CSRF_FIELD,
        csrf_header=CSRF_HEADER, grafana_url=console.grafana_url, path=request.path, **context)
    response = web.Response(text=html, status=status, content_type="text/html", charset="utf-8")
    # Pages hold live operational data: never from a cache, never inside another site's frame.
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'; form-action 'self'")
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    return response


def application(plane: ControlPlane, name: str) -> Any:
    """The configured application ``name`` (NoSuchAppError, a 404 page, if there is none)."""
    apps = plane.loaded.config.applications if plane.loaded is not None else []
    for app in apps:
        if app.name == name:
            return app
    raise NoSuchAppError(f"no application named {name!r} (known: {', '.join(a.name for a in apps)})")


async def run(request: web.Request, call: Callable[[ControlPlane], T]) -> T:
    """Run a (blocking, Kafka-reading) control-plane operation for this page's caller."""
    console = request.app[CONSOLE]
    caller = request.get(CALLER) or Caller(by="<unauthenticated>", remote=request.remote)
    return await asyncio.to_thread(lambda: call(console.plane.as_caller(caller)))
