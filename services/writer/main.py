"""Entry point of the writer worker: commands in, target calls, activity/errors out.

Commands arrive keyed by ``app/source_id``. The agent takes them in small batches; within
a batch, commands for different objects run concurrently (up to ``writer_concurrency``)
while commands for the same object run one after another, in offset order. Offsets are
committed only after the whole batch is done, so a crash replays it, and every write is
idempotent (state compare, then lookup-before-create).

The managed-object table is a faust Table whose changelog uses the same key bytes and
partitioner as the commands topic, so an object's state lives on its commands' partition.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import msgspec
import structlog

from schemas import CycleMarker
from schemas.codecs import decoder, encode
from services.runtime.config import LoadedConfig
from services.runtime.kafka import faust_app, raw_topic
from services.runtime.records import malformed_message
from services.runtime.settings import Settings
from services.runtime.topics import Topics
from services.writer.scim_client import ScimClient
from services.writer.worker import Outcome, Writer

__all__ = ["build_app"]

log = structlog.get_logger("scimflow.writer")

_commands = decoder("provisioning.commands")
_state = decoder("writer.managed")


def build_writers(settings: Settings, loaded: LoadedConfig) -> dict[str, Writer]:
    writers = {}
    for app in loaded.config.applications:
        client = ScimClient(app.target.base_url, loaded.secret(app.target.token).reveal(),
                            timeout=app.target.timeout, max_connections=app.target.max_connections,
                            attempts=settings.target_attempts)
        writers[app.name] = Writer(app, client)
    return writers


def build_app(settings: Settings, loaded: LoadedConfig, bootstrap: str) -> Any:
    app = faust_app("writer", settings, bootstrap)
    topics = Topics(settings.topic_prefix, settings.partitions)
    commands = raw_topic(app, topics.commands)
    activity = raw_topic(app, topics.activity)
    errors = raw_topic(app, topics.errors)
    managed = app.Table("managed", key_type=bytes, value_type=bytes,
                        partitions=settings.partitions, use_partitioner=True)
    # faust derives a table's codecs from its types and would pick JSON for bytes; set raw
    # before the store and changelog topic are created (both are built lazily), so the
    # changelog key is byte-for-byte the commands key and lands on the same partition.
    managed.key_serializer = managed.value_serializer = "raw"
    writers = build_writers(settings, loaded)
    limit = asyncio.Semaphore(settings.writer_concurrency)

    async def publish(key: bytes, outcome: Outcome) -> None:
        if outcome.activity is not None:
            await activity.send(key=key, value=encode(outcome.activity))
        if outcome.error is not None:
            await errors.send(key=key, value=encode(outcome.error))

    async def one(event: Any) -> None:
        key: bytes = event.key or b""
        try:
            message = _commands.decode(event.value)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            await errors.send(key=key, value=encode(malformed_message("writer", event, str(exc))))
            return
        if isinstance(message, CycleMarker):
            return
        writer = writers.get(message.app)
        if writer is None:
            reason = f"unknown application {message.app!r}"
            await errors.send(key=key, value=encode(malformed_message("writer", event, reason)))
            return
        raw = managed.get(key)
        outcome = await writer.handle(message, _state.decode(raw) if raw else None)
        if outcome.changed_state:
            if outcome.managed is None:
                managed.pop(key, None)
            else:
                managed[key] = encode(outcome.managed)
        await publish(key, outcome)

    async def in_order(events: list[Any]) -> None:
        async with limit:
            for event in events:
                await one(event)

    @app.agent(commands, name="write")  # type: ignore[untyped-decorator]
    async def write(stream: Any) -> None:
        async for batch in stream.take_events(settings.writer_batch, within=0.05):
            by_key: dict[bytes, list[Any]] = defaultdict(list)
            for event in batch:
                by_key[event.key or b""].append(event)
            await asyncio.gather(*(in_order(evs) for evs in by_key.values()))

    @app.on_before_shutdown.connect  # type: ignore[untyped-decorator]
    async def close_clients(app: Any, **_: Any) -> None:
        await asyncio.gather(*(w.client.aclose() for w in writers.values()))

    return app

