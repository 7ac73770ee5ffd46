"""Entry point of the writer worker: commands in, target calls, activity/errors out.

Commands arrive keyed by ``app/source_id`` and go to :class:`CommandProcessor` one by one
(manual, in-order acks). The managed-object table is a faust Table whose changelog uses the same key bytes and
partitioner as the commands topic, so an object's state lives on its commands' partition;
so do the ``escrow`` table of objects that failed too often and the ``held`` table of
commands acknowledged but held (their app is Off, or the deletion guard holds them).
Every replica also follows the managed table's changelog whole (all partitions) to resolve
references and group members to target ids, and the control topic for status, allow-deletes
and restarts.

The apps follow ``control.config`` (:class:`~services.runtime.live_config.LiveConfig`): each
new version of an app goes to :meth:`CommandProcessor.set_application` (a removal to
``remove_application``), one app at a time. No command is applied before the config topic
was read at start (every app runs its current version from the first write on).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import structlog

from schemas.control import (
    AllowDeletes,
    AppCapabilities,
    AppHealth,
    AppStatus,
    ControlMessage,
    ProvisionRequest,
    RemovalTally,
    Restart,
)
from services.runtime.config import LoadedConfig
from services.runtime.kafka import (
    faust_app,
    follow_records,
    partition_for,
    raw_topic,
    report_consumer_lag,
    watch_delivery,
)
from services.runtime.live_config import AppCallback, LiveApp, LiveConfig
from services.runtime.settings import Settings
from services.runtime.topics import Topics
from services.scim.client import client_for
from services.writer.apply import Writer
from services.writer.link_store import follow_links, open_links
from services.writer.worker import CommandProcessor

__all__ = ["build_app", "build_writers", "follow_versions"]

_control = msgspec.json.Decoder(ControlMessage)

log = structlog.get_logger("scimflow.writer")


def build_writers(settings: Settings, loaded: LoadedConfig) -> dict[str, Writer]:
    writers = {}
    for app in loaded.config.applications:
        writers[app.name] = Writer(app, client_for(app, loaded, settings))
    return writers


def build_app(settings: Settings, loaded: LoadedConfig, bootstrap: str) -> Any:
    app = faust_app("writer", settings, bootstrap)
    topics = Topics(settings.topic_prefix, settings.partitions)
    managed = _raw_table(app, "managed", settings)
    escrow = _raw_table(app, "escrow", settings)
    held = _raw_table(app, "held", settings)
    processor = CommandProcessor(settings, build_writers(settings, loaded), managed,
                                 activity=raw_topic(app, topics.activity),
                                 errors=raw_topic(app, topics.errors), escrow=escrow,
                                 control=raw_topic(app, topics.control), loaded=loaded, held=held,
                                 restoring=("links", "capabilities", "config", "control"))
    live = LiveConfig(bootstrap, topics, loaded, service="writer",
                      on_error=lambda record: processor.publisher.error(record.id.encode(), record))
    live.on_app(follow_versions(processor))
    app.task(live.run)

    @app.task  # type: ignore[untyped-decorator]
    async def config_read() -> None:
        await live.caught_up.wait()
        processor.config_read()

    delivery = watch_delivery(app, "writer", topics.commands)

    @app.agent(raw_topic(app, topics.commands), name="write")  # type: ignore[untyped-decorator]
    async def write(stream: Any) -> None:
        # The consume loop never waits for the writer's state: faust drops the records it
        # fetched while a stream does not take them around a rebalance. Each object's job
        # waits for the state instead (Scheduler._run).
        manual = stream.noack()
        async for event in delivery.through(manual.events()):
            await processor.submit(event, manual.ack)

    @app.timer(5.0)  # type: ignore[untyped-decorator]
    async def gauges() -> None:
        # What else changes the table under the count: the partitions it holds, their recovery.
        recovery = app.tables.recovery
        processor.count_managed(epoch=(app.consumer_generation_id, recovery.completed.is_set(),
                                       bool(recovery.in_recovery)))
        processor.report_blocked_acks()

    @app.timer(0.5)  # type: ignore[untyped-decorator]
    async def guard() -> None:
        owns = _owner(app, topics.commands, settings.partitions)
        if owns is not None:
            await processor.app_state.reload_held(owns)
        await processor.app_state.tick_guard()

    @app.timer(1.0)  # type: ignore[untyped-decorator]
    async def escrowed() -> None:
        owns = _owner(app, topics.commands, settings.partitions)
        if owns is None:
            return  # the escrow table is still being restored: nothing is known to be due
        processor.scheduler.escrow.owns = owns
        await processor.scheduler.tick_escrow()

    @app.task  # type: ignore[untyped-decorator]
    async def control() -> None:
        # Every writer replica reads the whole control topic (no consumer group).
        async for _, value in follow_records(bootstrap, topics.control,
                                             on_caught_up=processor.control_read):
            if value is None:
                continue
            try:
                message = _control.decode(value)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue  # other kinds of control message are for other services
            await _dispatch(processor, message)

    @app.task  # type: ignore[untyped-decorator]
    async def capabilities() -> None:
        # What each target declares: caseExact for matching, PATCH support, sync details.
        # Read for the apps' current versions: the config topic first.
        await live.caught_up.wait()
        await processor.learn(loaded=loaded)

    open_links(processor.links, settings, app.conf.tabledir)

    @app.task  # type: ignore[untyped-decorator]
    async def links() -> None:
        # Every replica needs every object's target id, not only its partitions' ones.
        await follow_links(bootstrap, topics.writer_state, processor.links,
                           on_record=processor.on_changelog, on_caught_up=processor.links_restored)

    report_consumer_lag(app, "writer")

    _follow_rebalances(app, processor, topics.commands)

    @app.on_before_shutdown.connect  # type: ignore[untyped-decorator]
    async def close_clients(app: Any, **_: Any) -> None:
        await processor.close()

    return app


def _follow_rebalances(app: Any, processor: CommandProcessor, commands: str) -> None:
    """Tell the processor which partitions of the commands topic leave and come."""
    @app.on_partitions_revoked.connect  # type: ignore[untyped-decorator]
    async def forget_revoked(app: Any, revoked: Any, **_: Any) -> None:
        # What Off and the guard hold moves with its partition (the held table); the replica
        # it leaves must not run it too. Taken up again from the table if it comes back.
        # Its queued commands too: the new owner replays them from the committed offset, and
        # both running them would write the same objects at once (created twice on a target
        # that takes a duplicate). Target calls in flight finish first, within a bound.
        moved = {tp.partition for tp in revoked if tp.topic == commands}
        await processor.partitions_revoked(moved, app.consumer_generation_id)

    @app.on_partitions_assigned.connect  # type: ignore[untyped-decorator]
    async def note_assigned(app: Any, assigned: Any, **_: Any) -> None:
        # Objects of a partition gained from another replica are looked up on the target
        # before a create: a listing taken earlier does not hold what that replica wrote.
        generation = app.consumer_generation_id
        processor.partitions_assigned({tp.partition for tp in assigned if tp.topic == commands}, generation)
        if isinstance(generation, int):
            purged = await processor.acks.purge(generation)
            if purged:
                log.info("events of an earlier generation left the ack line", purged=purged,
                         generation=generation)


def follow_versions(processor: CommandProcessor) -> AppCallback:
    """LiveConfig's callback: each new version of an app (None: removed) into the writer.
    A version whose client cannot be built raises: LiveConfig rejects it and the last good
    one keeps running."""
    async def on_app(name: str, live: LiveApp | None) -> None:
        if live is None:
            await processor.remove_application(name)
        else:
            await processor.set_application(live.app, live.loaded)
    return on_app


def _owner(app: Any, topic: str, partitions: int) -> Callable[[bytes], bool] | None:
    """Whether a key's partition of ``topic`` is actively this replica's now; None while the
    tables recover (they are complete only for the owned partitions once recovery ended).
    A table also holds standby copies of other replicas' partitions: those are not ours."""
    recovery = app.tables.recovery
    if not recovery.completed.is_set() or recovery.in_recovery:
        return None
    owned = {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == topic}
    return lambda key: partition_for(key, partitions) in owned


def _raw_table(app: Any, name: str, settings: Settings) -> Any:
    """A faust table of raw bytes, partitioned like the commands topic."""
    table = app.Table(name, key_type=bytes, value_type=bytes,
                      partitions=settings.partitions, use_partitioner=True)
    # faust derives a table's codecs from its types and would pick JSON for bytes; set raw
    # before the store and changelog topic are created (both are built lazily), so the
    # changelog key is byte-for-byte the commands key and lands on the same partition.
    table.key_serializer = table.value_serializer = "raw"
    return table


async def _dispatch(processor: CommandProcessor, message: ControlMessage) -> None:
    match message:
        case AllowDeletes():
            processor.app_state.allow_deletes(message)
        case AppStatus():
            await processor.app_state.set_status(message)
        case Restart():
            await processor.app_state.on_restart(message)
        case AppHealth():
            await processor.app_state.on_health(message)  # what a writer published, maybe before a crash
        case RemovalTally():
            processor.app_state.on_tally(message)
        case ProvisionRequest() | AppCapabilities():
            pass  # ingest's; the writer's own, for status
