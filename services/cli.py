"""The ``scimflow`` command line: thin wiring over the services and the runtime."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from schemas import ActivityRecord, DirectoryChange, ErrorRecord
from services.runtime.config import FileSource, LoadedConfig, load_config
from services.runtime.errors import ConfigError, ScimflowError
from services.runtime.logs import configure_logging
from services.runtime.settings import Settings, load_settings
from services.runtime.topics import Topics

if TYPE_CHECKING:
    from services.admin.control import Backend
    from services.devstack.scim_target import ScimTarget

__all__ = ["main"]

cli = typer.Typer(name="scimflow", no_args_is_help=True, add_completion=False,
                  help="Kafka-based automatic user provisioning into SCIM 2.0 apps.")
out = Console()
err = Console(stderr=True)

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="Provisioning config YAML.",
                                         envvar="SCIMFLOW_CONFIG")]


def _load(config: Path, *, resolve_secrets: bool = True) -> LoadedConfig:
    from services.mapper.main import compile_apps
    from services.scim.paths import validate_path

    loaded = load_config(config, resolve_secrets=resolve_secrets)
    compile_apps(loaded)
    for i, app in enumerate(loaded.config.applications):
        for j, attr in enumerate(app.mappings.user.attributes):
            try:
                validate_path(attr.target)
            except ValueError as exc:
                raise loaded.error(f"$.applications[{i}].mappings.user.attributes[{j}].target",
                                   str(exc)) from None
    return loaded


def _fail(exc: Exception) -> typer.Exit:
    err.print(f"[bold red]error:[/] {exc}", highlight=False)
    return typer.Exit(2)


@cli.command()
def validate(config: Annotated[Path, typer.Argument(help="Config file to check.")],
             online: Annotated[bool, typer.Option(
                 "--online", help="Also read each app's target capabilities (/ServiceProviderConfig, "
                                  "/ResourceTypes, /Schemas) and check the mappings against them.")]
             = False) -> None:
    """Check a config file: structure, mappings, expressions, secrets (--online: and targets)."""
    try:
        loaded = _load(config)
    except ScimflowError as exc:
        raise _fail(exc) from None
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
        _line(f"{app.name} {app.target.base_url}", style="bold")
        if isinstance(found, str):
            _line(f"  could not read the target: {found}", style="red")
            fine = False
            continue
        problems = check_mappings(app, found, loaded)
        _print_capabilities(msgspec.to_builtins(found), [msgspec.to_builtins(p) for p in problems])
        if found.failed:
            _line("  the target did not answer as it should (see above): its capabilities are not known",
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


def _print_capabilities(capabilities: dict[str, Any] | None, problems: list[dict[str, Any]]) -> None:
    """What ``validate --online`` and ``test-connection`` show of a target's capabilities
    (given as the JSON the control plane returns) and the app's mapping problems."""
    from services.scim.capabilities import Capabilities, Problem, describe

    if capabilities is None:
        return
    caps = msgspec.convert(capabilities, Capabilities)
    _line("  target capabilities:")
    for text in describe(caps):
        _line(f"    {text}")
    if problems:
        _line(f"  mapping problems ({len(problems)}): what the target declares cannot take these",
              style="yellow")
        for problem in problems:
            _line(f"    {msgspec.convert(problem, Problem)}", style="yellow")
    elif any(r.schemas_read for r in caps.resources.values()):
        _line("  mappings: every mapped attribute is one the target declares")
    else:
        _line("  mappings: not checked (no schema of the target was read)")


def _line(text: str, style: str | None = None) -> None:
    # Not markup: paths such as emails[type eq "work"] would read as style tags.
    out.print(text, style=style, markup=False, highlight=False, soft_wrap=True)


@cli.command()
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
        raise _fail(exc) from None


def _expr_one(expression: str, attrs: str) -> None:
    from services.mapper.expressions import IGNORE, compile_expression

    try:
        values = json.loads(attrs)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--attrs is not valid JSON: {exc}") from None
    if not isinstance(values, dict):
        raise ConfigError("--attrs must be a JSON object")
    result = compile_expression(expression).evaluate(values)
    _print_json({"ignored": True} if result is IGNORE else result)


