"""What the writer does with one command: pure decisions, no I/O.

The target is the truth. A decision compares the desired state (the command) with the
target's actual resource when the writer has it (discovery at a full scan's start, a lookup,
a GET just before a write), and with what scimflow last wrote only to know which attributes
it owns. The rules (Entra's, plus "never touch what we do not manage"):

- upsert, not managed  -> look the object up by its matching attributes: adopt, or create
- upsert, managed      -> write only what differs: from the target's resource when known
  (a difference nobody asked for is *drift*: repaired, reported or ignored per the app's
  ``drift``), else from what scimflow last wrote
- deprovision          -> PATCH ``active=false`` if managed and active; else skip
- delete               -> DELETE if managed and the Delete action is enabled; else disable

Groups have no soft delete in SCIM (no ``active``): a group that leaves scope or the
source is deleted if the Delete action is enabled, else left in the target (skip), as
Entra does. Their membership is not an attribute here: ``groups.member_delta`` computes the
delta, and the decisions around it are here (when to read the target's members, what a
member change or member drift leads to, what a dry run reports).

Values compare as SCIM does: Unicode NFC, and case-insensitively for attributes whose
schema says ``caseExact: false`` (RFC 7643's defaults, or what the target declares).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from schemas import ManagedObject, ProvisioningCommand
from services.writer.groups import MemberDelta, member_delta

__all__ = [
    "ABSENT",
    "REDACTED",
    "UNKNOWN",
    "CaseRule",
    "Decision",
    "Drift",
    "Observed",
    "after_lookup",
    "case_exact_default",
    "decide",
    "desired_state",
    "dry_run",
    "failed_action",
    "group_action",
    "members_decision",
    "must_read_members",
    "nfc",
    "reported_action",
    "same_value",
]

Action = Literal["lookup", "create", "adopt", "update", "disable", "delete", "skip", "noop"]
Drift = Literal["repair", "report", "ignore"]
CaseRule = Callable[[str], bool]
"""Target path -> whether its values compare case-sensitively (``caseExact``)."""

REDACTED: Final = "[Redact]"
"""How a value the mapping marks redacted shows in activity and error records (and in
``scimflow expr``), where the writer would show the value."""


class _Unknown:
    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN: Final = _Unknown()
"""The target's resource was not read for this decision."""
ABSENT: Final = None
"""The target holds no such resource (read, and not there)."""
Observed = Mapping[str, Any] | None | _Unknown
"""What the target holds for a managed object: its resource, ``ABSENT`` or ``UNKNOWN``."""

# RFC 7643 §4.1 and §4.2: the core attributes with caseExact false (everything a mapping
# commonly matches on except ids); anything else compares exactly unless the target says so.
_CASE_INSENSITIVE: Final = frozenset({
    "username", "displayname", "nickname", "title", "usertype", "preferredlanguage", "locale",
    "timezone", "name.formatted", "name.familyname", "name.givenname", "name.middlename",
    "name.honorificprefix", "name.honorificsuffix", "emails.value", "emails.type",
    "phonenumbers.value", "department", "division", "organization", "costcenter",
    "employeenumber",
})


def case_exact_default(path: str) -> bool:
    """RFC 7643's ``caseExact`` of a mapping target path (filters ignored: ``emails[type eq
    "work"].value`` is ``emails.value``)."""
    base = path.rsplit(":", 1)[-1] if path.lower().startswith("urn:") else path
    head, _, rest = base.partition("[")
    sub = rest.partition("]")[2].lstrip(".")
    key = f"{head}.{sub}" if sub else head
    return key.lower() not in _CASE_INSENSITIVE


def nfc(value: Any) -> Any:
    """``value`` with its strings in Unicode NFC (a name typed on macOS arrives as NFD)."""
    return unicodedata.normalize("NFC", value) if isinstance(value, str) else value


def same_value(a: Any, b: Any, *, case_exact: bool = True) -> bool:
    """Whether two attribute values are the same for SCIM: NFC, and ignoring case when the
    attribute is not ``caseExact``."""
    if isinstance(a, str) and isinstance(b, str):
        left, right = unicodedata.normalize("NFC", a), unicodedata.normalize("NFC", b)
        return left == right if case_exact else left.casefold() == right.casefold()
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    equal: bool = a == b
    return equal


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    reason: str
    changes: dict[str, Any] = field(default_factory=dict)
    """Target path -> new value (what will be written)."""
    drift: dict[str, Any] = field(default_factory=dict)
    """Target path -> the value found in the target where it differs from what scimflow
    wrote and nobody asked for the change (``"(resource)"``: deleted in the target)."""
    repair: bool = False
    """The write (or report) is a drift repair: reported as action ``repair``."""
    old: dict[str, Any] = field(default_factory=dict)
    """Target path -> the value before this write, as far as the writer knows."""


DELETED_IN_TARGET = "(resource)"
"""The ``drift`` key of a managed object that the target no longer holds."""


def desired_state(cmd: ProvisioningCommand) -> dict[str, Any]:
    """The attributes an in-scope object should have; a user's ``active`` is true unless mapped."""
    desired = dict(cmd.attributes)
    if cmd.object_type == "user":
        desired.setdefault("active", True)
    return desired


