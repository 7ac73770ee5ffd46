"""An object mapping's scoping filters in the console: view them, add, edit and remove
filters and their clauses (attribute, operator, value), as Entra's "Source Object Scope".

The model is the config's (``mappings.<kind>.scoping_filters``, docs/scoping.md): a filter
is a group of clauses that must all hold; an object is in scope when any filter holds. The
whole set is one form; a preview validates it on the server (the operators, values and
regular expressions as the mapper compiles them: problems shown inline, at their JSON path)
and shows the diff; only the preview's Save writes it, as the app's next version on the
config topic, through the same save as attribute mappings (:mod:`.mapping_pages`).
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

from aiohttp import web

from services.admin.console.app_pages import Handler
from services.admin.console.mapping_pages import definition_to_edit, object_mapping
from services.admin.console.render import CONSOLE, application, render, run
from services.admin.control import BadRequestError
from services.runtime.config_store import DefinitionError, Problem, diff, render_diff, validate_app

__all__ = ["OPERATORS", "ROUTES", "scoping_edited"]

OPERATORS = (
    "EQUALS", "NOT EQUALS", "IS TRUE", "IS FALSE", "IS NULL", "IS NOT NULL", "REGEX MATCH",
    "NOT REGEX MATCH", "Greater_Than", "Greater_Than_OR_EQUALS", "Less_Than", "Less_Than_OR_EQUALS",
    "Includes", "ENDS_WITH", "&", "!&",
)
"""The operator names as Microsoft spells them, for the form's menu. The mapper's
``scoping_filters.OPERATORS`` is the authority (the service may not import it; a unit test
keeps the two equal), and the server's validation decides what is accepted."""

_FIELD = re.compile(r"^f(\d+)-(?:c(\d+)-)?(\w+)$")
_CLAUSE_FIELDS = ("attribute", "operator", "value")


def shown(value: Any) -> str:
    """A clause value as the form shows it (YAML's spelling of booleans)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _grouped(form: dict[str, str]) -> dict[int, dict[str, Any]]:
    """The form's fields by filter number, each with its clauses by number."""
    groups: dict[int, dict[str, Any]] = {}
    for key, value in form.items():
        found = _FIELD.match(key)
        if found is None:
            continue
        group = groups.setdefault(int(found[1]), {"clauses": {}})
        if found[2] is None:
            group[found[3]] = value.strip()
        else:
            group["clauses"].setdefault(int(found[2]), {})[found[3]] = value.strip()
    return groups


def _clause(fields: dict[str, str], before: dict[str, Any] | None) -> dict[str, Any] | None:
    """One clause as the config writes it; None for a blank row or one marked for removal.
    An unchanged value keeps its type as written (``5``, ``true``), so the diff stays quiet."""
    if fields.get("remove") == "yes" or not any(fields.get(f) for f in _CLAUSE_FIELDS):
        return None
    clause: dict[str, Any] = {k: fields.get(k, "") for k in ("attribute", "operator")}
    text = fields.get("value", "")
    if text:
        kept = before is not None and "value" in before and shown(before["value"]) == text
        clause["value"] = before["value"] if kept and before is not None else text
    return clause


def _filter(group: dict[str, Any], before: dict[str, Any] | None) -> dict[str, Any] | None:
    """One filter from its fields (None: removed, or no clause left)."""
    if group.get("remove") == "yes":
        return None
    old = (before or {}).get("clauses") or []
    clauses = [c for j, fields in sorted(group["clauses"].items())
               if (c := _clause(fields, old[j] if j < len(old) else None)) is not None]
    if not clauses:
        return None
    made: dict[str, Any] = {"clauses": clauses}
    if group.get("name"):
        made["name"] = group["name"]
    return made


def scoping_edited(definition: dict[str, Any], kind: str, form: dict[str, str]) -> dict[str, Any]:
    """``definition`` with the ``kind`` object mapping's scoping filters as the form has them.
    Blank rows are ignored; a filter with no clause left is removed (an empty filter would
    put every object in scope). Pure: validation comes after."""
    changed = copy.deepcopy(definition)
    mapping = object_mapping(changed, kind)
    old = mapping.get("scoping_filters") or []
    filters = [f for i, group in sorted(_grouped(form).items())
               if (f := _filter(group, old[i] if i < len(old) else None)) is not None]
    if filters != old:
        if filters:
            mapping["scoping_filters"] = filters
        else:
            mapping.pop("scoping_filters", None)
    return changed


def _rows(filters: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the form shows: every filter with a blank clause row, then a blank new filter."""
    blank = {"attribute": "", "operator": "", "value": "", "new": True}
    groups = []
    for f in filters:
        clauses = [{**{k: shown(c.get(k)) for k in _CLAUSE_FIELDS}, "new": False}
                   for c in f.get("clauses", [])]
        groups.append({"name": f.get("name") or "", "new": False, "clauses": [*clauses, dict(blank)]})
    return [*groups, {"name": "", "new": True, "clauses": [dict(blank), dict(blank)]}]


def _page(request: web.Request, name: str, kind: str, filters: list[dict[str, Any]], version: int, *,
          problems: list[Problem] | None = None, changes: list[str] | None = None, proposed: str = "",
          status: int = 200) -> web.Response:
    return render(request, "scoping.html", status=status, app_name=name, kind=kind, groups=_rows(filters),
                  version=version, problems=problems or [], changes=changes, proposed=proposed,
                  operators=OPERATORS)


def _kind(request: web.Request) -> str:
    kind = request.match_info["kind"]
    if kind not in ("user", "group"):
        raise BadRequestError(f"expected `user` or `group`, got {kind!r}")
    return kind


async def scoping(request: web.Request) -> web.Response:
    name, kind = request.match_info["app"], _kind(request)
    application(request.app[CONSOLE].plane, name)
    definition, version = await run(request, lambda p: definition_to_edit(p, name))
    filters = object_mapping(definition, kind).get("scoping_filters") or []
    return _page(request, name, kind, filters, version)


async def preview(request: web.Request) -> web.Response:
    """Validate the filters on the server and show the diff; nothing is written yet."""
    name, kind = request.match_info["app"], _kind(request)
    form = {k: str(v) for k, v in (await request.post()).items()}
    plane = request.app[CONSOLE].plane
    application(plane, name)
    definition, version = await run(request, lambda p: definition_to_edit(p, name))
    proposed = scoping_edited(definition, kind, form)
    filters = object_mapping(proposed, kind).get("scoping_filters") or []
    try:
        plain = validate_app(name, proposed, load=plane.load)
    except DefinitionError as exc:
        return _page(request, name, kind, filters, version, problems=exc.problems, status=400)
    return _page(request, name, kind, filters, version, changes=render_diff(diff(definition, plain)),
                 proposed=json.dumps(plain, sort_keys=True))


ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/apps/{app}/scoping/{kind}", scoping),
    ("POST", "/apps/{app}/scoping/{kind}/preview", preview),
]
