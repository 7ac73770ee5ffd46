"""Refused requests (no or a wrong token, no console session): counted, and audited by sample.

A flood of unauthenticated requests must cost a few audit records and no metric series:
one refusal per :attr:`Refusals.WINDOW` seconds is audited, with how many were refused since
the last record. The action is the matched route's (a fixed set), the app is named only if
the config has it, and the request's path goes in ``detail``, cut short: strings from a
request are never stored as if they were scimflow's own fields.
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from services.admin.control import Caller, ControlPlane
from services.runtime.records import truncated

__all__ = ["REFUSALS", "Refusals", "audit_refused"]


class Refusals:
    """Counts refused requests; says when one should be audited (one per ``WINDOW`` seconds)."""

    WINDOW = 10.0

    def __init__(self) -> None:
        self._count = 0
        self._last: float | None = None

    def take(self, now: float) -> int | None:
        """Count one refusal; the number since the last audited one if this one is to be
        audited, else None."""
        self._count += 1
        if self._last is not None and now - self._last < self.WINDOW:
            return None
        self._last, count, self._count = now, self._count, 0
        return count


REFUSALS = web.AppKey("refusals", Refusals)


async def audit_refused(request: web.Request, plane: ControlPlane, reason: str, *,
                        prefix: str = "") -> None:
    """Count ``request`` as refused and audit it if it is the first of its window."""
    refused = request.app[REFUSALS].take(time.monotonic())
    if refused is None:
        return
    resource = request.match_info.route.resource
    action = prefix + route_action(resource.canonical if resource is not None else None)
    named = request.match_info.get("app")
    app = named if named is not None and named in plane.app_names() else None
    detail = {"error": reason, "refused_since_last_record": refused, "method": request.method,
              "path": truncated(request.path, 200)}
    caller = plane.as_caller(Caller(by="<unauthenticated>", remote=request.remote))
    await asyncio.to_thread(caller.audit, action, app, detail, "rejected")


def route_action(route: str | None) -> str:
    """``/apps/{app}/stop`` -> ``stop``; ``/apps/{app}/assignments/{type}/{id}`` -> ``assignments``."""
    if route is None:
        return "unknown-route"
    fixed = [part for part in route.strip("/").split("/") if not part.startswith("{")]
    return fixed[-1] if fixed else "unknown-route"
