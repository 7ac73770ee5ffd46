"""The ``scimflow`` command line: thin wiring over the services and the runtime."""

from __future__ import annotations

import json
import os
import secrets
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import msgspec
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from schemas import ActivityRecord, DirectoryChange, ErrorRecord
from services.runtime.config import FileSource, LoadedConfig, load_config
from services.runtime.errors import ConfigError, ScimflowError
from services.runtime.logs import configure_logging
from services.runtime.settings import load_settings
from services.runtime.topics import Topics

__all__ = ["main"]

cli = typer.Typer(name="scimflow", no_args_is_help=True, add_completion=False,
                  help="Kafka-based automatic user provisioning into SCIM 2.0 apps.")
out = Console()
err = Console(stderr=True)

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="Provisioning config YAML.",
                                         envvar="SCIMFLOW_CONFIG")]


def _load(config: Path, *, resolve_secrets: bool = True) -> LoadedConfig:
    from services.mapper.main import compile_apps
    from services.writer.scim_paths import validate_path

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
def validate(config: Annotated[Path, typer.Argument(help="Config file to check.")]) -> None:
    """Check a config file: structure, mappings, expressions, secrets."""
    try:
        loaded = _load(config)
    except ScimflowError as exc:
        raise _fail(exc) from None
    apps = ", ".join(a.name for a in loaded.config.applications)
    out.print(f"{config}: OK ({len(loaded.config.applications)} applications: {apps}; "
              f"{len(loaded.config.sources)} sources)")


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
    from services.ingest.file_source import read_directory
    from services.mapper.main import compile_apps
    from services.mapper.planner import plan
    from services.writer.decide import desired_state
    from services.writer.scim_paths import build_resource

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
    cmd = plan(compiled, change)
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
    run_worker(app, loglevel=settings.log_level)


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
       ) -> None:
    """Run the whole pipeline: broker, demo SCIM target, ingest, mapper and writer."""
    from services.runtime.broker import start_broker
    from services.runtime.scim_target import start_scim_target
    from services.runtime.supervisor import Supervisor

    settings = load_settings()
    configure_logging(settings.log_format, settings.log_level)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    env: dict[str, str] = {}
    stack: list[Any] = []
    try:
        if demo_target:
            token = secrets.token_urlsafe(24)
            target = start_scim_target(token=token)
            stack.append(target)
            env |= {"DEMO_SCIM_URL": target.base_url, "DEMO_SCIM_TOKEN": token}
            os.environ.update(env)
        loaded = _load(config)
        topics = Topics(settings.topic_prefix, settings.partitions)
        broker = start_broker(settings, topics=topics.specs(), log=lambda m: err.print(m, highlight=False))
        stack.append(broker)
        env["SCIMFLOW_KAFKA_BOOTSTRAP"] = broker.bootstrap
        run_dir = Path(settings.data_dir) / "run"
        sup = Supervisor(config=config.resolve(), env=env, log_dir=run_dir / "logs")
        stack.append(sup)
        sup.start()
        _announce(loaded, broker.bootstrap, env, run_dir)
        _watch(loaded, broker.bootstrap, topics, sup)
    except ScimflowError as exc:
        raise _fail(exc) from None
    except KeyboardInterrupt:
        err.print("stopping ...")
    finally:
        for thing in reversed(stack):
            thing.stop()
        err.print("stopped: workers, broker and demo target are down.")


def _announce(loaded: LoadedConfig, bootstrap: str, env: dict[str, str], run_dir: Path) -> None:
    out.rule("scimflow is running")
    out.print(f"broker          {bootstrap}")
    out.print(f"worker logs     {run_dir / 'logs'}/{{ingest,mapper,writer}}.log")
    for app in loaded.config.applications:
        out.print(f"app {app.name:<11} {app.target.base_url}")
    if "DEMO_SCIM_TOKEN" in env:
        token_file = run_dir / "demo-token"
        token_file.parent.mkdir(parents=True, exist_ok=True)
        token_file.write_text(env["DEMO_SCIM_TOKEN"])
        token_file.chmod(0o600)
        out.print(f"look at target  curl -s -H \"Authorization: Bearer $(cat {token_file})\" "
                  f"'{env['DEMO_SCIM_URL']}/Users?count=5'")
    for source in loaded.config.sources:
        if isinstance(source, FileSource):
            out.print(f"edit source     {loaded.resolve_path(source.path)}  (changes apply in seconds)")
        else:
            out.print(f"ldap source     {source.url} {source.base_dn}  (changes apply in seconds)")
    prefix = f"SCIMFLOW_KAFKA_BOOTSTRAP={bootstrap}"
    out.print(f"tail activity   {prefix} scimflow tail activity")
    out.print(f"sync details    {prefix} scimflow status --config {loaded.file}")
    out.print("stop            Ctrl-C here stops the workers, the target and the broker")


