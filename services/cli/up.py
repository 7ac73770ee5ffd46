"""``scimflow up``: the whole pipeline on one machine for trying it out and for tests, with
an embedded broker, a demo SCIM target and every worker under a supervisor.

This is the only module of the CLI that uses the dev stack (broker, supervisor, demo
target), and it imports it in one place, lazily, inside :func:`up`: production commands
never load it.
"""

from __future__ import annotations

import os
import secrets
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from schemas import ActivityRecord
from services.cli.config_tools import load_checked
from services.cli.options import ConfigOpt
from services.cli.render import err, fail, out, print_activity, say
from services.cli.tail import records
from services.runtime.config import FileSource, LoadedConfig
from services.runtime.errors import ConfigError, ScimflowError
from services.runtime.logs import configure_logging
from services.runtime.settings import Settings, load_settings
from services.runtime.topics import Topics

if TYPE_CHECKING:
    from services.devstack.broker import Broker
    from services.devstack.scim_target import ScimTarget
    from services.devstack.supervisor import Supervisor

__all__ = ["announce", "up"]


@dataclass(frozen=True, slots=True)
class _DevStack:
    """What ``up`` starts its pieces with (imported by :func:`up` only)."""

    start_broker: Callable[..., Broker]
    start_scim_target: Callable[..., ScimTarget]
    supervisor: Callable[..., Supervisor]
    free_port: Callable[[int], int]


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
    # Every import of the dev stack in the CLI is here. It comes with the demo extra;
    # without it, say what to install (escaped: rich would take "[demo]" for markup).
    try:
        from services.devstack.broker import start_broker
        from services.devstack.processes import free_port
        from services.devstack.scim_target import start_scim_target
        from services.devstack.supervisor import Supervisor, claim_data_dir, default_data_dir
    except ModuleNotFoundError as exc:
        raise fail(ScimflowError(escape(str(exc)))) from None

    stack = _DevStack(start_broker, start_scim_target, Supervisor, free_port)
    settings = load_settings()
    configure_logging(settings.log_format, settings.log_level)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    # Ctrl-C stops `up` even when it was started with SIGINT ignored (inherited from a
    # parent that ignores it: a test runner, a shell's background job).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if data_dir is None and not config.is_file():  # else the default dir lands beside nothing
        raise fail(ConfigError("no such config file", file=str(config)))
    state = (data_dir or default_data_dir(config)).expanduser().resolve()
    try:
        with claim_data_dir(state, fresh=fresh) as resumed:
            how = ("wiped, starting empty" if fresh else
                   "resuming the last run; `--fresh` starts over" if resumed else "new, starting empty")
            err.print(f"data dir: {state} ({how})", highlight=False)
            _up(stack, settings, config, state, demo_target=demo_target)
    except ScimflowError as exc:
        raise fail(exc) from None


def _up(stack: _DevStack, settings: Settings, config: Path, state: Path, *, demo_target: bool) -> None:
    """Start everything with its state in ``state``, follow the activity, stop on Ctrl-C."""
    env: dict[str, str] = {}
    running: list[Any] = []
    try:
        if demo_target:
            target = _start_demo_target(stack, state)
            running.append(target)
            env |= {"DEMO_SCIM_URL": target.base_url, "DEMO_SCIM_TOKEN": target.token}
            os.environ.update(env)
        loaded = load_checked(config)
        topics = Topics(settings.topic_prefix, settings.partitions)
        broker = stack.start_broker(settings, topics=topics.specs(), state_dir=state / "kafka",
                                    log=lambda m: err.print(m, highlight=False))
        running.append(broker)
        env["SCIMFLOW_KAFKA_BOOTSTRAP"] = broker.bootstrap
        sup = stack.supervisor(config=config.resolve(), env=env, log_dir=state / "logs")
        running.append(sup)
        sup.start()
        admin_url = sup.start_admin(port=stack.free_port(settings.admin_port), host=settings.admin_host,
                                    tokens=f"operator=file:{_admin_token_file(state)}")
        announce(loaded, broker.bootstrap, env, state, admin_url)
        _check_targets(settings, broker.bootstrap, loaded)
        _watch(loaded, broker.bootstrap, topics, sup)
    except ScimflowError as exc:
        raise fail(exc) from None
    except KeyboardInterrupt:
        err.print("stopping ...")
    finally:
        for thing in reversed(running):
            thing.stop()
        err.print("stopped: workers, admin API, broker and demo target are down; "
                  f"what they keep stays in {state}.", highlight=False)


