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


def apply(file: Annotated[Path, typer.Option("--file", "-f", help="Config file (as for validate).")],
          dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the diff; write nothing.")] = False,
          comment: CommentOpt = "", by: AuthorOpt = "", as_json: JsonOpt = False) -> None:
    """Validate FILE, show its diff against what is live, write the changed apps and sources."""
    from services.runtime.config_store import read_file

    def call() -> None:
        definitions = read_file(file, load=_load)
        with _plane(by) as plane:
            result = plane.config_apply(definitions.apps, definitions.sources, dry_run=dry_run,
                                        comment=comment)
        emit(result, as_json, _print_applied)
    _run(call)


def _print_applied(result: dict[str, Any]) -> None:
    for change in result["changes"]:
        what = f"{change['kind']} {change['name']}"
        if change["action"] == "unchanged":
            line(f"{what}: unchanged (version {change['from_version']})", style="dim")
            continue
        written = change.get("version")
        to = f"version {written}" if written else "not written (--dry-run)"
        line(f"{what}: {change['action']}, version {change['from_version']} -> {to}", style="bold")
        _print_diff(change["diff"])


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
    def call() -> None:
        kind, object_id = _one(user, group)
        with _backend(api, token_file, by) as b:
            result = b.assign(app, kind, object_id, expected=if_version, comment=comment)
        emit(result, as_json, _print_assignment_change)
    _run(call)


def unassign(app: AppArg, user: UserOpt = None, group: GroupOpt = None, comment: CommentOpt = "",
             if_version: ExpectOpt = None, by: AuthorOpt = "", api: ApiOpt = None,
             token_file: TokenFileOpt = None, as_json: JsonOpt = False) -> None:
    """Remove a user or group from APP's assignments: a new version of APP."""
    def call() -> None:
        kind, object_id = _one(user, group)
        with _backend(api, token_file, by) as b:
            result = b.unassign(app, kind, object_id, expected=if_version, comment=comment)
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
