"""Preview before apply: what a new version of an app's mappings would change, per object.

``scimflow apply -f FILE --preview`` runs the mapper's own planner
(:func:`services.mapper.planner.plan`, with the compiled mappings, scoping filters and
expressions) twice per source object, once under the live version of the app and once
under the version in FILE, and compares the two commands: the target attributes whose
desired value differs (old -> new), and scope or operation changes. Nothing is written.

The source objects are the latest change of each object on ``directory.changes`` (keyed
by object id, each one the object's full attribute set), not a fresh read of the source:
it is exactly what the mapper plans from, it works for every source type (LDAP, AD, Graph,
push, file) and needs none of their credentials on the machine that previews. Its limit:
an object whose last change is older than the topic's retention is not seen.

What is compared is desired state against desired state. Each changed attribute of an
object the writer manages also shows what scimflow last wrote there (the writer's state
changelog, with the account's target id), so "would this be written" is visible; the
target itself is not read (no target credentials needed): drift made in the target
directly is not shown.

:func:`preview_app` is pure (no I/O): commands in, differences out; :func:`read_objects`
and :func:`read_managed` are the reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import msgspec

from schemas import DirectoryChange, ManagedObject, ProvisioningCommand
from schemas.codecs import decoder
from services.mapper.groups import GroupGraph
from services.mapper.planner import CompiledApp, plan
from services.runtime.kafka import read_latest
from services.runtime.topics import Topics

__all__ = ["AppPreview", "AttributeChange", "ObjectPreview", "preview_app", "read_managed", "read_objects"]

REDACTED = "[Redact]"
HEADER = ("desired state under the new mappings vs under the live ones (what the mapper would "
          "send); `last written`: what scimflow last wrote to the target (the writer's state), "
          "the target itself is not read")


@dataclass(frozen=True)
class AttributeChange:
    """One target attribute whose desired value changes; ``None`` side: not set at all."""

    path: str
    old: Any = None
    new: Any = None
    had: bool = True
    has: bool = True
    when: str = "always"
    """``always`` (create and update), ``on_create`` (only when the account is created),
    ``reference`` (the source id of the object the value refers to), ``members``."""
    written: Any = None
    """What scimflow last wrote at ``path`` (``known``: the writer manages the object and
    has a value there): the writer PATCHes the path when ``new`` differs from it."""
    known: bool = False


@dataclass(frozen=True)
class ObjectPreview:
    """What changes for one source object in one app (``found`` False: not in the topic)."""

    object_type: str
    object_id: str
    display_name: str | None = None
    found: bool = True
    operation: tuple[str | None, str | None] = (None, None)
    reason: tuple[str | None, str | None] = (None, None)
    changes: list[AttributeChange] = field(default_factory=list)
    error: str | None = None
    target_id: str | None = None
    """The account's id in the target, when the writer manages it."""
    changed: bool = False
    """Anything differs: the operation, an attribute, or the new version fails to map."""


@dataclass(frozen=True)
class AppPreview:
    app: str
    compared_with: str
    """``live version N``, or ``nothing (a new app)``."""
    objects: int
    """Objects the old or the new version handles."""
    changed: int
    samples: list[ObjectPreview]
    managed: int = 0
    """Objects of this app the writer manages (has created or adopted in the target)."""


def read_objects(bootstrap: str, topics: Topics) -> dict[tuple[str, str], DirectoryChange]:
    """The latest change of every object on ``directory.changes``, by (type, id)."""
    dec = decoder("directory.changes")
    found: dict[tuple[str, str], DirectoryChange] = {}
    for raw in read_latest(bootstrap, topics.changes).values():
        message = dec.decode(raw)
        if isinstance(message, DirectoryChange):
            found[message.object_type, message.object_id] = message
    return found


def read_managed(bootstrap: str, topics: Topics, app: str) -> dict[str, ManagedObject]:
    """The writer's state of every object it manages in ``app``, by source id."""
    dec = decoder("writer.managed")
    found: dict[str, ManagedObject] = {}
    for raw in read_latest(bootstrap, topics.writer_state).values():
        try:
            state: ManagedObject = dec.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue  # a newer writer's record: not ours to read
        if state.app == app:
            found[state.source_id] = state
    return found


