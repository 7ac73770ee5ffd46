"""Applications as data, kubectl-style: ``apply -f FILE``, ``get apps``, ``get app A -o yaml``,
``history A``, ``rollback A --to N``, on the ``control.config`` topic; and Entra's "Users and
groups": ``assign``, ``unassign``, ``get assignments A``.

``apply`` validates the whole file as ``validate`` does (file:line errors; secrets stay
references and are not resolved: the workers resolve them), shows the diff against what
is live, and writes each changed app and source as a new version; unchanged ones are not
rewritten. Each change is audited under ``--by`` (default: the OS user). These commands
talk to Kafka directly (``SCIMFLOW_KAFKA_BOOTSTRAP``); the admin API has the same
operations at ``/apps/{app}/config``. The assignment commands go through the admin API when
``--api``/``SCIMFLOW_ADMIN_URL`` is set (the token's name is the author), else to Kafka.
"""

from __future__ import annotations

import contextlib
import getpass
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
import yaml

from services.cli.options import ApiOpt, AppArg, JsonOpt, TokenFileOpt
from services.cli.render import emit, fail, line, out, print_json
from services.runtime.config import LoadedConfig
from services.runtime.errors import ConfigError, ScimflowError
from services.runtime.settings import load_settings

if TYPE_CHECKING:
    from services.admin.control import AssignmentKind, Backend, ControlPlane
    from services.runtime.config_store import FileDefinitions

__all__ = ["apply", "assign", "get", "history", "rollback", "unassign"]

get = typer.Typer(name="get", no_args_is_help=True, help="Show what the config topic holds.")

AuthorOpt = Annotated[str, typer.Option("--by", help="Author of the change, for history and audit "
                                                      "(default: the OS user).")]
CommentOpt = Annotated[str, typer.Option("--comment", "-m", help="Why: kept with the version.")]


def _load(path: Path) -> LoadedConfig:
    """``scimflow validate``'s checks (structure, mappings, expressions, target paths)."""
    from services.cli.config_tools import load_checked

    return load_checked(path, resolve_secrets=False)


@contextlib.contextmanager
def _plane(by: str = "") -> Iterator[ControlPlane]:
    from services.admin.control import Caller, ControlPlane

    settings = load_settings()
    if not settings.kafka_bootstrap:
        raise ConfigError("SCIMFLOW_KAFKA_BOOTSTRAP is not set")
    plane = ControlPlane(settings, settings.kafka_bootstrap, None,
                         Caller(by=by or getpass.getuser()), load=_load)
    try:
        yield plane
    finally:
        plane.close()


def _run(call: Any) -> None:
    try:
        call()
    except ScimflowError as exc:
        raise fail(exc) from None


IdsOpt = Annotated[str | None, typer.Option(
    "--ids", help="With --preview: these source object ids (comma-separated), changed or not.")]
SampleOpt = Annotated[int, typer.Option(
    "--sample", help="With --preview: how many of the changed objects to show per app.")]


def apply(file: Annotated[Path, typer.Option("--file", "-f", help="Config file (as for validate).")],
          dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the diff; write nothing.")] = False,
          preview: Annotated[bool, typer.Option(
              "--preview", help="Show the diff and, per object, the target attributes the new "
                                "mappings would change; write nothing.")] = False,
          ids: IdsOpt = None, sample: SampleOpt = 5,
          comment: CommentOpt = "", by: AuthorOpt = "", as_json: JsonOpt = False) -> None:
    """Validate FILE, show its diff against what is live, write the changed apps and sources."""
    from services.runtime.config_store import read_file

    def call() -> None:
        if not preview and (ids is not None or sample != 5):
            raise ConfigError("--ids and --sample go with --preview")
        definitions = read_file(file, load=_load)
        with _plane(by) as plane:
            result = plane.config_apply(definitions.apps, definitions.sources,
                                        dry_run=dry_run or preview, comment=comment)
            if preview:
                wanted = [i.strip() for i in ids.split(",") if i.strip()] if ids else None
                result["preview"] = _preview(plane, definitions, result["changes"], wanted, sample)
        emit(result, as_json, _print_applied)
    _run(call)


def _preview(plane: ControlPlane, definitions: FileDefinitions, changes: list[dict[str, Any]],
             ids: list[str] | None, sample: int) -> dict[str, Any]:
    """Each created or updated app of the file, previewed against its live version."""
    from services.mapper.main import compile_apps

    compiled = {c.app.name: c for c in compile_apps(definitions.loaded)}
    names = [c["name"] for c in changes if c["kind"] == "app" and c["action"] != "unchanged"]
    return _previews(plane, {name: compiled[name] for name in names}, ids, sample)