def decide(cmd: ProvisioningCommand, managed: ManagedObject | None, actions: frozenset[str], *,
           skip_out_of_scope_deletions: bool = False, target: Observed = UNKNOWN,
           drift: Drift = "ignore", read: Callable[[Mapping[str, Any], str], Any] | None = None,
           case_exact: CaseRule = case_exact_default) -> Decision:
    """The next step for ``cmd`` given what we manage (``None``: not managed) and, when it
    was read, what the target holds for it (``target``; ``read(resource, path)`` reads it)."""
    if cmd.operation == "upsert":
        return _upsert(cmd, managed, actions, target, drift, read, case_exact)
    if managed is None:
        return Decision("skip", "not managed by scimflow: left untouched")
    if cmd.object_type == "group":
        return _remove_group(cmd, actions)
    removal = _remove_user(cmd, managed, actions, skip_out_of_scope_deletions)
    if removal.action == "noop" and not managed.active and drift != "ignore" and read is not None:
        return _enabled_in_target(removal, target, drift, read)
    return removal


def _enabled_in_target(removal: Decision, target: Observed, drift: Drift,
                       read: Callable[[Mapping[str, Any], str], Any]) -> Decision:
    """A user scimflow disabled that was enabled again directly in the target."""
    if isinstance(target, _Unknown) or target is ABSENT or read(target, "active") is not True:
        return removal
    drifted = {"active": True}
    if drift == "report":
        return Decision("skip", _drift_reason(drifted, "reported only (drift: report)"),
                        drift=drifted, repair=True, old=drifted)
    return Decision("disable", _drift_reason(drifted, "disabled again (drift: repair)"), {"active": False},
                    drift=drifted, repair=True, old=drifted)


def _upsert(cmd: ProvisioningCommand, managed: ManagedObject | None, actions: frozenset[str],
            target: Observed, drift: Drift, read: Callable[[Mapping[str, Any], str], Any] | None,
            case_exact: CaseRule) -> Decision:
    if managed is None:
        return Decision("lookup", cmd.reason)
    if drift == "ignore" or isinstance(target, _Unknown) or read is None:
        return _update(cmd, managed, actions)
    if target is ABSENT:
        return _deleted_in_target(cmd, drift)
    return _reconcile(cmd, managed, actions, target, drift, read, case_exact)


def _update(cmd: ProvisioningCommand, managed: ManagedObject, actions: frozenset[str]) -> Decision:
    """Compare with what scimflow last wrote (the target was not read)."""
    written = managed.attributes
    changes = {p: v for p, v in desired_state(cmd).items() if p not in written or written[p] != v}
    if not changes:
        return Decision("noop", "target already has the desired values")
    if "update" not in actions:
        return Decision("skip", "the Update action is off for this object mapping")
    return Decision("update", cmd.reason, changes, old={p: written.get(p) for p in changes})


def _reconcile(cmd: ProvisioningCommand, managed: ManagedObject, actions: frozenset[str],
               target: Mapping[str, Any], drift: Drift,
               read: Callable[[Mapping[str, Any], str], Any], case_exact: CaseRule) -> Decision:
    """Compare with the target's resource: source changes, plus drift nobody asked for."""
    desired, written = desired_state(cmd), managed.attributes
    asked = {p for p, v in desired.items() if p not in written or written[p] != v}
    unstored = set(managed.unstored)
    actual = {p: read(target, p) for p in desired}
    differs = {p for p, v in desired.items()
               if not same_value(actual[p], v, case_exact=case_exact(p)) and not _both_empty(actual[p], v)}
    drifted = {p: actual[p] for p in differs - asked - unstored}
    changes = {p: desired[p] for p in (differs & asked) | (set(drifted) if drift == "repair" else set())}
    old = {p: actual[p] for p in changes}
    if not changes and not drifted:
        return Decision("noop", "target already has the desired values")
    if drifted and drift == "report" and not changes:
        return Decision("skip", _drift_reason(drifted, "reported only (drift: report)"),
                        drift=drifted, repair=True, old=drifted)
    if "update" not in actions:
        return Decision("skip", "the Update action is off for this object mapping", drift=drifted)
    if drifted and drift == "repair":
        return Decision("update", _drift_reason(drifted, "written back (drift: repair)"), changes,
                        drift=drifted, repair=not (changes.keys() & asked), old=old)
    return Decision("update", cmd.reason, changes, drift=drifted, old=old)


def _deleted_in_target(cmd: ProvisioningCommand, drift: Drift) -> Decision:
    gone = {DELETED_IN_TARGET: "deleted in the target"}
    if drift == "report":
        return Decision("skip", "the managed object was deleted directly in the target; reported "
                                "only (drift: report)", drift=gone, repair=True)
    return Decision("lookup", "the managed object was deleted directly in the target; re-created "
                              "(drift: repair)", drift=gone, repair=True)


def _drift_reason(drifted: Mapping[str, Any], outcome: str) -> str:
    names = ", ".join(sorted(drifted))
    return f"changed directly in the target ({names}); {outcome}"


