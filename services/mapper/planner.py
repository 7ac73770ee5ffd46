"""What each application should do about one directory change: pure, no I/O.

For every application: scope (assignment, then the object mapping's scoping filters),
enabled state, then the attribute mappings, giving one ProvisioningCommand with the
object's desired state in that app's target. Users go through the user mapping; groups
through the group mapping (when the app has one), with their direct members.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from schemas import DirectoryChange, MatchingAttribute, ProvisioningCommand
from services.mapper.groups import GroupGraph
from services.mapper.mappings import CompiledMapping
from services.mapper.scoping import ScopeDecision, in_scope, is_enabled
from services.mapper.scoping_filters import CompiledFilters
from services.runtime.config import Application

__all__ = ["CompiledApp", "command_key", "plan"]


@dataclass(frozen=True, slots=True)
class CompiledApp:
    app: Application
    user: CompiledMapping
    filters: CompiledFilters | None = None
    """The user mapping's scoping filters."""
    group: CompiledMapping | None = None
    group_filters: CompiledFilters | None = None

    @property
    def expands_nested_groups(self) -> bool:
        """Whether this app's user scope needs the group graph."""
        return self.app.scope == "assigned" and self.app.assignments.expand_nested_groups

    def mapping_for(self, object_type: str) -> tuple[CompiledMapping | None, CompiledFilters | None]:
        """The object mapping (None when the app does not provision this type) and its filters."""
        if object_type == "user":
            return self.user, self.filters
        return self.group, self.group_filters


def command_key(app: str, source_id: str) -> bytes:
    """Kafka key of an object's commands in one app: one partition, in order."""
    return f"{app}/{source_id}".encode()


def plan(compiled: CompiledApp, change: DirectoryChange,
         graph: GroupGraph | None = None) -> ProvisioningCommand | None:
    """The command for ``change`` in one app, or None when the app does not handle it.

    ``graph`` (the group nesting) matters only for users of apps that expand nested groups.
    """
    app = compiled.app
    mapping, filters = compiled.mapping_for(change.object_type)
    if app.mode != "automatic" or mapping is None or not mapping.enabled:
        return None
    if change.operation == "delete":
        return _command(app.name, change, "delete", "deleted in source")
    scope = _scope(compiled, filters, change, graph)
    if not scope.in_scope:
        return _command(app.name, change, "deprovision", scope.reason)
    if change.object_type == "user" and not is_enabled(app, change):
        return _command(app.name, change, "deprovision",
                        f"disabled in source ({app.disabled_attribute} is false)")
    return _upsert(app.name, mapping, change, scope.reason)


class MatchingValueMissingError(ValueError):
    """No matching attribute of an object has a value: it cannot be found or created safely."""

    error_code = "MatchingValueMissing"


def _upsert(app: str, mapping: CompiledMapping, change: DirectoryChange, reason: str) -> ProvisioningCommand:
    mapped = mapping.apply(change.attributes)
    if not mapped.matching:
        raise MatchingValueMissingError(
            f"{change.object_type} {change.object_id}: every matching attribute is empty or blank "
            f"({', '.join(mapping.matching_targets) or 'none mapped'}); it was not provisioned")
    return _command(
        app, change, "upsert", reason,
        attributes=mapped.attributes,
        create_only=mapped.create_only,
        matching=[MatchingAttribute(target=t, value=v, precedence=p) for p, t, v in mapped.matching],
        redacted=mapped.redacted,
        unique_candidates=mapped.unique,
        references=mapped.references,
        # Direct members only (users and groups): the writer adds those it manages in this app.
        members=list(change.members) if change.object_type == "group" else [],
    )


def _scope(compiled: CompiledApp, filters: CompiledFilters | None, change: DirectoryChange,
           graph: GroupGraph | None) -> ScopeDecision:
    """Assignment first, then the object mapping's scoping filters (Entra's order)."""
    assigned = in_scope(compiled.app, change, graph)
    if not assigned.in_scope or filters is None:
        return assigned
    filtered = filters.evaluate(change.attributes)
    if not filtered.in_scope:
        return ScopeDecision(False, f"scoping filters: {filtered.reason}")
    return ScopeDecision(True, f"{assigned.reason}; {filtered.reason}")


def _command(app: str, change: DirectoryChange, operation: str, reason: str,
             **desired: object) -> ProvisioningCommand:
    attrs: Mapping[str, object] = change.attributes
    identity = attrs.get("userPrincipalName") or attrs.get("displayName") or change.object_id
    return ProvisioningCommand(
        app=app,
        object_type=change.object_type,
        source=change.source,
        source_id=change.object_id,
        operation=operation,  # type: ignore[arg-type]
        reason=reason,
        display_name=str(identity),
        change_id=change.change_id,
        cycle_id=change.cycle_id,
        observed_at=change.observed_at,
        on_demand=change.on_demand,
        **desired,  # type: ignore[arg-type]
    )
