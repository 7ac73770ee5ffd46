"""Entry point of the mapper worker: directory changes in, one command per app out.

Stateless: everything it needs is in the change (attributes and group memberships) and
the config. A change that cannot be decoded, or whose mapping fails for one app, becomes
an ErrorRecord and the stream goes on.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec
import structlog

from schemas import CycleMarker, DirectoryChange, ErrorRecord
from schemas.codecs import decoder, encode
from services.mapper.expressions import IGNORE, compile_expression
from services.mapper.mappings import compile_object_mapping
from services.mapper.planner import CompiledApp, command_key, plan
from services.runtime.config import LoadedConfig
from services.runtime.kafka import faust_app, raw_topic
from services.runtime.records import malformed_message
from services.runtime.settings import Settings
from services.runtime.topics import Topics

__all__ = ["build_app", "compile_apps"]

log = structlog.get_logger("scimflow.mapper")

_changes = decoder("directory.changes")


def compile_apps(loaded: LoadedConfig) -> list[CompiledApp]:
    """Compile every app's mappings (expressions included); ConfigError on any mistake."""
    return [
        CompiledApp(app, compile_object_mapping(
            loaded, app.mappings.user, f"$.applications[{i}].mappings.user",
            compile_expression, IGNORE))
        for i, app in enumerate(loaded.config.applications)
    ]


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
                await errors.send(key=change.object_id.encode(), value=encode(
                    _mapping_failed(compiled.app.name, change, exc)))
                continue
            if command is not None:
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
                await errors.send(key=event.key, value=encode(malformed_message("mapper", event, str(exc))))
                continue
            if isinstance(message, CycleMarker):
                await on_marker(message, event.message.partition)
            else:
                await on_change(message)

    return app


def _mapping_failed(app: str, change: DirectoryChange, exc: Exception) -> ErrorRecord:
    return ErrorRecord(
        id=str(uuid.uuid4()), at=datetime.now(UTC), service="mapper",
        error_code="AttributeMappingFailed", reason=f"{type(exc).__name__}: {exc}",
        recommended_action="Fix the attribute mapping or the source value; other objects go on.",
        app=app, object_type=change.object_type, source_id=change.object_id,
        change_id=change.change_id, cycle_id=change.cycle_id,
    )
