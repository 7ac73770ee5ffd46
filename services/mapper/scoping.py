"""Who is in scope of an application: assignment (Entra's "assigned users and groups").

Pure functions. Scoping filters (clauses AND within a filter, filters OR) come with the
scope issue; the decision already carries the human reason the activity log shows.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas import DirectoryChange
from services.runtime.config import Application

__all__ = ["ScopeDecision", "in_scope", "is_enabled"]


@dataclass(frozen=True, slots=True)
class ScopeDecision:
    in_scope: bool
    reason: str


def in_scope(app: Application, change: DirectoryChange) -> ScopeDecision:
    """Whether ``change``'s object is in ``app``'s scope, and why."""
    if app.scope == "all":
        return ScopeDecision(True, "scope is all users and groups")
    assigned = app.assignments
    if change.object_type == "group":
        if change.object_id in assigned.groups:
            return ScopeDecision(True, f"group {change.object_id} is assigned")
        return ScopeDecision(False, "group is not assigned")
    if change.object_id in assigned.users:
        return ScopeDecision(True, "user is assigned directly")
    for group in change.memberships:
        if group in assigned.groups:
            return ScopeDecision(True, f"user is a member of assigned group {group}")
    return ScopeDecision(False, "user is not assigned (directly or through a group)")


_FALSE = {False, "false", "False", "FALSE", "0"}


def is_enabled(app: Application, change: DirectoryChange) -> bool:
    """False when the source says the account is disabled (``accountEnabled: false``)."""
    value = change.attributes.get(app.disabled_attribute, True)
    return not (isinstance(value, bool | int | str) and value in _FALSE)
