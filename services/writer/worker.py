"""The writer's consume -> decide -> call the target -> record loop, for one command.

``Writer.handle`` takes one ProvisioningCommand and the object's managed state, calls the
target through :class:`ScimClient` and returns what to record. It never raises for a
target failure: every outcome becomes an ActivityRecord, every failure also an
ErrorRecord, so nothing is dropped silently.
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
from services.runtime.errors import ConflictError, NotFoundError, RejectedError, TargetError
from services.runtime.records import error_record
from services.writer.decide import Decision, after_lookup, decide, desired_state
from services.writer.scim_client import ScimClient, ScimResource
from services.writer.scim_paths import build_resource, patch_operations, read_path

__all__ = ["Outcome", "Writer"]

log = structlog.get_logger("scimflow.writer")

REDACTED = "[Redact]"


@dataclass(slots=True)
class Outcome:
    """What one command led to: the new managed state and the records to publish."""

    managed: ManagedObject | None
    """The state to store; ``None`` means forget the object."""
    activity: ActivityRecord | None
    error: ErrorRecord | None = None
    changed_state: bool = True


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
        self.actions = frozenset(app.mappings.user.actions)

    def preview(self, cmd: ProvisioningCommand, managed: ManagedObject | None) -> Decision:
        """What ``handle`` would do first, without doing it (pure)."""
        return decide(cmd, managed, self.actions,
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

    async def handle(self, cmd: ProvisioningCommand, managed: ManagedObject | None) -> Outcome:
        trace = self._trace(cmd)
        decision = self.preview(cmd, managed)
        try:
            return await self._apply(cmd, managed, decision, trace)
        except TargetError as exc:
            return self._failure(cmd, managed, decision, exc, trace)

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

    async def _lookup_then_write(self, cmd: ProvisioningCommand, trace: _Trace) -> Outcome:
        found, how = await self._find(cmd)
        trace.step("match", "success", how)
        decision = after_lookup(cmd, found.body if found else None, self.actions, read_path)
        if decision.action == "skip":
            trace.step("action", "skipped", decision.reason)
            return Outcome(None, self._activity(cmd, "skip", "skipped", decision, None, trace),
                           changed_state=False)
        if decision.action == "create":
            return await self._create(cmd, decision, trace)
        assert found is not None
        return await self._adopt(cmd, found, decision, trace)

    async def _find(self, cmd: ProvisioningCommand) -> tuple[ScimResource | None, str]:
        for m in sorted(cmd.matching, key=lambda m: m.precedence):
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
            await self.client.patch_user(found.id, patch_operations(decision.changes, current=found.body))
            trace.step("export", "success", f"PATCH /Users/{found.id} ({len(decision.changes)} attributes)")
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
            await self.client.patch_user(managed.target_id,
                                         patch_operations(decision.changes, current=current))
        except NotFoundError:
            if decision.action == "disable":
                trace.step("export", "success", "account already gone from the target")
                return Outcome(None, self._activity(cmd, "disable", "warning", decision, None, trace))
            # We manage it and it vanished in the target: recreate (matching first).
            trace.step("action", "failure", f"target id {managed.target_id} is gone (404); recreating")
            return await self._lookup_then_write(cmd, trace)
        trace.step("action", "success", decision.action)
        trace.step("export", "success",
                   f"PATCH /Users/{managed.target_id} ({len(decision.changes)} attributes)")
        written = {**managed.attributes, **decision.changes}
        new = self._managed(cmd, managed.target_id, written, managed.origin, managed)
        action = "disable" if decision.action == "disable" else "update"
        return Outcome(new, self._activity(cmd, action, "success", decision, new, trace, managed.attributes))

    async def _delete(self, cmd: ProvisioningCommand, managed: ManagedObject, decision: Decision,
                      trace: _Trace) -> Outcome:
        try:
            await self.client.delete_user(managed.target_id)
            trace.step("export", "success", f"DELETE /Users/{managed.target_id} -> 204")
        except NotFoundError:
            trace.step("export", "success", f"DELETE /Users/{managed.target_id} -> 404 (already gone)")
        trace.step("action", "success", "delete")
        return Outcome(None, self._activity(cmd, "delete", "success", decision, managed, trace))

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
                  old: Mapping[str, Any] | None = None, error_code: str | None = None) -> ActivityRecord:
        old = old or {}
        props = [
            ModifiedProperty(name=p, old_value=self._show(cmd, p, old.get(p)),
                             new_value=self._show(cmd, p, v))
            for p, v in decision.changes.items()
        ]
        return ActivityRecord(
            id=str(uuid.uuid4()), at=datetime.now(UTC), app=cmd.app, object_type=cmd.object_type,
            action=action, status=status, source=cmd.source, source_id=cmd.source_id,
            source_identity=cmd.display_name, target_id=managed.target_id if managed else None,
            cycle_id=cmd.cycle_id, change_id=cmd.change_id, reason=decision.reason,
            modified_properties=props, steps=trace.steps,
            duration_ms=round((time.perf_counter() - trace.started) * 1000, 3), error_code=error_code,
        )

    def _failure(self, cmd: ProvisioningCommand, managed: ManagedObject | None, decision: Decision,
                 exc: TargetError, trace: _Trace) -> Outcome:
        trace.step("export", "failure", str(exc))
        action = {"lookup": "create", "noop": "skip"}.get(decision.action, decision.action)
        activity = self._activity(cmd, action, "failure", decision, managed, trace, error_code=exc.code)
        error = error_record(
            "writer", exc.code, str(exc) + (f" (target said: {exc.detail})" if exc.detail else ""),
            exc.recommended_action, attempts=int(getattr(exc, "attempts", 1)),
            app=cmd.app, object_type=cmd.object_type, source_id=cmd.source_id,
            change_id=cmd.change_id, cycle_id=cmd.cycle_id, target_status=exc.status,
        )
        log.warning("target call failed", app=cmd.app, source_id=cmd.source_id, action=action,
                    error_code=exc.code, status=exc.status)
        return Outcome(managed, activity, error, changed_state=False)


def _without_none(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}
