"""The config author's commands: ``validate`` a config (``--online``: against its targets),
``expr`` (one expression, or the resource one object maps to), ``test-connection``.

``expr --object`` runs the pipeline's own code on one object: the mapper's planner (scope,
mappings) with the group graph the mapper would hold, then the writer's create decision
and request body; only reading the object from the file stands in for ingest.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
import typer

from schemas import DirectoryChange
from services.cli import control
from services.cli.options import ApiOpt, AppArg, ByOpt, JsonOpt, OptionalConfigOpt, TokenFileOpt
from services.cli.render import emit, fail, line, out, print_capabilities, print_connection, print_json
from services.runtime.config import FileSource, LoadedConfig, SecretScope, load_config
from services.runtime.errors import ConfigError, ScimflowError
from services.runtime.settings import load_settings

if TYPE_CHECKING:
    from services.ingest.objects import SourceObject

__all__ = ["connection_test", "expr", "load_checked", "validate"]


def load_checked(config: Path, *, resolve_secrets: bool = True, secrets: SecretScope = "all") -> LoadedConfig:
    """The config, with every mapping compiled and every target path checked (ConfigError);
    the secrets of ``secrets`` resolved (if ``resolve_secrets``)."""
    from services.mapper.main import compile_apps
    from services.scim.paths import validate_path

    loaded = load_config(config, resolve_secrets=resolve_secrets, secrets=secrets)
    compile_apps(loaded)
    for i, app in enumerate(loaded.config.applications):
        for j, attr in enumerate(app.mappings.user.attributes):
            try:
                validate_path(attr.target)
            except ValueError as exc:
                raise loaded.error(f"$.applications[{i}].mappings.user.attributes[{j}].target",
                                   str(exc)) from None
    return loaded


def validate(config: Annotated[Path, typer.Argument(help="Config file to check.")],
             online: Annotated[bool, typer.Option(
                 "--online", help="Also read each app's target capabilities (/ServiceProviderConfig, "
                                  "/ResourceTypes, /Schemas) and check the mappings against them.")]
             = False) -> None:
    """Check a config file: structure, mappings, expressions, secrets (--online: and targets)."""
    try:
        loaded = load_checked(config)
    except ScimflowError as exc:
        raise fail(exc) from None
    apps = ", ".join(a.name for a in loaded.config.applications)
    out.print(f"{config}: OK ({len(loaded.config.applications)} applications: {apps}; "
              f"{len(loaded.config.sources)} sources)")
    if online and not _validate_online(loaded):
        raise typer.Exit(1)


def _validate_online(loaded: LoadedConfig) -> bool:
    """Each app's target capabilities and mapping problems; False if any app has problems or
    its target could not be read (a target that serves no capabilities is not a problem)."""
    import asyncio

    from services.scim.capabilities import check_mappings

    fine = True
    for app, found in zip(loaded.config.applications, asyncio.run(_discover_all(loaded)), strict=True):
        line(f"{app.name} {app.target.base_url}", style="bold")
        if isinstance(found, str):
            line(f"  could not read the target: {found}", style="red")
            fine = False
            continue
        problems = check_mappings(app, found, loaded)
        print_capabilities(msgspec.to_builtins(found), [msgspec.to_builtins(p) for p in problems])
        if found.failed:
            line("  the target did not answer as it should (see above): its capabilities are not known",
                 style="red")
        fine = fine and not problems and not found.failed
    return fine


async def _discover_all(loaded: LoadedConfig) -> list[Any]:
    """Every app's Capabilities, read concurrently; a message instead where no client could be made."""
    import asyncio

    from services.scim.capabilities import discover
    from services.scim.client import client_for

    settings = load_settings()

    async def one(app: Any) -> Any:
        try:
            client = client_for(app, loaded, settings)
        except ScimflowError as exc:
            return str(exc)
        async with client:
            return await discover(client)

    return list(await asyncio.gather(*(one(app) for app in loaded.config.applications)))


