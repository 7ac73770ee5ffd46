"""The writer's consume -> decide -> call the target -> record loop, for one command.

``Writer.handle`` takes one ProvisioningCommand and the object's managed state, calls the
target through :class:`ScimClient` and returns what to record. It never raises for a
target failure: every outcome becomes an ActivityRecord, every failure also an
ErrorRecord, so nothing is dropped silently. A transient failure (the client already
retried the call) comes back as ``Outcome.retry``: the processor re-queues the object.

Groups are created without members; membership follows as PATCH deltas (``groups``).
With ``dry_run`` every decision is made (lookups are reads, so they happen) and reported
with status ``dryRun``, and nothing is written to the target or to the managed state.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog

from schemas import ActivityRecord, ErrorRecord, ManagedObject, ModifiedProperty, ProvisioningCommand, Step
from services.runtime.config import Application
from services.runtime.errors import ConflictError, NotFoundError, RejectedError, TargetError, TransientError
from services.runtime.records import error_record
from services.writer.decide import Decision, after_lookup, decide, desired_state
from services.writer.groups import MEMBERS, MemberDelta, current_members, member_delta, written_members
from services.writer.scim_client import Kind, ScimClient, ScimResource
from services.writer.scim_paths import build_resource, read_path

__all__ = ["GROUP", "Outcome", "Writer"]

log = structlog.get_logger("scimflow.writer")

REDACTED = "[Redact]"
GROUP: Kind = "group"
"""The resource kind of groups in ScimClient's generic calls."""
_ENDPOINTS = {"user": "Users", "group": "Groups"}


@dataclass(slots=True)
class Outcome:
    """What one command led to: the new managed state and the records to publish."""

    managed: ManagedObject | None
    """The state to store; ``None`` means forget the object."""
    activity: ActivityRecord | None
    error: ErrorRecord | None = None
    changed_state: bool = True
    retry: TransientError | None = None
    """Set when the target failed transiently: try the object again later (its records are
    published only if it ends in escrow)."""


@dataclass(slots=True)
class _Trace:
    started: float = field(default_factory=time.perf_counter)
    steps: list[Step] = field(default_factory=list)

    def step(self, name: Any, status: Any, detail: str) -> None:
        self.steps.append(Step(name=name, status=status, detail=detail))


