"""Entry point of the mapper worker: directory changes in, one command per app out.

Everything it needs is in the change (attributes, memberships, members) and the config,
except nested groups: when an app expands them, every replica keeps the group graph of the
whole topic (:mod:`services.mapper.group_feed`) and plans no user before it has caught up.
A change that cannot be decoded, or whose mapping fails for one app, becomes an
ErrorRecord and the stream goes on.

The apps follow ``control.config`` (:class:`~services.runtime.live_config.LiveConfig`):
:class:`LiveApps` holds them compiled, by name, and replaces one app when a new version of
it arrives (a version that does not compile is rejected: the last good one stays); the
others are not touched. Nothing is planned before the topic has been read at start.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import structlog

from schemas import CycleMarker, DirectoryChange, ErrorRecord
from schemas.codecs import decoder, encode
from services.mapper.expressions import IGNORE, compile_expression
from services.mapper.group_feed import GroupFeed
from services.mapper.groups import GroupGraph
from services.mapper.mappings import compile_object_mapping
from services.mapper.planner import CompiledApp, MatchingValueMissingError, command_key, plan
from services.mapper.scoping_filters import Clause, CompiledFilters, ScopingError, compile_filters
from services.runtime import metrics
from services.runtime.config import Application, LoadedConfig, ObjectMapping
from services.runtime.kafka import faust_app, raw_topic, report_consumer_lag, watch_delivery
from services.runtime.live_config import LiveApp, LiveConfig
from services.runtime.records import (
    MalformedError,
    bounded,
    decode_message,
    error_record,
    malformed_message,
    too_large,
)
from services.runtime.settings import Settings
from services.runtime.state import partition_for
from services.runtime.topics import Topics

__all__ = ["LiveApps", "build_app", "compile_apps", "graph_for"]

log = structlog.get_logger("scimflow.mapper")

_changes = decoder("directory.changes")


def compile_apps(loaded: LoadedConfig) -> list[CompiledApp]:
    """Compile every app's mappings and scoping filters; ConfigError on any mistake."""
    return [_compile_app(loaded, app, f"$.applications[{i}].mappings")
            for i, app in enumerate(loaded.config.applications)]


def _compile_app(loaded: LoadedConfig, app: Application, path: str) -> CompiledApp:
    user = compile_object_mapping(loaded, app.mappings.user, f"{path}.user", compile_expression, IGNORE)
    user_filters = _filters(loaded, app.mappings.user, f"{path}.user")
    group = app.mappings.group
    if group is None:
        return CompiledApp(app, user, user_filters)
    return CompiledApp(app, user, user_filters,
                       compile_object_mapping(loaded, group, f"{path}.group", compile_expression, IGNORE),
                       _filters(loaded, group, f"{path}.group"))


class LiveApps:
    """The compiled apps the mapper plans with, by name, following :class:`LiveConfig`.

    Replaced one app at a time (a dict swap, between two changes of the stream); a version
    that does not compile raises, which LiveConfig reports as a rejected version. The group
    graph is read only once some app expands nested groups (at start or later).
    """

    def __init__(self, loaded: LoadedConfig) -> None:
        self.compiled = {c.app.name: c for c in compile_apps(loaded)}
        self.expand_groups = asyncio.Event()
        """Set once some app expands nested groups: the group feed starts then."""
        self._check_groups()

    def current(self) -> list[CompiledApp]:
        """A snapshot: a new version arriving while a change is planned waits for the next one."""
        return list(self.compiled.values())

    def on_app(self, name: str, live: LiveApp | None) -> None:
        if live is None:
            self.compiled.pop(name, None)
            log.info("app removed: no longer planned", app=name)
            return
        self.compiled[name] = _compile_app(live.loaded, live.app, "$.mappings")
        log.info("app recompiled", app=name, version=live.version)
        self._check_groups()

    def _check_groups(self) -> None:
        if any(c.expands_nested_groups for c in self.compiled.values()):
            self.expand_groups.set()


