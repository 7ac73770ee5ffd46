"""The one interface every directory source implements, so that one ingest loop drives them all.

A source answers four questions, whatever the directory behind it:

- ``scan()``: everything in the directory now (a full read; the ten-minute full scan), and
  ``scan_objects()``, the same one object at a time: what a full scan publishes. A source
  that can read its directory piecewise overrides it, so a scan holds one object at a time
  rather than the whole directory;
- ``watch(on_change, on_position)``: what changes, as it changes, until cancelled; after the
  changes a position covers went through ``on_change``, it hands that position to
  ``on_position`` (the ingest loop stores it in ``source.positions`` once they are on the
  changes topic);
- ``start(position)``: resume the feed from a stored position (a syncrepl cookie, Graph
  deltaLinks, a DirSync cookie), or from scratch with None;
- ``fetch(object_id, object_type)``: one object now (provision on demand), or None.

Sources keep their positions opaque (bytes); only the source knows what one means. A
source that cannot read its directory raises a ``SourceError`` whose ``code`` and
``recommended_action`` go into the ErrorRecord the ingest loop publishes.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Literal

from services.ingest.objects import ObjectType, Snapshot, SourceObject
from services.runtime.errors import ScimflowError

__all__ = [
    "DirectorySource",
    "OnChange",
    "OnPosition",
    "Operation",
    "SourceError",
    "SourceUnavailableError",
]

Operation = Literal["upsert", "delete"]
OnChange = Callable[[Operation, SourceObject], Awaitable[None]]
OnPosition = Callable[[bytes], Awaitable[None]]


class SourceError(ScimflowError):
    """A source failed in a way a retry will not fix by itself (credentials, settings, access)."""

    code = "SourceReadFailed"
    recommended_action = "Check the source's settings and the ingest log; ingest retries by itself."
    reported = False
    """True if the source already published an ErrorRecord for this failure."""


class SourceUnavailableError(SourceError):
    """The directory could not be reached, or it asked us to come back later; worth retrying."""

    code = "SourceUnavailable"
    recommended_action = "None needed if it recovers; otherwise check that the directory is reachable."


class DirectorySource(abc.ABC):
    """One configured directory. Subclasses implement ``scan``, ``watch`` and ``fetch``."""

    name: str
    full_scan_interval: float = 600.0
    scans: bool = True
    """False for a source with no directory to read in full (the push API): no full scans."""
    resumable: bool = True
    """True if ``watch`` hands out positions worth storing (and ``start`` takes one back)."""
    failed_scan_retry: float = 60.0
    """Seconds until a failed full scan is tried again (at most ``full_scan_interval``)."""
    reconnect_initial: float = 0.5
    reconnect_max: float = 30.0
    """Backoff between watch attempts after ``watch`` raised."""

    scan_total: int = 0
    """Objects the running ``scan_objects`` expects (the progress gauge); 0 if not known."""

    async def start(self, position: bytes | None) -> None:  # noqa: B027 - optional hook
        """Prepare to watch from ``position`` (None: from scratch). Called once, before ``watch``."""

    @abc.abstractmethod
    async def scan(self) -> Snapshot:
        """Every user and group now in the directory."""

    async def scan_objects(self) -> AsyncIterator[SourceObject]:
        """Every user and group now in the directory, one at a time (by default from ``scan``)."""
        snapshot = await self.scan()
        self.scan_total = len(snapshot)
        for obj in snapshot.values():
            yield obj

    @abc.abstractmethod
    async def watch(self, on_change: OnChange, on_position: OnPosition) -> None:
        """Report changes until cancelled (returns only if the source was closed)."""

    @abc.abstractmethod
    async def fetch(self, object_id: str, object_type: ObjectType) -> SourceObject | None:
        """One object as the directory has it now; None if the directory has no such object."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and threads; the source is not used again."""