def _expr_object(config: Path, app_name: str | None, object_id: str | None,
                 source_file: Path | None) -> None:
    """The Entra 'test an expression' harness: the full mapped resource of one object."""
    from services.ingest.sources.file import read_directory
    from services.mapper.groups import GroupGraph
    from services.mapper.main import compile_apps
    from services.mapper.planner import plan
    from services.scim.paths import build_resource
    from services.writer.decide import desired_state

    if not app_name or not object_id:
        raise ConfigError("--config needs --app and --object")
    loaded = _load(config, resolve_secrets=False)
    compiled = next((c for c in compile_apps(loaded) if c.app.name == app_name), None)
    if compiled is None:
        raise ConfigError(f"no application named {app_name!r}", file=str(config))
    files = [s for s in loaded.config.sources if isinstance(s, FileSource)]
    if source_file is None and not files:
        raise ConfigError("the config has no file source: give --source-file", file=str(config))
    path = source_file or loaded.resolve_path(files[0].path)
    obj = read_directory(path).get(("user", object_id))
    if obj is None:
        raise ConfigError(f"no user with id {object_id!r} in {path}")
    source_name = files[0].name if files else loaded.config.sources[0].name
    change = DirectoryChange(source=source_name, object_type="user",
                             object_id=obj.object_id, operation="upsert", attributes=obj.attributes,
                             memberships=list(obj.memberships), change_id="expr",
                             observed_at=datetime.now(UTC))
    graph = GroupGraph()  # nested groups, as the mapper's group feed would know them
    for other in read_directory(path).values():
        if other.object_type == "group":
            graph.set_members(other.object_id, frozenset(other.members))
    cmd = plan(compiled, change, graph)
    if cmd is None:
        raise ConfigError(f"application {app_name!r} does not provision users")
    shown = dict.fromkeys(cmd.redacted, "[Redact]")
    _print_json({
        "operation": cmd.operation,
        "scope": cmd.reason,
        "matching": [{"attribute": m.target, "value": shown.get(m.target, m.value),
                      "precedence": m.precedence} for m in cmd.matching],
        "resource_on_create": build_resource({**cmd.create_only, **desired_state(cmd), **shown}),
        "only_on_create": sorted(cmd.create_only),
        "select_unique_value": cmd.unique_candidates,
        "references": cmd.references,
    })


def _print_json(value: Any) -> None:
    out.print_json(msgspec.json.encode(value, enc_hook=str).decode())


def _worker(service: str, config: Path) -> None:
    settings = load_settings()
    configure_logging(settings.log_format, settings.log_level)
    if not settings.kafka_bootstrap:
        raise _fail(ConfigError("SCIMFLOW_KAFKA_BOOTSTRAP is not set; use `scimflow up` to "
                                "start a local broker with the whole pipeline"))
    try:
        loaded = _load(config)
    except ScimflowError as exc:
        raise _fail(exc) from None
    from services.runtime.kafka import run_worker
    from services.runtime.metrics import start_metrics_server

    if service == "ingest":
        from services.ingest.main import build_app
    elif service == "mapper":
        from services.mapper.main import build_app
    else:
        from services.writer.main import build_app
    app = build_app(settings, loaded, settings.kafka_bootstrap)
    start_metrics_server(settings.metrics_port)
    run_worker(app, loglevel=settings.log_level, shutdown_timeout=settings.shutdown_timeout)


@cli.command()
def ingest(config: ConfigOpt) -> None:
    """Run one ingest worker (sources -> directory.changes)."""
    _worker("ingest", config)


@cli.command()
def mapper(config: ConfigOpt) -> None:
    """Run one mapper worker (scope + mappings -> provisioning.commands)."""
    _worker("mapper", config)


@cli.command()
def writer(config: ConfigOpt) -> None:
    """Run one writer worker (commands -> SCIM target; activity and errors)."""
    _worker("writer", config)


