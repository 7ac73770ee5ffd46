"""The Mappings section of an app: object mappings (enabled, actions, scoping filters) and
every attribute mapping (type, source or expression, target, matching precedence, apply,
default); editing one attribute mapping (or adding, or removing one), and an object
mapping's enabled switch and target object actions (Create, Update, Delete); and testing a
previewed edit on one source object (what it would change in that object's target account).

An edit is written as the app's next version on the config topic
(:mod:`services.runtime.config_store`) through the control plane, so it is validated, audited
and guarded against concurrent edits like ``scimflow apply``. The change is shown first: the
form posts to a preview (validation problems inline, or the diff), and only the preview's
Save writes, based on the version the edit started from.

What is edited: the app's current version on the config topic, or, before its first
version, its definition in the config file (``${VAR}`` unexpanded, secrets as references).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from aiohttp import web

from services.admin.console.app_pages import Handler
from services.admin.console.render import CONSOLE, application, is_htmx, render, run
from services.admin.control import BadRequestError, ControlPlane, NoSuchAppError
from services.runtime.config_store import DefinitionError, Problem, diff, read_file, render_diff, validate_app

__all__ = ["ROUTES", "definition_to_edit", "edited", "object_edited", "object_mapping"]

_KINDS = ("user", "group")
_FIELDS = ("target", "type", "source", "expression", "value", "default", "apply", "matching")
_TYPES = ("direct", "constant", "expression", "none")
_ACTIONS = ("create", "update", "delete")


def definition_to_edit(plane: ControlPlane, name: str) -> tuple[dict[str, Any], int]:
    """The app's definition to edit and its version (0: not on the config topic yet)."""
    try:
        found = plane.config_get(name)
    except NoSuchAppError:
        assert plane.loaded is not None
        apps = read_file(Path(plane.loaded.file), load=plane.load).apps
        return copy.deepcopy(apps[name]), 0
    return copy.deepcopy(found["definition"]), int(found["version"])


def object_mapping(definition: dict[str, Any], kind: str) -> dict[str, Any]:
    """The ``kind`` object mapping of ``definition`` (itself, to edit in place)."""
    mapping = (definition.get("mappings") or {}).get(kind)
    if kind not in _KINDS or not isinstance(mapping, dict):
        raise BadRequestError(f"this application has no {kind} mapping")
    return mapping


