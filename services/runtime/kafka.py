"""The one module that owns Kafka clients.

faust apps for the three workers, and kafka-python for everything outside a worker:
waiting for a broker, creating topics, the plain producer, and every read of a topic
outside a worker's stream. Those reads all go through :class:`TopicReader` (no consumer
group, every partition, nothing committed): a snapshot up to the end offsets
(:func:`read_records`, :func:`read_latest`: ``scimflow status``, the admin API), a tail
(:func:`tail_records`, :func:`consume`: ``scimflow tail``, ``up``, the test harness), or
polls from the end (provision on demand). Inside a worker, :func:`follow_records` and
friends (aiokafka) follow a topic from its beginning for ever (:func:`follow_records_from`:
from the offsets a caller stored, when they still fit the topic).

Every client connects the same way: :class:`KafkaSecurity` (TLS, SASL, from the
``SCIMFLOW_KAFKA_*`` settings) gives the kwargs kafka-python and aiokafka share
(:func:`client_security`) and faust's ``broker_credentials`` (:func:`faust_credentials`).
Before a process's first client of a secured cluster, :func:`check_access` opens one
connection the same way, so a wrong password or an untrusted certificate is a clear
:class:`KafkaSecurityError` at start, not a client that retries until it times out.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import os
import ssl
import threading
import time
from collections import defaultdict
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Generator,
    Iterable,
    Iterator,
    Mapping,
)
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Self, TypeVar

import faust
import mode.loop
import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.conn import create_conn
from aiokafka.errors import KafkaError as AioKafkaError
from aiokafka.errors import SaslAuthenticationFailed, UnsupportedSaslMechanismError
from faust.auth import SASLCredentials, SSLCredentials
from faust.utils.functional import consecutive_numbers
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic, UserScramCredentialUpsertion
from kafka.errors import KafkaError, TopicAlreadyExistsError
from kafka.structs import TopicPartition as KafkaPartition

from services.runtime import metrics
from services.runtime.config import Secret
from services.runtime.errors import ConfigError, ScimflowError
from services.runtime.restore import restore_tables
from services.runtime.sensors import LeanMonitor
from services.runtime.settings import Settings, load_settings
from services.runtime.state import (
    Provenance,
    claim_state_dir,
    faust_store_options,
    keep_if_same_source,
    partition_for,
)
from services.runtime.topics import Topics, TopicSpec

log = structlog.get_logger("scimflow.worker")

__all__ = [
    "CAUGHT_UP",
    "IDLE",
    "BrokerUnavailableError",
    "KafkaSecurity",
    "KafkaSecurityError",
    "SkippedRecords",
    "TopicReader",
    "check_access",
    "client_security",
    "consume",
    "create_topics",
    "faust_app",
    "faust_credentials",
    "follow_from_start",
    "follow_records",
    "follow_records_from",
    "follow_topic",
    "kafka_security",
    "partition_for",
    "plain_producer",
    "process_security",
    "raw_schema",
    "raw_topic",
    "read_latest",
    "read_records",
    "report_consumer_lag",
    "run_worker",
    "tail_records",
    "upsert_scram_user",
    "use_event_loop",
    "wait_until_ready",
    "watch_delivery",
]


class BrokerUnavailableError(ScimflowError):
    """The broker did not answer in time."""


# --- security: TLS and SASL for every client ------------------------------------------


class KafkaSecurityError(ScimflowError):
    """The broker refused our credentials or certificate, or we refused its certificate:
    the settings must change; retrying does not help."""


_SETTINGS = "environment (SCIMFLOW_KAFKA_*)"


@dataclass(frozen=True)
class KafkaSecurity:
    """How this process's Kafka clients prove who they are and check the broker.

    Made by :func:`kafka_security` from the settings: the password is resolved and the
    TLS context built once, so a missing file is a start-up error. Its repr shows the
    password's reference only (:class:`~services.runtime.config.Secret`).
    """

    protocol: str = "PLAINTEXT"
    mechanism: str | None = None
    username: str | None = None
    password: Secret | None = None
    ssl_context: ssl.SSLContext | None = None

    @property
    def sasl(self) -> bool:
        return self.protocol.startswith("SASL_")


PLAINTEXT = KafkaSecurity()


def kafka_security(settings: Settings) -> KafkaSecurity:
    """The :class:`KafkaSecurity` of ``settings``; ConfigError if a secret or file is missing."""
    if settings.kafka_security_protocol == "PLAINTEXT":
        return PLAINTEXT
    password = None
    if settings.kafka_sasl_password is not None:
        password = _resolve_secret(settings.kafka_sasl_password, "SCIMFLOW_KAFKA_SASL_PASSWORD")
    context = _ssl_context(settings) if settings.kafka_security_protocol.endswith("SSL") else None
    return KafkaSecurity(protocol=settings.kafka_security_protocol,
                         mechanism=settings.kafka_sasl_mechanism,
                         username=settings.kafka_sasl_username, password=password,
                         ssl_context=context)


def _resolve_secret(ref: str, setting: str) -> Secret:
    kind, _, where = ref.partition(":")
    if kind == "env":
        value = os.environ.get(where, "")
        if not value:
            raise ConfigError(f"{setting}={ref}: environment variable {where} is not set",
                              file=_SETTINGS)
        return Secret(ref, value)
    try:
        value = Path(where).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{setting}={ref}: cannot read the file ({exc.strerror})",
                          file=_SETTINGS) from None
    if not value:
        raise ConfigError(f"{setting}={ref}: the file is empty", file=_SETTINGS)
    return Secret(ref, value)


def _ssl_context(settings: Settings) -> ssl.SSLContext:
    """TLS that checks the broker's certificate against the CA file (or the system's CAs),
    with our client certificate for mutual TLS if one is given."""
    try:
        context = ssl.create_default_context(cafile=settings.kafka_ssl_cafile)
        if settings.kafka_ssl_certfile:
            context.load_cert_chain(settings.kafka_ssl_certfile, settings.kafka_ssl_keyfile)
    except (OSError, ssl.SSLError) as exc:
        files = ", ".join(f for f in (settings.kafka_ssl_cafile, settings.kafka_ssl_certfile,
                                      settings.kafka_ssl_keyfile) if f)
        raise ConfigError(f"cannot load the Kafka TLS files ({files}): {exc}", file=_SETTINGS) from None
    context.check_hostname = settings.kafka_ssl_check_hostname
    return context


def client_security(security: KafkaSecurity) -> dict[str, Any]:
    """kafka-python's and aiokafka's keyword arguments for ``security`` (the same names in
    both). They hold the password: pass them to a client, never to a log."""
    if security.protocol == "PLAINTEXT":
        return {}
    kwargs: dict[str, Any] = {"security_protocol": security.protocol,
                              "ssl_context": security.ssl_context}
    if security.sasl and security.password is not None:
        kwargs.update(sasl_mechanism=security.mechanism, sasl_plain_username=security.username,
                      sasl_plain_password=security.password.reveal())
    return kwargs


def faust_credentials(security: KafkaSecurity) -> Any:
    """faust's ``broker_credentials`` for ``security`` (None: plaintext)."""
    if security.sasl and security.password is not None:
        return SASLCredentials(username=security.username, password=security.password.reveal(),
                               ssl_context=security.ssl_context, mechanism=security.mechanism)
    if security.ssl_context is not None:
        return SSLCredentials(security.ssl_context)
    return None