@cli.command()
def up(config: ConfigOpt = Path("examples/demo.yaml"),
       demo_target: Annotated[bool, typer.Option(
           help="Start a local scim2-server and point DEMO_SCIM_URL/DEMO_SCIM_TOKEN at it.")] = True,
       data_dir: Annotated[Path | None, typer.Option(
           "--data-dir", help="Where `up` keeps its state between runs (topics, committed offsets, "
           "the demo target's users). Default: .scimflow/ beside the config file.")] = None,
       fresh: Annotated[bool, typer.Option(
           "--fresh", help="Wipe the data dir first and start over.")] = False,
       ) -> None:
    """Run the whole pipeline: broker, demo SCIM target, ingest, mapper, writer and admin API.

    Ctrl-C stops it; the next `up` on the same data dir resumes where it stopped."""
    try:  # the dev stack comes with the demo extra; without it, say what to install
        from services.devstack.supervisor import claim_data_dir, default_data_dir
    except ModuleNotFoundError as exc:  # escaped: rich would take "[demo]" for markup
        raise _fail(ScimflowError(escape(str(exc)))) from None

    settings = load_settings()
    configure_logging(settings.log_format, settings.log_level)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    # Ctrl-C stops `up` even when it was started with SIGINT ignored (inherited from a
    # parent that ignores it: a test runner, a shell's background job).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if data_dir is None and not config.is_file():  # else the default dir lands beside nothing
        raise _fail(ConfigError("no such config file", file=str(config)))
    state = (data_dir or default_data_dir(config)).expanduser().resolve()
    try:
        with claim_data_dir(state, fresh=fresh) as resumed:
            how = ("wiped, starting empty" if fresh else
                   "resuming the last run; `--fresh` starts over" if resumed else "new, starting empty")
            err.print(f"data dir: {state} ({how})", highlight=False)
            _up(settings, config, state, demo_target=demo_target)
    except ScimflowError as exc:
        raise _fail(exc) from None


def _up(settings: Settings, config: Path, state: Path, *, demo_target: bool) -> None:
    """Start everything with its state in ``state``, follow the activity, stop on Ctrl-C."""
    from services.devstack.broker import start_broker
    from services.devstack.processes import free_port
    from services.devstack.supervisor import Supervisor

    env: dict[str, str] = {}
    stack: list[Any] = []
    try:
        if demo_target:
            target = _start_demo_target(state)
            stack.append(target)
            env |= {"DEMO_SCIM_URL": target.base_url, "DEMO_SCIM_TOKEN": target.token}
            os.environ.update(env)
        loaded = _load(config)
        topics = Topics(settings.topic_prefix, settings.partitions)
        broker = start_broker(settings, topics=topics.specs(), state_dir=state / "kafka",
                              log=lambda m: err.print(m, highlight=False))
        stack.append(broker)
        env["SCIMFLOW_KAFKA_BOOTSTRAP"] = broker.bootstrap
        sup = Supervisor(config=config.resolve(), env=env, log_dir=state / "logs")
        stack.append(sup)
        sup.start()
        admin_url = sup.start_admin(port=free_port(settings.admin_port), host=settings.admin_host,
                                    tokens=f"operator=file:{_admin_token_file(state)}")
        _announce(loaded, broker.bootstrap, env, state, admin_url)
        _watch(loaded, broker.bootstrap, topics, sup)
    except ScimflowError as exc:
        raise _fail(exc) from None
    except KeyboardInterrupt:
        err.print("stopping ...")
    finally:
        for thing in reversed(stack):
            thing.stop()
        err.print("stopped: workers, admin API, broker and demo target are down; "
                  f"what they keep stays in {state}.", highlight=False)


def _start_demo_target(state: Path) -> ScimTarget:
    """The demo scim2-server, with the users, groups, port and token of the last run (if
    any): a target that remembers what the pipeline remembers writing to it."""
    from services.devstack.processes import free_port
    from services.devstack.scim_target import start_scim_target

    folder = state / "scim-target"
    folder.mkdir(parents=True, exist_ok=True)
    port_file = folder / "port"
    kept = port_file.read_text().strip() if port_file.is_file() else ""
    target = start_scim_target(token=_kept_secret(state / "demo-token"),
                               port=free_port(int(kept) if kept.isdigit() else 0),
                               log_file=state / "logs" / "scim-target.log",
                               resources_file=folder / "resources.json")
    port_file.write_text(f"{target.port}\n")
    return target


def _kept_secret(path: Path) -> str:
    """The secret in ``path``, made (readable only by its owner) if there is none yet."""
    kept = path.read_text().strip() if path.is_file() else ""
    if kept:
        return kept
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    path.touch(mode=0o600)
    secret = secrets.token_urlsafe(24)
    path.write_text(secret)
    return secret


def _admin_token_file(run_dir: Path) -> Path:
    """A fresh admin token (name ``operator``) for this run, readable only by its owner."""
    path = run_dir / "admin-token"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    path.touch(mode=0o600)
    path.write_text(secrets.token_urlsafe(32))
    return path