def preview_app(new: CompiledApp, old: CompiledApp | None, objects: Mapping[tuple[str, str], DirectoryChange],
                *, ids: list[str] | None = None, sample: int = 5, compared_with: str = "",
                managed: Mapping[str, ManagedObject] | None = None) -> AppPreview:
    """Plan every object under ``old`` and ``new`` and compare. With ``ids``: those objects,
    each shown (changed or not); else up to ``sample`` of the changed ones, in id order.
    ``managed`` (the writer's state, by source id) adds what was last written."""
    managed = managed or {}
    graph = GroupGraph()
    for change in objects.values():
        graph.apply(change)
    handled, changed = 0, []
    wanted = set(ids or [])
    shown: dict[str, ObjectPreview] = {}
    for (_, object_id), change in sorted(objects.items()):
        result = _compare(old, new, change, graph)
        if result is None:
            continue
        if object_id in managed:
            result = _with_written(result, managed[object_id])
        handled += 1
        if result.changed:
            changed.append(result)
        if object_id in wanted:
            shown[object_id] = result
    if ids:
        samples = [shown.get(i) or ObjectPreview("?", i, found=False) for i in ids]
    else:
        samples = changed[:max(0, sample)]
    return AppPreview(new.app.name, compared_with or "nothing (a new app)", handled, len(changed), samples,
                      managed=len(managed))


def _with_written(result: ObjectPreview, state: ManagedObject) -> ObjectPreview:
    written = state.attributes
    changes = [replace(c, written=written.get(c.path), known=c.path in written)
               if c.when == "always" else c for c in result.changes]
    return replace(result, target_id=state.target_id, changes=changes)


def _compare(old: CompiledApp | None, new: CompiledApp, change: DirectoryChange,
             graph: GroupGraph) -> ObjectPreview | None:
    before, _ = _plan(old, change, graph)  # the live version's failures are not news
    after, error_new = _plan(new, change, graph)
    if before is None and after is None and error_new is None:
        return None
    shown = after or before
    operation = (_op(before), _op(after))
    changes = attribute_changes(before, after)
    return ObjectPreview(
        change.object_type, change.object_id, shown.display_name if shown else change.object_id,
        operation=operation, reason=(before.reason if before else None, after.reason if after else None),
        changes=changes, error=error_new,
        changed=operation[0] != operation[1] or bool(changes) or error_new is not None,
    )


def _plan(compiled: CompiledApp | None, change: DirectoryChange,
          graph: GroupGraph) -> tuple[ProvisioningCommand | None, str | None]:
    """The command, or the mapping error the mapper would report (AttributeMappingFailed)."""
    if compiled is None:
        return None, None
    try:
        return plan(compiled, change, graph), None
    except Exception as exc:  # the mapper reports any failure of a mapping, as an error record
        return None, f"mapping failed: {type(exc).__name__}: {exc}"


def _op(command: ProvisioningCommand | None) -> str | None:
    return command.operation if command is not None else None


def attribute_changes(before: ProvisioningCommand | None,
                      after: ProvisioningCommand | None) -> list[AttributeChange]:
    """Every desired target value that differs between two commands, by path; redacted
    values (``Redact(...)`` mappings) are shown as ``[Redact]``, each side as its own
    version redacts it."""
    hidden = (frozenset(before.redacted if before else []), frozenset(after.redacted if after else []))
    pairs: list[tuple[str, Mapping[str, Any], Mapping[str, Any]]] = [
        ("always", _of(before, "attributes"), _of(after, "attributes")),
        ("on_create", _of(before, "create_only"), _of(after, "create_only")),
        ("reference", _of(before, "references"), _of(after, "references")),
    ]
    found = [c for when, a, b in pairs for c in _differences(a, b, when, hidden)]
    members = (sorted(before.members) if before else [], sorted(after.members) if after else [])
    if members[0] != members[1]:
        found.append(AttributeChange("members", members[0], members[1], when="members"))
    return found


def _of(command: ProvisioningCommand | None, name: str) -> Mapping[str, Any]:
    if command is None or command.operation != "upsert":
        return {}
    value: Mapping[str, Any] = getattr(command, name)
    return value


def _differences(old: Mapping[str, Any], new: Mapping[str, Any], when: str,
                 hidden: tuple[frozenset[str], frozenset[str]]) -> list[AttributeChange]:
    out = []
    for path in sorted(old.keys() | new.keys()):
        a, b = old.get(path), new.get(path)
        if path in old and path in new and a == b:
            continue
        out.append(AttributeChange(path, REDACTED if path in hidden[0] and path in old else a,
                                   REDACTED if path in hidden[1] and path in new else b,
                                   had=path in old, has=path in new, when=when))
    return out