def _watch(loaded: LoadedConfig, bootstrap: str, topics: Topics, sup: Any) -> None:
    """Show initial-sync progress, then every outcome as it happens, until Ctrl-C."""
    from services.ingest.file_source import read_directory

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
         status: Annotated[str | None, typer.Option(help="Only this status (activity).")] = None,
         as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
         follow: Annotated[bool, typer.Option(help="Keep waiting for new records.")] = True,
         ) -> None:
    """Print the activity log or the error report as records arrive."""
    settings = load_settings()
    if not settings.kafka_bootstrap:
        raise _fail(ConfigError("SCIMFLOW_KAFKA_BOOTSTRAP is not set"))
    topics = Topics(settings.topic_prefix, settings.partitions)
    if kind not in ("activity", "errors"):
        raise _fail(ConfigError("expected `activity` or `errors`"))
    topic, record_type = ((topics.activity, ActivityRecord) if kind == "activity"
                          else (topics.errors, ErrorRecord))
    try:
        for r in _records(settings.kafka_bootstrap, topic, record_type, follow=follow):
            if (app and r.app != app) or (status and getattr(r, "status", None) != status):
                continue
            if as_json:
                sys.stdout.write(msgspec.json.encode(r).decode() + "\n")
                sys.stdout.flush()
            elif isinstance(r, ActivityRecord):
                _print_activity(r)
            else:
                out.print(f"[red]{r.at:%H:%M:%S} {r.service} {r.error_code}[/] {r.app or ''} "
                          f"{r.source_id or ''}: {r.reason}", highlight=False)
    except KeyboardInterrupt:
        pass


def _control(app: str, kind: str, message: msgspec.Struct) -> None:
    """Publish a control message for ``app`` (compacted topic, key ``app/kind``)."""
    from schemas.codecs import encode
    from services.runtime.kafka import plain_producer

    settings = load_settings()
    if not settings.kafka_bootstrap:
        raise _fail(ConfigError("SCIMFLOW_KAFKA_BOOTSTRAP is not set"))
    topics = Topics(settings.topic_prefix, settings.partitions)
    producer = plain_producer(settings.kafka_bootstrap)
    try:
        producer.send(topics.control, key=f"{app}/{kind}".encode(), value=encode(message)).get(timeout=30)
    finally:
        producer.close()


def _who(by: str) -> str:
    return by or os.environ.get("USER", "cli")


ByOpt = Annotated[str, typer.Option(help="Who asks (recorded with the request).")]


@cli.command("allow-deletes")
def allow_deletes(app: Annotated[str, typer.Argument(help="Application whose held removals to run.")],
                  by: ByOpt = "") -> None:
    """Release the disables/deletes held by the app's deletion threshold."""
    from schemas.control import AllowDeletes

    message = AllowDeletes(app=app, before=datetime.now(UTC), by=_who(by))
    _control(app, "allow-deletes", message)
    out.print(f"allowed the removals held for {app} (staged before {message.before:%H:%M:%S} UTC)")


@cli.command()
def stop(app: Annotated[str, typer.Argument(help="Application to pause.")], by: ByOpt = "") -> None:
    """Provisioning status Off: nothing is created, updated or removed in APP's target."""
    from schemas.control import AppStatus

    _control(app, "status", AppStatus(app=app, status="off", by=_who(by), at=datetime.now(UTC)))
    out.print(f"{app}: provisioning is off (changes are kept and applied by `scimflow start {app}`)")


@cli.command()
def start(app: Annotated[str, typer.Argument(help="Application to resume.")], by: ByOpt = "") -> None:
    """Provisioning status On: resume APP, applying what changed while it was off."""
    from schemas.control import AppStatus

    _control(app, "status", AppStatus(app=app, status="on", by=_who(by), at=datetime.now(UTC)))
    out.print(f"{app}: provisioning is on")


@cli.command()
def status(config: ConfigOpt,
           app: Annotated[str | None, typer.Argument(help="Only this application.")] = None,
           as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
           ) -> None:
    """Sync details per app: status, managed users, cycles, outcomes, held removals, last error."""
    from rich.table import Table

    from services.runtime.status import read_status

    settings = load_settings()
    if not settings.kafka_bootstrap:
        raise _fail(ConfigError("SCIMFLOW_KAFKA_BOOTSTRAP is not set"))
    try:
        loaded = load_config(config, resolve_secrets=False)
    except ScimflowError as exc:
        raise _fail(exc) from None
    reports = [r for r in read_status(loaded, settings.kafka_bootstrap,
                                      Topics(settings.topic_prefix, settings.partitions))
               if app is None or r.app == app]
    if as_json:
        sys.stdout.write(msgspec.json.encode(reports).decode() + "\n")
        return
    table = Table("app", "mode", "status", "managed users", "disabled", "last cycle",
                  "cycle s", "held removals", "last error")
    for r in reports:
        last = f"{r.last_cycle_end:%Y-%m-%d %H:%M:%S}" if r.last_cycle_end else "-"
        if r.cycle_running:
            last += " (running)"
        seconds = f"{r.last_cycle_seconds:.1f}" if r.last_cycle_seconds is not None else "-"
        table.add_row(r.app, r.mode, r.status, str(r.managed_users), str(r.disabled_users), last,
                      seconds, str(r.held_removals), (r.last_error or "-")[:60])
    out.print(table)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
