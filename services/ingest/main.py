"""Entry point of the ingest worker: wires the sources to the ``directory.changes`` topic."""

from __future__ import annotations

from typing import Any

from schemas import CycleMarker, DirectoryChange, ErrorRecord
from schemas.codecs import encode
from services.ingest.worker import FileIngest, Publisher
from services.runtime.config import LoadedConfig
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

    async def change(c: DirectoryChange) -> None:
        await changes.send(key=c.object_id.encode(), value=encode(c))

    async def marker(m: CycleMarker) -> None:
        # Every partition gets the frame, so every mapper/writer instance sees it.
        for partition in range(settings.partitions):
            await changes.send(key=m.cycle_id.encode(), value=encode(m), partition=partition)

    async def error(e: ErrorRecord) -> None:
        await errors.send(key=e.id.encode(), value=encode(e))

    publisher = Publisher(change, marker, error)
    for source in loaded.config.sources:
        ingest = FileIngest(source, loaded.resolve_path(source.path), publisher)
        app.task(ingest.run)
    return app