def _filters(loaded: LoadedConfig, mapping: ObjectMapping, path: str) -> CompiledFilters | None:
    if not mapping.scoping_filters:
        return None
    filters = [[Clause(c.attribute, c.operator, None if c.value is None else _text(c.value))
                for c in f.clauses] for f in mapping.scoping_filters]
    names = [f.name or f"filter {n}" for n, f in enumerate(mapping.scoping_filters, 1)]
    try:
        return compile_filters(filters, names=names)
    except ScopingError as exc:
        where = f"{path}.scoping_filters"
        if exc.filter_index is not None:
            where += f"[{exc.filter_index - 1}]"
            if exc.clause_index is not None:
                where += f".clauses[{exc.clause_index - 1}]"
        raise loaded.error(where, exc.reason) from None


def _text(value: str | int | bool) -> str:
    # YAML reads `value: 1000` as an int and `value: true` as a bool; Entra's values are text.
    return str(value).lower() if isinstance(value, bool) else str(value)


def build_app(settings: Settings, loaded: LoadedConfig, bootstrap: str) -> Any:
    app = faust_app("mapper", settings, bootstrap)
    topics = Topics(settings.topic_prefix, settings.partitions)
    changes = raw_topic(app, topics.changes)
    commands = raw_topic(app, topics.commands)
    errors = raw_topic(app, topics.errors)
    apps = LiveApps(loaded)

    async def report(record: ErrorRecord) -> None:
        await errors.send(key=record.id.encode(), value=encode(bounded(record)))

    live = LiveConfig(bootstrap, topics, loaded, service="mapper", on_error=report)
    live.on_app(apps.on_app)
    app.task(live.run)
    feed = _group_feed(app, apps, bootstrap, topics.changes)

    send = _sender(app, commands.get_topic_name(), settings.partitions)

    async def on_change(change: DirectoryChange) -> None:
        graph = await graph_for(feed if apps.expand_groups.is_set() else None, change)
        for compiled in apps.current():
            try:
                command = plan(compiled, change, graph)
            except Exception as exc:
                record = _mapping_failed(compiled.app.name, change, exc)
                metrics.ERRORS.labels(service="mapper", error_code=record.error_code).inc()
                await errors.send(key=change.object_id.encode(), value=encode(bounded(record)))
                continue
            if command is None:
                continue
            value = encode(command)
            if len(value) > settings.max_message_bytes:
                metrics.ERRORS.labels(service="mapper", error_code="ObjectTooLarge").inc()
                await report(too_large(change, len(value), settings.max_message_bytes, app=command.app))
                continue
            metrics.COMMANDS.labels(app=command.app, operation=command.operation).inc()
            await send(command_key(command.app, command.source_id), value)

    async def on_marker(marker: CycleMarker, partition: int) -> None:
        # Every commands partition gets this partition's frame, after every command this
        # mapper produced from the frame's part of the scan: a writer partition has seen
        # the whole scan once it holds the end frame of every changes partition.
        for compiled in apps.current():
            value = encode(msgspec.structs.replace(
                marker, app=compiled.app.name, origin_partition=partition,
                origin_partitions=settings.partitions))
            for target in range(settings.partitions):
                await send(marker.cycle_id.encode(), value, target)

    delivery = watch_delivery(app, "mapper", topics.changes)

    @app.agent(changes, name="map")  # type: ignore[untyped-decorator]
    async def map_changes(stream: Any) -> None:
        # Acknowledged by the watch once planned: a record it drops (fetched before it
        # sought the partition back to a gap) is not, and is read again.
        async for event in delivery.through((manual := stream.noack()).events(), manual.ack):
            if not live.caught_up.is_set():
                log.info("waiting for the config topic to be read before planning")
                await live.caught_up.wait()
            try:
                message = decode_message(_changes, event.value)
            except MalformedError as exc:
                log.warning("malformed change", partition=event.message.partition,
                            offset=event.message.offset, reason=str(exc))
                metrics.MALFORMED_MESSAGES.labels(service="mapper", topic="directory.changes").inc()
                metrics.ERRORS.labels(service="mapper", error_code="MalformedMessage").inc()
                await errors.send(key=event.key, value=encode(malformed_message("mapper", event, str(exc))))
                continue
            work = (on_marker(message, event.message.partition) if isinstance(message, CycleMarker)
                    else on_change(message))
            await _guarded(event, work, report)

    report_consumer_lag(app, "mapper")
    return app


