"""Control messages: what operators ask of one application (topic ``control``, compacted).

Key: ``"{app}/{kind}"`` so each kind of request keeps its latest value under compaction.
Requests (restart, provision on demand) carry a ``request_id``: a service that reads one
again after a restart of its own recognises it and does not act twice where that matters.

Every control action is also recorded on the audit topic (``AuditRecord``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from schemas.messages import Message

__all__ = [
    "AllowDeletes",
    "AppCapabilities",
    "AppHealth",
    "AppStatus",
    "AuditRecord",
    "ControlMessage",
    "ProvisionRequest",
    "RemovalTally",
    "Restart",
]


class AllowDeletes(Message, tag="control.allow-deletes.v1", frozen=True, kw_only=True):
    """Release the removals held by accidental-deletion prevention, staged before ``before``."""

    app: str
    before: datetime
    by: str
    """Who asked (user or token name), for the audit trail."""


class AppStatus(Message, tag="control.status.v1", frozen=True, kw_only=True):
    """Provisioning status of one app: ``off`` pauses every write to its target; ``on``
    resumes and applies what changed meanwhile. Overrides the config's ``status``."""

    app: str
    status: Literal["on", "off"]
    by: str
    at: datetime


class Restart(Message, tag="control.restart.v1", frozen=True, kw_only=True):
    """Entra's "clear current state and restart synchronization" for one app.

    The writer forgets the app's escrowed retries, quarantine and pending deferrals (and,
    with ``reset_links``, which target account belongs to which source object: the next
    cycle matches them again by the matching attributes, so nothing is duplicated); ingest
    then runs a full scan of every source: the initial cycle again.
    """

    app: str
    request_id: str
    reset_links: bool = False
    by: str
    at: datetime


class ProvisionRequest(Message, tag="control.provision.v1", frozen=True, kw_only=True):
    """Provision one object now: ingest reads it from its source and publishes it on the
    changes topic with ``change_id`` = ``request_id``; mapper and writer then treat it like any
    change, so the trace (import, scope, match, action, export) can be followed by that id."""

    app: str
    object_id: str
    object_type: Literal["user", "group"] = "user"
    source: str | None = None
    """The source to read it from; None: every source that has an object with this id."""
    request_id: str
    by: str
    at: datetime


class AppHealth(Message, tag="control.health.v1", frozen=True, kw_only=True):
    """Published by the writer (key ``"{app}/health"``) when an app enters or leaves
    quarantine, so status survives restarts and every reader sees the same answer."""

    app: str
    quarantined: bool
    reason: str | None = None
    """Why it is quarantined (e.g. ``credentials``, ``failure ratio 0.93 over 40 calls``)."""
    since: datetime | None = None
    next_probe: datetime | None = None
    at: datetime


class RemovalTally(Message, tag="control.removal-tally.v1", frozen=True, kw_only=True):
    """One writer replica's share of an app's removals in the current cycle (executed since
    the last complete full scan plus waiting), key ``"{app}/tally/{replica}"``.

    Each replica adds the other replicas' recent tallies to its own before it decides, so
    the deletion threshold holds for the application as a whole, however many writer
    replicas share its partitions. A replica repeats its tally every few seconds while it is
    not zero; a tally older than that (a replica that stopped) no longer counts.
    """

    app: str
    replica: str
    count: int
    at: datetime


class AppCapabilities(Message, tag="control.capabilities.v1", frozen=True, kw_only=True):
    """Published by the writer (key ``"{app}/capabilities"``) once it read the target's
    ``/ServiceProviderConfig``, ``/ResourceTypes`` and ``/Schemas`` (at start and at a
    restart of the app): what the target supports, for sync details."""

    app: str
    capabilities: dict[str, Any]
    """``services.scim.capabilities.Capabilities`` as JSON (``msgspec.to_builtins``)."""
    problems: list[str] = []
    """Attribute mappings the target cannot take, one line each (with the config line)."""
    at: datetime


ControlMessage = (AllowDeletes | AppStatus | Restart | ProvisionRequest | AppHealth | RemovalTally
                  | AppCapabilities)


class AuditRecord(Message, tag="control.audit.v1", frozen=True, kw_only=True):
    """One control action: who (the admin token's name or the CLI user), what, when.

    Key on the audit topic: the app (or ``"-"`` for actions on no app)."""

    id: str
    at: datetime
    by: str
    action: str
    """``start``, ``stop``, ``restart``, ``provision``, ``allow-deletes``, ``test-connection``..."""
    app: str | None = None
    outcome: Literal["accepted", "rejected", "failed", "succeeded"] = "accepted"
    detail: dict[str, Any] = {}
    """The request's parameters (never a credential)."""
    remote: str | None = None
    """Where the request came from (client address), when over HTTP."""