def preview_definition(plane: ControlPlane, app: str, definition: dict[str, Any],
                       ids: list[str] | None, sample: int) -> dict[str, Any]:
    """One app's new definition previewed against its live version: what the admin API's
    ``POST /apps/{app}/config/preview`` answers (passed to the admin service when the CLI
    starts it: the admin may not import the mapper's engine)."""
    from services.mapper.main import compile_apps
    from services.runtime.config_store import load_app

    [compiled] = compile_apps(load_app({**definition, "name": app}, _load))
    return _previews(plane, {app: compiled}, ids, sample)


def evaluate_object(plane: ControlPlane, app: str, definition: dict[str, Any],
                    object_id: str) -> dict[str, Any]:
    """The SCIM resource one source object maps to under one app's definition: the mapper's
    planner on the object's latest change on ``directory.changes``, then the writer's own
    create decision, as the body it would POST (what the admin API's
    ``POST /apps/{app}/config/evaluate`` answers; passed in as ``preview_definition`` is)."""
    from services.cli.preview import read_objects
    from services.mapper.main import compile_apps
    from services.runtime.config_store import load_app

    [compiled] = compile_apps(load_app({**definition, "name": app}, _load))
    objects = read_objects(plane.bootstrap, plane.topics)
    change = objects.get(("user", object_id)) or objects.get(("group", object_id))
    if change is None:
        return {"object_id": object_id, "found": False}
    return evaluate_change(compiled, change, objects)


def evaluate_change(compiled: Any, change: Any, objects: dict[Any, Any]) -> dict[str, Any]:
    """What one change maps to under one compiled app (``objects``: every object the change
    may refer to, for nested groups), as :func:`evaluate_object` answers it."""
    from services.mapper.groups import GroupGraph
    from services.mapper.planner import plan
    from services.scim.paths import build_resource, read_path
    from services.writer.decide import REDACTED, after_lookup

    shown: dict[str, Any] = {"object_type": change.object_type, "object_id": change.object_id,
                             "found": True, "operation": None, "reason": None}
    graph = GroupGraph()  # nested groups, as the mapper's group feed knows them
    for other in objects.values():
        graph.apply(other)
    try:
        cmd = plan(compiled, change, graph)
    except Exception as exc:  # the mapper reports any mapping failure as an error record
        return {**shown, "error": f"mapping failed: {type(exc).__name__}: {exc}"}
    if cmd is None:
        return {**shown, "reason": f"this application does not provision {change.object_type}s"}
    shown |= {"operation": cmd.operation, "reason": cmd.reason, "display_name": cmd.display_name}
    if cmd.operation != "upsert":
        return shown
    create = after_lookup(cmd, None, frozenset({"create"}), read_path)
    hidden = dict.fromkeys(cmd.redacted, REDACTED)  # as the writer reports them
    kind = "Group" if change.object_type == "group" else "User"
    return {**shown, "resource": build_resource({**create.changes, **hidden}, schemas_for=kind),
            "only_on_create": sorted(cmd.create_only), "references": dict(cmd.references),
            "members": sorted(cmd.members), "unique_candidates": dict(cmd.unique_candidates),
            "matching": [{"attribute": m.target, "value": hidden.get(m.target, m.value),
                          "precedence": m.precedence} for m in cmd.matching]}


def _previews(plane: ControlPlane, compiled: dict[str, Any], ids: list[str] | None,
              sample: int) -> dict[str, Any]:
    import msgspec

    from services.admin.control import NoSuchAppError
    from services.cli.preview import HEADER, preview_app, read_managed, read_objects
    from services.mapper.main import compile_apps
    from services.runtime.config_store import load_app

    objects = read_objects(plane.bootstrap, plane.topics)
    apps = []
    for name, new in compiled.items():
        try:
            live = plane.config_get(name)
        except NoSuchAppError:
            live = None
        old = compile_apps(load_app(live["definition"], _load))[0] if live else None
        apps.append(preview_app(new, old, objects, ids=ids, sample=sample,
                                compared_with=f"live version {live['version']}" if live else "",
                                managed=read_managed(plane.bootstrap, plane.topics, name)))
    return {"compares": HEADER, "source_objects": len(objects), "apps": msgspec.to_builtins(apps)}


