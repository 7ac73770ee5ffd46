"""The operator's commands: sync details, status on/off, restart, allow deletes, provision
on demand. One implementation (``services.admin.control``), reached directly on Kafka or
over the admin API (``--api``): :func:`backend` picks which."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from services.cli.options import ApiOpt, AppArg, ByOpt, JsonOpt, OptionalConfigOpt, TokenFileOpt
from services.cli.render import emit, err, fail, out, print_action, print_reports, print_trace
from services.runtime.config import load_config
from services.runtime.errors import ConfigError, ScimflowError
from services.runtime.settings import load_settings

if TYPE_CHECKING:
    from services.admin.control import Backend

__all__ = ["allow_deletes", "backend", "provision", "restart", "run", "start", "status", "stop"]


@contextlib.contextmanager
def backend(api: str | None, token_file: Path | None, config: Path | None, by: str, *,
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
        raise fail(ConfigError("SCIMFLOW_KAFKA_BOOTSTRAP is not set (or give --api URL)"))
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


def run(call: Callable[[], None]) -> None:
    """Run a control command: ScimflowErrors are the user's to read, exit code 2."""
    try:
        call()
    except ScimflowError as exc:
        raise fail(exc) from None


def status(app: Annotated[str | None, typer.Argument(help="Only this application.")] = None,
           config: OptionalConfigOpt = None, api: ApiOpt = None, token_file: TokenFileOpt = None,
           as_json: JsonOpt = False,
           watch: Annotated[bool, typer.Option(help="Show the running cycle's progress until it ends.")]
           = False) -> None:
    """Sync details per app: status, managed users and groups, cycles, escrow, last error."""
    def call() -> None:
        with backend(api, token_file, config, "") as plane:
            if watch and app:
                _watch_cycle(plane, app, after=None)
            reports = plane.status(app)
            emit(reports, as_json, print_reports)
    run(call)


def _watch_cycle(plane: Backend, app: str, *, after: datetime | None, wait: float = 60.0) -> None:
    """A progress bar while the app's cycle runs. With ``after``: first wait (up to ``wait``
    seconds) for a cycle that started after it, e.g. the one a restart asked for."""
    deadline = time.monotonic() + wait
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err, transient=False) as bar:
        task = bar.add_task(f"{app}: waiting for a cycle", total=None)
        seen = False
        while True:
            report = plane.status(app)[0]
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


def _control_command(app: str, api: str | None, token_file: Path | None, config: Path | None,
                     by: str, as_json: bool, act: Callable[[Backend], dict[str, Any]]) -> None:
    def call() -> None:
        with backend(api, token_file, config, by) as plane:
            emit(act(plane), as_json, print_action)
    run(call)


def stop(app: AppArg, by: ByOpt = "", config: OptionalConfigOpt = None, api: ApiOpt = None,
         token_file: TokenFileOpt = None, as_json: JsonOpt = False) -> None:
    """Provisioning status Off: nothing is created, updated or removed in APP's target."""
    _control_command(app, api, token_file, config, by, as_json, lambda b: b.set_status(app, "off"))


def start(app: AppArg, by: ByOpt = "", config: OptionalConfigOpt = None, api: ApiOpt = None,
          token_file: TokenFileOpt = None, as_json: JsonOpt = False) -> None:
    """Provisioning status On: resume APP, applying what changed while it was off."""
    _control_command(app, api, token_file, config, by, as_json, lambda b: b.set_status(app, "on"))


def allow_deletes(app: AppArg, by: ByOpt = "", config: OptionalConfigOpt = None, api: ApiOpt = None,
                  token_file: TokenFileOpt = None, as_json: JsonOpt = False) -> None:
    """Release the disables/deletes held by the app's deletion threshold."""
    _control_command(app, api, token_file, config, by, as_json, lambda b: b.allow_deletes(app))


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
        with backend(api, token_file, config, by) as plane:
            emit(plane.restart(app, reset_links=reset_links), as_json, print_action)
            if watch or (watch is None and not as_json and out.is_terminal):
                _watch_cycle(plane, app, after=asked)
    run(call)


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
        with backend(api, token_file, config, by) as plane:
            try:
                trace = plane.provision(app, object_id, "group" if group else "user", timeout=timeout)
            except ProvisionFailedError as exc:
                emit(exc.trace, as_json, print_trace)
                raise
        emit(trace, as_json, print_trace)
        if trace["outcome"] == "failure":
            raise typer.Exit(1)
    run(call)
