"""A faust worker built by the real :func:`services.runtime.kafka.faust_app` whose consumer
is made to stop delivering a partition, for the test of :func:`watch_delivery`.

Its agent reads ``<prefix>stall-in`` through the watch and prints each record it gets. On
the record ``stall`` it does what faust does to a partition after some rebalances: it sets
the partition's read offset far ahead, so faust fetches every later record and drops it
(its ``DROPPED MESSAGE ROFF``) without a sign. Only the watch can bring them back.

On partition 0, it also does what faust does to records it fetched in an older
consumer-group generation: the first time a record ``skip-*`` comes, it is dropped before
the watch sees it (not handled, not acknowledged). The watch must see the gap, seek back,
and deliver the records after the gap only after it, each once. A record ``head-*`` (on
any partition) is dropped so the first time too: sent to a partition the group never
committed, it stands for the first records of a partition whose last owner died before
its first commit, dropped by faust after the takeover.

Run as ``python -m tests.support.stall_worker``, configured by ``SCIMFLOW_*`` like a worker.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from services.runtime.kafka import faust_app, raw_topic, run_worker, watch_delivery
from services.runtime.settings import load_settings

IDLE = 1.0
"""Seconds the agent waits before the watch looks for a stalled partition."""


def topic_name(prefix: str) -> str:
    return f"{prefix}stall-in"


def build() -> Any:
    settings = load_settings()
    assert settings.kafka_bootstrap, "SCIMFLOW_KAFKA_BOOTSTRAP is not set"
    app = faust_app("stall", settings, settings.kafka_bootstrap)
    name = topic_name(settings.topic_prefix)
    delivery = watch_delivery(app, "stall", name, idle=IDLE)

    async def faust_skips(events: AsyncIterator[Any]) -> AsyncIterator[Any]:
        skipped: set[int] = set()
        async for event in events:
            message = event.message
            value = event.value
            dropped = (message.partition == 0 and value.startswith(b"skip-")) or value.startswith(b"head-")
            if dropped and message.offset not in skipped:
                skipped.add(message.offset)
                continue
            yield event

    @app.agent(raw_topic(app, name))  # type: ignore[untyped-decorator]
    async def read(stream: Any) -> None:
        manual = stream.noack()
        async for event in delivery.through(faust_skips(manual.events()), manual.ack):
            message = event.message
            print(f"got {message.partition} {message.offset} {event.value.decode()}", flush=True)
            if event.value == b"stall":
                await asyncio.sleep(0.5)  # after the fetch loop has noted this record as read
                app.consumer._read_offset[message.tp] = 10**9
                print("stalled", flush=True)

    return app


if __name__ == "__main__":
    run_worker(build(), shutdown_timeout=5.0)