def _print_applied(result: dict[str, Any]) -> None:
    for change in result["changes"]:
        what = f"{change['kind']} {change['name']}"
        if change["action"] == "unchanged":
            line(f"{what}: unchanged (version {change['from_version']})", style="dim")
            continue
        written = change.get("version")
        mode = "--preview" if "preview" in result else "--dry-run"
        to = f"version {written}" if written else f"not written ({mode})"
        line(f"{what}: {change['action']}, version {change['from_version']} -> {to}", style="bold")
        _print_diff(change["diff"])
    if "preview" in result:
        _print_preview(result["preview"])


def _print_preview(preview: dict[str, Any]) -> None:
    line(f"preview: {preview['compares']}; {preview['source_objects']} objects on directory.changes",
         style="bold")
    if not preview["apps"]:
        line("  no app's definition changes", style="dim")
    for app in preview["apps"]:
        line(f"app {app['app']} (against {app['compared_with']}): {app['changed']} of "
             f"{app['objects']} objects would change ({app['managed']} managed in the target); "
             f"showing {len(app['samples'])}", style="bold")
        for obj in app["samples"]:
            _print_object(obj)


def _print_object(obj: dict[str, Any]) -> None:
    what = f"  {obj['object_type']} {obj['object_id']}"
    if not obj["found"]:
        line(f"{what}: not on directory.changes (no such object, or older than its retention)",
             style="red")
        return
    before, after = obj["operation"]
    target = f", target id {obj['target_id']}" if obj["target_id"] else ""
    line(f"{what} ({obj['display_name']}{target}): {_pair(*obj['operation'])} ({_pair(*obj['reason'])})",
         style=None if obj["changed"] else "dim")
    if obj["error"]:
        line(f"    {obj['error']}", style="red")
    if not obj["changes"] and not obj["error"] and before == after:
        line("    no change", style="dim")
    for c in obj["changes"]:
        _print_attribute(c)


def _pair(old: str | None, new: str | None) -> str:
    """``new``, or ``old -> new`` when it changes; None: the app does not handle the object."""
    if old == new:
        return new or "(not handled)"
    return f"{old or '(not handled)'} -> {new or '(not handled)'}"


def _print_attribute(c: dict[str, Any]) -> None:
    import json

    def show(v: Any) -> str:
        return json.dumps(v, ensure_ascii=False, sort_keys=True, default=str)

    note = "" if c["when"] == "always" else f" ({c['when'].replace('_', ' ')})"
    if c["known"]:
        same = " (the same: no write)" if c["has"] and c["written"] == c["new"] else ""
        note += f" [last written: {show(c['written'])}{same}]"
    if not c["had"]:
        line(f"    + {c['path']}: {show(c['new'])}{note}", style="green")
    elif not c["has"]:
        line(f"    - {c['path']}: {show(c['old'])}{note}", style="red")
    else:
        line(f"    ~ {c['path']}: {show(c['old'])} -> {show(c['new'])}{note}", style="yellow")


def _print_diff(lines: list[str]) -> None:
    styles = {"+": "green", "-": "red", "~": "yellow"}
    for text in lines:
        line(f"  {text}", style=styles.get(text[:1]))


@get.command("apps")
def get_apps(as_json: JsonOpt = False) -> None:
    """The live applications: current version, author, time, comment."""
    def call() -> None:
        with _plane() as plane:
            emit(plane.config_apps(), as_json, _print_versions)
    _run(call)


def _print_versions(versions: list[dict[str, Any]]) -> None:
    from rich.table import Table

    table = Table("name", "version", "author", "at", "comment")
    for v in versions:
        table.add_row(v["name"], str(v["version"]), v["author"], v["at"], v["comment"])
    out.print(table)


@get.command("app")
def get_app(app: AppArg,
            output: Annotated[Literal["yaml", "json"], typer.Option(
                "--output", "-o", help="yaml: a file `apply -f` takes back unchanged.")] = "yaml",
            version: Annotated[int | None, typer.Option(help="An earlier version.")] = None) -> None:
    """One application's definition, with the live sources: a file `apply` round-trips."""
    def call() -> None:
        with _plane() as plane:
            found = plane.config_get(app, version)
            sources = [s["definition"] for s in plane.config_sources()]
        document = {"applications": [found["definition"]], "sources": sources}
        if output == "json":
            emit(document, True, print_json)
        else:
            typer.echo(f"# {app} version {found['version']} by {found['author']} at {found['at']}")
            typer.echo(yaml.safe_dump(document, sort_keys=False, allow_unicode=True), nl=False)
    _run(call)


def history(app: AppArg, as_json: JsonOpt = False) -> None:
    """Every version of APP, oldest first: who, when, why, and what it changed."""
    def call() -> None:
        with _plane() as plane:
            emit(plane.config_history(app), as_json, _print_history)
    _run(call)


