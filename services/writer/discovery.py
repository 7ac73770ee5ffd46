"""One-pass discovery: the target's users and groups, read once per full scan.

At the start of a full scan (the initial cycle, a restart's new cycle, every periodic
scan) the writer lists the target's ``/Users`` and ``/Groups`` (members included when the
target returns them), page by page with whatever page size the target chooses, into a
:class:`TargetSnapshot`. The scan's commands are then decided against it: a managed
object's actual resource (drift), and an unmanaged object's match by its matching
attributes without a filter request per object. What the listing cannot settle (an
attribute the listing leaves out, a listing cut short) falls back to a filter GET.

A snapshot is a picture taken at one moment: once the writer writes an object it forgets
that object's entry, so a later decision in the same scan reads it again or compares with
what was written, never with the stale picture.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog

from services.scim.client import Kind, ScimClient, ScimResource
from services.scim.paths import read_path
from services.writer.decide import nfc

__all__ = ["Match", "TargetSnapshot", "discover"]

log = structlog.get_logger("scimflow.writer")


@dataclass(frozen=True, slots=True)
class Match:
    """The snapshot's answer to a lookup: ``settled`` False means ask the target."""

    settled: bool
    hits: list[ScimResource] = field(default_factory=list)


@dataclass
class _Listing:
    resources: dict[str, ScimResource]
    complete: bool
    indexes: dict[tuple[str, bool], dict[Any, list[ScimResource]]] = field(default_factory=dict)
    forgotten: set[str] = field(default_factory=set)


class TargetSnapshot:
    """The target's users and groups as listed at the start of one full scan."""

    def __init__(self, cycle_id: str, listings: dict[Kind, _Listing], seconds: float,
                 taken_at: datetime | None = None) -> None:
        self.cycle_id = cycle_id
        self._listings = listings
        self.seconds = seconds
        self.taken_at = taken_at or datetime.now(UTC)
        """When the listing started: a managed object written after it is not in the picture."""

    def __len__(self) -> int:
        return sum(len(listing.resources) for listing in self._listings.values())

    def covers(self, kind: Kind) -> bool:
        """Whether ``kind`` was listed completely (absence in it means absent in the target)."""
        listing = self._listings.get(kind)
        return listing is not None and listing.complete

    def resource(self, kind: Kind, id: str) -> ScimResource | None:
        """The listed resource with ``id`` (None: not listed, or forgotten after a write)."""
        listing = self._listings.get(kind)
        if listing is None or id in listing.forgotten:
            return None
        return listing.resources.get(id)

    def knows(self, kind: Kind, id: str) -> bool:
        """Whether the snapshot can say what the target holds for ``id`` (present or not)."""
        listing = self._listings.get(kind)
        return listing is not None and listing.complete and id not in listing.forgotten

    def forget(self, kind: Kind, id: str) -> None:
        """``id`` was just written: its listed state is stale from now on."""
        listing = self._listings.get(kind)
        if listing is not None:
            listing.forgotten.add(id)

    def match(self, kind: Kind, path: str, value: str, *, case_exact: bool) -> Match:
        """Listed resources whose ``path`` holds ``value`` (NFC; case-folded unless
        ``case_exact``). Unsettled when the listing is partial or holds ``path`` for no
        resource at all (the target leaves it out of list answers)."""
        listing = self._listings.get(kind)
        if listing is None or not listing.complete:
            return Match(settled=False)
        index = listing.indexes.get((path, case_exact))
        if index is None:
            index = listing.indexes[(path, case_exact)] = _index(listing.resources.values(), path, case_exact)
        if not index and listing.resources:
            return Match(settled=False)
        hits = index.get(_key(value, case_exact), [])
        if any(r.id in listing.forgotten for r in hits):
            return Match(settled=False)  # written during this scan: ask the target
        return Match(settled=True, hits=list(hits))


def _key(value: Any, case_exact: bool) -> Any:
    value = nfc(value)
    return value if case_exact or not isinstance(value, str) else value.casefold()


def _index(resources: Iterable[ScimResource], path: str, case_exact: bool) -> dict[Any, list[ScimResource]]:
    index: dict[Any, list[ScimResource]] = defaultdict(list)
    for resource in resources:
        value = read_path(resource.body, path)
        if isinstance(value, str | int) and not isinstance(value, bool):
            index[_key(str(value), case_exact)].append(resource)
    return dict(index)


async def discover(client: ScimClient, cycle_id: str, kinds: Iterable[Kind], *,
                   on_page: Callable[[Kind, int], None] | None = None) -> TargetSnapshot:
    """List every resource of ``kinds`` once. A kind whose listing fails is left out (its
    objects fall back to a lookup each); the failure is logged, never raised."""
    started, taken_at = time.perf_counter(), datetime.now(UTC)
    listings: dict[Kind, _Listing] = {}
    for kind in kinds:
        try:
            resources, complete = await client.list_all(kind)
        except Exception as exc:  # discovery only saves requests: never fail a scan for it
            log.warning("discovery could not list the target; objects are looked up one by one",
                        app=client.app, kind=kind, error=str(exc))
            continue
        listings[kind] = _Listing({r.id: r for r in resources}, complete)
        if on_page is not None:
            on_page(kind, len(resources))
    seconds = time.perf_counter() - started
    snapshot = TargetSnapshot(cycle_id, listings, seconds, taken_at)
    log.info("target discovered", app=client.app, cycle_id=cycle_id, resources=len(snapshot),
             seconds=round(seconds, 3),
             complete={k: v.complete for k, v in listings.items()})
    return snapshot
