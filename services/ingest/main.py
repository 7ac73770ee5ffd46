"""Entry point of the ingest worker: wires the sources to the ``directory.changes`` topic.

Each configured source runs as one task: a file source as ``FileIngest``, an LDAP source
as ``LdapIngest``, whose syncrepl cookie is kept in the compacted ``source.positions``
topic (``positions.py``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from schemas import CycleMarker, DirectoryChange, ErrorRecord
from schemas.codecs import encode
from services.ingest.positions import Positions
from services.ingest.worker import FileIngest, LdapIngest, Publisher, ldap_settings
from services.runtime.config import FileSource, LoadedConfig, Source
from services.runtime.kafka import faust_app, raw_topic
from services.runtime.settings import Settings
from services.runtime.topics import Topics

__all__ = ["build_app"]


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
    for source in loaded.config.sources:
        app.task(_ingest(source, loaded, positions, changes, errors, settings.partitions).run)
    return app


def _ingest(source: Source, loaded: LoadedConfig, positions: Positions, changes: Any, errors: Any,
            partitions: int) -> FileIngest | LdapIngest:
    if isinstance(source, FileSource):
        return FileIngest(source, loaded.resolve_path(source.path), _publisher(changes, errors, partitions))
    settings = ldap_settings(source, loaded.secret(source.password).reveal())
    publisher = _publisher(changes, errors, partitions, _Deliveries())
    return LdapIngest(source, settings, publisher, positions)


def _publisher(changes: Any, errors: Any, partitions: int,
               deliveries: _Deliveries | None = None) -> Publisher:
    async def change(c: DirectoryChange) -> None:
        sent = await changes.send(key=c.object_id.encode(), value=encode(c))
        if deliveries is not None:
            deliveries.add(sent)

    async def marker(m: CycleMarker) -> None:
        # Every partition gets the frame, so every mapper/writer instance sees it.
        for partition in range(partitions):
            await changes.send(key=m.cycle_id.encode(), value=encode(m), partition=partition)

    async def error(e: ErrorRecord) -> None:
        await errors.send(key=e.id.encode(), value=encode(e))

    return Publisher(change, marker, error, None if deliveries is None else deliveries.wait)


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
        pending, self._pending = self._pending, []
        self._prune_at = self._PRUNE_AT
        for sent in pending:
            await sent