def _attributes(definition: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    attributes: list[dict[str, Any]] = object_mapping(definition, kind).setdefault("attributes", [])
    return attributes


def edited(definition: dict[str, Any], kind: str, index: int | None,
           form: dict[str, str]) -> dict[str, Any]:
    """``definition`` with attribute mapping ``index`` of ``kind`` replaced by the form's
    fields (``index`` None: added; ``remove``: taken out). Pure: validation comes after."""
    changed = copy.deepcopy(definition)
    attributes = _attributes(changed, kind)
    if index is not None and not 0 <= index < len(attributes):
        raise BadRequestError(f"no attribute mapping {index} in the {kind} mapping")
    if form.get("remove") == "yes":
        if index is None:
            raise BadRequestError("there is nothing to remove in a new attribute mapping")
        del attributes[index]
        return changed
    mapping = _from_form(form)
    if index is None:
        attributes.append(mapping)
    else:
        attributes[index] = mapping
    return changed


def object_edited(definition: dict[str, Any], kind: str, form: dict[str, str]) -> dict[str, Any]:
    """``definition`` with the ``kind`` object mapping's ``enabled`` and ``actions`` as the
    form's checkboxes say. A field already so is left as written (an absent default stays
    absent), so the diff shows only what the administrator changed. Pure."""
    changed = copy.deepcopy(definition)
    _attributes(changed, kind)  # the object mapping exists
    mapping = changed["mappings"][kind]
    enabled = form.get("enabled") == "yes"
    if enabled != mapping.get("enabled", True):
        mapping["enabled"] = enabled
    actions = [a for a in _ACTIONS if form.get(f"action_{a}") == "yes"]
    if set(actions) != set(mapping.get("actions", _ACTIONS)):
        mapping["actions"] = actions
    return changed


def _from_form(form: dict[str, str]) -> dict[str, Any]:
    """The attribute mapping as the config writes it: only the fields given."""
    mapping: dict[str, Any] = {}
    for field in _FIELDS:
        value = form.get(field, "").strip()
        if not value or (field == "type" and value == "direct") or (field == "apply" and value == "always"):
            continue
        mapping[field] = int(value) if field == "matching" and value.isdigit() else value
    return mapping


def _index(raw: str) -> int | None:
    if raw == "new":
        return None
    if not raw.isdigit():
        raise BadRequestError(f"expected an attribute mapping's number or `new`, got {raw!r}")
    return int(raw)


async def mappings(request: web.Request) -> web.Response:
    name = request.match_info["app"]
    application(request.app[CONSOLE].plane, name)
    definition, version = await run(request, lambda p: definition_to_edit(p, name))
    saved = request.query.get("saved", "")
    return render(request, "mappings.html", app_name=name, definition=definition, version=version,
                  saved=int(saved) if saved.isdigit() else None, actions=_ACTIONS)


async def edit_form(request: web.Request) -> web.Response:
    name, kind = request.match_info["app"], request.match_info["kind"]
    index = _index(request.match_info["index"])
    application(request.app[CONSOLE].plane, name)
    definition, version = await run(request, lambda p: definition_to_edit(p, name))
    attributes = _attributes(definition, kind)
    if index is not None and not 0 <= index < len(attributes):
        raise BadRequestError(f"no attribute mapping {index} in the {kind} mapping")
    current = attributes[index] if index is not None else {}
    values = {f: "" if current.get(f) is None else str(current.get(f)) for f in _FIELDS}
    return _edit_page(request, name, kind, request.match_info["index"], values, version)


def _edit_page(request: web.Request, name: str, kind: str, index: str, values: dict[str, str],
               version: int, *, problems: list[Problem] | None = None,
               changes: list[str] | None = None, proposed: str = "", status: int = 200) -> web.Response:
    return render(request, "mapping_edit.html", status=status, app_name=name, kind=kind, index=index,
                  values=values, version=version, problems=problems or [], changes=changes,
                  proposed=proposed, types=_TYPES)


async def preview(request: web.Request) -> web.Response:
    """Validate the edit and show its diff; nothing is written yet."""
    name, kind, raw = request.match_info["app"], request.match_info["kind"], request.match_info["index"]
    form = {k: str(v) for k, v in (await request.post()).items()}
    plane = request.app[CONSOLE].plane
    application(plane, name)
    definition, version = await run(request, lambda p: definition_to_edit(p, name))
    values = {f: form.get(f, "") for f in (*_FIELDS, "remove")}
    proposed = edited(definition, kind, _index(raw), form)
    try:
        plain = validate_app(name, proposed, load=plane.load)
    except DefinitionError as exc:
        return _edit_page(request, name, kind, raw, values, version, problems=exc.problems, status=400)
    changes = render_diff(diff(definition, plain))
    return _edit_page(request, name, kind, raw, values, version, changes=changes,
                      proposed=json.dumps(plain, sort_keys=True))


async def save(request: web.Request) -> web.Response:
    """Write the previewed definition as the app's next version (if it is still current)."""
    name = request.match_info["app"]
    form = await request.post()
    application(request.app[CONSOLE].plane, name)
    expected = str(form.get("version", ""))
    if not expected.isdigit():
        raise BadRequestError("the preview's version is missing: preview the change again")
    try:
        definition = json.loads(str(form.get("definition", "")))
    except json.JSONDecodeError:
        raise BadRequestError("the previewed definition is missing: preview the change again") from None
    comment = str(form.get("comment", "")).strip() or "mapping edited in the console"
    result = await run(request, lambda p: p.config_put(name, definition, expected=int(expected),
                                                       comment=comment))
    raise web.HTTPSeeOther(f"/console/apps/{name}/mappings?saved={result['version']}")


async def object_preview(request: web.Request) -> web.Response:
    """Validate an object mapping's new switches and show the diff; nothing is written yet."""
    name, kind = request.match_info["app"], request.match_info["kind"]
    form = {k: str(v) for k, v in (await request.post()).items()}
    plane = request.app[CONSOLE].plane
    application(plane, name)
    definition, version = await run(request, lambda p: definition_to_edit(p, name))
    proposed = object_edited(definition, kind, form)
    shown = proposed["mappings"][kind]
    page: dict[str, Any] = {"app_name": name, "kind": kind, "version": version, "actions": _ACTIONS,
                            "enabled": shown.get("enabled", True),
                            "chosen": list(shown.get("actions", _ACTIONS))}
    try:
        plain = validate_app(name, proposed, load=plane.load)
    except DefinitionError as exc:
        return render(request, "object_mapping_edit.html", status=400, problems=exc.problems,
                      changes=None, **page)
    return render(request, "object_mapping_edit.html", problems=[],
                  changes=render_diff(diff(definition, plain)),
                  proposed=json.dumps(plain, sort_keys=True), **page)


async def test_object(request: web.Request) -> web.Response:
    """The previewed definition planned for one source object, next to the live version, and
    the full SCIM resource it maps to: the mapper's own engine (the control plane's previewer
    and evaluator), on the object's latest change on the directory topic. Read only: nothing
    is written or audited."""
    name = request.match_info["app"]
    form = await request.post()
    application(request.app[CONSOLE].plane, name)
    object_id = str(form.get("object_id", "")).strip()
    if not object_id:
        raise BadRequestError("give the source id of a user or a group to test on")
    try:
        definition = json.loads(str(form.get("definition", "")))
    except json.JSONDecodeError:
        raise BadRequestError("the previewed definition is missing: preview the change again") from None
    found = await run(request, lambda p: p.config_preview(name, definition, ids=[object_id], sample=1))
    samples = [s for a in found["apps"] for s in a["samples"] if s["object_id"] == object_id]
    sample = samples[0] if samples else {"object_id": object_id, "found": False, "changes": []}
    evaluated = await run(request, lambda p: p.config_evaluate(name, object_id, definition))
    template = "_object_test.html" if is_htmx(request) else "object_test.html"
    return render(request, template, app_name=name, sample=sample, evaluated=evaluated,
                  resource=_pretty(evaluated.get("resource")),
                  compared_with=found["apps"][0]["compared_with"] if found["apps"] else "")


def _pretty(resource: Any) -> str:
    """The resource as the target would receive it (indented for reading; escaped on render)."""
    return "" if resource is None else json.dumps(resource, indent=2, ensure_ascii=False)


ROUTES: list[tuple[str, str, Handler]] = [
    ("POST", "/apps/{app}/mappings/test", test_object),
    ("POST", "/apps/{app}/object-mappings/{kind}/preview", object_preview),
    ("GET", "/apps/{app}/mappings", mappings),
    ("GET", "/apps/{app}/mappings/{kind}/{index}", edit_form),
    ("POST", "/apps/{app}/mappings/{kind}/{index}/preview", preview),
    ("POST", "/apps/{app}/mappings/save", save),
]