def _print_history(versions: list[dict[str, Any]]) -> None:
    for v in versions:
        note = " (removed)" if v["removed"] else ""
        note += f" (rollback to {v['rollback_of']})" if v["rollback_of"] else ""
        line(f"version {v['version']}{note}  {v['at']}  {v['author']}  {v['comment']}", style="bold")
        _print_diff(v["diff"])


def rollback(app: AppArg, to: Annotated[int, typer.Option("--to", help="The version to restore.")],
             comment: CommentOpt = "", by: AuthorOpt = "", as_json: JsonOpt = False) -> None:
    """Write version TO of APP again, as its newest version (validated again first)."""
    def call() -> None:
        with _plane(by) as plane:
            result = plane.config_rollback(app, to, comment=comment)
        emit({"changes": [result]}, as_json, _print_applied)
    _run(call)


# -- assignments ("Users and groups") --------------------------------------------------------

UserOpt = Annotated[str | None, typer.Option("--user", help="A source user id.")]
GroupOpt = Annotated[str | None, typer.Option("--group", help="A source group id.")]
ExpectOpt = Annotated[int | None, typer.Option(
    "--if-version", help="Only if the app is still at this version (else: a conflict).")]


@contextlib.contextmanager
def _backend(api: str | None, token_file: Path | None, by: str) -> Iterator[Backend]:
    """The admin API when a URL is given (or SCIMFLOW_ADMIN_URL), else Kafka directly."""
    if api:
        from services.cli.control import backend

        with backend(api, token_file, None, by) as client:
            yield client
        return
    with _plane(by) as plane:
        yield plane


def _one(user: str | None, group: str | None) -> tuple[AssignmentKind, str]:
    if (user is None) == (group is None):
        raise ConfigError("give exactly one of --user ID or --group ID")
    return ("user", user) if user is not None else ("group", group or "")


def assign(app: AppArg, user: UserOpt = None, group: GroupOpt = None, comment: CommentOpt = "",
           if_version: ExpectOpt = None, by: AuthorOpt = "", api: ApiOpt = None,
           token_file: TokenFileOpt = None, as_json: JsonOpt = False) -> None:
    """Assign a user or group to APP (Entra's "Users and groups"): a new version of APP."""
    _edit_assignments("assign", app, user, group, comment, if_version, by, api, token_file, as_json)


def unassign(app: AppArg, user: UserOpt = None, group: GroupOpt = None, comment: CommentOpt = "",
             if_version: ExpectOpt = None, by: AuthorOpt = "", api: ApiOpt = None,
             token_file: TokenFileOpt = None, as_json: JsonOpt = False) -> None:
    """Remove a user or group from APP's assignments: a new version of APP."""
    _edit_assignments("unassign", app, user, group, comment, if_version, by, api, token_file, as_json)


def _edit_assignments(op: Literal["assign", "unassign"], app: str, user: str | None, group: str | None,
                      comment: str, if_version: int | None, by: str, api: str | None,
                      token_file: Path | None, as_json: bool) -> None:
    def call() -> None:
        kind, object_id = _one(user, group)
        with _backend(api, token_file, by) as b:
            result = getattr(b, op)(app, kind, object_id, expected=if_version, comment=comment)
        emit(result, as_json, _print_assignment_change)
    _run(call)


@get.command("assignments")
def get_assignments(app: AppArg, api: ApiOpt = None, token_file: TokenFileOpt = None,
                    as_json: JsonOpt = False) -> None:
    """The users and groups assigned to APP, at its current version."""
    def call() -> None:
        with _backend(api, token_file, "") as b:
            emit(b.assignments(app), as_json, _print_assignments)
    _run(call)


def _print_assignment_change(result: dict[str, Any]) -> None:
    if not result["changed"]:
        line(f"app {result['app']}: unchanged (version {result['version']})", style="dim")
    else:
        line(f"app {result['app']}: version {result['from_version']} -> {result['version']}", style="bold")
        _print_diff(result["diff"])
    _print_assignments(result)


def _print_assignments(found: dict[str, Any]) -> None:
    line(f"{found['app']} version {found['version']}: scope {found['scope']}"
         + (", nested groups expanded" if found["expand_nested_groups"] else ""))
    if found["scope"] == "all":
        line("  (scope `all`: everyone is provisioned; assignments do not limit it)", style="yellow")
    for kind in ("users", "groups"):
        line(f"  {kind}: {', '.join(found[kind]) if found[kind] else '(none)'}")