def _start_demo_target(stack: _DevStack, state: Path) -> ScimTarget:
    """The demo scim2-server, with the users, groups, port and token of the last run (if
    any): a target that remembers what the pipeline remembers writing to it."""
    folder = state / "scim-target"
    folder.mkdir(parents=True, exist_ok=True)
    port_file = folder / "port"
    kept = port_file.read_text().strip() if port_file.is_file() else ""
    target = stack.start_scim_target(token=_kept_secret(state / "demo-token"),
                                     port=stack.free_port(int(kept) if kept.isdigit() else 0),
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


def announce(loaded: LoadedConfig, bootstrap: str, env: dict[str, str], run_dir: Path,
             admin_url: str) -> None:
    """Where everything runs and the commands to try, each line pasteable into a shell."""
    out.rule("scimflow is running")
    say(f"broker          {bootstrap}")
    say(f"worker logs     {run_dir / 'logs'}/{{ingest,mapper,writer,admin}}.log")
    admin_token = run_dir / "admin-token"
    say(f"admin API       {admin_url}  (token name `operator`, value in {admin_token})")
    for app in loaded.config.applications:
        say(f"app {app.name:<11} {app.target.base_url}")
    if "DEMO_SCIM_TOKEN" in env:
        demo_token = run_dir / "demo-token"
        demo_token.parent.mkdir(parents=True, exist_ok=True)
        demo_token.write_text(env["DEMO_SCIM_TOKEN"])
        demo_token.chmod(0o600)
        say(f"look at target  curl -s -H \"Authorization: Bearer $(cat {demo_token})\" "
            f"'{env['DEMO_SCIM_URL']}/Users?count=5'")
    for source in loaded.config.sources:
        if isinstance(source, FileSource):
            say(f"edit source     {loaded.resolve_path(source.path)}  (changes apply in seconds)")
        else:
            where = getattr(source, "url", None) or source.name
            say(f"source {source.name:<8} {where}  (changes apply in seconds)")
    _announce_commands(loaded, bootstrap, admin_url, admin_token)


def _announce_commands(loaded: LoadedConfig, bootstrap: str, admin_url: str, admin_token: Path) -> None:
    prefix = f"SCIMFLOW_KAFKA_BOOTSTRAP={bootstrap}"
    api = f"SCIMFLOW_ADMIN_URL={admin_url} SCIMFLOW_ADMIN_TOKEN=$(cat {admin_token})"
    say(f"tail activity   {prefix} scimflow tail activity")
    say(f"sync details    {api} scimflow status")
    say(f"  (or directly) {prefix} scimflow status --config {loaded.file}")
    say(f"control         {api} scimflow stop|start|restart|provision|test-connection APP")
    say("stop            Ctrl-C here stops the workers, the admin API, the target and the broker")


def _check_targets(settings: Settings, bootstrap: str, loaded: LoadedConfig) -> None:
    """Say at once when an app's target does not answer, instead of a bar stuck at 0."""
    from services.admin.control import Caller, ControlPlane

    plane = ControlPlane(settings, bootstrap, loaded, Caller(by="scimflow up"))
    try:
        for app in loaded.config.applications:
            result = plane.test_connection(app.name)
            if not result["ok"]:
                err.print(f"[bold red]app {escape(app.name)}: the target does not work:[/] "
                          f"{escape(str(result['message']))}\n  The writer keeps retrying and "
                          "reports each failure (scimflow tail errors); fix the target or the "
                          f"app's `target` settings in {escape(loaded.file)}.", highlight=False)
    finally:
        plane.close()


def _watch(loaded: LoadedConfig, bootstrap: str, topics: Topics, sup: Supervisor) -> None:
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
        for record in records(bootstrap, topics.activity, ActivityRecord, follow=True, dead=sup.dead):
            seen.add((record.app, record.source_id))
            bar.update(task, completed=min(len(seen), total))
            if len(seen) >= total:
                break
    out.print(f"initial sync done: {total} users processed; now following changes")
    for record in records(bootstrap, topics.activity, ActivityRecord, follow=True, dead=sup.dead,
                          from_beginning=False):
        print_activity(record)