def _both_empty(a: Any, b: Any) -> bool:
    return a in (None, "", []) and b in (None, "", [])


def _remove_user(cmd: ProvisioningCommand, managed: ManagedObject, actions: frozenset[str],
                 skip_out_of_scope_deletions: bool) -> Decision:
    if cmd.operation == "deprovision":
        if skip_out_of_scope_deletions and not cmd.reason.startswith("disabled"):
            return Decision("skip", f"{cmd.reason}; skip_out_of_scope_deletions is on")
        return _disable(managed, cmd.reason)
    if "delete" in actions:
        return Decision("delete", cmd.reason)
    return _disable(managed, f"{cmd.reason}; the Delete action is off, so disable instead")


def _remove_group(cmd: ProvisioningCommand, actions: frozenset[str]) -> Decision:
    if "delete" in actions:
        return Decision("delete", cmd.reason)
    return Decision("skip", f"{cmd.reason}; groups have no soft delete and the Delete action is "
                            "off, so the group is left in the target")


def _disable(managed: ManagedObject, reason: str) -> Decision:
    if not managed.active:
        return Decision("noop", f"{reason}; already disabled")
    return Decision("disable", reason, {"active": False}, old={"active": True})


def after_lookup(cmd: ProvisioningCommand, found: Mapping[str, Any] | None,
                 actions: frozenset[str], read: Callable[[Mapping[str, Any], str], Any], *,
                 case_exact: CaseRule = case_exact_default, repair: bool = False) -> Decision:
    """After looking the object up in the target: adopt what was found, or create.

    ``read(resource, path)`` reads a value at a SCIM path of the found resource. An adopted
    account gets only the attributes whose values differ (none: no write at all).
    """
    desired = desired_state(cmd)
    reason = cmd.reason if not repair else "re-created: the managed object was deleted directly in the target"
    if found is not None:
        old = {p: read(found, p) for p in desired}
        changes = {p: v for p, v in desired.items()
                   if not same_value(old[p], v, case_exact=case_exact(p)) and not _both_empty(old[p], v)}
        if changes and "update" not in actions:
            return Decision("adopt", "matched an existing account; the Update action is off")
        return Decision("adopt", "matched an existing account by its matching attribute", changes,
                        old={p: old[p] for p in changes})
    if "create" not in actions:
        return Decision("skip", "no matching account and the Create action is off")
    return Decision("create", reason, {**cmd.create_only, **desired}, repair=repair)


# -- after the first decision: groups' members, dry runs, what an outcome is called ---------


def must_read_members(managed: ManagedObject, written: set[str], desired: set[str], *,
                      listed: bool, drift: Drift) -> bool:
    """Whether a managed group's members must be read from the target: a full scan checks
    a group it ``listed`` for drift; and a group scimflow adopted may hold members it has not
    linked yet, so adding one means looking first (some targets store duplicates)."""
    if listed and drift != "ignore":
        return True
    return managed.origin == "adopted" and bool(member_delta(written, desired).add)


def members_decision(decision: Decision, delta: MemberDelta, pending: list[str], *,
                     drifted: bool, drift: Drift) -> Decision:
    """The decision once a group's member ``delta`` (and the ``pending`` members, source ids
    whose creates wait in a bulk request) is known. ``drifted``: the delta is only members
    changed directly in the target; reported and skipped with ``drift: report``."""
    if drifted and drift == "report":
        return Decision("skip", f"members changed directly in the target ({delta.describe()}); "
                                "reported only (drift: report)", repair=True)
    if (delta or pending) and decision.action == "noop":
        shown = MemberDelta([*delta.add, *pending], delta.remove)
        reason = (f"members changed directly in the target ({shown.describe()}); written back"
                  if drifted else f"membership changed ({shown.describe()})")
        return Decision("update", reason, repair=drifted)
    return decision


def group_action(decision: Decision, delta: MemberDelta) -> Any:
    """The activity action of a group outcome: members alone changing is an update."""
    if decision.action in ("create", "adopt", "skip", "delete"):
        return decision.action
    return "update" if decision.action == "update" or delta else "skip"


def reported_action(action: str, decision: Decision) -> Any:
    """A write made to repair drift is reported as ``repair``."""
    return "repair" if decision.repair and action in ("create", "update", "disable") else action


def failed_action(decision: Decision) -> Any:
    """What a failure is reported as: the write that was attempted (a lookup was for a create)."""
    attempted = {"lookup": "create", "noop": "skip"}.get(decision.action, decision.action)
    return reported_action(attempted, decision)


def dry_run(decision: Decision, written: set[str], members: list[str] | None) -> tuple[Any, MemberDelta]:
    """What a dry run reports: the action it would take (None: nothing to do) and, for a
    group (``members`` given), the member delta against ``written``."""
    delta = member_delta(written, members) if members is not None else MemberDelta([], [])
    if decision.action == "noop" and not delta:
        return None, delta
    action = group_action(decision, delta) if members is not None else decision.action
    return reported_action(action, decision), delta