@functools.cache
def process_security() -> KafkaSecurity:
    """The security of clients made without one given: this process's ``SCIMFLOW_KAFKA_*``.

    Workers and the CLI are configured by their environment; the callers that only hand
    on a bootstrap address get the same security as the faust app of their process.
    """
    return kafka_security(load_settings())


_ACCESS_CHECKED: set[tuple[str, KafkaSecurity]] = set()


def check_access(bootstrap: str, security: KafkaSecurity, timeout: float = 15.0) -> None:
    """Connect to a broker of ``bootstrap`` as every client will (TLS, SASL), once per
    process: KafkaSecurityError if credentials or certificates are refused,
    BrokerUnavailableError if no broker answers within ``timeout`` seconds."""
    if security.protocol == "PLAINTEXT" or (bootstrap, security) in _ACCESS_CHECKED:
        return
    failures = _run_apart(_probe_all(bootstrap, security, timeout))
    if failures is None:
        _ACCESS_CHECKED.add((bootstrap, security))
        return
    refused = [f for f in failures if isinstance(f, KafkaSecurityError)]
    raise (refused or failures)[0]


async def _probe_all(bootstrap: str, security: KafkaSecurity,
                     seconds: float) -> list[ScimflowError] | None:
    failures: list[ScimflowError] = []
    for address in (a.strip() for a in bootstrap.split(",") if a.strip()):
        host, _, port = address.rpartition(":")
        failure = await _probe(host, int(port), security, seconds)
        if failure is None:
            return None
        failures.append(failure)
    return failures


async def _probe(host: str, port: int, security: KafkaSecurity, seconds: float) -> ScimflowError | None:
    """One connection with the handshakes every client makes; the failure, if any."""
    where = f"Kafka at {host}:{port}"
    try:
        conn = await asyncio.wait_for(
            create_conn(host, port, client_id="scimflow-check", request_timeout_ms=int(seconds * 1000),
                        **client_security(security)), seconds)
    except (SaslAuthenticationFailed, UnsupportedSaslMechanismError) as exc:
        return KafkaSecurityError(_redacted(
            f"{where} refused SASL authentication ({security.mechanism}, user "
            f"{security.username!r}): {_detail(exc)}. Check SCIMFLOW_KAFKA_SASL_USERNAME, "
            "SCIMFLOW_KAFKA_SASL_MECHANISM and the secret SCIMFLOW_KAFKA_SASL_PASSWORD points to",
            security))
    except (OSError, TimeoutError, AioKafkaError) as exc:
        tls = exc if isinstance(exc, ssl.SSLError) else exc.__cause__
        if isinstance(tls, ssl.SSLError):
            return KafkaSecurityError(_redacted(f"TLS with {where} failed: {tls}. {_tls_hint(tls)}",
                                                security))
        return BrokerUnavailableError(_redacted(f"{where} did not answer: {exc!r}", security))
    conn.close()
    return None


def _detail(exc: BaseException) -> str:
    return str(exc.args[0]) if exc.args else type(exc).__name__


def _tls_hint(exc: ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return ("The broker's certificate must chain to a CA in SCIMFLOW_KAFKA_SSL_CAFILE (unset: "
                "the system's CAs) and name the host (SCIMFLOW_KAFKA_SSL_CHECK_HOSTNAME)")
    return ("The broker refused the handshake: it may require a client certificate "
            "(SCIMFLOW_KAFKA_SSL_CERTFILE, SCIMFLOW_KAFKA_SSL_KEYFILE) signed by a CA it trusts")


def _redacted(message: str, security: KafkaSecurity) -> str:
    """``message`` without the password, whatever a library put in it."""
    if security.password is not None and security.password.reveal():
        message = message.replace(security.password.reveal(), "***")
    return message


_T = TypeVar("_T")


def _run_apart(coroutine: Coroutine[Any, Any, _T]) -> _T:
    """Run ``coroutine`` on an event loop of its own: callers may be in a loop already."""
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="scimflow-kafka-check") as pool:
        return pool.submit(asyncio.run, coroutine).result()


def _secured(bootstrap: str, security: KafkaSecurity | None) -> dict[str, Any]:
    """The client kwargs for ``security`` (default: the process's), once access is checked."""
    chosen = process_security() if security is None else security
    check_access(bootstrap, chosen)
    return client_security(chosen)


def upsert_scram_user(bootstrap: str, user: str, password: str, *,
                      mechanism: str = "SCRAM-SHA-512", security: KafkaSecurity | None = None) -> None:
    """Create or change a SCRAM user of the cluster (the dev broker's SASL users)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="scimflow-admin",
                             **_secured(bootstrap, security))
    try:
        errors = admin.alter_user_scram_credentials(
            [UserScramCredentialUpsertion(user, mechanism, password)])
    finally:
        admin.close()
    if errors.get(user):
        raise KafkaSecurityError(f"cannot set the SCRAM credentials of {user!r}: {errors[user]}")


def wait_until_ready(bootstrap: str, timeout: float = 60.0, *,
                     security: KafkaSecurity | None = None) -> None:
    """Block until the broker at ``bootstrap`` answers a metadata request; a refused
    password or certificate raises KafkaSecurityError at once."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            secured = _secured(bootstrap, security)
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000,
                                     client_id="scimflow-probe", **secured)
        except (KafkaError, BrokerUnavailableError) as exc:
            last = exc
            time.sleep(0.25)
            continue
        try:
            admin.list_topics()
        except KafkaError as exc:
            last = exc
            time.sleep(0.25)
        else:
            return
        finally:
            admin.close()
    raise BrokerUnavailableError(f"broker at {bootstrap} did not answer within {timeout:.0f}s: {last}")


