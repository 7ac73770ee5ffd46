"""What the writer does with one command: pure decisions, no I/O.

The rules (Entra's, plus "never touch what we do not manage"):

- upsert, not managed  -> look the object up by its matching attributes: adopt, or create
- upsert, managed      -> PATCH only what differs from what we last wrote (or nothing)
- deprovision          -> PATCH ``active=false`` if managed and active; else skip
- delete               -> DELETE if managed and the Delete action is enabled; else disable

Groups have no soft delete in SCIM (no ``active``): a group that leaves scope or the
source is deleted if the Delete action is enabled, else left in the target (skip), as
Entra does. Their membership is not an attribute here: ``groups.member_delta`` owns it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from schemas import ManagedObject, ProvisioningCommand

__all__ = ["Decision", "after_lookup", "decide", "desired_state"]

Action = Literal["lookup", "create", "adopt", "update", "disable", "delete", "skip", "noop"]


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    reason: str
    changes: dict[str, Any] = field(default_factory=dict)
    """Target path -> new value (what will be written)."""


def desired_state(cmd: ProvisioningCommand) -> dict[str, Any]:
    """The attributes an in-scope object should have; a user's ``active`` is true unless mapped."""
    desired = dict(cmd.attributes)
    if cmd.object_type == "user":
        desired.setdefault("active", True)
    return desired


def decide(cmd: ProvisioningCommand, managed: ManagedObject | None, actions: frozenset[str], *,
           skip_out_of_scope_deletions: bool = False) -> Decision:
    """The next step for ``cmd`` given what we manage (``None``: not managed)."""
    if cmd.operation == "upsert":
        return _upsert(cmd, managed, actions)
    if managed is None:
        return Decision("skip", "not managed by scimflow: left untouched")
    if cmd.object_type == "group":
        return _remove_group(cmd, actions)
    return _remove_user(cmd, managed, actions, skip_out_of_scope_deletions)


def _remove_user(cmd: ProvisioningCommand, managed: ManagedObject, actions: frozenset[str],
                 skip_out_of_scope_deletions: bool) -> Decision:
    if cmd.operation == "deprovision":
        if skip_out_of_scope_deletions and not cmd.reason.startswith("disabled"):
            return Decision("skip", f"{cmd.reason}; skip_out_of_scope_deletions is on")
        return _disable(managed, cmd.reason)
    if "delete" in actions:
        return Decision("delete", cmd.reason)
    return _disable(managed, f"{cmd.reason}; the Delete action is off, so disable instead")


def _upsert(cmd: ProvisioningCommand, managed: ManagedObject | None,
            actions: frozenset[str]) -> Decision:
    if managed is None:
        return Decision("lookup", cmd.reason)
    changes = _changed(desired_state(cmd), managed.attributes)
    if not changes:
        return Decision("noop", "target already has the desired values")
    if "update" not in actions:
        return Decision("skip", "the Update action is off for this object mapping")
    return Decision("update", cmd.reason, changes)


def _remove_group(cmd: ProvisioningCommand, actions: frozenset[str]) -> Decision:
    if "delete" in actions:
        return Decision("delete", cmd.reason)
    return Decision("skip", f"{cmd.reason}; groups have no soft delete and the Delete action is "
                            "off, so the group is left in the target")


def _disable(managed: ManagedObject, reason: str) -> Decision:
    if not managed.active:
        return Decision("noop", f"{reason}; already disabled")
    return Decision("disable", reason, {"active": False})


def after_lookup(cmd: ProvisioningCommand, found: Mapping[str, Any] | None,
                 actions: frozenset[str], read: Any) -> Decision:
    """After looking the object up in the target: adopt what was found, or create.

    ``read(resource, path)`` reads a value at a SCIM path of the found resource.
    """
    desired = desired_state(cmd)
    if found is not None:
        changes = {p: v for p, v in desired.items() if read(found, p) != v}
        if changes and "update" not in actions:
            return Decision("adopt", "matched an existing account; the Update action is off")
        return Decision("adopt", "matched an existing account by its matching attribute", changes)
    if "create" not in actions:
        return Decision("skip", "no matching account and the Create action is off")
    return Decision("create", cmd.reason, {**cmd.create_only, **desired})


def _changed(desired: Mapping[str, Any], written: Mapping[str, Any]) -> dict[str, Any]:
    return {p: v for p, v in desired.items() if p not in written or written[p] != v}
