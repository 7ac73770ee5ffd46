"""The Activity report and the Error report: filterable, paged on the server, and one page
per record with its steps, modified properties, error code, reason and recommended action.

The records come from the control plane's ``records`` (the topic read up to its end, the
newest 10,000); the filters and the page are applied here, so the browser only ever gets
one page of one report.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiohttp import web

from services.admin.console.app_pages import Handler
from services.admin.console.render import CONSOLE, parse_time, render, run
from services.admin.control import BadRequestError
from services.runtime.redaction import REDACTED

__all__ = ["PAGE_SIZE", "ROUTES", "Filters", "matches", "page_of"]

PAGE_SIZE = 50
_KINDS = {"activity": "Activity report", "errors": "Error report"}
_READ = 10_000


@dataclass(frozen=True)
class Filters:
    """What the report's form asks for; empty fields do not filter."""

    app: str = ""
    object: str = ""
    """An object's source id, name (identity), target id or record id; part of one will do."""
    action: str = ""
    """Activity: the action (create, update, ...). Errors: the error code."""
    status: str = ""
    cycle: str = ""
    since: datetime | None = None
    until: datetime | None = None

    @classmethod
    def of(cls, query: Any) -> Filters:
        return cls(app=query.get("app", "").strip(), object=query.get("object", "").strip(),
                   action=query.get("action", "").strip(), status=query.get("status", "").strip(),
                   cycle=query.get("cycle", "").strip(), since=_time(query.get("since", ""), "since"),
                   until=_time(query.get("until", ""), "until"))


def _time(value: str, what: str) -> datetime | None:
    if not value.strip():
        return None
    found = parse_time(value.strip())
    if found is None:
        raise BadRequestError(f"{what}: expected a date and time like 2026-12-04T13:00, got {value!r}")
    return found


def matches(record: dict[str, Any], f: Filters) -> bool:
    """Whether one record (as JSON-able data) passes every filter that is set."""
    if f.app and record.get("app") != f.app:
        return False
    if f.action and f.action not in (record.get("action"), record.get("error_code")):
        return False
    if f.status and f.status != record.get("status"):
        return False
    if f.cycle and f.cycle != record.get("cycle_id"):
        return False
    at = parse_time(record.get("at"))
    if (f.since and (at is None or at < f.since)) or (f.until and (at is None or at > f.until)):
        return False
    return not f.object or _names(record, f.object.casefold())


def _names(record: dict[str, Any], wanted: str) -> bool:
    fields = ("source_id", "source_identity", "target_id", "id", "change_id", "payload")
    return any(wanted in str(record.get(k) or "").casefold() for k in fields)


def page_of(records: list[dict[str, Any]], number: int, size: int = PAGE_SIZE) -> list[dict[str, Any]]:
    start = (max(1, number) - 1) * size
    return records[start:start + size]


def _page_number(raw: str) -> int:
    if not raw:
        return 1
    if not raw.isdigit() or int(raw) < 1:
        raise BadRequestError(f"page must be a whole number from 1, got {raw!r}")
    return int(raw)


def _report(kind: str) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        f = Filters.of(request.query)
        number = _page_number(request.query.get("page", ""))
        records = await run(request, lambda p: p.records(kind, app=f.app or None, limit=_READ))
        found = [r for r in reversed(records) if matches(r, f)]  # newest first
        pages = max(1, -(-len(found) // PAGE_SIZE))
        query = {k: v for k, v in request.query.items() if k != "page" and v}
        return render(request, "records.html", kind=kind, title=_KINDS[kind], filters=f,
                      records=page_of(found, number), page=min(number, pages), pages=pages,
                      total=len(found), query=query, apps=_app_names(request),
                      request_since=request.query.get("since", ""),
                      request_until=request.query.get("until", ""))
    return handler


def _app_names(request: web.Request) -> list[str]:
    loaded = request.app[CONSOLE].plane.loaded
    return [a.name for a in loaded.config.applications] if loaded is not None else []


def _record(kind: str) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        wanted = request.match_info["id"]
        records = await run(request, lambda p: p.records(kind, limit=_READ))
        found = next((r for r in records if r.get("id") == wanted), None)
        if found is None:
            return render(request, "error.html", status=404, title="Not found",
                          message=f"no {kind} record with id {wanted} among the newest {_READ}")
        return render(request, "record.html", kind=kind, title=_KINDS[kind], record=found,
                      redacted=REDACTED)
    return handler


ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/activity", _report("activity")),
    ("GET", "/errors", _report("errors")),
    ("GET", "/activity/{id}", _record("activity")),
    ("GET", "/errors/{id}", _record("errors")),
]
