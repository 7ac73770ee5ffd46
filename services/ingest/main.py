"""Entry point of the ingest worker: wires the sources to the ``directory.changes`` topic.

Each configured source runs as one task, a ``SourceIngest`` over its ``DirectorySource``
(file, LDAP, Graph, push, AD); positions are kept in the compacted ``source.positions``
topic (``positions.py``). One more task follows the control topic (every ingest reads all
of it, without a consumer group) and hands Restart and ProvisionRequest to ``Controller``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, cast

import msgspec
import structlog

from schemas import CycleMarker, DirectoryChange, ErrorRecord
from schemas.codecs import encode
from schemas.control import ControlMessage
from services.ingest.control import Controller
from services.ingest.positions import Positions
from services.ingest.sources.base import DirectorySource
from services.ingest.sources.graph import GraphDirectory
from services.ingest.sources.push import PushDirectory
from services.ingest.worker import FileIngest, LdapIngest, Publisher, SourceIngest, ldap_module
from services.runtime import metrics
from services.runtime.config import (
    ActiveDirectorySource,
    FileSource,
    GraphSource,
    LdapSource,
    LoadedConfig,
    PushSource,
    Source,
)
from services.runtime.kafka import faust_app, follow_topic, raw_topic
from services.runtime.live_config import AppCallback, LiveApp, LiveConfig
from services.runtime.records import bounded, too_large
from services.runtime.settings import Settings
from services.runtime.topics import Topics

__all__ = ["build_app", "rescan_on_config"]

log = structlog.get_logger("scimflow.ingest")
_control = msgspec.json.Decoder(ControlMessage)


def build_app(settings: Settings, loaded: LoadedConfig, bootstrap: str) -> Any:
    app = faust_app("ingest", settings, bootstrap)
    # ingest only produces: no consumer group to join, so it starts in about a second.
    app.producer_only = True
    topics = Topics(settings.topic_prefix, settings.partitions)
    changes = raw_topic(app, topics.changes)
    errors = raw_topic(app, topics.errors)
    positions_topic = raw_topic(app, topics.source_positions)

    async def store_position(key: bytes, value: bytes) -> None:
        await positions_topic.send(key=key, value=value)

    positions = Positions(bootstrap, topics.source_positions, store_position)
    ingests = {source.name: _ingest(source, loaded, positions, changes, errors, settings)
               for source in loaded.config.sources}
    for ingest in ingests.values():
        app.task(ingest.run)
    controller = Controller(ingests, _error_sender(errors), positions)
    live = LiveConfig(bootstrap, topics, loaded, service="ingest", on_error=_error_sender(errors))
    live.on_app(rescan_on_config(live, controller))
    app.task(live.run)

    @app.task  # type: ignore[untyped-decorator]
    async def control() -> None:
        await controller.load()
        async for value in follow_topic(bootstrap, topics.control):
            try:
                message = _control.decode(value)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue  # other kinds of control message are for other services
            try:
                await controller.handle(message)
            except Exception as exc:  # one failed request must not stop the control loop
                log.warning("control request failed", reason=str(exc))

    return app


def rescan_on_config(live: LiveConfig, controller: Controller, *, settle: float | None = None) -> AppCallback:
    """Re-evaluate an app's objects after its definition changed: a full scan of every source.

    The mapper keeps no copy of the directory, so a full scan is how every object meets the
    new mappings and scope; it is idempotent and the writer sends only what differs from
    the target. An added app gets its initial cycle the same way; a removed one needs
    nothing. Versions read at start are covered by the start-up scans. The scan starts
    ``settle`` seconds later, so that every mapper replica (which follows the same
    one-partition topic) has the new version before the scan's first change arrives.
    """
    wait = _CONFIG_SETTLE if settle is None else settle

    def on_app(name: str, app: LiveApp | None) -> None:
        if app is None or not live.caught_up.is_set():
            return
        log.info("app definition changed: full scan of every source", app=name, version=app.version,
                 in_seconds=wait)
        asyncio.get_running_loop().call_later(wait, controller.scan_all)

    return on_app


_CONFIG_SETTLE = 3.0


def _ingest(source: Source, loaded: LoadedConfig, positions: Positions, changes: Any, errors: Any,
            settings: Settings) -> SourceIngest:
    publisher = _publisher(changes, errors, settings)
    if isinstance(source, FileSource):
        return FileIngest(source, loaded.resolve_path(source.path), publisher)
    if isinstance(source, LdapSource):
        return LdapIngest(source, loaded.secret(source.password).reveal(), publisher, positions)
    return SourceIngest(_directory(source, loaded, publisher), publisher, positions)


def _directory(source: GraphSource | PushSource | ActiveDirectorySource, loaded: LoadedConfig,
               publisher: Publisher) -> DirectorySource:
    """The source object of a configured source that has no ingest class of its own."""
    if isinstance(source, GraphSource):
        return GraphDirectory(source, loaded.secret(source.client_secret).reveal())
    if isinstance(source, PushSource):
        return PushDirectory(source, loaded.secret(source.token).reveal(), publisher.error)
    ad = ldap_module("ad")
    return cast(DirectorySource, ad.AdDirectory(source, loaded.secret(source.password).reveal()))


def _error_sender(errors: Any) -> Callable[[ErrorRecord], Awaitable[None]]:
    async def error(e: ErrorRecord) -> None:
        await errors.send(key=e.id.encode(), value=encode(bounded(e)))

    return error


def _publisher(changes: Any, errors: Any, settings: Settings) -> Publisher:
    error = _error_sender(errors)
    deliveries = _Deliveries()
    topic = changes.get_topic_name()

    async def change(c: DirectoryChange) -> None:
        value = encode(c)
        if len(value) > settings.max_message_bytes:
            # One object the broker would refuse must not abort the scan it is part of.
            metrics.ERRORS.labels(service="ingest", error_code="ObjectTooLarge").inc()
            await error(too_large(c, len(value), settings.max_message_bytes))
            return
        # Straight to the producer, not through the faust topic's per-message bookkeeping:
        # a full scan sends a million of these. The producer queues the record (waiting only
        # when its buffer is full) and the future completes once the broker has it.
        producer = await changes.app.maybe_start_producer()
        deliveries.add(await producer.send(topic, c.object_id.encode(), value, partition=None,
                                           timestamp=None, headers=None))

    async def marker(m: CycleMarker) -> None:
        # Every partition gets the frame, so every mapper/writer instance sees it.
        for partition in range(settings.partitions):
            await changes.send(key=m.cycle_id.encode(), value=encode(m), partition=partition)

    return Publisher(change, marker, error, deliveries.wait)


class _Deliveries:
    """Changes sent but not yet known to be on the topic; ``wait`` returns once they are, and
    raises if one could not be delivered (so the position after it is not stored)."""

    _PRUNE_AT = 1024

    def __init__(self) -> None:
        self._pending: list[asyncio.Future[Any]] = []
        self._prune_at = self._PRUNE_AT

    def add(self, sent: asyncio.Future[Any]) -> None:
        self._pending.append(sent)
        if len(self._pending) >= self._prune_at:
            # Delivered ones need no wait; failed ones stay, so that ``wait`` raises.
            self._pending = [f for f in self._pending if not f.done() or f.cancelled() or f.exception()]
            self._prune_at = max(self._PRUNE_AT, 2 * len(self._pending))

    async def wait(self) -> None:
        # Two waits can overlap (a scan's end and a position from the feed): each awaits
        # everything sent so far, so neither returns while a change it covers is in flight.
        pending = list(self._pending)
        try:
            for sent in pending:
                await sent
        finally:  # awaited, delivered or not: a failure is raised once, by this wait
            awaited = {id(sent) for sent in pending}
            self._pending = [f for f in self._pending if id(f) not in awaited]
            self._prune_at = max(self._PRUNE_AT, 2 * len(self._pending))
