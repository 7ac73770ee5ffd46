"""A JSON Lines directory file read incrementally: only the bytes appended since the last read.

One JSON object per line, each ended by ``\\n``; a later line for the same object replaces
the earlier one whole, and ``"deleted": true`` removes it::

    {"objectType": "user", "id": "u-0001", "userPrincipalName": "ada@example.com"}
    {"objectType": "group", "id": "g-eng", "displayName": "Engineering", "members": ["u-0001"]}
    {"objectType": "user", "id": "u-0001", "deleted": true}

``objectType`` defaults to ``user``. As in the YAML/JSON file, a user's memberships come from
the groups' ``members``.

``JsonLinesLog`` keeps what it needs to tell changes apart without the objects themselves:
per object the offset of its live line and a 64-bit hash of that line (one int), the groups'
members and the reverse index (user -> groups). ``catch_up`` reads from the last offset to
the last complete line (a line still being written waits for its ``\\n``) and returns what
changed. A file whose inode changed (rotated, or replaced by a rename) or that is shorter
than the offset or no longer ends with the line read last (truncated, rewritten in place) is
read again in full, and the new version is compared with the old record by record.

Pure file I/O, no asyncio: the caller runs ``catch_up`` and ``live_objects`` in a thread.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import msgspec

from services.ingest.objects import ObjectType, SourceObject

__all__ = ["JSON_LINES_SUFFIXES", "BadLine", "JsonLinesLog", "LogRotatedError"]

JSON_LINES_SUFFIXES = (".jsonl", ".ndjson")

Change = tuple[Literal["upsert", "delete"], SourceObject]

_HASH_BITS = 64
_HASH_MASK = (1 << _HASH_BITS) - 1
_TAIL = 64  # bytes before the offset that must be unchanged for an append to be trusted
_decode = msgspec.json.Decoder(dict[str, Any])


class LogRotatedError(Exception):
    """The file was replaced while a scan read it; the scan's offsets no longer hold."""


@dataclass(frozen=True, slots=True)
class BadLine:
    """A line that is not an object with an ``id``: skipped, reported once."""

    offset: int
    reason: str


@dataclass(slots=True)
class _State:
    # key ("u:" or "g:" + id) -> offset of the live line << 64 | hash of that line
    index: dict[str, int] = field(default_factory=dict)
    members: dict[str, tuple[str, ...]] = field(default_factory=dict)  # group -> members
    # user -> groups listing it, sorted; a tuple, not a set: a million of them is 160 MB less
    groups_of: dict[str, tuple[str, ...]] = field(default_factory=dict)


