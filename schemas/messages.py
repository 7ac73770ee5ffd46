"""Every message scimflow puts on a topic: tagged, versioned msgspec Structs.

The version lives in the tag (``"provisioning.activity.v1"``). Evolution rules: a new
field gets a default; a field never changes type; a breaking change is a new Struct with a
new tag, and a topic's decoder accepts the union of live versions. Unknown fields are
skipped when decoding so older consumers keep working.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import msgspec

__all__ = [
    "ActivityRecord",
    "CycleMarker",
    "DirectoryChange",
    "DirectoryMessage",
    "ErrorRecord",
    "EscrowedCommand",
    "HeldCommand",
    "ManagedObject",
    "MatchingAttribute",
    "Message",
    "ModifiedProperty",
    "Origin",
    "ProvisioningCommand",
    "ProvisioningMessage",
    "SourcePosition",
    "Step",
]

ObjectType = Literal["user", "group"]


class Message(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Base of every message; ``type`` carries the tag with its version."""


class DirectoryChange(Message, tag="directory.change.v1", frozen=True, kw_only=True):
    """One object as the directory has it now, or its deletion.

    Key on the topic: ``object_id``. Every change carries the object's full attribute set
    (not a delta), so a consumer never needs earlier messages to act on one.
    """

    source: str
    """Name of the source (from the config) that saw the change."""
    object_type: ObjectType
    object_id: str
    """Stable id in the source (entryUUID, objectGUID, Graph id, file id)."""
    operation: Literal["upsert", "delete"]
    attributes: dict[str, Any] = {}
    memberships: list[str] = []
    """Users: ids of the groups the user is a direct member of."""
    members: list[str] = []
    """Groups: ids of the group's direct members."""
    change_id: str
    cycle_id: str | None = None
    """Set when the change comes from a full scan (the scan's cycle id)."""
    observed_at: datetime
    """When the source saw the change; latency is measured from here."""
    on_demand: bool = False
    """Published for a provision-on-demand request (``change_id`` is the request id): the
    writer then reports an outcome even when nothing needs writing."""


class CycleMarker(Message, tag="directory.cycle.v1", frozen=True, kw_only=True):
    """Frames a full scan: ``start`` before its first object, ``end`` after its last.

    Sent to every partition so each consumer instance sees the frame. An ``end`` with
    ``complete=False`` means the scan was interrupted and must not be used to infer
    deletions.
    """

    source: str
    cycle_id: str
    phase: Literal["start", "end"]
    total: int | None = None
    """Objects in the scan (on ``start`` when known, always on ``end``)."""
    complete: bool = True
    at: datetime
    app: str | None = None
    """Set when the mapper forwards the marker to one application's commands."""
    origin_partition: int | None = None
    """Set by the mapper: the directory.changes partition this frame came through. The mapper
    forwards every frame to every commands partition, so a writer knows a scan is over on
    its partition once it has the ``end`` of all ``origin_partitions``."""
    origin_partitions: int | None = None


DirectoryMessage = DirectoryChange | CycleMarker


class MatchingAttribute(msgspec.Struct, frozen=True, kw_only=True):
    """A target attribute and value to look an object up by; lower precedence wins."""

    target: str
    value: Any
    precedence: int = 1


class ProvisioningCommand(Message, tag="provisioning.command.v1", frozen=True, kw_only=True):
    """The desired state of one object in one application's target.

    Key on the topic: ``"{app}/{source_id}"``, so every command for one object of one app
    lands on one partition, in order.
    """

    app: str
    object_type: ObjectType
    source: str
    source_id: str
    operation: Literal["upsert", "deprovision", "delete"]
    reason: str
    """Why: e.g. ``in scope``, ``not assigned``, ``disabled in source``, ``deleted in source``."""
    attributes: dict[str, Any] = {}
    """Target attribute path -> value, applied on create and update."""
    create_only: dict[str, Any] = {}
    """Target attribute path -> value, applied only when the object is created."""
    matching: list[MatchingAttribute] = []
    redacted: list[str] = []
    """Target paths whose values must show as ``[Redact]`` in records and logs."""
    unique_candidates: dict[str, list[Any]] = {}
    """Target path -> SelectUniqueValue candidates; on create the writer takes the first
    one no target account uses yet. Never changed afterwards."""
    display_name: str | None = None
    """A human identity for reports (e.g. the userPrincipalName)."""
    references: dict[str, str] = {}
    """Target path -> source id of the object the value refers to (e.g. the enterprise
    ``manager``). The writer writes that object's target id once it manages it, and defers
    the reference until then."""
    members: list[str] = []
    """Groups: source ids of the group's direct members. The writer adds the members it
    manages in this app (as PATCH deltas) and the others as soon as they are provisioned."""
    change_id: str
    cycle_id: str | None = None
    observed_at: datetime
    on_demand: bool = False
    """Copied from the change: provision on demand (an outcome is reported even if in sync)."""


ProvisioningMessage = ProvisioningCommand | CycleMarker


class ModifiedProperty(msgspec.Struct, frozen=True, kw_only=True):
    """One attribute the writer changed in the target."""

    name: str
    old_value: Any = None
    new_value: Any = None