async def _guarded(event: Any, work: Awaitable[None],
                   report: Callable[[ErrorRecord], Awaitable[None]]) -> None:
    """Plan one change; a failure costs its error record, never a restart of the agent
    (which would stall every change behind it for seconds, then fail on it again)."""
    try:
        await work
    except Exception as exc:
        log.exception("planning a change failed", partition=event.message.partition,
                      offset=event.message.offset)
        metrics.ERRORS.labels(service="mapper", error_code="MapperFailed").inc()
        await report(malformed_message("mapper", event, f"{type(exc).__name__}: {exc}", code="MapperFailed"))


def _sender(app: Any, topic: str, partitions: int) -> Callable[..., Awaitable[None]]:
    """Sends one record to ``topic`` of ``partitions``: (key, value, partition or None for
    the key's)."""
    async def send(key: bytes, value: bytes, partition: int | None = None) -> None:
        # Straight to the producer, not through faust's Topic.send and its per-message
        # bookkeeping (a tenth of the mapper's CPU in a full scan). faust flushes this same
        # producer before it commits an offset, so a change is acknowledged only once its
        # commands are on the topic, as before. The key's partition is the one the
        # producer's partitioner would pick, computed faster (partition_for).
        if partition is None:
            partition = partition_for(key, partitions)
        sent = await app.producer.send(topic, key, value, partition, None, None)
        sent.add_done_callback(_undelivered)

    return send


def _undelivered(sent: asyncio.Future[Any]) -> None:
    """A command the producer gave up on (after its own retries): said, counted; the next
    full scan plans the object again."""
    if sent.cancelled() or sent.exception() is None:
        return
    log.error("a command could not be delivered to the commands topic; the next full scan "
              "sends it again", error=f"{type(sent.exception()).__name__}: {sent.exception()}")
    metrics.ERRORS.labels(service="mapper", error_code="CommandNotDelivered").inc()


def _group_feed(app: Any, apps: LiveApps, bootstrap: str, topic: str) -> GroupFeed:
    """A feed of the group graph, read once some app expands nested groups (else no extra reads)."""
    feed = GroupFeed(bootstrap, topic)

    @app.task  # type: ignore[untyped-decorator]
    async def follow_groups() -> None:
        await apps.expand_groups.wait()
        await feed.run()

    return feed


async def graph_for(feed: GroupFeed | None, change: DirectoryChange) -> GroupGraph | None:
    """The group graph to plan ``change`` with; for a user, only once the graph has caught up.

    Waiting here holds back this partition's stream (in order, nothing skipped), so no user
    is deprovisioned at start-up for want of a group the topic already holds.
    """
    if feed is None:
        return None
    if change.object_type == "user" and not feed.ready.is_set():
        log.info("waiting for the group graph to catch up before planning users")
        waited = 0.0
        while not feed.ready.is_set():
            # Planning users early could disable nested members wrongly: wait, but say so.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(feed.ready.wait(), _WAIT_REPORT)
            waited += _WAIT_REPORT
            if not feed.ready.is_set():
                log.warning("still waiting for the group graph to catch up", seconds=round(waited),
                            messages_read=feed.values_read)
    return feed.graph


_WAIT_REPORT = 15.0
"""Seconds between warnings while users wait for the group graph at start-up."""


def _mapping_failed(app: str, change: DirectoryChange, exc: Exception) -> ErrorRecord:
    if isinstance(exc, MatchingValueMissingError):
        return error_record(
            "mapper", exc.error_code, str(exc),
            "Give the object a value for a matching attribute in the source, or mark another "
            "attribute as matching; nothing was written for it, other objects go on.",
            app=app, object_type=change.object_type, source_id=change.object_id,
            change_id=change.change_id, cycle_id=change.cycle_id,
        )
    return error_record(
        "mapper", "AttributeMappingFailed", f"{type(exc).__name__}: {exc}",
        "Fix the attribute mapping or the source value; other objects go on.",
        app=app, object_type=change.object_type, source_id=change.object_id,
        change_id=change.change_id, cycle_id=change.cycle_id,
    )
