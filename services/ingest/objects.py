"""What every source hands the ingest loop: one user or group, a snapshot, and a diff.

A ``SourceObject`` is one directory object as the pipeline carries it (its attributes, a
user's group memberships, a group's members); a ``Snapshot`` is every object of a source
keyed by (object_type, object_id); ``diff`` says what changed between two snapshots. Pure
code, shared by every source in ``services/ingest/sources/``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

__all__ = ["Key", "ObjectType", "Snapshot", "SourceObject", "diff"]

ObjectType = Literal["user", "group"]
Key = tuple[str, str]  # (object_type, object_id)


@dataclass(frozen=True, slots=True)
class SourceObject:
    object_type: ObjectType
    object_id: str
    attributes: dict[str, Any]
    memberships: tuple[str, ...] = ()
    members: tuple[str, ...] = ()

    @property
    def key(self) -> Key:
        return (self.object_type, self.object_id)

    def fingerprint(self) -> bytes:
        """Equal fingerprints mean nothing a consumer can see has changed."""
        return msgspec.json.encode(
            (self.attributes, self.memberships, self.members), order="deterministic"
        )


Snapshot = dict[Key, SourceObject]


def diff(old: Snapshot, new: Snapshot) -> Iterator[tuple[Literal["upsert", "delete"], SourceObject]]:
    """What changed from ``old`` to ``new``: upserts for new/changed objects, deletes for gone ones."""
    for key, obj in new.items():
        before = old.get(key)
        if before is None or before.fingerprint() != obj.fingerprint():
            yield "upsert", obj
    for key, obj in old.items():
        if key not in new:
            yield "delete", obj
