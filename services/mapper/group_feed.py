"""Keeps a :class:`GroupGraph` in every mapper replica, from the group objects on directory.changes.

The mapper is partitioned: a replica sees only its share of the changes, but a user's nested
memberships can run through groups on any partition. So each replica also reads the whole
topic with no consumer group (like the writer follows the control topic), decoding only the
few fields a group needs. Users must not be planned before the graph holds every group the
topic held at start-up: :attr:`GroupFeed.ready` is set once the read reached the end offsets
taken when it began. If the read fails it starts over into a fresh graph, and the old one
stays in use (still complete, only not updated) until the new one has caught up.
"""

from __future__ import annotations

import asyncio

import msgspec
import structlog

from services.mapper.groups import GroupGraph
from services.runtime.kafka import CAUGHT_UP, BrokerUnavailableError, follow_from_start

__all__ = ["GroupFeed", "apply_value"]

log = structlog.get_logger("scimflow.mapper.groups")

class _GroupView(msgspec.Struct):
    """The fields of a DirectoryChange the graph needs; decoding skips the rest (attributes)."""

    type: str = ""
    object_type: str = ""
    object_id: str = ""
    operation: str = ""
    members: list[str] = []


_view = msgspec.json.Decoder(_GroupView)
_CHANGE_TAG = "directory.change.v1"


def apply_value(graph: GroupGraph, value: bytes) -> None:
    """Apply one raw message of directory.changes; anything but a group change is ignored."""
    try:
        view = _view.decode(value)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return  # malformed input is reported by the mapper's own consumer, once
    if view.type != _CHANGE_TAG or view.object_type != "group" or not view.object_id:
        return
    members = frozenset(view.members) if view.operation == "upsert" else frozenset()
    graph.set_members(view.object_id, members)


class GroupFeed:
    """The current group graph of one mapper replica, and whether it has caught up."""

    def __init__(self, bootstrap: str, topic: str, *, retry_wait: float = 2.0) -> None:
        self.graph = GroupGraph()
        self.ready = asyncio.Event()
        self._bootstrap = bootstrap
        self._topic = topic
        self._retry_wait = retry_wait
        self.values_read = 0
        """Messages read from the topic by this replica (progress, for logs)."""

    async def run(self) -> None:
        """Follow the topic for ever; on a broker error, start over after a pause."""
        while True:
            try:
                await self._follow()
            except (BrokerUnavailableError, OSError, TimeoutError) as exc:
                log.warning("group graph feed failed; reading again", topic=self._topic,
                            reason=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(self._retry_wait)

    async def _follow(self) -> None:
        fresh = GroupGraph()
        async for value in follow_from_start(self._bootstrap, self._topic):
            if value is CAUGHT_UP:
                self.graph = fresh
                self.ready.set()
                log.info("group graph caught up", topic=self._topic, groups=len(fresh))
            else:
                self.values_read += 1
                apply_value(fresh, value)