def create_topics(bootstrap: str, specs: Iterable[TopicSpec], *,
                  security: KafkaSecurity | None = None) -> list[str]:
    """Create the topics that do not exist yet; returns the names created."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="scimflow-admin",
                             **_secured(bootstrap, security))
    try:
        existing = set(admin.list_topics())
        new = [
            NewTopic(
                name=s.name,
                num_partitions=s.partitions,
                replication_factor=1 if _single_node(admin) else -1,
                topic_configs={"cleanup.policy": "compact"} if s.compacted else {},
            )
            for s in specs
            if s.name not in existing
        ]
        if new:
            # A concurrent creator may win the race; the topic is then what we asked for.
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(new, timeout_ms=30000)
        return [t.name for t in new]
    finally:
        admin.close()


def _single_node(admin: Any) -> bool:
    return len(admin.describe_cluster().get("brokers", [])) <= 1


def plain_producer(bootstrap: str, *, security: KafkaSecurity | None = None) -> Any:
    """A kafka-python producer for tools and tests (bytes in, bytes out)."""
    return KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                         **_secured(bootstrap, security))


def consume(bootstrap: str, topic: str, *, from_beginning: bool = True,
            idle_timeout: float = 1.0) -> Iterator[Any]:
    """Yield records of ``topic`` until it has been idle for ``idle_timeout`` seconds."""
    for record in tail_records(bootstrap, topic, from_beginning=from_beginning, idle_timeout=idle_timeout):
        if record is IDLE:
            return
        yield record


def faust_app(service: str, settings: Settings, bootstrap: str) -> Any:
    """The faust app of one service: its id is the consumer group, state is in changelogs.

    Tables live where ``settings.state_store`` says (:mod:`services.runtime.state`): on
    disk in a slot of ``state_dir`` this process holds, or in memory; either way they are
    rebuilt from their changelog topics when the disk is empty, so a replacement pod needs
    no volume that outlives it. Offsets are committed only after the producer has flushed
    what the events produced (faust does this), which gives at-least-once.
    """
    topics = Topics(settings.topic_prefix, settings.partitions)
    servers = ";".join(f"kafka://{hp.strip()}" for hp in bootstrap.split(","))
    datadir = Path(settings.data_dir) / "faust" / topics.app_id(service)
    datadir.mkdir(parents=True, exist_ok=True)
    security = kafka_security(settings)
    check_access(bootstrap, security)  # faust would retry a refused password for ever
    state_dir = _state_dir(service, settings, bootstrap, security)
    if state_dir is not None:
        _restore_tables(bootstrap, topics.app_id(service), state_dir, security)
    return faust.App(
        topics.app_id(service),
        broker=servers,
        broker_credentials=faust_credentials(security),
        **faust_store_options(settings.state_store, state_dir),
        topic_partitions=settings.partitions,
        topic_disable_leader=True,  # no leader topic: we never use app.is_leader()
        topic_allow_declare=True,
        web_enabled=False,
        datadir=str(datadir),
        producer_acks=-1,
        producer_compression_type=_compression(settings),
        **_PRODUCER_TUNING.get(service, {}),
        broker_commit_interval=1.0,
        # A crashed worker's partitions move to a live one after this long (Kafka: 45 s).
        broker_session_timeout=10.0,
        broker_heartbeat_interval=3.0,
        consumer_auto_offset_reset="earliest",
        stream_wait_empty=False,
        Monitor=LeanMonitor,
    )


_PRODUCER_TUNING: dict[str, dict[str, Any]] = {
    # A full scan sends a million small records back to back: with aiokafka's defaults
    # (linger 0, 16 KB batches) each goes out in a request of its own and ingest spends its
    # time in socket writes. A few ms of linger fills large batches; a single change's
    # latency grows by at most that much.
    "ingest": {"producer_linger": 0.005, "producer_max_batch_size": 512 * 1024},
    # The mapper sends one command per change of such a scan: the same cost, the same cure,
    # with more linger: at 5 ms its produce requests (socket writes, futures) were a fifth of
    # its CPU in an unchanged scan; 20 ms takes 21 % off its CPU and 15 % off the scan's
    # time (100k: 35.9 -> 30.3 s) and adds 15 ms to one change's way (p50 75 -> 90 ms).
    "mapper": {"producer_linger": 0.02, "producer_max_batch_size": 512 * 1024},
}


def _state_dir(service: str, settings: Settings, bootstrap: str,
               security: KafkaSecurity) -> Path | None:
    """This process's slot of the state dir (None for the memory store), emptied first if
    its files came from another cluster or from changelogs since deleted."""
    if settings.state_store == "memory":
        return None
    root = Path(settings.state_dir) if settings.state_dir else Path(settings.data_dir) / "state"
    app_id = Topics(settings.topic_prefix, settings.partitions).app_id(service)
    slot = claim_state_dir(root, app_id)
    keep_if_same_source(slot, changelog_provenance(bootstrap, app_id, security=security),
                        log=log.warning)
    return slot


def changelog_provenance(bootstrap: str, app_id: str, *,
                         security: KafkaSecurity | None = None) -> Provenance:
    """The cluster id and the ids of the changelog topics of ``app_id`` (faust names them
    ``<app_id>-<table>-changelog``) as the cluster at ``bootstrap`` has them now."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="scimflow-admin",
                             **_secured(bootstrap, security))
    try:
        cluster_id = str(admin.describe_cluster().get("cluster_id") or "")
        names = [t for t in admin.list_topics()
                 if t.startswith(f"{app_id}-") and t.endswith("-changelog")]
        described = admin.describe_topics(names) if names else []
    finally:
        admin.close()
    return Provenance(cluster_id, {t["name"]: str(t.get("topic_id") or "") for t in described
                                   if not t.get("error_code")})


def _restore_tables(bootstrap: str, app_id: str, state_dir: Path, security: KafkaSecurity) -> None:
    """Read what the slot lacks of the tables' changelogs in bulk before faust starts; its
    own recovery then reads only the tail (:mod:`services.runtime.restore`)."""
    try:
        restore_tables(bootstrap, app_id, state_dir, client=client_security(security))
    except AioKafkaError as exc:
        raise BrokerUnavailableError(f"cannot restore {app_id}'s tables from {bootstrap}: {exc}") from exc


def _compression(settings: Settings) -> str | None:
    return None if settings.kafka_compression == "none" else settings.kafka_compression


