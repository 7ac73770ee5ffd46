"""Entry point of the mapper worker: directory changes in, one command per app out.

Stateless: everything it needs is in the change (attributes and group memberships) and
the config. A change that cannot be decoded, or whose mapping fails for one app, becomes
an ErrorRecord and the stream goes on.
"""

from __future__ import annotations

from typing import Any

import msgspec
import structlog

from schemas import CycleMarker, DirectoryChange, ErrorRecord
from schemas.codecs import decoder, encode
from services.mapper.expressions import IGNORE, compile_expression
from services.mapper.mappings import compile_object_mapping
from services.mapper.planner import CompiledApp, command_key, plan
from services.mapper.scoping_filters import Clause, CompiledFilters, ScopingError, compile_filters
from services.runtime import metrics
from services.runtime.config import LoadedConfig, ObjectMapping
from services.runtime.kafka import faust_app, raw_topic, report_consumer_lag
from services.runtime.records import error_record, malformed_message
from services.runtime.settings import Settings
from services.runtime.topics import Topics

__all__ = ["build_app", "compile_apps"]

log = structlog.get_logger("scimflow.mapper")

_changes = decoder("directory.changes")


def compile_apps(loaded: LoadedConfig) -> list[CompiledApp]:
    """Compile every app's mappings and scoping filters; ConfigError on any mistake."""
    compiled = []
    for i, app in enumerate(loaded.config.applications):
        path = f"$.applications[{i}].mappings.user"
        mapping = compile_object_mapping(loaded, app.mappings.user, path, compile_expression, IGNORE)
        compiled.append(CompiledApp(app, mapping, _filters(loaded, app.mappings.user, path)))
    return compiled


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
    apps = compile_apps(loaded)

    async def on_change(change: DirectoryChange) -> None:
        for compiled in apps:
            try:
                command = plan(compiled, change)
            except Exception as exc:
                metrics.ERRORS.labels(service="mapper", error_code="AttributeMappingFailed").inc()
                await errors.send(key=change.object_id.encode(), value=encode(
                    _mapping_failed(compiled.app.name, change, exc)))
                continue
            if command is not None:
                metrics.COMMANDS.labels(app=command.app, operation=command.operation).inc()
                await commands.send(key=command_key(command.app, command.source_id),
                                    value=encode(command))

    async def on_marker(marker: CycleMarker, partition: int) -> None:
        # Every commands partition gets this partition's frame, after every command this
        # mapper produced from the frame's part of the scan: a writer partition has seen
        # the whole scan once it holds the end frame of every changes partition.
        for compiled in apps:
            value = encode(msgspec.structs.replace(
                marker, app=compiled.app.name, origin_partition=partition,
                origin_partitions=settings.partitions))
            for target in range(settings.partitions):
                await commands.send(key=marker.cycle_id.encode(), partition=target, value=value)

    @app.agent(changes, name="map")  # type: ignore[untyped-decorator]
    async def map_changes(stream: Any) -> None:
        async for event in stream.events():
            try:
                message = _changes.decode(event.value)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                log.warning("malformed change", partition=event.message.partition,
                            offset=event.message.offset, reason=str(exc))
                metrics.MALFORMED_MESSAGES.labels(service="mapper", topic="directory.changes").inc()
                metrics.ERRORS.labels(service="mapper", error_code="MalformedMessage").inc()
                await errors.send(key=event.key, value=encode(malformed_message("mapper", event, str(exc))))
                continue
            if isinstance(message, CycleMarker):
                await on_marker(message, event.message.partition)
            else:
                await on_change(message)

    report_consumer_lag(app, "mapper")
    return app


def _mapping_failed(app: str, change: DirectoryChange, exc: Exception) -> ErrorRecord:
    return error_record(
        "mapper", "AttributeMappingFailed", f"{type(exc).__name__}: {exc}",
        "Fix the attribute mapping or the source value; other objects go on.",
        app=app, object_type=change.object_type, source_id=change.object_id,
        change_id=change.change_id, cycle_id=change.cycle_id,
    )
