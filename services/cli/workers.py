"""The deployment's commands: run one ingest, mapper or writer worker, or the admin API,
in the foreground (what each Kubernetes Deployment runs).

Each of them applies the apps of its ``--config`` file to ``control.config`` at start when
the file changed (GitOps, :func:`~services.runtime.live_config.apply_file_at_start`); the
workers then follow the topic (live reload). ``scimflow up`` runs these same commands.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Literal

import structlog

from services.cli.config_tools import load_checked
from services.cli.options import ConfigOpt
from services.cli.render import fail
from services.runtime.config import SERVICE_SECRETS, LoadedConfig, resolve_secrets
from services.runtime.errors import ConfigError, ScimflowError
from services.runtime.logs import configure_logging
from services.runtime.settings import Settings, load_settings

__all__ = ["admin", "ingest", "mapper", "writer"]

log = structlog.get_logger("scimflow.config")


def _apply_file(settings: Settings, bootstrap: str, loaded: LoadedConfig, service: str) -> None:
    """The file's changed apps onto control.config. If the topic cannot be written, the
    process runs the file's apps as before (the file is the bootstrap) and says so."""
    from services.runtime.live_config import apply_file_at_start
    from services.runtime.topics import Topics

    topics = Topics(settings.topic_prefix, settings.partitions)
    try:
        apply_file_at_start(bootstrap, topics, loaded, service=service)
    except Exception as exc:  # a broker or ACL problem must not stop a worker that can run its file
        log.warning("could not apply the config file to the config topic; running it as it is",
                    file=loaded.file, service=service, reason=f"{type(exc).__name__}: {exc}")


def _worker(service: Literal["ingest", "mapper", "writer"], config: Path) -> None:
    settings = load_settings()
    configure_logging(settings.log_format, settings.log_level)
    if not settings.kafka_bootstrap:
        raise fail(ConfigError("SCIMFLOW_KAFKA_BOOTSTRAP is not set; use `scimflow up` to "
                               "start a local broker with the whole pipeline"))
    try:
        # Each Deployment holds only the Secrets its own work needs: resolve only those.
        loaded = load_checked(config, secrets=SERVICE_SECRETS[service])
    except ScimflowError as exc:
        raise fail(exc) from None
    _apply_file(settings, settings.kafka_bootstrap, loaded, service)
    from services.runtime.kafka import run_worker, use_event_loop

    use_event_loop(settings.event_loop)  # before the app exists: it takes the policy's loop
    from services.runtime.probes import Probes

    if service == "ingest":
        from services.ingest.main import build_app
    elif service == "mapper":
        from services.mapper.main import build_app
    else:
        from services.writer.main import build_app
    try:
        app = build_app(settings, loaded, settings.kafka_bootstrap)
    except ScimflowError as exc:  # e.g. Kafka refused the credentials: one clear line, no traceback
        raise fail(exc) from None
    Probes(app, settings, settings.kafka_bootstrap).install()
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
    from services.cli.apps import evaluate_object, preview_definition

    settings = load_settings()
    configure_logging(settings.log_format, settings.log_level)
    if not settings.kafka_bootstrap:
        raise fail(ConfigError("SCIMFLOW_KAFKA_BOOTSTRAP is not set"))
    try:
        loaded = load_checked(config, resolve_secrets=False)
        resolve_secrets(loaded, "targets", missing_ok=True)  # test-connection says which it lacks
        _apply_file(settings, settings.kafka_bootstrap, loaded, "admin")
        run_admin(settings, loaded, settings.kafka_bootstrap,
                  load=partial(load_checked, resolve_secrets=False), previewer=preview_definition,
                  evaluator=evaluate_object)
    except ScimflowError as exc:
        raise fail(exc) from None