class JsonLinesLog:
    """The live objects of one JSON Lines file, and what changed since the last ``catch_up``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.loaded = False
        self.generation = 0
        """Bumped by every full read: offsets of an older generation point into another file."""
        self.offset = 0
        self._inode: int | None = None
        self._tail = b""
        self._state = _State()
        self.bad: list[BadLine] = []
        """Lines skipped by the last ``catch_up``."""

    def __len__(self) -> int:
        return len(self._state.index)

    def catch_up(self) -> list[Change]:
        """What changed since the last call (the first call reads the file and reports nothing)."""
        self.bad = []
        try:
            st = self.path.stat()
        except FileNotFoundError:
            if not self.loaded:
                raise
            return []  # mid-rotation: the new file is not there yet
        if not self.loaded or st.st_ino != self._inode or st.st_size < self.offset or not self._tail_holds():
            return self._reload(st.st_ino)
        if st.st_size == self.offset:
            return []
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read(st.st_size - self.offset)
        end = data.rfind(b"\n") + 1
        changes: dict[str, Change] = {}
        pos = self.offset
        for line in data[:end].splitlines(keepends=True):
            self._apply(line, pos, changes)
            pos += len(line)
        self._advance(pos, data[:end])
        return list(changes.values())

    def live_objects(self) -> Iterator[SourceObject]:
        """Every live object, in file order, read sequentially up to the caught-up offset.

        An object whose live line moves past the point read (a poll caught up meanwhile) is
        not yielded here; the poll publishes it. Raises ``LogRotatedError`` if a full read
        replaced the offsets while this ran."""
        generation, pos = self.generation, 0
        with self.path.open("rb") as f:
            for line in f:
                if pos >= self.offset or not line.endswith(b"\n"):
                    return
                if generation != self.generation:
                    raise LogRotatedError(f"{self.path}: replaced during the scan")
                obj = self._live_at(line, pos)
                pos += len(line)
                if obj is not None:
                    yield obj

    def get(self, object_type: ObjectType, object_id: str) -> SourceObject | None:
        """One live object, read from its line."""
        packed = self._state.index.get(_key(object_type, object_id))
        return None if packed is None else self._read_object(packed >> _HASH_BITS)

    # -- reading ---------------------------------------------------------------------------------

    def _reload(self, inode: int) -> list[Change]:
        """Read the whole file again; on a file seen before, compare it record by record."""
        old, first = self._state, not self.loaded
        self._state, self.offset, self._tail = _State(), 0, b""
        self._inode, self.loaded = inode, True
        self.generation += 1
        with self.path.open("rb") as f:
            pos = 0
            for line in f:
                if not line.endswith(b"\n"):
                    break  # a line still being written: the next catch_up takes it
                self._apply(line, pos, None)
                pos += len(line)
                self._advance(pos, line)
        return [] if first else list(self._compare(old))

    def _compare(self, old: _State) -> Iterator[Change]:
        new = self._state
        for key, packed in new.index.items():
            before = old.index.pop(key, None)
            if (before is None or (before & _HASH_MASK) != (packed & _HASH_MASK)
                    or (key[0] == "u" and old.groups_of.get(key[2:]) != new.groups_of.get(key[2:]))):
                obj = self._read_object(packed >> _HASH_BITS)
                if obj is not None:
                    yield "upsert", obj
        for key in old.index:
            yield "delete", SourceObject(_type(key), key[2:], {})

    def _advance(self, pos: int, consumed: bytes) -> None:
        self.offset = pos
        if consumed:
            self._tail = consumed[-_TAIL:] if len(consumed) >= _TAIL else (self._tail + consumed)[-_TAIL:]

    def _tail_holds(self) -> bool:
        """The bytes before the offset are still the ones read: the file was only appended to."""
        if not self._tail:
            return True
        with self.path.open("rb") as f:
            f.seek(self.offset - len(self._tail))
            return f.read(len(self._tail)) == self._tail

    def _read_object(self, offset: int) -> SourceObject | None:
        with self.path.open("rb") as f:
            f.seek(offset)
            record = _parse(f.readline())
        return None if isinstance(record, str) else self._object(record)

    # -- applying one line -----------------------------------------------------------------------

    def _apply(self, line: bytes, pos: int, changes: dict[str, Change] | None) -> None:
        """Take one line into the state; ``changes`` (None on a full read) collects what changed."""
        if not line.strip():
            return
        record = _parse(line)
        if isinstance(record, str):
            self.bad.append(BadLine(pos, record))
            return
        object_type, object_id = record["objectType"], record["id"]
        key, state = _key(object_type, object_id), self._state
        if record.get("deleted") is True:
            existed = state.index.pop(key, None) is not None
            touched = self._set_members(object_id, ()) if object_type == "group" else set()
            if existed and changes is not None:
                _note(changes, key, ("delete", SourceObject(object_type, object_id, {})))
            self._note_members(touched, changes)
            return
        digest = int.from_bytes(hashlib.blake2b(line.rstrip(), digest_size=8).digest())
        before = state.index.get(key)
        state.index[key] = pos << _HASH_BITS | digest
        touched = set()
        if object_type == "group":
            touched = self._set_members(object_id, tuple(str(m) for m in record.get("members") or ()))
        if changes is not None and (before is None or before & _HASH_MASK != digest):
            _note(changes, key, ("upsert", self._object(record)))
        self._note_members(touched, changes)

    def _set_members(self, group: str, members: tuple[str, ...]) -> set[str]:
        """Replace a group's members; returns the users whose memberships changed."""
        state = self._state
        old = set(state.members.pop(group, ()))
        if members:
            state.members[group] = members
        new = set(members)
        for user in old - new:
            rest = tuple(g for g in state.groups_of.pop(user, ()) if g != group)
            if rest:
                state.groups_of[user] = rest
        for user in new - old:
            state.groups_of[user] = tuple(sorted((*state.groups_of.get(user, ()), group)))
        return old ^ new

    def _note_members(self, users: set[str], changes: dict[str, Change] | None) -> None:
        if changes is None:
            return
        for user in sorted(users):  # sorted: the same edit gives the same changes, in one order
            packed = self._state.index.get(_key("user", user))
            obj = None if packed is None else self._read_object(packed >> _HASH_BITS)
            if obj is not None:
                _note(changes, _key("user", user), ("upsert", obj))

    def _live_at(self, line: bytes, pos: int) -> SourceObject | None:
        if not line.strip():
            return None
        record = _parse(line)
        if isinstance(record, str) or record.get("deleted") is True:
            return None
        packed = self._state.index.get(_key(record["objectType"], record["id"]))
        if packed is None or packed >> _HASH_BITS != pos:
            return None  # a later line replaced it, or it was deleted
        return self._object(record)

    def _object(self, record: dict[str, Any]) -> SourceObject:
        object_type, object_id = record.pop("objectType"), record.pop("id")
        record["id"] = object_id  # the id is an attribute too, as in the YAML/JSON file
        record.pop("deleted", None)
        if object_type == "group":
            members = tuple(str(m) for m in record.pop("members", None) or ())
            return SourceObject("group", object_id, record, members=members)
        return SourceObject("user", object_id, record, memberships=self._state.groups_of.get(object_id, ()))


def _parse(line: bytes) -> dict[str, Any] | str:
    """The line's record with ``objectType`` and ``id`` as text, or why it is not one."""
    try:
        record = _decode.decode(line)
    except msgspec.DecodeError as exc:
        return f"not a JSON object: {exc}"
    object_type = record.get("objectType", "user")
    if object_type not in ("user", "group"):
        return f"objectType must be user or group, not {object_type!r}"
    if record.get("id") in (None, ""):
        return "no `id`"
    record["objectType"], record["id"] = object_type, str(record["id"])
    return record


def _key(object_type: str, object_id: str) -> str:
    return f"{object_type[0]}:{object_id}"


def _type(key: str) -> ObjectType:
    return "user" if key[0] == "u" else "group"


def _note(changes: dict[str, Change], key: str, change: Change) -> None:
    # Latest wins, and moves to the end: one object's changes keep their order.
    changes.pop(key, None)
    changes[key] = change
