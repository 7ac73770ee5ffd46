"""A minimal faust worker with one raw, key-partitioned RocksDB table (``kv``), for tests of
how a table is restored: once faust's recovery has ended it prints one JSON line with the
table's contents and the changelog records faust's recovery applied, then idles.

Run as ``python -m tests.support.table_worker [--bulk]``, configured by ``SCIMFLOW_*`` like a
worker. With ``--bulk`` the app is built by the real :func:`services.runtime.kafka.faust_app`
(the bulk restore runs before faust starts); without, by ``faust.App`` on the same slot, so
only faust's own recovery fills the table.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import faust

from services.runtime.kafka import faust_app, run_worker
from services.runtime.settings import load_settings
from services.runtime.state import claim_state_dir, faust_store_options
from services.runtime.topics import Topics

SERVICE, TABLE = "tables", "kv"


def _app(bulk: bool) -> Any:
    settings = load_settings()
    bootstrap = settings.kafka_bootstrap or ""
    if bulk:
        return faust_app(SERVICE, settings, bootstrap), settings
    app_id = Topics(settings.topic_prefix, settings.partitions).app_id(SERVICE)
    slot = claim_state_dir(Path(settings.state_dir or ""), app_id)
    (Path(settings.data_dir) / "faust").mkdir(parents=True, exist_ok=True)
    return faust.App(app_id, broker=f"kafka://{bootstrap}", web_enabled=False,
                     topic_partitions=settings.partitions, topic_disable_leader=True,
                     datadir=str(Path(settings.data_dir) / "faust"),
                     **faust_store_options("rocksdb", slot)), settings


def build(bulk: bool) -> Any:
    app, settings = _app(bulk)
    table: Any = app.Table(TABLE, key_type=bytes, value_type=bytes,
                           partitions=settings.partitions, use_partitioner=True)
    table.key_serializer = table.value_serializer = "raw"
    applied: list[list[int]] = []
    apply = table.apply_changelog_batch

    def counting(batch: Any) -> None:
        events = list(batch)
        applied.extend([e.message.partition, e.message.offset] for e in events)
        apply(events)

    table.apply_changelog_batch = counting

    @app.task  # type: ignore[untyped-decorator]
    async def report() -> None:
        await app.tables.recovery.completed.wait()
        contents = {k.decode(): v.decode() for k, v in table.data.items()}
        print(json.dumps({"table": contents, "applied": applied}), flush=True)

    return app


if __name__ == "__main__":
    run_worker(build("--bulk" in sys.argv[1:]), shutdown_timeout=5.0)
