"""The group nesting graph: which groups contain which, for nested-group assignment.

A user's change carries only the groups the user is a *direct* member of. With
``assignments.expand_nested_groups`` an app also takes members of groups nested at any
depth inside an assigned group, so the mapper keeps every group's direct members (from
the group objects on directory.changes) and walks up from the user's direct groups.

Pure and synchronous: :mod:`services.mapper.group_feed` feeds it from Kafka. Cycles in the
directory (A in B in A) are normal data, not errors: the walk visits each group once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Iterable

from schemas import DirectoryChange

__all__ = ["GroupGraph", "nesting_reason"]


class GroupGraph:
    """Each group's direct members, and the reverse index (member -> groups listing it)."""

    __slots__ = ("_members", "_parents")

    def __init__(self) -> None:
        self._members: dict[str, frozenset[str]] = {}
        self._parents: dict[str, set[str]] = {}

    def __len__(self) -> int:
        return len(self._members)

    def apply(self, change: DirectoryChange) -> None:
        """Take a group's current state (or its deletion); other objects are ignored.

        Every change carries the group's full member list, so the latest one replaces
        what the graph held: replaying the topic in order gives the current graph.
        """
        if change.object_type != "group":
            return
        members = frozenset(change.members) if change.operation == "upsert" else frozenset()
        self.set_members(change.object_id, members)

    def set_members(self, group: str, members: frozenset[str]) -> None:
        """Replace ``group``'s direct members; an empty set forgets the group."""
        old = self._members.get(group, frozenset())
        for gone in old - members:
            parents = self._parents.get(gone)
            if parents is not None:
                parents.discard(group)
                if not parents:
                    del self._parents[gone]
        for added in members - old:
            self._parents.setdefault(added, set()).add(group)
        if members:
            self._members[group] = members
        else:
            self._members.pop(group, None)

    def members(self, group: str) -> frozenset[str]:
        """The direct members of ``group`` (empty when unknown)."""
        return self._members.get(group, frozenset())

    def parents(self, member: str) -> frozenset[str]:
        """The groups that list ``member`` directly."""
        return frozenset(self._parents.get(member, ()))

    def path_to(self, direct: Iterable[str], assigned: Collection[str]) -> list[str] | None:
        """The shortest chain from one of ``direct`` up to a group in ``assigned``.

        Returns ``[direct group, ..., assigned group]`` (one element when a direct group
        is assigned itself), or None when no assigned group contains any of them at any
        depth. Breadth-first with a visited set, so cycles end and the answer is the
        shortest path; ties go to the smallest ids, so the reason is stable.
        """
        start = sorted(set(direct))
        came_from: dict[str, str | None] = dict.fromkeys(start)
        queue = deque(start)
        while queue:
            group = queue.popleft()
            if group in assigned:
                return _unwind(came_from, group)
            for parent in sorted(self._parents.get(group, ())):
                if parent not in came_from:
                    came_from[parent] = group
                    queue.append(parent)
        return None


def _unwind(came_from: dict[str, str | None], last: str) -> list[str]:
    path = [last]
    while (previous := came_from[path[-1]]) is not None:
        path.append(previous)
    path.reverse()
    return path


def nesting_reason(path: list[str]) -> str:
    """``user is a member of group eng-backend, nested in assigned group eng``."""
    if len(path) == 1:
        return f"user is a member of assigned group {path[0]}"
    nested = "".join(f", nested in {g}" for g in path[1:-1])
    return f"user is a member of group {path[0]}{nested}, nested in assigned group {path[-1]}"