async def follow_topic(bootstrap: str, topic: str) -> AsyncIterator[bytes]:
    """Every value of ``topic`` from the beginning, then new ones as they come, without a
    consumer group: each process that follows a control topic sees all of it."""
    async for _, value in follow_records(bootstrap, topic):
        if value is not None:
            yield value


async def follow_records(bootstrap: str, topic: str, *,
                         on_caught_up: Callable[[], None] | None = None,
                         ) -> AsyncIterator[tuple[bytes | None, bytes | None]]:
    """Every ``(key, value)`` of ``topic`` from the beginning of every partition, then new
    ones as they come; ``value`` is None for a tombstone (a compacted changelog's delete).
    No consumer group and no commits: every replica that follows it sees every partition.
    ``on_caught_up`` is called once, when the end offsets the partitions had at the start
    are reached: state built from the topic is complete from then on."""
    async for record in _from_start(bootstrap, topic):
        if record is CAUGHT_UP:
            if on_caught_up is not None:
                on_caught_up()
        else:
            yield record.key, record.value


async def follow_records_from(bootstrap: str, topic: str, offsets: Mapping[int, int], *,
                              on_reset: Callable[[], None] | None = None,
                              on_caught_up: Callable[[], None] | None = None,
                              ) -> AsyncIterator[Any]:
    """Like :func:`follow_records`, resuming each partition at ``offsets[partition]`` (the
    next offset to read; its beginning if absent), and yielding the records themselves
    (``partition``, ``offset``, ``key``, ``value``) so the caller can store where it is.

    Offsets that do not fit the topic any more (one beyond a partition's end or below its
    start, or a partition that is gone: the topic was recreated or truncated) are all
    dropped: ``on_reset`` is called before the first record, and every partition is read
    from its beginning, so state resumed from them must be emptied then."""
    async for record in _from_start(bootstrap, topic, offsets):
        if record is CAUGHT_UP:
            if on_caught_up is not None:
                on_caught_up()
        elif record is _RESET:
            if on_reset is not None:
                on_reset()
        else:
            yield record


CAUGHT_UP = None
"""What :func:`follow_from_start` yields once, when it reached the end offsets of its start."""


async def follow_from_start(bootstrap: str, topic: str) -> AsyncIterator[bytes | None]:
    """Like :func:`follow_topic`, and yields :data:`CAUGHT_UP` (None) once, when it has read
    up to the end offsets the partitions had when it started: a replica that builds state
    from the topic knows when that state is complete."""
    async for record in _from_start(bootstrap, topic):
        if record is CAUGHT_UP:
            yield CAUGHT_UP
        elif record.value is not None:
            yield record.value


_RESET = object()
"""What :func:`_from_start` yields first when the offsets it was given do not fit the topic."""


async def _from_start(bootstrap: str, topic: str,
                      offsets: Mapping[int, int] | None = None) -> AsyncIterator[Any]:
    """Every record of ``topic`` from the beginning, with :data:`CAUGHT_UP` once between
    the records that were there at the start and the ones that came after. A broker
    failure raises BrokerUnavailableError (callers never see aiokafka's errors)."""
    try:
        # aclosing: a caller that stops reading stops the consumer now, not at garbage collection.
        async with contextlib.aclosing(_from_start_unwrapped(bootstrap, topic, offsets)) as records:
            async for record in records:
                yield record
    except AioKafkaError as exc:
        raise BrokerUnavailableError(f"cannot follow {topic} from {bootstrap}: {exc}") from exc


async def _from_start_unwrapped(bootstrap: str, topic: str,
                                offsets: Mapping[int, int] | None) -> AsyncGenerator[Any, None]:
    # The process's security; faust_app checked access when the worker started.
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest", **client_security(process_security()))
    await consumer.start()
    try:
        partitions = await _all_partitions(consumer, topic)
        consumer.assign(partitions)
        ends: dict[TopicPartition, int] = await consumer.end_offsets(partitions)
        if not await _seek(consumer, partitions, ends, offsets or {}):
            yield _RESET
        waiting = True
        while True:
            if waiting and await _reached(consumer, ends):
                waiting = False
                yield CAUGHT_UP
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    yield record
    finally:
        with contextlib.suppress(Exception):
            await consumer.stop()


async def _seek(consumer: AIOKafkaConsumer, partitions: list[TopicPartition],
                ends: dict[TopicPartition, int], offsets: Mapping[int, int]) -> bool:
    """Put each partition at its offset of ``offsets`` (absent: its beginning); False, and
    every partition at its beginning, if one of them does not fit the topic."""
    await consumer.seek_to_beginning(*partitions)
    if not offsets:
        return True
    starts: dict[TopicPartition, int] = await consumer.beginning_offsets(partitions)
    by_number = {tp.partition: tp for tp in partitions}
    for partition, offset in offsets.items():
        tp = by_number.get(partition)
        if tp is None or not starts[tp] <= offset <= ends[tp]:
            log.info("stored offsets do not fit the topic; reading it from the start",
                     topic=partitions[0].topic, partition=partition, offset=offset,
                     start=starts.get(tp) if tp else None, end=ends.get(tp) if tp else None)
            return False
    for partition, offset in offsets.items():
        consumer.seek(by_number[partition], offset)
    return True


async def _all_partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    found = consumer.partitions_for_topic(topic)
    if not found:
        await consumer._client.force_metadata_update()  # aiokafka has no public refresh
        found = consumer.partitions_for_topic(topic) or {0}
    return [TopicPartition(topic, p) for p in sorted(found)]