class Step(msgspec.Struct, frozen=True, kw_only=True):
    """One step of provisioning an object, as in Entra's provisioning log."""

    name: Literal["import", "scope", "match", "action", "export"]
    status: Literal["success", "failure", "skipped"]
    detail: str


class ActivityRecord(Message, tag="provisioning.activity.v1", frozen=True, kw_only=True):
    """Every outcome for one object: the provisioning log.

    Key on the topic: ``"{app}/{source_id}"``.
    """

    id: str
    at: datetime
    app: str
    object_type: ObjectType
    action: Literal["create", "update", "adopt", "disable", "delete", "skip", "stagedDelete", "repair"]
    """``repair``: a full scan found the object changed, disabled or deleted directly in the
    target and wrote it back (status ``skipped`` when the app's ``drift`` is ``report``)."""
    status: Literal["success", "failure", "skipped", "warning", "dryRun"]
    source: str
    source_id: str
    source_identity: str | None = None
    target_id: str | None = None
    cycle_id: str | None = None
    change_id: str | None = None
    reason: str | None = None
    modified_properties: list[ModifiedProperty] = []
    steps: list[Step] = []
    duration_ms: float = 0.0
    error_code: str | None = None


class Origin(msgspec.Struct, frozen=True, kw_only=True):
    """Where a failed message came from."""

    topic: str
    partition: int
    offset: int


class ErrorRecord(Message, tag="provisioning.error.v1", frozen=True, kw_only=True):
    """Every failure, with what a human needs to act: the error report.

    Key on the topic: ``"{app}/{source_id}"`` when known, else the original message key.
    """

    id: str
    at: datetime
    service: Literal["ingest", "mapper", "writer"]
    error_code: str
    reason: str
    recommended_action: str
    attempts: int = 1
    app: str | None = None
    object_type: ObjectType | None = None
    source_id: str | None = None
    change_id: str | None = None
    cycle_id: str | None = None
    target_status: int | None = None
    origin: Origin | None = None
    payload: str | None = None
    """The original message (UTF-8, invalid bytes replaced), redacted where the mapping says so."""


class ManagedObject(Message, tag="writer.managed.v1", frozen=True, kw_only=True):
    """What the writer knows of one object it manages in one app (its changelog topic).

    Key: ``"{app}/{source_id}"``. Only objects scimflow created or adopted have one; an
    account without one is never updated, disabled or deleted.
    """

    app: str
    object_type: ObjectType
    source_id: str
    target_id: str
    attributes: dict[str, Any] = {}
    """What scimflow last wrote (target path -> value), including ``active``."""
    active: bool = True
    origin: Literal["created", "adopted"]
    display_name: str | None = None
    created_at: datetime
    updated_at: datetime
    deferred: ProvisioningCommand | None = None
    """The object's latest command while some object it refers to (manager, group member)
    is not provisioned yet; the writer runs it again once it is, even after a restart."""
    unstored: list[str] = []
    """Target paths the target did not keep as sent (its answer to the write left them out
    or changed them): a full scan does not count them as drift."""


class EscrowedCommand(Message, tag="writer.escrow.v1", frozen=True, kw_only=True):
    """A command the writer stopped retrying for now (Entra's *escrow*), on the writer's
    compacted escrow changelog so it survives restarts.

    Key: ``"{app}/{source_id}"``. Its Kafka offset was acknowledged so that one failing
    object does not hold back its partition's commits; the writer retries it on a timer and
    whenever a newer command for the object arrives, and drops it once one succeeds.
    """

    command: ProvisioningCommand
    attempts: int
    """Failed attempts so far (each one after the client's own retries of the call)."""
    error_code: str
    reason: str
    """The last failure, free of credentials."""
    escrowed_at: datetime
    last_attempt_at: datetime


class HeldCommand(Message, tag="writer.held.v1", frozen=True, kw_only=True):
    """A command the writer acknowledged but has not applied yet, on the writer's compacted
    held changelog so it survives a restart (even ``kill -9``) and moves with its partition.

    Key: ``"{app}/{source_id}"``; a tombstone once the command ran or was superseded. Two
    reasons hold one: its app is Off (``off``: it runs when the app is On again), or it
    removes an account and waits for the deletion guard (``removal``: after the grace
    period, or past the threshold until ``scimflow allow-deletes``).
    """

    command: ProvisioningCommand
    reason: Literal["off", "removal"]
    held_at: datetime
    """When it was held (a removal: when it was staged, which ``allow-deletes --before`` compares)."""
    reported: bool = False
    """A removal reported as ``stagedDelete`` (held by the threshold): not reported again."""


class SourcePosition(Message, tag="source.position.v1", frozen=True, kw_only=True):
    """Where a source's change feed stopped: ingest resumes from here after a restart.

    Key on the (compacted) topic: ``source``, so the topic keeps the latest position of
    every source. For an LDAP source the position is the RFC 4533 syncrepl cookie.
    """

    source: str
    """Name of the source (from the config)."""
    position: str
    """The opaque position (e.g. the syncrepl cookie), as base64 text."""
    at: datetime
    """When ingest stored it, after every change it covers was on the changes topic."""
