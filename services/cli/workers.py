"""The deployment's commands: run one ingest, mapper or writer worker, or the admin API,
in the foreground (what each Kubernetes Deployment runs)."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Literal

from services.cli.config_tools import load_checked
from services.cli.options import ConfigOpt
from services.cli.render import fail
from services.runtime.errors import ConfigError, ScimflowError
from services.runtime.logs import configure_logging
from services.runtime.settings import load_settings

__all__ = ["admin", "ingest", "mapper", "writer"]


def _worker(service: Literal["ingest", "mapper", "writer"], config: Path) -> None:
    settings = load_settings()
    configure_logging(settings.log_format, settings.log_level)
    if not settings.kafka_bootstrap:
        raise fail(ConfigError("SCIMFLOW_KAFKA_BOOTSTRAP is not set; use `scimflow up` to "
                               "start a local broker with the whole pipeline"))
    try:
        loaded = load_checked(config)
    except ScimflowError as exc:
        raise fail(exc) from None
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


def ingest(config: ConfigOpt) -> None:
    """Run one ingest worker (sources -> directory.changes)."""
    _worker("ingest", config)


def mapper(config: ConfigOpt) -> None:
    """Run one mapper worker (scope + mappings -> provisioning.commands)."""
    _worker("mapper", config)


def writer(config: ConfigOpt) -> None:
    """Run one writer worker (commands -> SCIM target; activity and errors)."""
    _worker("writer", config)


def admin(config: ConfigOpt) -> None:
    """Run the admin HTTP API (needs SCIMFLOW_KAFKA_BOOTSTRAP and SCIMFLOW_ADMIN_TOKENS)."""
    from services.admin.main import run_admin

    settings = load_settings()
    configure_logging(settings.log_format, settings.log_level)
    if not settings.kafka_bootstrap:
        raise fail(ConfigError("SCIMFLOW_KAFKA_BOOTSTRAP is not set"))
    try:
        run_admin(settings, load_checked(config), settings.kafka_bootstrap,
                  load=partial(load_checked, resolve_secrets=False))
    except ScimflowError as exc:
        raise fail(exc) from None