async def _reached(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
    for tp, end in ends.items():
        if await consumer.position(tp) < end:
            return False
    return True


STALL_IDLE = 10.0
"""Seconds an agent waits for its next record before a partition with records left is
taken for stalled (:meth:`SkippedRecords.unstall`)."""
_UNSTALL_MAX = 300.0
"""At most this many seconds between two seeks of a partition stuck at the same offset."""
_COMMIT_STALL = 30.0
"""Seconds a partition's committed offset may stay put, with later records acknowledged,
before the watch reports it."""
_FENCE_MAX = 30.0
"""Seconds a partition sought back waits for the record sought before it delivers again
what comes (the check then sees the gap again and seeks once more)."""
_SEEK_TRIES = 3
"""Seeks back to the same offset before a gap is taken for records the log no longer has."""


@dataclass(frozen=True, slots=True)
class _Fence:
    offset: int
    generation: int | None
    since: float


class _ReadOffsets(defaultdict[Any, int | None]):
    """faust's read offsets (its consumer's ``_read_offset``), none while a partition is
    fenced: faust then hands every record of it to :meth:`SkippedRecords.admit`, which
    decides, instead of dropping the records read again as already read."""

    def __init__(self, fences: Mapping[Any, _Fence], offsets: Mapping[Any, int | None]) -> None:
        super().__init__(lambda: None, offsets)
        self._fences = fences

    def __getitem__(self, tp: Any) -> int | None:
        if tp in self._fences:
            return None
        return super().__getitem__(tp)


def _new_offset(consumer: Any, tp: Any) -> int | None:
    """faust's ``Consumer._new_offset`` (the offset a partition's acks let it commit), with
    its acked offsets made unique first. faust's list can hold an offset twice (its gap
    ranges are added to it as they are, and records sought back are acknowledged again),
    and its run of consecutive offsets stops at every duplicate: a partition's commits then
    crept a few offsets per commit (the scale 1 -> 2 -> 1 replica test: 444 acks for 432
    offsets, the committed offset moving 257 -> 262 in 6 s with the writer long done)."""
    acked: list[int] = consumer._acked[tp]
    if not acked:
        return None
    gaps = consumer._gap[tp]
    if gaps:  # offsets faust knows do not exist (compaction, transaction markers)
        top = max(acked)
        found = sorted(gaps.overlap(0, top), key=lambda interval: interval.begin)
        if found:
            missing = [offset for interval in found for offset in range(interval.begin, interval.end)]
            acked.extend(missing)
            gaps.chop(0, max(missing[-1], top + 1))
    acked[:] = sorted(set(acked))
    committed = consumer._committed_offset[tp]
    if committed and acked[0] - committed > 1:
        return None  # the next offset to commit was not acknowledged yet (faust's test)
    batch = next(consecutive_numbers(acked))
    del acked[:len(batch)]
    consumer._acked_index[tp].difference_update(batch)
    return int(batch[-1]) + 1


class SkippedRecords:
    """Notices records faust dropped before they reached an agent, and reads them again.

    faust skips (and does not deliver) records it fetched while flow control was off or in
    an older consumer-group generation, i.e. around a rebalance, but keeps its fetch
    position past them (faust-streaming#527, #216). With manual acks the partition's commits
    then stop at the gap, and the skipped records wait for the next restart. :meth:`check`
    sees the offsets jump, logs and counts it (``scimflow_skipped_records_total``) and seeks
    the partition back to the first one missing.

    A seek alone does not bring them back: faust's fetch loop finishes the batch it holds
    (the records after the gap), moves its read offset past them, and then drops the
    records fetched again from the seek as already read. So a seek here *fences* the
    partition (:meth:`install`): until the record sought arrives, faust's read offset for
    it is hidden and :meth:`admit` drops, below faust, every record after it that was
    fetched before the seek; the agent drops those already in its stream buffer. The
    records after a gap thus wait for it: an object's commands keep their order, no ack
    moves past the gap, and each record reaches the agent once per read.

    A partition can also go silent: every record after some offset dropped (or never
    fetched) with no later record to show the jump, so ``check`` never sees it. That
    stalls the partition until the next restart (a kill -9 of a writer mid-sync under load
    once left a third of a sync unwritten, with no error). :meth:`unstall`, on a timer
    (:func:`watch_delivery`), catches it: the agent has waited ``idle`` seconds for its
    next record while a partition of its topic ends past the next offset expected there;
    the partition is sought back (and resumed if faust left it paused), with a warning and
    ``scimflow_stalled_partitions_total``. The agent reads its stream :meth:`through` this
    watch, so a busy agent is never taken for a stalled consumer.
    """

    def __init__(self, app: Any, service: str) -> None:
        self._app = app
        self._service = service
        self._next: dict[tuple[Any, int | None], int] = {}
        self._seeking: dict[tuple[Any, int | None], int] = {}
        """Partitions sought back: the offset the agent awaits; records after it are dropped."""
        self._fences: dict[Any, _Fence] = {}
        """The same, below faust (:meth:`admit`), until the record sought is fetched."""
        self._first: dict[tuple[Any, int | None], int] = {}
        """The first offset the agent got of each partition in each generation."""
        self._head_gaps: dict[tuple[Any, int | None], int] = {}
        """Partitions whose first offset was past the committed one at the last look."""
        self._commits: dict[Any, tuple[int | None, float, bool]] = {}
        """Per partition: the committed offset last seen, since when, and whether reported."""
        self._tries: dict[tuple[Any, int], int] = {}
        """Seeks back to a partition's offset so far."""
        self._asked: dict[tuple[Any, int | None], int | None] = {}
        """Where the group starts partitions faust holds no committed offset of (:meth:`_starts`)."""
        self._idle_since: float | None = time.monotonic()
        """When the agent last finished an event and waited for the next (None: busy)."""
        self._unstalled: dict[Any, tuple[int, float, float]] = {}
        """Partitions sought back by :meth:`unstall`: (offset, when another seek to it is
        due, seconds until then); the wait doubles while the same offset stays stuck."""

    def install(self, consumer: Any) -> None:
        """Put the fence under ``consumer`` (faust's): its read offsets and its callback.
        Before the consumer's fetch loop starts, which takes both once."""
        consumer._read_offset = _ReadOffsets(self._fences, consumer._read_offset)
        deliver = consumer.callback

        async def on_message(message: Any) -> None:
            if self.admit(message):
                await deliver(message)

        consumer.callback = on_message
        consumer._new_offset = functools.partial(_new_offset, consumer)

    def admit(self, message: Any) -> bool:
        """Whether faust may hand ``message`` on: not while its partition waits for an
        earlier record it was sought back to (this one was fetched before the seek)."""
        fence = self._fences.get(message.tp)
        if fence is None:
            return True
        if message.offset > fence.offset:
            generation = getattr(message, "generation_id", fence.generation)
            if generation == fence.generation and time.monotonic() - fence.since < _FENCE_MAX:
                return False
            if generation == fence.generation:  # the agent stops waiting too: check sees the gap again
                log.warning("the record a partition was sought back to did not come", service=self._service,
                            topic=message.tp.topic, partition=message.tp.partition,
                            awaited=fence.offset, got=message.offset)
                self._seeking.pop((message.tp, generation), None)
        del self._fences[message.tp]  # the record sought, or a rebalance's seek to the committed offset
        return True

    async def through(self, events: AsyncIterator[Any],
                      ack: Callable[[Any], Awaitable[Any]] | None = None) -> AsyncIterator[Any]:
        """``events`` of the agent's stream that it should handle, in order; asking for the
        next one tells that the agent is done with the last and waits. With ``ack`` (a
        stream read with ``noack``), each event handled is acknowledged when the agent asks
        for the next, and an event dropped here is not: it is read again."""
        async for event in events:
            if not await self.check(event):
                continue
            yield event
            if ack is not None:
                await ack(event)
            self._idle_since = time.monotonic()

    async def check(self, event: Any) -> bool:
        """Whether the agent should handle ``event``; False for a record after a gap (the
        partition is sought back to the gap) or fetched before such a seek."""
        self._idle_since = None
        message = event.message
        tp, offset = message.tp, message.offset
        generation = getattr(message, "generation_id", None)
        key = (tp, generation)
        awaited = self._seeking.get(key)
        if awaited is not None:
            if offset > awaited:
                return False  # fetched before the seek: read again after the records sought
            del self._seeking[key]
        expected = self._next.get(key)
        if expected is None:  # the first record of this partition in this generation
            expected = self._committed(tp)
            if expected is None and offset > 0:
                # No commit faust knows of: ask the group and the log (once; a second or
                # so through faust's consumer thread). From offset 0 nothing can be missing.
                expected = (await self._starts([tp]))[tp]
        if awaited is None and expected is not None and offset > expected:
            tries = self._tries.get((tp, expected), 0)
            if tries < _SEEK_TRIES:
                self._tries[(tp, expected)] = tries + 1
                log.warning("records were skipped by the consumer; reading them again", service=self._service,
                            topic=tp.topic, partition=tp.partition, first=expected, got=offset)
                metrics.SKIPPED_RECORDS.labels(service=self._service).inc(offset - expected)
                await self._seek_back(tp, expected, generation)
                return False
            log.error("records could not be read again; going on after them", service=self._service,
                      topic=tp.topic, partition=tp.partition, first=expected, got=offset, seeks=tries)
        self._tries.pop((tp, offset), None)
        self._next[key] = offset + 1
        self._first.setdefault(key, offset)
        return True

    async def _seek_back(self, tp: Any, offset: int, generation: int | None) -> None:
        self._seeking[(tp, generation)] = offset
        self._fences[tp] = _Fence(offset, generation, time.monotonic())
        await self._app.consumer.seek(tp, offset)

    def _committed(self, tp: Any) -> int | None:
        # faust keeps the group's committed offsets of its assignment here; no public accessor.
        committed = getattr(self._app.consumer, "_committed_offset", {}).get(tp)
        return committed if isinstance(committed, int) else None

    async def _starts(self, tps: list[Any]) -> dict[Any, int | None]:
        """Where the group's consumer starts each partition: the committed offset faust
        holds; where it holds none, the group's committed offset as the broker has it now;
        for a partition the group never committed, the log's first offset, as
        ``auto_offset_reset="earliest"`` does. A writer killed before its first commit
        leaves its partitions so, and their records are as skippable as any: the survivor
        of such a takeover once waited for ever on one whose records faust had dropped."""
        generation = getattr(self._app, "consumer_generation_id", None)
        starts = {tp: self._committed(tp) for tp in tps}
        unknown = [tp for tp, offset in starts.items() if offset is None]
        ask = [tp for tp in unknown if (tp, generation) not in self._asked]
        if ask:  # once per partition and generation: nobody else commits it meanwhile
            found = await _group_committed(self._app.consumer, ask)
            fresh = [tp for tp in ask if found[tp] is None]
            if fresh:
                earliest: Mapping[Any, int] = await self._app.consumer.earliest_offsets(*fresh)
                found.update({tp: earliest.get(tp) for tp in fresh})
            self._asked = {key: offset for key, offset in self._asked.items() if key[1] == generation}
            self._asked.update({(tp, generation): found[tp] for tp in ask})
        starts.update({tp: self._asked.get((tp, generation)) for tp in unknown})
        return starts

    async def reread_head(self, topic: str) -> list[int]:
        """Seek back each partition of ``topic`` whose first record delivered in this
        generation came after the group's committed offset, two looks in a row: the records
        between were never delivered (faust skipped them before the agent's first record
        there, so :meth:`check` had nothing to compare with) and the partition's commits
        wait at that offset for good. Seen when writers scaled 1 -> 2 -> 1: the remaining
        writer wrote every command it was given of a partition it took back, and its
        commits stayed at the first offset. Returns the partitions sought back."""
        app = self._app
        if getattr(app, "rebalancing", False):
            return []
        generation, sought = getattr(app, "consumer_generation_id", None), []
        delivered = [tp for tp in app.consumer.assignment()  # from offset 0 nothing is missing
                     if tp.topic == topic and self._first.get((tp, generation), 0) > 0]
        starts = await self._starts(delivered) if delivered else {}
        for tp in delivered:
            key = (tp, generation)
            first, committed = self._first[key], starts[tp]
            if committed is None or first <= committed:
                self._head_gaps.pop(key, None)
                continue
            if self._head_gaps.get(key) != committed:
                self._head_gaps[key] = committed  # look again before seeking
                continue
            del self._head_gaps[key]
            log.warning("records before the first one delivered were skipped; reading them again",
                        service=self._service, topic=tp.topic, partition=tp.partition,
                        first=committed, got=first)
            metrics.SKIPPED_RECORDS.labels(service=self._service).inc(first - committed)
            self._first[key] = committed
            await self._seek_back(tp, committed, generation)
            sought.append(tp.partition)
        return sought

    def report_commit_stall(self, topic: str, *, after: float = _COMMIT_STALL) -> list[int]:
        """Warn, once per offset, about a partition of ``topic`` whose committed offset has
        not moved for ``after`` seconds while faust holds acknowledgements past it: its
        commits wait at that offset (faust commits only an unbroken run from it). With what
        faust and this watch know of the partition, so that the cause can be told. Returns
        the partitions reported."""
        consumer, now, reported = self._app.consumer, time.monotonic(), []
        generation = getattr(self._app, "consumer_generation_id", None)
        acked_by_tp: Mapping[Any, list[int]] = getattr(consumer, "_acked", {})
        for tp in consumer.assignment():
            if tp.topic != topic:
                continue
            committed = self._committed(tp)
            seen = self._commits.get(tp)
            if seen is None or seen[0] != committed:
                self._commits[tp] = (committed, now, False)
                continue
            acked = acked_by_tp.get(tp) or []
            if seen[2] or not acked or now - seen[1] < after:
                continue
            self._commits[tp] = (committed, seen[1], True)
            key = (tp, generation)
            log.warning("a partition's commits do not move while later records are acknowledged",
                        service=self._service, topic=tp.topic, partition=tp.partition,
                        committed=committed, acked_first=min(acked), acked_last=max(acked),
                        acked=len(acked), first_delivered=self._first.get(key),
                        next_expected=self._next.get(key), seeking=self._seeking.get(key),
                        seconds=round(now - seen[1]))
            reported.append(tp.partition)
        return reported

    async def unstall(self, topic: str, *, idle: float = STALL_IDLE) -> list[int]:
        """Seek back each partition of ``topic`` that holds records the consumer does not
        deliver: the agent has waited ``idle`` seconds and the partition ends past the next
        offset expected there. Returns the partitions sought back."""
        since, app = self._idle_since, self._app
        if since is None or time.monotonic() - since < idle or getattr(app, "rebalancing", False):
            return []
        consumer = app.consumer
        tps = [tp for tp in consumer.assignment() if tp.topic == topic]
        if not tps:
            return []
        ends = await consumer.highwaters(*tps)
        generation, now, sought = getattr(app, "consumer_generation_id", None), time.monotonic(), []
        starts = await self._starts([tp for tp in tps if (tp, generation) not in self._next])
        for tp in tps:
            expected = self._next.get((tp, generation), starts.get(tp))
            end = ends.get(tp)
            if expected is None or end is None or end <= expected:
                continue
            tried = self._unstalled.get(tp)
            again = tried is not None and tried[0] == expected
            if tried is not None and again and now < tried[1]:
                continue  # sought there already and nothing came yet: try again later
            gap = min(2 * tried[2], _UNSTALL_MAX) if tried is not None and again else idle
            self._unstalled[tp] = (expected, now + gap, gap)
            log.warning("a partition's records are not delivered; reading them again", service=self._service,
                        topic=tp.topic, partition=tp.partition, first=expected, end=end,
                        idle_seconds=round(now - since, 1))
            metrics.STALLED_PARTITIONS.labels(service=self._service).inc()
            paused: set[Any] = getattr(consumer, "_paused_partitions", set())
            if tp in paused:
                consumer.resume_partitions({tp})
            await self._seek_back(tp, expected, generation)
            sought.append(tp.partition)
        return sought


async def _group_committed(consumer: Any, tps: list[Any]) -> dict[Any, int | None]:
    """The group's committed offsets of ``tps`` as the broker holds them (None: never
    committed), asked through faust's consumer thread: faust's own copy is filled only as
    it seeks or commits, and leaves out a partition never committed and a commit of 0."""
    thread = consumer._thread
    client = thread._ensure_consumer()
    offsets: dict[Any, int | None] = {}
    for tp in tps:
        offset = await thread.call_thread(client.committed, tp)
        offsets[tp] = offset if isinstance(offset, int) and offset >= 0 else None
    return offsets


def watch_delivery(app: Any, service: str, topic: str, *, idle: float = STALL_IDLE) -> SkippedRecords:
    """A :class:`SkippedRecords` for the agent of ``topic``, with a timer that unstalls its
    partitions (after ``idle`` seconds). The agent reads its stream through it."""
    watch = SkippedRecords(app, service)
    if app._consumer is not None:
        watch.install(app.consumer)
    else:  # when faust creates its consumer, as the worker starts: not earlier, not twice
        new_consumer = app._new_consumer

        def create_consumer() -> Any:
            consumer = new_consumer()
            watch.install(consumer)
            return consumer

        app._new_consumer = create_consumer

    @app.timer(idle / 2)  # type: ignore[untyped-decorator]
    async def unstall() -> None:
        await watch.reread_head(topic)
        watch.report_commit_stall(topic)
        await watch.unstall(topic, idle=idle)

    return watch


def report_consumer_lag(app: Any, service: str, every: float = 5.0) -> None:
    """Export ``scimflow_consumer_lag{service,topic}``: high-water mark minus committed offset
    over the partitions this process owns (changelog topics excluded)."""
    @app.timer(every)  # type: ignore[untyped-decorator]
    async def lag() -> None:
        consumer = app.consumer
        per_topic: dict[str, int] = {}
        for tp in consumer.assignment():
            if tp.topic.endswith("-changelog"):
                continue
            high = consumer.highwater(tp)
            if high is None:
                continue  # assigned by a rebalance just now, not fetched yet: known next time
            # faust has no public getter for the committed offset of a partition.
            committed = consumer._committed_offset.get(tp) or 0
            per_topic[tp.topic] = per_topic.get(tp.topic, 0) + max(0, high - committed)
        for topic, value in per_topic.items():
            metrics.CONSUMER_LAG.labels(service=service, topic=topic).set(value)


def raw_schema() -> Any:
    """Keys and values as bytes: every message is encoded/decoded with msgspec by us."""
    return faust.Schema(key_type=bytes, value_type=bytes, key_serializer="raw",
                        value_serializer="raw")


def raw_topic(app: Any, name: str) -> Any:
    """A faust topic of raw bytes: we decode with msgspec so bad input reaches the error topic."""
    return app.topic(name, schema=raw_schema())


class _Worker(faust.Worker):
    """A faust worker whose shutdown has a deadline.

    A clean shutdown commits offsets and flushes producers, which needs the broker; with
    the broker gone, faust's stop can wait (and spin) for ever. Once shutdown begins, a
    watchdog thread ends the process after ``shutdown_timeout`` seconds: what was not
    committed is redelivered to the next consumer (at-least-once, idempotent writes).
    """

    shutdown_timeout: float = 30.0
    _deadline: threading.Timer | None = None

    def _schedule_shutdown(self, signal: Any) -> None:  # mode's hook for SIGTERM/SIGINT
        self._arm_deadline()
        super()._schedule_shutdown(signal)

    def stop_and_shutdown(self) -> None:  # also reached when the worker stops on a crash
        self._arm_deadline()
        super().stop_and_shutdown()

    def _arm_deadline(self) -> None:
        if self._deadline is None:
            self._deadline = threading.Timer(self.shutdown_timeout, _shutdown_timed_out,
                                             args=(self.shutdown_timeout,))
            self._deadline.daemon = True
            self._deadline.start()


def _shutdown_timed_out(seconds: float) -> None:
    log.error("shutdown_timed_out", seconds=seconds,
              detail="the worker did not stop in time (broker unreachable?); exiting anyway")
    logging.shutdown()
    os._exit(_SHUTDOWN_TIMED_OUT)


_SHUTDOWN_TIMED_OUT = 75  # EX_TEMPFAIL: stopped, not cleanly


def use_event_loop(name: Literal["uvloop", "asyncio"]) -> None:
    """Run the worker on ``name``'s event loop (``SCIMFLOW_EVENT_LOOP``); call it before the
    faust app is built."""
    if name == "uvloop":
        mode.loop.use("uvloop")


def run_worker(app: Any, *, loglevel: str = "info", shutdown_timeout: float = 30.0) -> None:
    """Run a faust worker in the foreground until SIGTERM/SIGINT (clean shutdown, within
    ``shutdown_timeout`` seconds)."""
    worker = _Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    worker.shutdown_timeout = shutdown_timeout
    # faust keeps a terminal spinner at level WARNING and above, and for it sets the root
    # logger to DEBUG: every debug line of aiokafka and httpcore then builds a LogRecord
    # (about 5-10 % of a worker's CPU). Workers run headless; no spinner.
    worker.spinner = None
    worker.execute_from_commandline()


class TopicReader:
    """Reads topics with no consumer group: every partition, nothing committed.

    Each partition starts at its beginning or, with ``start="end"``, at its end offset as
    of construction, resolved before the constructor returns: a caller that then asks for
    something misses none of the answers. A topic that has no partitions yet is looked up
    again at each poll, and read from its beginning once it appears (all of it is new).
    Records are kafka-python ``ConsumerRecord`` (``topic``, ``partition``, ``offset``,
    ``key``, ``value``). Broker failures raise BrokerUnavailableError.
    """

    def __init__(self, bootstrap: str, topics: Iterable[str], *,
                 start: Literal["beginning", "end"] = "beginning", client_id: str = "scimflow-read",
                 request_timeout: float | None = None, security: KafkaSecurity | None = None) -> None:
        self._missing = list(topics)
        self._where = f"{', '.join(self._missing)} from {bootstrap}"
        self.assigned: list[KafkaPartition] = []
        """The partitions read so far (those of the topics that exist)."""
        secured = _secured(bootstrap, security)
        try:
            timeouts = {} if request_timeout is None else {"request_timeout_ms": int(request_timeout * 1000)}
            self._consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                           client_id=client_id, **timeouts, **secured)
        except KafkaError as exc:
            raise BrokerUnavailableError(f"cannot read {self._where}: {exc}") from exc
        try:
            found = self._assign_missing()
            if start == "end":
                self._consumer.seek_to_end(*found)
                for tp in found:
                    self._consumer.position(tp)  # resolve "end" now, not at the first poll
        except KafkaError as exc:
            self.close()
            raise BrokerUnavailableError(f"cannot read {self._where}: {exc}") from exc

    def poll(self, timeout: float) -> list[Any]:
        """The records that arrive within ``timeout`` seconds (empty: none did)."""
        try:
            if self._missing:
                self._assign_missing()
            batches = self._consumer.poll(timeout_ms=int(timeout * 1000))
        except KafkaError as exc:
            raise BrokerUnavailableError(f"cannot read {self._where}: {exc}") from exc
        return [record for records in batches.values() for record in records]

    def end_offsets(self) -> dict[Any, int]:
        """The end offset of every partition read, now."""
        ends: dict[Any, int] = self._consumer.end_offsets(self.assigned)
        return ends

    def position(self, tp: Any) -> int:
        """The offset of the next record this reader gets from partition ``tp``."""
        offset: int = self._consumer.position(tp)
        return offset

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _assign_missing(self) -> list[KafkaPartition]:
        """Assign the partitions of the topics that had none so far; returns the new ones."""
        found = [KafkaPartition(topic, p) for topic in self._missing
                 for p in sorted(self._consumer.partitions_for_topic(topic) or ())]
        if not found:
            return []
        self._missing = [t for t in self._missing if t not in {tp.topic for tp in found}]
        self.assigned += found
        self._consumer.assign(self.assigned)
        self._consumer.seek_to_beginning(*found)
        return found