def expr(
    expression: Annotated[str | None, typer.Argument(help="An Entra mapping expression.")] = None,
    attrs: Annotated[str, typer.Option("--attrs", help="Source attributes as a JSON object.")] = "{}",
    config: Annotated[Path | None, typer.Option(help="Show one object's mapping under this config.")] = None,
    app: Annotated[str | None, typer.Option(help="Application (with --config).")] = None,
    object_id: Annotated[str | None, typer.Option(
        "--object", help="Source object id (with --config).")] = None,
    source_file: Annotated[Path | None, typer.Option(help="Directory file (default: the config's).")] = None,
) -> None:
    """Evaluate one expression, or show the SCIM resource one object maps to (--config)."""
    try:
        if config is not None:
            _expr_object(config, app, object_id, source_file)
            return
        if expression is None:
            raise ConfigError("give an EXPRESSION, or --config with --app and --object")
        _expr_one(expression, attrs)
    except ScimflowError as exc:
        raise fail(exc) from None


def _expr_one(expression: str, attrs: str) -> None:
    from services.mapper.expressions import IGNORE, compile_expression

    try:
        values = json.loads(attrs)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--attrs is not valid JSON: {exc}") from None
    if not isinstance(values, dict):
        raise ConfigError("--attrs must be a JSON object")
    result = compile_expression(expression).evaluate(values)
    print_json({"ignored": True} if result is IGNORE else result)


def _expr_object(config: Path, app_name: str | None, object_id: str | None,
                 source_file: Path | None) -> None:
    """The Entra 'test an expression' harness: the full mapped resource of one object."""
    from services.cli.apps import evaluate_change
    from services.ingest.sources.file import read_directory
    from services.mapper.main import compile_apps

    if not app_name or not object_id:
        raise ConfigError("--config needs --app and --object")
    loaded = load_checked(config, resolve_secrets=False)
    compiled = next((c for c in compile_apps(loaded) if c.app.name == app_name), None)
    if compiled is None:
        raise ConfigError(f"no application named {app_name!r}", file=str(config))
    files = [s for s in loaded.config.sources if isinstance(s, FileSource)]
    if source_file is None and not files:
        raise ConfigError("the config has no file source: give --source-file", file=str(config))
    path = source_file or loaded.resolve_path(files[0].path)
    directory = read_directory(path)
    if ("user", object_id) not in directory:
        raise ConfigError(f"no user with id {object_id!r} in {path}")
    source_name = files[0].name if files else loaded.config.sources[0].name
    changes = {key: _as_change(source_name, obj) for key, obj in directory.items()}
    shown = evaluate_change(compiled, changes["user", object_id], changes)
    if "error" in shown:
        raise ConfigError(shown["error"])
    if shown["operation"] is None:
        raise ConfigError(f"application {app_name!r} does not provision users")
    print_json({
        "operation": shown["operation"],
        "scope": shown["reason"],
        "matching": shown.get("matching", []),
        "resource_on_create": shown.get("resource"),
        "only_on_create": shown.get("only_on_create", []),
        "select_unique_value": shown.get("unique_candidates", {}),
        "references": shown.get("references", {}),
    })


def _as_change(source: str, obj: SourceObject) -> DirectoryChange:
    """The change ingest would publish for ``obj`` (an upsert from a full read)."""
    return DirectoryChange(source=source, object_type=obj.object_type, object_id=obj.object_id,
                           operation="upsert", attributes=obj.attributes,
                           memberships=list(obj.memberships), members=list(obj.members),
                           change_id="expr", observed_at=datetime.now(UTC))


def connection_test(app: AppArg, by: ByOpt = "", config: OptionalConfigOpt = None, api: ApiOpt = None,
                    token_file: TokenFileOpt = None, as_json: JsonOpt = False) -> None:
    """Entra's test connection: GET /Users?filter=<matching attribute> eq "<random GUID>";
    then what the target declares, and the mappings it cannot take (exit 0: reported only)."""
    def call() -> None:
        with control.backend(api, token_file, config, by, secrets=True) as plane:
            result = plane.test_connection(app)
        emit(result, as_json, print_connection)
        if not result["ok"]:
            raise typer.Exit(1)
    control.run(call)
