"""Source id -> target id, for references (the enterprise ``manager``) and group members.

Managed state is partitioned by ``app/source_id``, so no writer replica holds every
object's state; yet a user's manager or a group's members may live on any partition.
Every replica therefore keeps a :class:`LinkIndex` of the whole app, fed by the managed
table's changelog (all partitions, no consumer group) and by its own writes at once.

A reference to an object not linked yet is *deferred* (:class:`Deferrals`): the rest of
the object is written now, and when the link appears the object's latest command runs
again through its per-object chain. :class:`Deferrals` is the in-memory index of those
waits; the processor also keeps the waiting command in the object's managed state
(``ManagedObject.deferred``), so a restarted writer picks the waits up again.

The index keeps its links in a :class:`LinkStore`: two dicts (:class:`MemoryLinkStore`, the
whole changelog read at each start), or the worker's local RocksDB
(:mod:`services.writer.link_store`) with the changelog offsets read, so memory stays
bounded and a warm start reads only the records that came after. This module is pure:
no I/O.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import msgspec

from schemas import ManagedObject, ProvisioningCommand

__all__ = ["Deferrals", "LinkIndex", "LinkStore", "MemoryLinkStore", "Resolved", "resolve", "split_key"]

_state = msgspec.json.Decoder(ManagedObject)

AppSource = tuple[str, str]
"""(app, source id)"""


def split_key(key: bytes) -> AppSource | None:
    """``b"app/source_id"`` -> (app, source_id); app names have no ``/`` (config rule)."""
    app, sep, source_id = key.decode("utf-8", "replace").partition("/")
    return (app, source_id) if sep and app and source_id else None


class LinkStore(Protocol):
    """Where a :class:`LinkIndex` keeps its links, and which changelog offsets it read."""

    def __len__(self) -> int: ...

    def link(self, app: str, source_id: str) -> str | None: ...

    def owner(self, app: str, target_id: str) -> str | None: ...

    def write(self, app: str, source_id: str, target_id: str | None, *,
              before: str | None, unown: bool) -> None:
        """Link ``source_id`` to ``target_id`` (None: unlink), ``before`` being its link
        until now; ``unown``: ``before`` no longer belongs to ``source_id`` either."""

    def sources(self, app: str) -> Iterator[str]: ...

    def offsets(self) -> dict[int, int]:
        """Per partition, the next changelog offset to read (empty: read from the start)."""

    def read_to(self, partition: int, offset: int) -> None:
        """The changelog records of ``partition`` before ``offset`` are applied."""

    def flush(self) -> None: ...

    def clear(self) -> None: ...


class MemoryLinkStore:
    """Links in two dicts, rebuilt from the whole changelog at each start (offsets are not
    kept: there is nothing to resume)."""

    def __init__(self) -> None:
        self._links: dict[AppSource, str] = {}
        self._owners: dict[tuple[str, str], str] = {}
        """(app, target id) -> source id: a target id is linked to one source object."""

    def __len__(self) -> int:
        return len(self._links)

    def link(self, app: str, source_id: str) -> str | None:
        return self._links.get((app, source_id))

    def owner(self, app: str, target_id: str) -> str | None:
        return self._owners.get((app, target_id))

    def write(self, app: str, source_id: str, target_id: str | None, *,
              before: str | None, unown: bool) -> None:
        if unown and before is not None:
            self._owners.pop((app, before), None)
        if target_id is None:
            self._links.pop((app, source_id), None)
        else:
            self._links[(app, source_id)] = target_id
            self._owners[(app, target_id)] = source_id

    def sources(self, app: str) -> Iterator[str]:
        return iter([s for a, s in self._links if a == app])

    def offsets(self) -> dict[int, int]:
        return {}

    def read_to(self, partition: int, offset: int) -> None:
        pass

    def flush(self) -> None:
        pass

    def clear(self) -> None:
        self._links.clear()
        self._owners.clear()


class LinkIndex:
    """Which target object each managed source object became, per app.

    Held in a :class:`LinkStore`: in memory until :meth:`use` gives it another (the
    worker's on-disk one, :class:`~services.writer.link_store.RocksLinkStore`).
    """

    def __init__(self, store: LinkStore | None = None) -> None:
        self.store: LinkStore = MemoryLinkStore() if store is None else store

    def use(self, store: LinkStore) -> None:
        """Keep the links in ``store`` from now on (before the changelog is read)."""
        self.store = store

    def __len__(self) -> int:
        return len(self.store)

    def target_id(self, app: str, source_id: str) -> str | None:
        return self.store.link(app, source_id)

    def owner(self, app: str, target_id: str) -> str | None:
        """The source id linked to ``target_id`` in ``app``, if any."""
        return self.store.owner(app, target_id)

    def set(self, state: ManagedObject) -> bool:
        """Record a managed object's link; True if the link is new or moved."""
        before = self.store.link(state.app, state.source_id)
        if before == state.target_id:
            return False
        self.store.write(state.app, state.source_id, state.target_id, before=before,
                         unown=self._owns(state.app, state.source_id, before))
        return True

    def drop(self, app: str, source_id: str) -> None:
        before = self.store.link(app, source_id)
        if before is not None:
            self.store.write(app, source_id, None, before=before,
                             unown=self._owns(app, source_id, before))

    def _owns(self, app: str, source_id: str, target_id: str | None) -> bool:
        return target_id is not None and self.store.owner(app, target_id) == source_id

    def apply(self, key: bytes | None, value: bytes | None) -> AppSource | None:
        """Apply one changelog record (a tombstone removes); the newly linked object, if any.

        A record that does not decode is ignored: the index only speeds references up,
        and a missing link merely defers them.
        """
        if key is None:
            return None
        if value is None:
            link = split_key(key)
            if link is not None:
                self.drop(*link)
            return None
        try:
            state = _state.decode(value)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None
        return (state.app, state.source_id) if self.set(state) else None

    def forget_app(self, app: str) -> None:
        for source_id in self.store.sources(app):
            self.drop(app, source_id)


@dataclass(frozen=True, slots=True)
class Resolved:
    """A command with its references turned into target ids, and what is still missing."""

    command: ProvisioningCommand
    members: list[str] | None = None
    """Groups: target ids of the members linked now (sorted); None for users."""
    missing: list[str] = field(default_factory=list)
    """Source ids referred to but not linked yet."""


def resolve(cmd: ProvisioningCommand, links: LinkIndex) -> Resolved:
    """Write each reference's target id into the command's attributes; leave unlinked ones
    out (the value already in the target stays until the link appears)."""
    missing: list[str] = []
    attributes = dict(cmd.attributes)
    for path, source_id in cmd.references.items():
        target_id = links.target_id(cmd.app, source_id)
        if target_id is None:
            missing.append(source_id)
            attributes.pop(path, None)
        else:
            attributes[path] = target_id
    members: list[str] | None = None
    if cmd.object_type == "group":
        linked = {m: links.target_id(cmd.app, m) for m in cmd.members}
        members = sorted({t for t in linked.values() if t is not None})
        missing.extend(m for m, t in linked.items() if t is None)
    if attributes != cmd.attributes:
        cmd = msgspec.structs.replace(cmd, attributes=attributes)
    return Resolved(cmd, members, missing)


class Deferrals:
    """Which objects (keys) wait for which source ids of their app to be linked."""

    def __init__(self) -> None:
        self._waiting: dict[AppSource, set[bytes]] = defaultdict(set)
        self._by_key: dict[bytes, tuple[ProvisioningCommand, set[str]]] = {}

    def __len__(self) -> int:
        return len(self._by_key)

    def defer(self, key: bytes, command: ProvisioningCommand, missing: Iterable[str]) -> None:
        """``command`` (the object's latest) ran without the links of ``missing``; an empty
        ``missing`` means it waits for nothing any more."""
        self.clear(key)
        wanted = set(missing)
        if not wanted:
            return
        self._by_key[key] = (command, wanted)
        for source_id in wanted:
            self._waiting[(command.app, source_id)].add(key)

    def clear(self, key: bytes) -> None:
        entry = self._by_key.pop(key, None)
        if entry is None:
            return
        command, wanted = entry
        for source_id in wanted:
            keys = self._waiting.get((command.app, source_id))
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._waiting[(command.app, source_id)]

    def waiting_for(self, app: str, source_id: str) -> list[bytes]:
        """The keys that wait for ``source_id`` of ``app`` (now linked): run them again."""
        return sorted(self._waiting.get((app, source_id), ()))

    def command(self, key: bytes) -> ProvisioningCommand | None:
        """The latest command of a waiting object, or None if it waits for nothing."""
        entry = self._by_key.get(key)
        return entry[0] if entry else None

    def counts(self) -> Counter[str]:
        """Waiting objects per app."""
        return Counter(command.app for command, _ in self._by_key.values())

    def forget_app(self, app: str) -> None:
        for key in [k for k, (c, _) in self._by_key.items() if c.app == app]:
            self.clear(key)