IDLE = None
"""What :func:`tail_records` yields each time the topic has been idle for a while."""


def tail_records(bootstrap: str, topic: str, *, from_beginning: bool = True,
                 idle_timeout: float = 0.5) -> Generator[Any, None, None]:
    """Every record of ``topic`` from its beginning (or from now), for ever; :data:`IDLE`
    (None) each time no record came for ``idle_timeout`` seconds, so the caller can stop
    there or check on something before it reads on."""
    with TopicReader(bootstrap, [topic], start="beginning" if from_beginning else "end") as reader:
        last = time.monotonic()
        while True:
            records = reader.poll(max(0.0, last + idle_timeout - time.monotonic()))
            if records:
                yield from records
                last = time.monotonic()
            elif time.monotonic() >= last + idle_timeout:
                yield IDLE
                last = time.monotonic()


def read_latest(bootstrap: str, topic: str, *, timeout: float = 30.0) -> dict[bytes, bytes]:
    """The latest value of every key of a compacted ``topic``, as of its end offsets now.

    Reads every partition from the beginning to the end offsets taken at the start, with
    manual assignment (no consumer group); a tombstone (null value) removes its key. A
    topic that does not exist holds nothing. Raises BrokerUnavailableError if the broker
    does not answer, or the read does not reach the end within ``timeout`` seconds.
    """
    latest: dict[bytes, bytes] = {}
    for record in read_records(bootstrap, topic, timeout=timeout):
        if record.key is None:
            continue
        if record.value is None:
            latest.pop(record.key, None)
        else:
            latest[record.key] = record.value
    return latest


def read_records(bootstrap: str, topic: str, *, timeout: float = 30.0) -> list[Any]:
    """Every record of ``topic`` up to its end offsets now: a snapshot, so a topic that keeps
    growing (activity during a sync) does not keep the read going, and nothing waits for
    the topic to fall idle. Same errors as :func:`read_latest`."""
    deadline = time.monotonic() + timeout
    with TopicReader(bootstrap, [topic], request_timeout=timeout) as reader:
        try:
            return _read_to_end(reader, topic, deadline)
        except KafkaError as exc:
            raise BrokerUnavailableError(f"cannot read {topic} from {bootstrap}: {exc}") from exc


def _read_to_end(reader: TopicReader, topic: str, deadline: float) -> list[Any]:
    ends = reader.end_offsets()
    records: list[Any] = []
    while any(reader.position(tp) < end for tp, end in ends.items()):
        if time.monotonic() > deadline:
            raise BrokerUnavailableError(f"reading {topic} did not reach its end offsets in time")
        # A partition that appeared during the read is past "now": none of it is taken.
        records.extend(r for r in reader.poll(0.2)
                       if r.offset < ends.get(KafkaPartition(r.topic, r.partition), 0))
    return records
