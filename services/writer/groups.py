"""Group membership as deltas — pure, no I/O.

A group is created without members; membership is then written as PATCH add/remove
*deltas* (the client chunks them), never as the whole list: a 10,000-member group whose
membership changed by one costs one small request. What scimflow last wrote is kept in
the group's managed state (``attributes["members"]``, target ids, sorted).

Deltas are computed against the members the target *actually* has when the writer read
them (discovery, the lookup that adopted the group, or a GET before a change): a member
already there is never added again (some targets store duplicates), and one already gone
is not removed. Removed are only members scimflow owns: ones it wrote, or accounts it
manages in this app; members it never wrote and does not manage are left alone. Without a
read of the target, the delta is against what scimflow wrote, and an empty one means no
call at all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from schemas import ManagedObject

__all__ = ["MEMBERS", "MemberDelta", "current_members", "has_members", "member_delta", "written_members"]

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
    members = next((v for k, v in resource.items() if isinstance(k, str) and k.lower() == "members"),
                   None) or []
    if not isinstance(members, list):
        return set()
    return {str(m["value"]) for m in members if isinstance(m, Mapping) and m.get("value")}


def member_delta(written: Iterable[str], desired: Iterable[str], *,
                 actual: Iterable[str] | None = None,
                 owned: Callable[[str], bool] | None = None,
                 keep: Callable[[str], bool] | None = None) -> MemberDelta:
    """What to send so the group holds ``desired``: against the target's ``actual`` members
    when known, else against the members scimflow ``written``. Removed are only members
    scimflow wrote or ``owned`` says it manages, and never one ``keep`` says belongs (a
    member of the group in the source whose link was not resolved when ``desired`` was)."""
    wrote, after = set(written), set(desired)
    present = wrote if actual is None else set(actual)
    removable = {m for m in present - after
                 if (m in wrote or (owned is not None and owned(m))) and not (keep is not None and keep(m))}
    return MemberDelta(add=sorted(after - present), remove=sorted(removable))


def has_members(resource: Mapping[str, Any]) -> bool:
    """Whether a group resource as returned lists its members (some targets leave them out
    of list answers, or of every answer unless asked): only then is it the actual set."""
    return any(isinstance(k, str) and k.lower() == "members" for k in resource)