def _say(line: str) -> None:
    # Never wrapped: each line must stay pasteable into a shell, however narrow the terminal.
    out.print(line, soft_wrap=True, highlight=False)


def _announce(loaded: LoadedConfig, bootstrap: str, env: dict[str, str], run_dir: Path,
              admin_url: str) -> None:
    out.rule("scimflow is running")
    _say(f"broker          {bootstrap}")
    _say(f"worker logs     {run_dir / 'logs'}/{{ingest,mapper,writer,admin}}.log")
    admin_token = run_dir / "admin-token"
    _say(f"admin API       {admin_url}  (token name `operator`, value in {admin_token})")
    for app in loaded.config.applications:
        _say(f"app {app.name:<11} {app.target.base_url}")
    if "DEMO_SCIM_TOKEN" in env:
        demo_token = run_dir / "demo-token"
        demo_token.parent.mkdir(parents=True, exist_ok=True)
        demo_token.write_text(env["DEMO_SCIM_TOKEN"])
        demo_token.chmod(0o600)
        _say(f"look at target  curl -s -H \"Authorization: Bearer $(cat {demo_token})\" "
             f"'{env['DEMO_SCIM_URL']}/Users?count=5'")
    for source in loaded.config.sources:
        if isinstance(source, FileSource):
            _say(f"edit source     {loaded.resolve_path(source.path)}  (changes apply in seconds)")
        else:
            where = getattr(source, "url", None) or source.name
            _say(f"source {source.name:<8} {where}  (changes apply in seconds)")
    _announce_commands(loaded, bootstrap, admin_url, admin_token)


def _announce_commands(loaded: LoadedConfig, bootstrap: str, admin_url: str, admin_token: Path) -> None:
    prefix = f"SCIMFLOW_KAFKA_BOOTSTRAP={bootstrap}"
    api = f"SCIMFLOW_ADMIN_URL={admin_url} SCIMFLOW_ADMIN_TOKEN=$(cat {admin_token})"
    _say(f"tail activity   {prefix} scimflow tail activity")
    _say(f"sync details    {api} scimflow status")
    _say(f"  (or directly) {prefix} scimflow status --config {loaded.file}")
    _say(f"control         {api} scimflow stop|start|restart|provision|test-connection APP")
    _say("stop            Ctrl-C here stops the workers, the admin API, the target and the broker")


def _watch(loaded: LoadedConfig, bootstrap: str, topics: Topics, sup: Any) -> None:
    """Show initial-sync progress, then every outcome as it happens, until Ctrl-C."""
    from services.ingest.sources.file import read_directory

    total = sum(
        1 for s in loaded.config.sources if isinstance(s, FileSource)
        for key in read_directory(loaded.resolve_path(s.path)) if key[0] == "user"
    ) * len(loaded.config.applications)
    seen: set[tuple[str, str]] = set()
    with Progress(TextColumn("initial sync"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=out, transient=False) as bar:
        task = bar.add_task("sync", total=total)
        for record in _records(bootstrap, topics.activity, ActivityRecord, follow=True, sup=sup):
            seen.add((record.app, record.source_id))
            bar.update(task, completed=min(len(seen), total))
            if len(seen) >= total:
                break
    out.print(f"initial sync done: {total} users processed; now following changes")
    for record in _records(bootstrap, topics.activity, ActivityRecord, follow=True, sup=sup,
                           from_beginning=False):
        _print_activity(record)


def _records(bootstrap: str, topic: str, kind: type[Any], *, follow: bool, sup: Any = None,
             from_beginning: bool = True) -> Any:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap,
                             auto_offset_reset="earliest" if from_beginning else "latest",
                             enable_auto_commit=False, consumer_timeout_ms=500)
    dec = msgspec.json.Decoder(kind)
    try:
        while True:
            for msg in consumer:
                try:
                    yield dec.decode(msg.value)
                except msgspec.DecodeError:
                    continue
            if not follow:
                return
            if sup is not None and sup.dead():
                raise ScimflowError(f"worker(s) exited: {', '.join(sup.dead())}; see the worker logs")
    finally:
        consumer.close()


