"""What each application should do about one directory change: pure, no I/O.

For every application: scope (assignment), enabled state, then the attribute mappings,
giving one ProvisioningCommand with the object's desired state in that app's target.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from schemas import DirectoryChange, MatchingAttribute, ProvisioningCommand
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


def command_key(app: str, source_id: str) -> bytes:
    """Kafka key of an object's commands in one app: one partition, in order."""
    return f"{app}/{source_id}".encode()


def plan(compiled: CompiledApp, change: DirectoryChange) -> ProvisioningCommand | None:
    """The command for ``change`` in one app, or None when the app does not handle it."""
    app = compiled.app
    if app.mode != "automatic" or change.object_type != "user" or not compiled.user.enabled:
        return None
    if change.operation == "delete":
        return _command(app.name, change, "delete", "deleted in source")
    scope = _scope(compiled, change)
    if not scope.in_scope:
        return _command(app.name, change, "deprovision", scope.reason)
    if not is_enabled(app, change):
        return _command(app.name, change, "deprovision",
                        f"disabled in source ({app.disabled_attribute} is false)")
    mapped = compiled.user.apply(change.attributes)
    return _command(
        app.name, change, "upsert", scope.reason,
        attributes=mapped.attributes,
        create_only=mapped.create_only,
        matching=[MatchingAttribute(target=t, value=v, precedence=p) for p, t, v in mapped.matching],
        redacted=mapped.redacted,
        unique_candidates=mapped.unique,
    )


def _scope(compiled: CompiledApp, change: DirectoryChange) -> ScopeDecision:
    """Assignment first, then the object mapping's scoping filters (Entra's order)."""
    assigned = in_scope(compiled.app, change)
    if not assigned.in_scope or compiled.filters is None:
        return assigned
    filtered = compiled.filters.evaluate(change.attributes)
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
        **desired,  # type: ignore[arg-type]
    )
