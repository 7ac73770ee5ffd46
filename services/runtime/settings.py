"""Deployment knobs, read once per process from ``SCIMFLOW_*`` environment variables.

The provisioning config (applications, sources, mappings) is YAML and lives in
``config.py``; this module holds only what differs between deployments of the same config.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from services.runtime.errors import ConfigError

__all__ = ["Settings", "load_settings"]

_PREFIX = "SCIMFLOW_"

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
SecretRef = Annotated[str, msgspec.Meta(pattern=r"^(env|file):\S+$")]
"""``env:NAME`` or ``file:/path``: where a secret is, never the secret itself."""


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
    state_store: Literal["memory", "rocksdb"] = "memory"
    """Where the workers' faust tables live (``services/runtime/state.py``): ``memory`` (all
    of it in RAM, rebuilt from the changelog topics at every start), or ``rocksdb`` on disk
    under ``state_dir`` (RAM stays bounded as the directory grows; a restart that keeps the
    disk reads only the changelog's new records). The changelogs are the source of truth
    either way: an empty ``state_dir`` is rebuilt from them, and so is one whose files came
    from another Kafka cluster or a recreated changelog topic. The Helm chart and the
    kustomize base run the writer with ``rocksdb``; the code's default (``scimflow up``, the
    tests) stays ``memory`` until the integration and e2e suites have run on ``rocksdb``."""
    state_dir: str | None = None
    """Where the ``rocksdb`` store keeps its files; unset: ``<data_dir>/state``. A pod mounts
    a volume here (an ``emptyDir`` is enough: it outlives container restarts)."""
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

    # --- Kafka security: every client scimflow makes (services/runtime/kafka.py) ---
    kafka_security_protocol: SecurityProtocol = "PLAINTEXT"
    kafka_sasl_mechanism: SaslMechanism | None = None
    """Required with ``SASL_PLAINTEXT``/``SASL_SSL``."""
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretRef | None = None
    """``env:NAME`` or ``file:/path``: a reference, resolved when a client is first made."""
    kafka_ssl_cafile: str | None = None
    """PEM CA bundle the broker's certificate must chain to; unset: the system's CAs."""
    kafka_ssl_certfile: str | None = None
    """PEM client certificate (mutual TLS); may hold the key too."""
    kafka_ssl_keyfile: str | None = None
    """PEM private key of ``kafka_ssl_certfile`` (unencrypted), if not in that file."""
    kafka_ssl_check_hostname: bool = True
    """Whether the broker's certificate must name the host connected to."""
    kafka_compression: Literal["zstd", "gzip", "none"] = "zstd"
    """Compression of what scimflow produces: a directory change carries the whole object,
    and large attribute values (photos, certificates, long group member lists) compress
    well. ``zstd`` compresses directory changes smaller than gzip at about a tenth of its CPU
    (aiokafka's gzip runs at level 9: ~10 us per change, 10 s of ingest CPU per million);
    every Kafka client since 2.1 reads it. ``gzip`` for consumers that cannot, ``none`` for
    a broker that cannot take compressed batches."""
    event_loop: Literal["asyncio", "uvloop"] = "uvloop"
    """The workers' event loop. Every record a worker consumes or produces is a handful of
    futures, callbacks and socket reads in faust and aiokafka; uvloop (libuv, the loop faust
    supports besides asyncio's own) runs them for about 10 % less CPU per service, which an
    unchanged full scan of a million objects needs to finish in three minutes on two cores.
    ``asyncio`` keeps the standard loop (for a platform without a uvloop wheel, or to rule
    the loop out when debugging)."""

    def __post_init__(self) -> None:
        problem = _kafka_security_problem(self)
        if problem is not None:
            raise ValueError(problem)  # msgspec turns it into a ValidationError


def _kafka_security_problem(s: Settings) -> str | None:
    """What is wrong with the Kafka security settings taken together, if anything."""
    protocol = s.kafka_security_protocol
    sasl = {"SCIMFLOW_KAFKA_SASL_MECHANISM": s.kafka_sasl_mechanism,
            "SCIMFLOW_KAFKA_SASL_USERNAME": s.kafka_sasl_username,
            "SCIMFLOW_KAFKA_SASL_PASSWORD": s.kafka_sasl_password}
    tls = {"SCIMFLOW_KAFKA_SSL_CAFILE": s.kafka_ssl_cafile,
           "SCIMFLOW_KAFKA_SSL_CERTFILE": s.kafka_ssl_certfile,
           "SCIMFLOW_KAFKA_SSL_KEYFILE": s.kafka_ssl_keyfile}
    if protocol.startswith("SASL_"):
        missing = [name for name, value in sasl.items() if not value]
        if missing:
            return f"SCIMFLOW_KAFKA_SECURITY_PROTOCOL={protocol} needs {', '.join(missing)}"
    else:
        given = [name for name, value in sasl.items() if value]
        if given:  # set but silently unused is how a cluster ends up open
            return (f"{', '.join(given)} given, but SCIMFLOW_KAFKA_SECURITY_PROTOCOL={protocol} "
                    "uses no SASL (use SASL_SSL or SASL_PLAINTEXT)")
    if not protocol.endswith("SSL"):
        given = [name for name, value in tls.items() if value]
        if given:
            return (f"{', '.join(given)} given, but SCIMFLOW_KAFKA_SECURITY_PROTOCOL={protocol} "
                    "uses no TLS (use SSL or SASL_SSL)")
    if s.kafka_ssl_keyfile and not s.kafka_ssl_certfile:
        return "SCIMFLOW_KAFKA_SSL_KEYFILE given without SCIMFLOW_KAFKA_SSL_CERTFILE"
    return None


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