def _print_activity(r: ActivityRecord) -> None:
    props = ", ".join(p.name for p in r.modified_properties)
    colour = {"success": "green", "failure": "red", "skipped": "dim"}.get(r.status, "yellow")
    out.print(f"[{colour}]{r.at:%H:%M:%S} {r.app} {r.action:<8} {r.status:<8}[/] "
              f"{r.source_identity or r.source_id} {r.target_id or ''} {props}", highlight=False)


@cli.command()
def tail(kind: Annotated[str, typer.Argument(help="activity or errors")],
         app: Annotated[str | None, typer.Option(help="Only this application.")] = None,
         status: Annotated[str | None, typer.Option(
             help="Only this status (activity) or error code (errors).")] = None,
         as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
         follow: Annotated[bool, typer.Option(help="Keep waiting for new records.")] = True,
         api: ApiOpt = None, token_file: TokenFileOpt = None,
         ) -> None:
    """Print the activity log or the error report as records arrive."""
    from services.admin.control import wanted

    if kind not in ("activity", "errors"):
        raise _fail(ConfigError("expected `activity` or `errors`"))
    record_type = ActivityRecord if kind == "activity" else ErrorRecord

    def show(r: Any) -> None:
        if not wanted(r, app, status):
            return
        if as_json:
            sys.stdout.write(msgspec.json.encode(r).decode() + "\n")
            sys.stdout.flush()
        elif isinstance(r, ActivityRecord):
            _print_activity(r)
        else:
            out.print(f"[red]{r.at:%H:%M:%S} {r.service} {r.error_code}[/] {r.app or ''} "
                      f"{r.source_id or ''}: {r.reason}", highlight=False)

    try:
        if api:
            _run(lambda: _tail_api(api, token_file, kind, record_type, app, status, follow, show))
            return
        settings = load_settings()
        if not settings.kafka_bootstrap:
            raise _fail(ConfigError("SCIMFLOW_KAFKA_BOOTSTRAP is not set (or give --api URL)"))
        topics = Topics(settings.topic_prefix, settings.partitions)
        topic = topics.activity if kind == "activity" else topics.errors
        for r in _records(settings.kafka_bootstrap, topic, record_type, follow=follow):
            show(r)
    except KeyboardInterrupt:
        pass


def _tail_api(api: str, token_file: Path | None, kind: str, record_type: type[Any], app: str | None,
              status: str | None, follow: bool, show: Callable[[Any], None]) -> None:
    """``tail`` over the admin API: the recent records, then (``--follow``) new ones every second."""
    seen: set[str] = set()
    with _backend(api, token_file, None, "") as backend:
        while True:
            for raw in backend.records(kind, app=app, status=status, limit=1000):
                record = msgspec.convert(raw, record_type, strict=False)
                if record.id not in seen:
                    seen.add(record.id)
                    show(record)
            if not follow:
                return
            time.sleep(1.0)


# -- the control plane: one implementation, reached directly (Kafka) or over the admin API --

ApiOpt = Annotated[str | None, typer.Option(
    "--api", envvar="SCIMFLOW_ADMIN_URL", help="Admin API URL; unset: talk to Kafka directly.")]
TokenFileOpt = Annotated[Path | None, typer.Option(
    "--token-file", help="File holding the admin API token (or set SCIMFLOW_ADMIN_TOKEN).")]
OptionalConfigOpt = Annotated[Path | None, typer.Option(
    "--config", "-c", envvar="SCIMFLOW_CONFIG", help="Provisioning config (direct mode).")]