class Writer:
    """Applies commands for one application to its SCIM target."""

    def __init__(self, app: Application, client: ScimClient) -> None:
        self.app = app
        self.client = client
        self.user_actions = frozenset(app.mappings.user.actions)
        group = app.mappings.group
        self.group_actions = frozenset(group.actions) if group is not None and group.enabled else None
        """None: this app does not provision groups."""

    def actions_for(self, cmd: ProvisioningCommand) -> frozenset[str]:
        if cmd.object_type == "group":
            return self.group_actions or frozenset()
        return self.user_actions

    @property
    def actions(self) -> frozenset[str]:
        """The user mapping's actions (kept for callers that predate groups)."""
        return self.user_actions

    def preview(self, cmd: ProvisioningCommand, managed: ManagedObject | None) -> Decision:
        """What ``handle`` would do first, without doing it (pure)."""
        if cmd.object_type == "group" and self.group_actions is None:
            return Decision("skip", "this application has no enabled group mapping")
        return decide(cmd, managed, self.actions_for(cmd),
                      skip_out_of_scope_deletions=self.app.skip_out_of_scope_deletions)

    def staged(self, cmd: ProvisioningCommand, managed: ManagedObject | None,
               reason: str) -> ActivityRecord:
        """The ``stagedDelete`` record of a removal held by accidental-deletion prevention."""
        trace = self._trace(cmd)
        trace.step("action", "skipped", reason)
        return self._activity(cmd, "stagedDelete", "skipped", Decision("skip", reason), managed, trace)

    def _trace(self, cmd: ProvisioningCommand) -> _Trace:
        trace = _Trace()
        trace.step("import", "success", f"{cmd.object_type} {cmd.source_id} from source {cmd.source}")
        trace.step("scope", "success" if cmd.operation == "upsert" else "skipped", cmd.reason)
        return trace

    async def handle(self, cmd: ProvisioningCommand, managed: ManagedObject | None,
                     members: list[str] | None = None) -> Outcome:
        """Apply ``cmd``; ``members`` are a group's member target ids (linked ones only)."""
        trace = self._trace(cmd)
        decision = self.preview(cmd, managed)
        try:
            if cmd.object_type == "group" and decision.action not in ("skip", "delete"):
                outcome = await self._group(cmd, managed, decision, members or [], trace)
            elif self.app.dry_run:
                outcome = await self._dry_run(cmd, managed, decision, trace)
            else:
                outcome = await self._apply(cmd, managed, decision, trace)
        except TargetError as exc:
            return self._failure(cmd, managed, decision, exc, trace)
        if outcome.activity is None and cmd.on_demand:
            outcome.activity = self._in_sync(cmd, managed, trace)
        return outcome

    def _in_sync(self, cmd: ProvisioningCommand, managed: ManagedObject | None,
                 trace: _Trace) -> ActivityRecord:
        """Provision on demand of an object already in sync still gets its outcome (and trace)."""
        where = f"target id {managed.target_id}" if managed else "the target"
        reason = f"already in sync: {where} holds every mapped value; nothing to write"
        trace.step("match", "success", f"managed by scimflow as {where}")
        trace.step("action", "skipped", reason)
        return self._activity(cmd, "skip", "skipped", Decision("skip", reason), managed, trace)

    async def _apply(self, cmd: ProvisioningCommand, managed: ManagedObject | None,
                     decision: Decision, trace: _Trace) -> Outcome:
        if decision.action == "noop":
            return Outcome(managed, None, changed_state=False)
        if decision.action == "skip":
            trace.step("action", "skipped", decision.reason)
            return Outcome(managed, self._activity(cmd, "skip", "skipped", decision, managed, trace),
                           changed_state=False)
        if decision.action == "lookup":
            return await self._lookup_then_write(cmd, trace)
        assert managed is not None  # decide() only asks to update/disable/delete what we manage
        trace.step("match", "success", f"managed by scimflow as target id {managed.target_id}")
        if decision.action == "delete":
            return await self._delete(cmd, managed, decision, trace)
        return await self._update(cmd, managed, decision, trace)

    async def _match(self, cmd: ProvisioningCommand, trace: _Trace
                     ) -> tuple[ScimResource | None, Decision, Outcome | None]:
        """Look the object up by its matching attributes; the Outcome when that ends it (skip)."""
        found, how = await self._find(cmd)
        trace.step("match", "success", how)
        decision = after_lookup(cmd, found.body if found else None, self.actions_for(cmd), read_path)
        if decision.action != "skip":
            return found, decision, None
        trace.step("action", "skipped", decision.reason)
        return found, decision, Outcome(None, self._activity(cmd, "skip", "skipped", decision, None, trace),
                                        changed_state=False)

    async def _lookup_then_write(self, cmd: ProvisioningCommand, trace: _Trace) -> Outcome:
        found, decision, skipped = await self._match(cmd, trace)
        if skipped is not None:
            return skipped
        if decision.action == "create":
            return await self._create(cmd, decision, trace)
        assert found is not None
        return await self._adopt(cmd, found, decision, trace)

    async def _find(self, cmd: ProvisioningCommand) -> tuple[ScimResource | None, str]:
        for m in sorted(cmd.matching, key=lambda m: m.precedence):
            if cmd.object_type == "group":
                hits = await self.client.find(GROUP, m.target, str(m.value))
            else:
                hits = await self.client.find_users(m.target, str(m.value))
            if len(hits) > 1:
                raise RejectedError(
                    f"{len(hits)} target accounts match {m.target} eq {self._show(cmd, m.target, m.value)}; "
                    "matching attributes must be unique")
            if hits:
                return hits[0], f"found by {m.target} (precedence {m.precedence}): id {hits[0].id}"
        tried = ", ".join(m.target for m in cmd.matching) or "no matching attributes"
        return None, f"no target account matches ({tried})"

    async def _create(self, cmd: ProvisioningCommand, decision: Decision, trace: _Trace) -> Outcome:
        values = _without_none(decision.changes)
        for path, candidates in cmd.unique_candidates.items():
            values[path] = await self._first_free(cmd, path, candidates)
            trace.step("action", "success", f"SelectUniqueValue chose a free {path}")
        body = build_resource(values)
        try:
            created = await self.client.create_user(body)
        except ConflictError:
            # Someone (or our own earlier attempt) created it meanwhile: adopt, never duplicate.
            trace.step("action", "failure", "create answered 409 Conflict; looking it up again")
            return await self._lookup_then_write(cmd, trace)
        trace.step("action", "success", "create")
        trace.step("export", "success", f"POST /Users -> 201, id {created.id}")
        chosen = {p: values[p] for p in cmd.unique_candidates}
        managed = self._managed(cmd, created.id, desired_state(cmd) | chosen, "created", None)
        return Outcome(managed, self._activity(cmd, "create", "success", decision, managed, trace))

    async def _first_free(self, cmd: ProvisioningCommand, path: str, candidates: list[Any]) -> Any:
        """SelectUniqueValue: the first candidate no target account uses yet."""
        for candidate in candidates:
            if not await self.client.find_users(path, str(candidate)):
                return candidate
        shown = [self._show(cmd, path, c) for c in candidates]
        raise RejectedError(f"SelectUniqueValue: every candidate for {path} is taken: {shown}")

    async def _adopt(self, cmd: ProvisioningCommand, found: ScimResource, decision: Decision,
                     trace: _Trace) -> Outcome:
        if decision.changes:
            # The client picks PATCH or PUT and the dialect per app, conditional on the ETag.
            await self.client.update("user", found.id, decision.changes, current=found)
            trace.step("export", "success",
                       f"{self._method} /Users/{found.id} ({len(decision.changes)} attributes)")
        trace.step("action", "success", "adopt")
        written = {p: read_path(found.body, p) for p in desired_state(cmd)} | decision.changes
        managed = self._managed(cmd, found.id, written, "adopted", None)
        old = {p: read_path(found.body, p) for p in decision.changes}
        return Outcome(managed, self._activity(cmd, "adopt", "success", decision, managed, trace, old))

    async def _update(self, cmd: ProvisioningCommand, managed: ManagedObject, decision: Decision,
                      trace: _Trace) -> Outcome:
        try:
            # What we last wrote is what the target holds, as far as we know.
            current = build_resource(_without_none(managed.attributes))
            await self.client.update("user", managed.target_id, decision.changes, current=current)
        except NotFoundError:
            if decision.action == "disable":
                trace.step("export", "success", "account already gone from the target")
                return Outcome(None, self._activity(cmd, "disable", "warning", decision, None, trace))
            # We manage it and it vanished in the target: recreate (matching first).
            trace.step("action", "failure", f"target id {managed.target_id} is gone (404); recreating")
            return await self._lookup_then_write(cmd, trace)
        trace.step("action", "success", decision.action)
        trace.step("export", "success",
                   f"{self._method} /Users/{managed.target_id} ({len(decision.changes)} attributes)")
        written = {**managed.attributes, **decision.changes}
        new = self._managed(cmd, managed.target_id, written, managed.origin, managed)
        action = "disable" if decision.action == "disable" else "update"
        return Outcome(new, self._activity(cmd, action, "success", decision, new, trace, managed.attributes))

    async def _delete(self, cmd: ProvisioningCommand, managed: ManagedObject, decision: Decision,
                      trace: _Trace) -> Outcome:
        where = f"/{_ENDPOINTS[cmd.object_type]}/{managed.target_id}"
        try:
            if cmd.object_type == "group":
                await self.client.delete(GROUP, managed.target_id)
            else:
                await self.client.delete_user(managed.target_id)
            trace.step("export", "success", f"DELETE {where} -> 204")
        except NotFoundError:
            trace.step("export", "success", f"DELETE {where} -> 404 (already gone)")
        trace.step("action", "success", "delete")
        return Outcome(None, self._activity(cmd, "delete", "success", decision, managed, trace))

    # -- groups ----------------------------------------------------------------------------

    async def _group(self, cmd: ProvisioningCommand, managed: ManagedObject | None, decision: Decision,
                     members: list[str], trace: _Trace) -> Outcome:
        """Make sure the group exists with the mapped attributes, then write member deltas."""
        if self.app.dry_run:
            return await self._dry_run(cmd, managed, decision, trace, members)
        if decision.action == "lookup":
            found, decision, skipped = await self._match(cmd, trace)
            if skipped is not None:
                return skipped
            state, written, decision = await self._group_exists(cmd, found, decision, members, trace)
        else:
            assert managed is not None  # decide() asks for lookup when we do not manage it
            trace.step("match", "success", f"managed by scimflow as target id {managed.target_id}")
            try:
                state = await self._group_update(cmd, managed, decision, trace)
            except NotFoundError:
                trace.step("action", "failure", f"group {managed.target_id} is gone (404); recreating")
                return await self._group(cmd, None, Decision("lookup", cmd.reason), members, trace)
            written = written_members(managed)
        return await self._group_members(cmd, managed, state, decision, written, members, trace)

    async def _group_exists(self, cmd: ProvisioningCommand, found: ScimResource | None,
                            decision: Decision, members: list[str],
                            trace: _Trace) -> tuple[ManagedObject, set[str], Decision]:
        """Adopt the found group or create one without members: its state, the members
        counted as written, and the decision taken."""
        if found is None:
            body = build_resource(_without_none(decision.changes), schemas_for="Group")
            try:
                created = await self.client.create(GROUP, body)
            except ConflictError:
                # Created meanwhile (or by our own retried POST): adopt it, never duplicate.
                trace.step("action", "failure", "create answered 409 Conflict; looking it up again")
                again, how = await self._find(cmd)
                if again is None:
                    raise
                trace.step("match", "success", how)
                adopt = after_lookup(cmd, again.body, self.actions_for(cmd), read_path)
                return await self._group_exists(cmd, again, adopt, members, trace)
            trace.step("export", "success", f"POST /Groups -> 201, id {created.id} (no members yet)")
            written = desired_state(cmd) | {MEMBERS: []}
            return self._managed(cmd, created.id, written, "created", None), set(), decision
        if decision.changes:
            await self.client.update(GROUP, found.id, decision.changes, current=found)
            trace.step("export", "success",
                       f"{self._method} /Groups/{found.id} ({len(decision.changes)} attributes)")
        # Members already there count as written; those scimflow did not add are never removed.
        already = current_members(found.body) & set(members)
        written_attrs = {p: read_path(found.body, p) for p in desired_state(cmd)} | decision.changes
        state = self._managed(cmd, found.id, written_attrs | {MEMBERS: sorted(already)}, "adopted", None)
        return state, already, decision

    async def _group_update(self, cmd: ProvisioningCommand, managed: ManagedObject, decision: Decision,
                            trace: _Trace) -> ManagedObject:
        if decision.action != "update":
            return managed
        current = {k: v for k, v in managed.attributes.items() if k != MEMBERS}
        await self.client.update(GROUP, managed.target_id, decision.changes,
                                 current=build_resource(_without_none(current), schemas_for="Group"))
        trace.step("export", "success",
                   f"{self._method} /Groups/{managed.target_id} ({len(decision.changes)} attributes)")
        return self._managed(cmd, managed.target_id, {**managed.attributes, **decision.changes},
                             managed.origin, managed)

    async def _group_members(self, cmd: ProvisioningCommand, before: ManagedObject | None,
                             state: ManagedObject, decision: Decision, written: set[str],
                             members: list[str], trace: _Trace) -> Outcome:
        delta = member_delta(written, members)
        if decision.action == "noop" and delta:
            decision = Decision("update", f"membership changed ({delta.describe()})")
        if delta:
            try:
                await self.client.patch_members(state.target_id, add=delta.add, remove=delta.remove)
            except TargetError as exc:
                # The group itself is written: keep its state, so a retry sends only members.
                return self._failure(cmd, state, decision, exc, trace, changed_state=state is not before)
            trace.step("export", "success", f"PATCH /Groups/{state.target_id} members {delta.describe()}")
            state = self._managed(cmd, state.target_id, {**state.attributes, MEMBERS: sorted(set(members))},
                                  state.origin, state)
        elif state is before:
            return Outcome(before, None, changed_state=False)
        action = _group_action(decision, delta)
        trace.step("action", "success", action)
        extra = _member_props(written, members, delta)
        return Outcome(state, self._activity(cmd, action, "success", decision, state, trace, extra=extra))

    # -- dry run ---------------------------------------------------------------------------

    async def _dry_run(self, cmd: ProvisioningCommand, managed: ManagedObject | None, decision: Decision,
                       trace: _Trace, members: list[str] | None = None) -> Outcome:
        """Every decision, reads included, reported as ``dryRun``; nothing written anywhere."""
        written = written_members(managed)
        if decision.action == "lookup":
            found, how = await self._find(cmd)
            trace.step("match", "success", how)
            decision = after_lookup(cmd, found.body if found else None, self.actions_for(cmd), read_path)
            if found is not None and members is not None:
                written = current_members(found.body) & set(members)
        delta = member_delta(written, members) if members is not None else MemberDelta([], [])
        if decision.action == "noop" and not delta:
            return Outcome(managed, None, changed_state=False)
        action = _group_action(decision, delta) if members is not None else decision.action
        trace.step("action", "skipped", f"dry run: would {action}; nothing was written")
        extra = _member_props(written, members, delta) if members is not None else []
        status = "skipped" if action == "skip" else "dryRun"
        return Outcome(managed, self._activity(cmd, action, status, decision, managed, trace, extra=extra),
                       changed_state=False)

    @property
    def _method(self) -> str:
        """How the client sent the last update (PUT once a target refused PATCH)."""
        return "PUT" if self.client.uses_put else "PATCH"

    def _managed(self, cmd: ProvisioningCommand, target_id: str, written: Mapping[str, Any],
                 origin: Any, before: ManagedObject | None) -> ManagedObject:
        now = datetime.now(UTC)
        return ManagedObject(
            app=cmd.app, object_type=cmd.object_type, source_id=cmd.source_id, target_id=target_id,
            attributes=dict(written), active=bool(written.get("active", True)), origin=origin,
            display_name=cmd.display_name, created_at=before.created_at if before else now,
            updated_at=now,
        )

    def _show(self, cmd: ProvisioningCommand, path: str, value: Any) -> Any:
        return REDACTED if path in cmd.redacted else value

    def _activity(self, cmd: ProvisioningCommand, action: Any, status: Any, decision: Decision,
                  managed: ManagedObject | None, trace: _Trace,
                  old: Mapping[str, Any] | None = None, error_code: str | None = None,
                  extra: list[ModifiedProperty] | None = None) -> ActivityRecord:
        old = old or {}
        props = [
            ModifiedProperty(name=p, old_value=self._show(cmd, p, old.get(p)),
                             new_value=self._show(cmd, p, v))
            for p, v in decision.changes.items()
        ] + (extra or [])
        return ActivityRecord(
            id=str(uuid.uuid4()), at=datetime.now(UTC), app=cmd.app, object_type=cmd.object_type,
            action=action, status=status, source=cmd.source, source_id=cmd.source_id,
            source_identity=cmd.display_name, target_id=managed.target_id if managed else None,
            cycle_id=cmd.cycle_id, change_id=cmd.change_id, reason=decision.reason,
            modified_properties=props, steps=trace.steps,
            duration_ms=round((time.perf_counter() - trace.started) * 1000, 3), error_code=error_code,
        )

    def _failure(self, cmd: ProvisioningCommand, managed: ManagedObject | None, decision: Decision,
                 exc: TargetError, trace: _Trace, *, changed_state: bool = False) -> Outcome:
        trace.step("export", "failure", str(exc))
        action = {"lookup": "create", "noop": "skip"}.get(decision.action, decision.action)
        activity = self._activity(cmd, action, "failure", decision, managed, trace, error_code=exc.code)
        error = error_record(
            "writer", exc.code, str(exc) + (f" (target said: {exc.detail})" if exc.detail else ""),
            exc.recommended_action, attempts=int(getattr(exc, "attempts", 1)),
            app=cmd.app, object_type=cmd.object_type, source_id=cmd.source_id,
            change_id=cmd.change_id, cycle_id=cmd.cycle_id, target_status=exc.status,
        )
        retry = exc if isinstance(exc, TransientError) else None
        # A transient failure is retried (the processor logs the wait); the rest is final.
        (log.info if retry else log.warning)(
            "target call failed", app=cmd.app, source_id=cmd.source_id, action=action,
            error_code=exc.code, status=exc.status)
        return Outcome(managed, activity, error, changed_state=changed_state, retry=retry)


def _group_action(decision: Decision, delta: MemberDelta) -> Any:
    """The activity action of a group outcome: members alone changing is an update."""
    if decision.action in ("create", "adopt", "skip", "delete"):
        return decision.action
    return "update" if decision.action == "update" or delta else "skip"


def _member_props(written: set[str], members: list[str] | None, delta: MemberDelta) -> list[ModifiedProperty]:
    """Membership in the provisioning log: counts, not the (possibly huge) id lists."""
    if members is None or not delta:
        return []
    return [ModifiedProperty(name=MEMBERS, old_value=len(written),
                             new_value=f"{len(set(members))} ({delta.describe()})")]


def _without_none(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}
