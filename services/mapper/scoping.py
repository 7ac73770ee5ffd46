"""Who is in scope of an application: assignment (Entra's "assigned users and groups").

Pure functions. A user is in scope when assigned directly or a member of an assigned group;
with ``assignments.expand_nested_groups`` also when a member of a group nested (at any depth)
in an assigned group, found in the :class:`~services.mapper.groups.GroupGraph`. A group is in
scope when it is assigned itself. Scoping filters come after this (``scoping_filters.py``);
every decision carries the human reason the activity log shows.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas import DirectoryChange
from services.mapper.groups import GroupGraph, nesting_reason
from services.runtime.config import Application

__all__ = ["ScopeDecision", "in_scope", "is_enabled"]


@dataclass(frozen=True, slots=True)
class ScopeDecision:
    in_scope: bool
    reason: str


def in_scope(app: Application, change: DirectoryChange, graph: GroupGraph | None = None) -> ScopeDecision:
    """Whether ``change``'s object is in ``app``'s scope, and why.

    ``graph`` is used only when the app expands nested groups; without one, a user's
    direct memberships decide (as in Entra).
    """
    if app.scope == "all":
        return ScopeDecision(True, "scope is all users and groups")
    if change.object_type == "group":
        return _group_scope(app, change.object_id)
    return _user_scope(app, change, graph)


def _group_scope(app: Application, group: str) -> ScopeDecision:
    """Groups are in scope when assigned themselves (nesting puts only their members in)."""
    if group in app.assignments.groups:
        return ScopeDecision(True, f"group {group} is assigned")
    return ScopeDecision(False, f"group {group} is not assigned")


def _user_scope(app: Application, change: DirectoryChange, graph: GroupGraph | None) -> ScopeDecision:
    assigned = app.assignments
    if change.object_id in assigned.users:
        return ScopeDecision(True, "user is assigned directly")
    for group in change.memberships:
        if group in assigned.groups:
            return ScopeDecision(True, f"user is a member of assigned group {group}")
    if not assigned.expand_nested_groups or graph is None:
        return ScopeDecision(False, "user is not assigned (directly or through a group)")
    path = graph.path_to(change.memberships, frozenset(assigned.groups))
    if path is None:
        return ScopeDecision(False, "user is not assigned (directly, through a group or a nested group)")
    return ScopeDecision(True, nesting_reason(path))


_FALSE = {False, "false", "False", "FALSE", "0"}


def is_enabled(app: Application, change: DirectoryChange) -> bool:
    """False when the source says the account is disabled (``accountEnabled: false``)."""
    value = change.attributes.get(app.disabled_attribute, True)
    return not (isinstance(value, bool | int | str) and value in _FALSE)