ByOpt = Annotated[str, typer.Option(help="Who asks, for the audit trail (direct mode; default $USER).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
AppArg = Annotated[str, typer.Argument(help="Application name.")]


@contextlib.contextmanager
def _backend(api: str | None, token_file: Path | None, config: Path | None, by: str, *,
             secrets: bool = False) -> Iterator[Backend]:
    """The admin API when a URL is given, else the control plane on Kafka, as ``by``."""
    from services.admin.control import Caller, ControlPlane

    settings = load_settings()
    api = api or settings.admin_url
    if api:
        from services.admin.client import ApiClient

        client = ApiClient(api, _api_token(token_file, settings.admin_token))
        try:
            yield client
        finally:
            client.close()
        return
    if not settings.kafka_bootstrap:
        raise _fail(ConfigError("SCIMFLOW_KAFKA_BOOTSTRAP is not set (or give --api URL)"))
    loaded = load_config(config, resolve_secrets=secrets) if config is not None else None
    plane = ControlPlane(settings, settings.kafka_bootstrap, loaded,
                         Caller(by=by or os.environ.get("USER", "cli")))
    try:
        yield plane
    finally:
        plane.close()


def _api_token(token_file: Path | None, from_env: str | None) -> str:
    if token_file is not None:
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the token file ({exc.strerror})", file=str(token_file)) from None
    else:
        token = (from_env or "").strip()
    if not token:
        raise ConfigError("--api needs a token: --token-file FILE or SCIMFLOW_ADMIN_TOKEN")
    return token


def _run(call: Callable[[], None]) -> None:
    """Run a control command: ScimflowErrors are the user's to read, exit code 2."""
    try:
        call()
    except ScimflowError as exc:
        raise _fail(exc) from None


def _emit(result: Any, as_json: bool, human: Callable[[Any], None]) -> None:
    if as_json:
        sys.stdout.write(msgspec.json.encode(result, enc_hook=str).decode() + "\n")
    else:
        human(result)


@cli.command()
def status(app: Annotated[str | None, typer.Argument(help="Only this application.")] = None,
           config: OptionalConfigOpt = None, api: ApiOpt = None, token_file: TokenFileOpt = None,
           as_json: JsonOpt = False,
           watch: Annotated[bool, typer.Option(help="Show the running cycle's progress until it ends.")]
           = False) -> None:
    """Sync details per app: status, managed users and groups, cycles, escrow, last error."""
    def call() -> None:
        with _backend(api, token_file, config, "") as backend:
            if watch and app:
                _watch_cycle(backend, app, after=None)
            reports = backend.status(app)
            _emit(reports, as_json, _print_reports)
    _run(call)


def _print_reports(reports: list[dict[str, Any]]) -> None:
    from rich.table import Table

    if len(reports) == 1:
        _print_details(reports[0])
        return
    table = Table("app", "mode", "status", "users", "disabled", "groups", "escrowed", "last cycle",
                  "cycle s", "held removals", "last error")
    for r in reports:
        table.add_row(r["app"], r["mode"], _status_text(r), str(r["managed_users"]),
                      str(r["disabled_users"]), str(r["managed_groups"]), str(r["escrowed"]),
                      _cycle_text(r), _seconds(r["last_cycle_seconds"]), str(r["held_removals"]),
                      (r["last_error"] or "-")[:60])
    out.print(table)


def _status_text(r: dict[str, Any]) -> str:
    text = str(r["status"]) + (" (dry run)" if r.get("dry_run") else "")
    return f"{text}: {r['status_reason']}" if r.get("status_reason") else text


def _cycle_text(r: dict[str, Any]) -> str:
    last = _when(r["last_cycle_end"])
    progress = r.get("progress")
    if r["cycle_running"] and progress:
        of = f"/{progress['total']}" if progress.get("total") is not None else ""
        last += f" (running: {progress['done']}{of})"
    return last


def _when(value: Any) -> str:
    return str(value)[:19].replace("T", " ") if value else "-"


def _seconds(value: Any) -> str:
    return f"{value:.1f}" if value is not None else "-"


def _print_details(r: dict[str, Any]) -> None:
    """Entra's "Synchronization details" pane for one app."""
    from rich.table import Table

    table = Table(show_header=False, title=f"sync details: {r['app']}", title_justify="left")
    rows = [
        ("mode", r["mode"]), ("status", _status_text(r)),
        ("status set by", f"{r.get('status_by') or '-'} at {_when(r.get('status_at'))}"),
        ("managed users", f"{r['managed_users']} ({r['disabled_users']} disabled)"),
        ("managed groups", str(r["managed_groups"])), ("escrowed objects", str(r["escrowed"])),
        ("held removals", str(r["held_removals"])),
        ("first cycle start", _when(r["first_cycle_start"])),
        ("last cycle start", _when(r["last_cycle_start"])),
        ("last cycle end", _when(r["last_cycle_end"])),
        ("last cycle duration s", _seconds(r["last_cycle_seconds"])),
        ("running cycle", _cycle_text(r) if r["cycle_running"] else "none"),
        ("outcomes", ", ".join(f"{k}={v}" for k, v in sorted(r["outcomes"].items())) or "-"),
        ("last error", f"{r['last_error']} at {_when(r['last_error_at'])}" if r["last_error"] else "-"),
    ]
    if r.get("quarantined_since"):
        rows.append(("quarantined", f"since {_when(r['quarantined_since'])}, "
                                    f"next probe {_when(r.get('next_probe'))}"))
    rows.append(("target capabilities", _capabilities_text(r.get("capabilities"))))
    rows.extend(("mapping problem", problem) for problem in r.get("mapping_problems") or [])
    for name, value in rows:
        table.add_row(name, value)
    out.print(table)


def _capabilities_text(found: dict[str, Any] | None) -> str:
    """One line of what the target declares (the writer reads it at start)."""
    if not found:
        return "not read yet"

    def flag(name: str) -> str:
        value = found.get(name)
        return "unknown" if value is None else ("yes" if value else "no")
    bulk = flag("bulk")
    if found.get("bulk") and found.get("bulk_max_operations"):
        bulk += f" (max {found['bulk_max_operations']} operations)"
    return (f"PATCH {flag('patch')}, bulk {bulk}, filter {flag('filter')}, ETag {flag('etag')}, "
            f"sort {flag('sort')}")


def _watch_cycle(backend: Backend, app: str, *, after: datetime | None, wait: float = 60.0) -> None:
    """A progress bar while the app's cycle runs. With ``after``: first wait (up to ``wait``
    seconds) for a cycle that started after it, e.g. the one a restart asked for."""
    deadline = time.monotonic() + wait
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err, transient=False) as bar:
        task = bar.add_task(f"{app}: waiting for a cycle", total=None)
        seen = False
        while True:
            report = backend.status(app)[0]
            started = _parse_time(report["last_cycle_start"])
            fresh = after is None or (started is not None and started >= after)
            if fresh and report["cycle_running"]:
                seen = True
                progress = report.get("progress") or {}
                bar.update(task, description=f"{app}: cycle running", completed=progress.get("done", 0),
                           total=progress.get("total"))
            elif fresh:
                bar.update(task, description=f"{app}: cycle done", total=1, completed=1)
                return
            if not seen and time.monotonic() > deadline:
                bar.update(task, description=f"{app}: no new cycle within {wait:g} s")
                return
            time.sleep(1.0)


def _parse_time(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None


def _print_action(result: dict[str, Any]) -> None:
    action, app = result["action"], result["app"]
    text = {
        "stop": f"{app}: provisioning is off (changes are kept and applied by `scimflow start {app}`)",
        "start": f"{app}: provisioning is on",
        "restart": f"{app}: restart requested (request {result.get('request_id')}, "
                   f"links {'reset' if result.get('reset_links') else 'kept'}); the initial cycle runs again",
        "allow-deletes": f"allowed the removals held for {app} (staged before {result.get('before')})",
    }[action]
    out.print(text, highlight=False)


def _control_command(app: str, api: str | None, token_file: Path | None, config: Path | None,
                     by: str, as_json: bool, act: Callable[[Backend], dict[str, Any]]) -> None:
    def call() -> None:
        with _backend(api, token_file, config, by) as backend:
            _emit(act(backend), as_json, _print_action)
    _run(call)


@cli.command()
def stop(app: AppArg, by: ByOpt = "", config: OptionalConfigOpt = None, api: ApiOpt = None,
         token_file: TokenFileOpt = None, as_json: JsonOpt = False) -> None:
    """Provisioning status Off: nothing is created, updated or removed in APP's target."""
    _control_command(app, api, token_file, config, by, as_json, lambda b: b.set_status(app, "off"))


@cli.command()
def start(app: AppArg, by: ByOpt = "", config: OptionalConfigOpt = None, api: ApiOpt = None,
          token_file: TokenFileOpt = None, as_json: JsonOpt = False) -> None:
    """Provisioning status On: resume APP, applying what changed while it was off."""
    _control_command(app, api, token_file, config, by, as_json, lambda b: b.set_status(app, "on"))


@cli.command("allow-deletes")
def allow_deletes(app: AppArg, by: ByOpt = "", config: OptionalConfigOpt = None, api: ApiOpt = None,
                  token_file: TokenFileOpt = None, as_json: JsonOpt = False) -> None:
    """Release the disables/deletes held by the app's deletion threshold."""
    _control_command(app, api, token_file, config, by, as_json, lambda b: b.allow_deletes(app))


@cli.command()
def restart(app: AppArg,
            reset_links: Annotated[bool, typer.Option(
                "--reset-links", help="Also forget which target account is whose (matched again).")] = False,
            watch: Annotated[bool | None, typer.Option(
                help="Show the new cycle's progress (default: on a terminal, without --json).")] = None,
            by: ByOpt = "", config: OptionalConfigOpt = None, api: ApiOpt = None,
            token_file: TokenFileOpt = None, as_json: JsonOpt = False) -> None:
    """Clear APP's state (escrow, quarantine; with --reset-links the links) and run the initial cycle."""
    def call() -> None:
        asked = datetime.now(UTC)
        with _backend(api, token_file, config, by) as backend:
            _emit(backend.restart(app, reset_links=reset_links), as_json, _print_action)
            if watch or (watch is None and not as_json and out.is_terminal):
                _watch_cycle(backend, app, after=asked)
    _run(call)


@cli.command()
def provision(app: AppArg, object_id: Annotated[str, typer.Argument(help="Source object id.")],
              group: Annotated[bool, typer.Option(
                  "--group", help="A group (with up to 5 of its members).")] = False,
              timeout: Annotated[float | None, typer.Option(
                  help="Seconds to wait for the trace (default SCIMFLOW_PROVISION_TIMEOUT, 5).")] = None,
              by: ByOpt = "", config: OptionalConfigOpt = None, api: ApiOpt = None,
              token_file: TokenFileOpt = None, as_json: JsonOpt = False) -> None:
    """Provision one user (or group) now and show each step: import, scope, match, action, export."""
    from services.admin.control import ProvisionFailedError

    def call() -> None:
        with _backend(api, token_file, config, by) as backend:
            try:
                trace = backend.provision(app, object_id, "group" if group else "user", timeout=timeout)
            except ProvisionFailedError as exc:
                _emit(exc.trace, as_json, _print_trace)
                raise
        _emit(trace, as_json, _print_trace)
        if trace["outcome"] == "failure":
            raise typer.Exit(1)
    _run(call)


def _print_trace(trace: dict[str, Any], indent: str = "") -> None:
    from rich.table import Table

    colour = {"success": "green", "failure": "red", "dryRun": "cyan"}.get(trace["outcome"], "yellow")
    out.print(f"{indent}[bold]{trace['object_type']} {trace['object_id']}[/]: "
              f"[{colour}]{trace['outcome']}[/] {trace.get('action') or ''} "
              f"{trace.get('target_id') or ''} - {trace['message']}"
              + (f" ({trace['elapsed_ms']} ms)" if "elapsed_ms" in trace else ""), highlight=False)
    table = Table("step", "status", "detail")
    for step in trace["steps"]:
        table.add_row(step["name"], step["status"], step["detail"])
    out.print(table)
    for member in trace.get("members", []):
        _print_trace(member, indent="  member ")


@cli.command("test-connection")
def connection_test(app: AppArg, by: ByOpt = "", config: OptionalConfigOpt = None, api: ApiOpt = None,
                    token_file: TokenFileOpt = None, as_json: JsonOpt = False) -> None:
    """Entra's test connection: GET /Users?filter=<matching attribute> eq "<random GUID>";
    then what the target declares, and the mappings it cannot take (exit 0: reported only)."""
    def call() -> None:
        with _backend(api, token_file, config, by, secrets=True) as backend:
            result = backend.test_connection(app)
        _emit(result, as_json, _print_connection)
        if not result["ok"]:
            raise typer.Exit(1)
    _run(call)


def _print_connection(r: dict[str, Any]) -> None:
    out.print(f"{r['app']}: [{'green' if r['ok'] else 'red'}]{'OK' if r['ok'] else 'FAILED'}[/] "
              f"{r['message']}", highlight=False)
    # An admin API older than capability discovery answers without these.
    _print_capabilities(r.get("capabilities"), r.get("problems") or [])


@cli.command()
def admin(config: ConfigOpt) -> None:
    """Run the admin HTTP API (needs SCIMFLOW_KAFKA_BOOTSTRAP and SCIMFLOW_ADMIN_TOKENS)."""
    from services.admin.main import run_admin

    settings = load_settings()
    configure_logging(settings.log_format, settings.log_level)
    if not settings.kafka_bootstrap:
        raise _fail(ConfigError("SCIMFLOW_KAFKA_BOOTSTRAP is not set"))
    try:
        run_admin(settings, _load(config), settings.kafka_bootstrap)
    except ScimflowError as exc:
        raise _fail(exc) from None


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
