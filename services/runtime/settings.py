"""Deployment knobs, read once per process from ``SCIMFLOW_*`` environment variables.

The provisioning config (applications, sources, mappings) is YAML and lives in
``config.py``; this module holds only what differs between deployments of the same config.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import msgspec

from services.runtime.errors import ConfigError

__all__ = ["Settings", "load_settings"]

_PREFIX = "SCIMFLOW_"


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One process's deployment settings."""

    kafka_bootstrap: str | None = None
    """``host:port[,host:port]`` of an existing cluster; unset -> the project starts a broker."""
    topic_prefix: str = "scimflow."
    partitions: int = 6
    config: str | None = None
    """Path of the provisioning config YAML."""
    data_dir: str = str(Path.home() / ".cache" / "scimflow")
    """Where the embedded broker, faust and caches keep their files."""
    log_format: str = "auto"
    """``json``, ``console`` or ``auto`` (console on a TTY, JSON otherwise)."""
    log_level: str = "info"
    metrics_port: int = 0
    """Port for ``/metrics``; 0 disables the endpoint."""
    metrics_host: str = "127.0.0.1"
    """Address ``/metrics`` listens on; ``0.0.0.0`` in a pod (the manifests set it)."""
    max_message_bytes: int = 1_000_000
    """Largest change or command scimflow publishes (encoded, before compression); a larger
    object becomes an ``ObjectTooLarge`` error record. Keep it at or under the topics'
    ``max.message.bytes`` (Kafka's default is 1,048,588)."""
    writer_batch: int = 256
    """Commands a writer process holds in flight (distinct objects run concurrently; the
    per-app target limits are `target.rate_limit` in the config)."""
    removal_grace: float = 2.0
    """Seconds a disable/delete waits so a burst is seen whole by the deletion threshold."""
    kafka_version: str = "4.1.1"
    """Apache Kafka version the embedded broker resolves from Maven Central."""
    admin_host: str = "127.0.0.1"
    """Address the admin HTTP API (``scimflow admin``) listens on; ``0.0.0.0`` in a pod."""
    admin_port: int = 8088
    admin_tokens: str | None = None
    """Named bearer tokens of the admin API: ``name=env:VAR,name2=file:/path``. The name is
    what the audit trail records; the value is only a reference, resolved at start-up."""
    admin_url: str | None = None
    """Where the CLI finds the admin API (``http://host:8088``); unset: the CLI talks to Kafka."""
    admin_token: str | None = None
    """The CLI's bearer token for ``admin_url`` (or ``--token-file``)."""
    provision_timeout: float = 5.0
    """Seconds provision-on-demand waits for the whole trace."""
    shutdown_timeout: float = 30.0
    """Seconds a worker's clean shutdown may take after SIGTERM/SIGINT before the process
    exits anyway (what is not committed is redelivered: at-least-once)."""


def load_settings(environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Read ``SCIMFLOW_*`` variables into :class:`Settings`; ``overrides`` win."""
    env = os.environ if environ is None else environ
    raw: dict[str, object] = {}
    for field in Settings.__struct_fields__:
        value = env.get(_PREFIX + field.upper())
        if value is not None and value != "":
            raw[field] = value
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(str(exc), file="environment (SCIMFLOW_*)") from exc
