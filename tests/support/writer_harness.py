"""Run the writer's CommandProcessor in the test's own event loop against a real SCIM target.

The processor gets plain dicts for its faust tables and recorders for its topics, and
events shaped like faust's (key, value, message.partition/offset/topic); everything from the
processor down — the SCIM client, its retries, the target — is real. What a Kafka broker
adds (replays after a crash, changelogs) is covered by the e2e tests with worker processes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec

from schemas import (
    ActivityRecord,
    CycleMarker,
    ErrorRecord,
    ManagedObject,
    MatchingAttribute,
    ProvisioningCommand,
)
from schemas.codecs import encode
from services.runtime.config import Application, Config, LoadedConfig, Secret
from services.runtime.kafka import partition_for
from services.runtime.settings import load_settings
from services.scim.client import Backoff, ScimClient
from services.writer.apply import Writer
from services.writer.worker import CommandProcessor

MANAGER = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager"
PARTITIONS = 3

_activity = msgspec.json.Decoder(ActivityRecord)
_error = msgspec.json.Decoder(ErrorRecord)
_state = msgspec.json.Decoder(ManagedObject)


def application(**overrides: Any) -> Application:
    """An app with user and group mappings, fast retries and its target at ``base_url``."""
    raw: dict[str, Any] = {
        "name": "app",
        "deletion_threshold": 0,  # the guard's grace timer is a faust timer, not run here
        "target": {"base_url": "http://placeholder/v2", "token": "env:T",
                   "retries": {"attempts": 1, "escrow_after": 3, "initial_wait": 0.05, "max_wait": 0.2}},
        "mappings": {"user": {"attributes": [{"target": "userName", "source": "upn", "matching": 1}]},
                     "group": {"attributes": [{"target": "displayName", "source": "name", "matching": 1}]}},
    }
    for key, value in overrides.items():
        if key == "retries":
            raw["target"]["retries"].update(value)
        elif key == "target_extra":
            raw["target"].update(value)
        else:
            raw[key] = value
    return msgspec.convert(raw, Application)


def loaded_for(app: Application, token: str) -> LoadedConfig:
    """The config one version of ``app`` comes from, its token resolved to ``token`` (what
    LiveConfig hands the writer with a version)."""
    refs = [app.target.token] if app.target.token is not None else []
    return LoadedConfig(config=Config(applications=[app], sources=[]), file=f"<{app.name}>",
                        secrets={ref: Secret(ref, token) for ref in refs})


def for_app(app: str, *commands: ProvisioningCommand) -> list[ProvisioningCommand]:
    """``commands`` (built for app ``app``'s default name) for application ``app``."""
    return [msgspec.structs.replace(c, app=app) for c in commands]


def user_cmd(i: int | str, *, manager: str | None = None, operation: Any = "upsert",
             **attrs: Any) -> ProvisioningCommand:
    sid = i if isinstance(i, str) else f"u{i}"
    attributes = {"userName": f"{sid}@example.com", "displayName": f"User {sid}", **attrs}
    refs = {}
    if manager is not None:
        attributes[MANAGER] = manager
        refs = {MANAGER: manager}
    return ProvisioningCommand(
        app="app", object_type="user", source="hr", source_id=sid, operation=operation,
        reason="in scope", attributes=attributes, references=refs, display_name=f"{sid}@example.com",
        matching=[MatchingAttribute(target="userName", value=attributes["userName"])],
        change_id=f"c-{sid}", observed_at=datetime.now(UTC))


def group_cmd(gid: str, name: str, members: Iterable[str], *,
              operation: Any = "upsert") -> ProvisioningCommand:
    return ProvisioningCommand(
        app="app", object_type="group", source="hr", source_id=gid, operation=operation,
        reason="in scope", attributes={"displayName": name, "externalId": gid}, members=list(members),
        matching=[MatchingAttribute(target="displayName", value=name)], display_name=name,
        change_id=f"c-{gid}", observed_at=datetime.now(UTC))


class Recorder:
    """Stands in for a faust topic: remembers what was sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, bytes]] = []

    async def send(self, *, key: bytes, value: bytes) -> None:
        self.sent.append((key, value))


@dataclass
class _Message:
    topic: str
    partition: int
    offset: int


@dataclass
class _Event:
    key: bytes
    value: bytes
    message: _Message


@dataclass
class Harness:
    processor: CommandProcessor
    managed: dict[bytes, bytes]
    escrow: dict[bytes, bytes]
    activity_topic: Recorder
    errors_topic: Recorder
    control_topic: Recorder
    acked: list[tuple[int, int]] = field(default_factory=list)
    _offsets: dict[int, int] = field(default_factory=dict)

    async def feed(self, *commands: ProvisioningCommand) -> None:
        for command in commands:
            key = f"{command.app}/{command.source_id}".encode()
            partition = partition_for(key, PARTITIONS)
            offset = self._offsets.get(partition, 0)
            self._offsets[partition] = offset + 1
            event = _Event(key, encode(command), _Message("commands", partition, offset))
            await self.processor.submit(event, self._ack)

    async def scan(self, cycle_id: str, *commands: ProvisioningCommand, app: str = "app") -> None:
        """A complete full scan as the mapper frames it: start markers from every changes
        partition on every commands partition, the commands (with ``cycle_id``), the ends."""
        await self._frames(cycle_id, "start", app)
        await self.feed(*(msgspec.structs.replace(c, cycle_id=cycle_id) for c in commands))
        await self._frames(cycle_id, "end", app)

    async def _frames(self, cycle_id: str, phase: Any, app: str = "app") -> None:
        for partition in range(PARTITIONS):
            for origin in range(PARTITIONS):
                marker = CycleMarker(source="hr", cycle_id=cycle_id, phase=phase, at=datetime.now(UTC),
                                     app=app, origin_partition=origin, origin_partitions=PARTITIONS)
                offset = self._offsets.get(partition, 0)
                self._offsets[partition] = offset + 1
                event = _Event(app.encode(), encode(marker), _Message("commands", partition, offset))
                await self.processor.submit(event, self._ack)

    def restore_links(self) -> None:
        """What the writer's changelog follower does at start: every stored state, then
        "caught up"."""
        for key, value in list(self.managed.items()):
            self.processor.on_changelog(key, value)
        self.processor.links_restored()

    async def _ack(self, event: Any) -> None:
        self.acked.append((event.message.partition, event.message.offset))

    async def settle(self, *, wait: float = 30.0) -> None:
        """Wait until nothing is in flight or parked (escrowed objects are not in flight)."""
        deadline = asyncio.get_running_loop().time() + wait
        jobs = self.processor.scheduler.jobs
        while jobs or self.processor._reruns:
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"still in flight after {wait}s: {len(jobs)} jobs")
            await asyncio.sleep(0.05)

    def activity(self) -> list[ActivityRecord]:
        return [_activity.decode(v) for _, v in self.activity_topic.sent]

    def errors(self) -> list[ErrorRecord]:
        return [_error.decode(v) for _, v in self.errors_topic.sent]

    def state(self, source_id: str, app: str = "app") -> ManagedObject | None:
        raw = self.managed.get(f"{app}/{source_id}".encode())
        return _state.decode(raw) if raw else None

    @property
    def pending_acks(self) -> int:
        return sum(self._offsets.values()) - len(self.acked)


def harness(base_url: str, token: str, app: Application | None = None, *,
            writer_batch: int = 64, managed: dict[bytes, bytes] | None = None,
            restoring: bool = False) -> Harness:
    """A processor for one app whose client talks to ``base_url`` (a target or a proxy).
    ``managed`` is the state a previous processor left (a restart with state kept);
    ``restoring`` holds commands back until :meth:`Harness.restore_links`."""
    app = app or application()
    client = ScimClient(base_url, token, attempts=app.target.retries.attempts, app=app.name,
                        backoff=Backoff(wait_initial=0.01, wait_max=0.05, wait_jitter=0.01),
                        max_patch_operations=app.target.max_patch_operations,
                        dialect=app.target.dialect, update_method=app.target.update_method)
    settings = load_settings({}, partitions=PARTITIONS, writer_batch=writer_batch)
    managed = {} if managed is None else managed
    escrow: dict[bytes, bytes] = {}
    activity, errors, control = Recorder(), Recorder(), Recorder()
    processor = CommandProcessor(settings, {app.name: Writer(app, client)}, managed, activity=activity,
                                 errors=errors, escrow=escrow, control=control,
                                 restoring=("links",) if restoring else ())
    return Harness(processor, managed, escrow, activity, errors, control)
