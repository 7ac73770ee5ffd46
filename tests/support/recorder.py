"""A recorder for a directory source's callbacks (``sync(on_change, on_position)``): what the
AD and Graph sources' integration tests assert on, in the order the source reported it."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.ingest.objects import SourceObject
from services.ingest.sources.base import Operation

__all__ = ["SourceRecorder"]


@dataclass
class SourceRecorder:
    """The changes and positions a source reported, in order."""

    changes: list[tuple[Operation, SourceObject]] = field(default_factory=list)
    positions: list[bytes] = field(default_factory=list)

    async def on_change(self, op: Operation, obj: SourceObject) -> None:
        self.changes.append((op, obj))

    async def on_position(self, position: bytes) -> None:
        self.positions.append(position)

    def summary(self, mark: int = 0, among: set[str] | None = None) -> set[tuple[str, str, str]]:
        """(operation, object type, object id) of the changes from ``mark`` on; ``among``:
        only those objects (a shared directory holds other tests' objects too)."""
        return {(op, obj.object_type, obj.object_id) for op, obj in self.changes[mark:]
                if among is None or obj.object_id in among}

    def last(self, oid: str) -> SourceObject:
        """The object as the source last reported it."""
        return next(obj for _, obj in reversed(self.changes) if obj.object_id == oid)
