"""Group membership as deltas — pure, no I/O.

A group is created without members; membership is then written as PATCH add/remove
*deltas* (the client chunks them), never as the whole list: a 10,000-member group whose
membership changed by one costs one small request. What scimflow last wrote is kept in
the group's managed state (``attributes["members"]``, target ids, sorted), so the next
command sends only the difference.

An adopted group may already hold members scimflow never wrote; those are left alone:
scimflow only ever removes members it added itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from schemas import ManagedObject

__all__ = ["MEMBERS", "MemberDelta", "current_members", "member_delta", "written_members"]

MEMBERS = "members"
"""The key of the written member ids in a group's ``ManagedObject.attributes``."""


@dataclass(frozen=True, slots=True)
class MemberDelta:
    """Target ids to add and to remove (each sorted, so requests are reproducible)."""

    add: list[str]
    remove: list[str]

    def __bool__(self) -> bool:
        return bool(self.add or self.remove)

    def describe(self) -> str:
        return f"+{len(self.add)} -{len(self.remove)} members"


def written_members(state: ManagedObject | None) -> set[str]:
    """The member target ids scimflow last wrote to a group it manages."""
    if state is None:
        return set()
    value = state.attributes.get(MEMBERS, [])
    return {str(v) for v in value} if isinstance(value, list) else set()


def current_members(resource: Mapping[str, Any]) -> set[str]:
    """Member ids of a group as the target returned it (``members[].value``)."""
    members = resource.get("members") or []
    if not isinstance(members, list):
        return set()
    return {str(m["value"]) for m in members if isinstance(m, Mapping) and m.get("value")}


def member_delta(written: Iterable[str], desired: Iterable[str]) -> MemberDelta:
    """What to send so the members scimflow wrote become ``desired``."""
    before, after = set(written), set(desired)
    return MemberDelta(add=sorted(after - before), remove=sorted(before - after))
