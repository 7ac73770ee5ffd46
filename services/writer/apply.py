"""One command against the target: match -> decide -> write -> record.

``Writer.handle`` takes one ProvisioningCommand and the object's managed state, calls the
target through :class:`ScimClient` and returns what to record. It never raises for a
target failure: every outcome becomes an ActivityRecord, every failure also an
ErrorRecord, so nothing is dropped silently. A transient failure (the client already
retried the call) comes back as ``Outcome.retry``: the processor re-queues the object.

The target is the truth. During a full scan the writer decides against the scan's
:class:`~services.writer.discovery.TargetSnapshot` (the target's users and groups listed
once at the scan's start): a managed object's actual resource (drift is repaired, reported
or ignored per the app's ``drift``), and an unmanaged object's match without a lookup
request each. Every account the writer is about to adopt or link is verified first: its
matching attribute must equal the searched value, it must be the only one, and no other
source object of the app may be linked to it already (``owner``).

Groups are created without members; membership follows as deltas against the members the
target actually has (``groups``). With ``dry_run`` every decision is made (lookups are
reads, so they happen) and reported with status ``dryRun``, and nothing is written to the
target or to the managed state.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
import structlog

from schemas import ActivityRecord, ErrorRecord, ManagedObject, ModifiedProperty, ProvisioningCommand, Step
from services.runtime.config import Application
from services.runtime.errors import (
    AmbiguousMatchError,
    ConflictError,
    IdentityMismatchError,
    NotFoundError,
    RejectedError,
    TargetError,
    TransientError,
    UnfindableConflictError,
)
from services.runtime.records import error_record
from services.scim import capabilities as target_capabilities
from services.scim.capabilities import Capabilities
from services.scim.client import Kind, ScimClient, ScimResource
from services.scim.paths import build_resource, equality_filter, read_path
from services.writer.batcher import BulkBatcher
from services.writer.bulk import bulk_limits
from services.writer.decide import (
    ABSENT,
    REDACTED,
    UNKNOWN,
    CaseRule,
    Decision,
    Observed,
    after_lookup,
    case_exact_default,
    decide,
    desired_state,
    dry_run,
    failed_action,
    group_action,
    members_decision,
    must_read_members,
    nfc,
    reported_action,
    same_value,
)
from services.writer.discovery import TargetSnapshot, discover
from services.writer.groups import (
    MEMBERS,
    MemberDelta,
    current_members,
    has_members,
    member_delta,
    written_members,
)

__all__ = ["GROUP", "Outcome", "Writer", "owned"]

log = structlog.get_logger("scimflow.writer")

GROUP: Kind = "group"
"""The resource kind of groups in ScimClient's generic calls."""
_ENDPOINTS = {"user": "Users", "group": "Groups"}
_CYCLES_KEPT = 64
Owner = Callable[[str], str | None]
"""Target id -> the source id of the app already linked to it (None: nobody). As a *claim*
it also reserves a free target id for the object at hand, until its state is stored."""


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


@dataclass(slots=True)
class _Run:
    """One command on its way through the writer; ``decision`` is the latest one taken
    (after a lookup it says adopt or create), so a failure is reported as what failed."""

    cmd: ProvisioningCommand
    managed: ManagedObject | None
    members: list[str] | None
    owner: Owner
    claim: Owner
    snapshot: TargetSnapshot | None
    trace: _Trace
    decision: Decision
    conflicts: int = 0
    created_members: set[str] = field(default_factory=set)
    listed: ScimResource | None = None
    """The managed object's resource in this scan's listing, unless written since."""
    """A group created in a bulk request with members: their target ids."""

    @property
    def kind(self) -> Kind:
        return GROUP if self.cmd.object_type == "group" else "user"


def _nobody(_: str) -> str | None:
    return None


class Writer:
    """Applies commands for one application to its SCIM target."""

    def __init__(self, app: Application, client: ScimClient) -> None:
        self.app = app
        self.client = client
        self.user_actions = frozenset(app.mappings.user.actions)
        group = app.mappings.group
        self.group_actions = frozenset(group.actions) if group is not None and group.enabled else None
        """None: this app does not provision groups."""
        self.capabilities: Capabilities | None = None
        """What the target declares (``learn``); None until read."""
        self.batcher: BulkBatcher | None = None
        """Creates and updates gathered into ``/Bulk`` requests, when the target offers bulk."""
        self.snapshot: TargetSnapshot | None = None
        """The target as listed at the start of the latest full scan (``discover``)."""
        self._discovering: dict[str, asyncio.Task[TargetSnapshot]] = {}
        self._cycles: deque[str] = deque(maxlen=_CYCLES_KEPT)
        """The scans discovered lately: a late command of an older scan does not list again."""
        self._unsure: set[str] = set()
        """Objects whose create failed without a clear answer (a timeout, a reset, a 5xx):
        it may have landed, so until one of their commands succeeds they are looked up on
        the target, never decided from the scan's listing (which cannot know)."""

    def actions_for(self, cmd: ProvisioningCommand) -> frozenset[str]:
        if cmd.object_type == "group":
            return self.group_actions or frozenset()
        return self.user_actions

    @property
    def actions(self) -> frozenset[str]:
        """The user mapping's actions (kept for callers that predate groups)."""
        return self.user_actions

    # -- what the target is ------------------------------------------------------------------

    async def learn(self) -> Capabilities:
        """Read the target's capabilities (at start, and again at a restart of the app):
        ``caseExact`` per attribute for matching, and PUT from the start on a target that
        says it has no PATCH. Never raises: what the target does not say stays unknown."""
        found = await target_capabilities.discover(self.client)
        self.capabilities = found
        if found.patch is False and not self.client.uses_put:
            log.info("the target declares no PATCH support; updates are read-modify-write PUTs",
                     app=self.app.name)
            self.client.uses_put = True
        limits = bulk_limits(found) if self.app.target.bulk != "off" else None
        if limits is not None and self.batcher is None:
            log.info("the target declares bulk; creates and updates go out in /Bulk requests",
                     app=self.app.name,
                     max_operations=limits.max_operations, max_payload_size=limits.max_payload_size)
            self.batcher = BulkBatcher(self.client, limits,
                                       resolves_references=self.app.target.bulk == "references")
        return found

    def reconfigured(self, app: Application) -> Writer:
        """This writer for a new version of its app whose target is the same: the client
        (its connections, rate limits and quarantine), the capabilities read, the bulk
        batcher and the current scan's listing carry over; the app's own settings
        (mappings, actions, drift, dry run) are the new version's."""
        new = Writer(app, self.client)
        new.capabilities, new.batcher, new.snapshot = self.capabilities, self.batcher, self.snapshot
        new._discovering, new._cycles, new._unsure = self._discovering, self._cycles, self._unsure
        return new

    async def listings_done(self) -> None:
        """Wait for the target listings this writer started (before its client closes)."""
        await asyncio.gather(*self._discovering.values(), return_exceptions=True)

    async def aclose(self) -> None:
        if self.batcher is not None:
            await self.batcher.aclose()
        await self.client.aclose()

    def case_rule(self, kind: Kind) -> CaseRule:
        """Whether a target path of ``kind`` compares case-sensitively: as the target
        declares it (``caseExact``), else RFC 7643's default."""
        found = self.capabilities
        if found is None:
            return case_exact_default

        def rule(path: str) -> bool:
            declared = target_capabilities.case_exact(found, kind, path)
            return case_exact_default(path) if declared is None else declared
        return rule

    # -- discovery -------------------------------------------------------------------------

    async def discover(self, cycle_id: str) -> None:
        """List the target once for the full scan ``cycle_id`` (once per cycle, however many
        partitions and commands ask); its commands are then decided against the listing."""
        if self.snapshot is not None and self.snapshot.cycle_id == cycle_id:
            return
        task = self._discovering.get(cycle_id)
        if task is None:
            if cycle_id in self._cycles:
                return  # an older scan's late command: its listing is gone, decide without it
            self._cycles.append(cycle_id)
            kinds: list[Kind] = ["user", GROUP] if self.group_actions is not None else ["user"]
            task = asyncio.ensure_future(discover(self.client, cycle_id, kinds))
            self._discovering = {cycle_id: task}  # an older cycle's listing is of no use now
        snapshot = await asyncio.shield(task)
        if self._discovering.get(cycle_id) is task:
            self.snapshot = snapshot

    def _snapshot_for(self, cmd: ProvisioningCommand,
                      listed_after: datetime | None = None) -> TargetSnapshot | None:
        snapshot = self.snapshot
        if snapshot is None or cmd.cycle_id is None or snapshot.cycle_id != cmd.cycle_id:
            return None
        if listed_after is not None and snapshot.taken_at < listed_after:
            return None  # taken before the object's partition came here: look it up instead
        if cmd.source_id in self._unsure:
            return None  # a create of it may have landed after the listing: look it up
        return snapshot

    # -- decisions ---------------------------------------------------------------------------

    def preview(self, cmd: ProvisioningCommand, managed: ManagedObject | None,
                target: Observed = UNKNOWN) -> Decision:
        """What ``handle`` would do first, without doing it (pure)."""
        if cmd.object_type == "group" and self.group_actions is None:
            return Decision("skip", "this application has no enabled group mapping")
        return decide(cmd, managed, self.actions_for(cmd),
                      skip_out_of_scope_deletions=self.app.skip_out_of_scope_deletions,
                      target=target, drift=self.app.drift, read=read_path,
                      case_exact=self.case_rule(GROUP if cmd.object_type == "group" else "user"))

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

    @staticmethod
    def _observed(run: _Run) -> Observed:
        """The target's resource for a managed object, when this scan's listing knows it;
        the listed resource is kept in ``run.listed`` for the write (read once)."""
        observed, run.listed = _observe(run.managed, run.snapshot, run.kind)
        return observed

    def settled(self, cmd: ProvisioningCommand, managed: ManagedObject | None, *,
                listed_after: datetime | None = None) -> bool:
        """Whether :meth:`handle` would do nothing at all for ``cmd``: a user this app
        manages whose target holds what the command wants, known without a target call,
        with nothing to store and nothing to report (an unchanged object in a full scan).
        Pure; False whenever :meth:`handle` could do anything, so the caller goes there."""
        if (cmd.object_type != "user" or cmd.on_demand or self.app.dry_run or managed is None
                or cmd.source_id in self._unsure or owned(cmd, managed) is not managed
                or (cmd.cycle_id is not None and not self._listed(cmd.cycle_id))):
            return False
        observed, _ = _observe(managed, self._snapshot_for(cmd, listed_after), "user")
        return self.preview(cmd, managed, observed).action == "noop"

    def _listed(self, cycle_id: str) -> bool:
        """Whether :meth:`discover` of ``cycle_id`` is over (it would return at once)."""
        if self.snapshot is not None and self.snapshot.cycle_id == cycle_id:
            return True
        return cycle_id in self._cycles and cycle_id not in self._discovering

    async def handle(self, cmd: ProvisioningCommand, managed: ManagedObject | None,
                     members: list[str] | None = None, *, owner: Owner | None = None,
                     claim: Owner | None = None, listed_after: datetime | None = None) -> Outcome:
        """Apply ``cmd``; ``members`` are a group's member target ids (linked ones only);
        ``owner`` tells which source object, if any, is linked to a target id already, and
        ``claim`` reserves a target id for this object (or names the one that holds it).
        A listing taken before ``listed_after`` (when the object's partition came to this
        replica) is not used: the previous owner may have written the object since."""
        trace = self._trace(cmd)
        kept = owned(cmd, managed)
        run = _Run(cmd, kept, members, owner or _nobody, claim or owner or _nobody,
                   self._snapshot_for(cmd, listed_after), trace, Decision("noop", cmd.reason))
        try:
            run.decision = self.preview(cmd, kept, self._observed(run))
            outcome = await self._execute(run)
        except TargetError as exc:
            return self._failure(run, exc)
        if outcome.retry is None:
            self._unsure.discard(cmd.source_id)
        if kept is not managed and outcome.managed is kept:
            outcome.changed_state = True  # store what scimflow owns now, even with no write
        if outcome.activity is None and cmd.on_demand:
            outcome.activity = self._in_sync(cmd, kept, trace)
        return outcome

    async def _execute(self, run: _Run) -> Outcome:
        action = run.decision.action
        if run.kind == GROUP and action not in ("skip", "delete"):
            return await self._group(run)
        if self.app.dry_run:
            return await self._dry_run(run)
        if action in ("noop", "skip"):
            return self._skip(run, run.managed) if action == "skip" else Outcome(run.managed, None,
                                                                                 changed_state=False)
        if action == "lookup":
            return await self._lookup_then_write(run)
        managed = run.managed
        assert managed is not None  # decide() only asks to update/disable/delete what we manage
        run.trace.step("match", "success", f"managed by scimflow as target id {managed.target_id}")
        if action == "delete":
            return await self._delete(run, managed)
        return await self._update(run, managed)

    @staticmethod
    def _skipped(run: _Run) -> bool:
        """Whether the latest decision (a lookup may have changed it) is to skip."""
        return run.decision.action == "skip"

    def _skip(self, run: _Run, managed: ManagedObject | None) -> Outcome:
        decision = run.decision
        run.trace.step("action", "skipped", decision.reason)
        action = "repair" if decision.repair else "skip"
        return Outcome(managed, self._activity(run.cmd, action, "skipped", decision, managed, run.trace),
                       changed_state=False)

    def _in_sync(self, cmd: ProvisioningCommand, managed: ManagedObject | None,
                 trace: _Trace) -> ActivityRecord:
        """Provision on demand of an object already in sync still gets its outcome (and trace)."""
        where = f"target id {managed.target_id}" if managed else "the target"
        reason = f"already in sync: {where} holds every mapped value; nothing to write"
        trace.step("match", "success", f"managed by scimflow as {where}")
        trace.step("action", "skipped", reason)
        return self._activity(cmd, "skip", "skipped", Decision("skip", reason), managed, trace)

    # -- matching ------------------------------------------------------------------------------

    async def _match(self, run: _Run) -> ScimResource | None:
        """Look the object up by its matching attributes and decide adopt, create or skip."""
        found, how = await self._find(run)
        run.trace.step("match", "success", how)
        run.decision = after_lookup(run.cmd, found.body if found else None, self.actions_for(run.cmd),
                                    read_path, case_exact=self.case_rule(run.kind),
                                    repair=run.decision.repair)
        return found

    async def _find(self, run: _Run) -> tuple[ScimResource | None, str]:
        """The one account the matching attributes name (in precedence order), verified."""
        cmd = run.cmd
        for m in sorted(cmd.matching, key=lambda m: m.precedence):
            value = nfc(str(m.value)) if m.value is not None else ""
            if not value.strip():
                raise RejectedError(f"the matching attribute {m.target} has no value (blank or "
                                    "missing in the source): the object cannot be matched")
            hits, where = await self._candidates(run, m.target, value)
            found = self._verified(run, m.target, value, hits)
            if found is not None:
                return found, (f"found by {m.target} (precedence {m.precedence}) {where}: "
                               f"id {found.id}")
        tried = ", ".join(m.target for m in cmd.matching) or "no matching attributes"
        return None, f"no target account matches ({tried})"

    async def _candidates(self, run: _Run, path: str, value: str) -> tuple[list[ScimResource], str]:
        if run.snapshot is not None:
            match = run.snapshot.match(run.kind, path, value, case_exact=self.case_rule(run.kind)(path))
            if match.settled:
                return match.hits, "in the target's listing"
        return await self.client.find(run.kind, path, value), "by filter"

    def _verified(self, run: _Run, path: str, value: str, hits: list[ScimResource]) -> ScimResource | None:
        """Only an account whose ``path`` really holds ``value``, the only one, and not
        linked to another source object of the app, is the one meant."""
        case_exact = self.case_rule(run.kind)(path)
        exact = [h for h in hits if same_value(read_path(h.body, path), value, case_exact=case_exact)]
        shown = self._show(run.cmd, path, value)
        if hits and not exact:
            others = sorted({str(self._show(run.cmd, path, read_path(h.body, path))) for h in hits})[:3]
            raise IdentityMismatchError(
                f"the target answered `{equality_filter(path, str(shown))}` with {len(hits)} account(s) "
                f"whose {path} is not that value (e.g. {', '.join(others)}): it ignores or misapplies "
                "the filter; no account was written")
        if len(exact) > 1:
            ids = ", ".join(sorted(h.id for h in exact)[:5])
            raise AmbiguousMatchError(f"{len(exact)} target accounts match {path} eq {shown} (ids {ids}); "
                                      "matching attributes must be unique; none was written")
        if not exact:
            return None
        self._claim(run, exact[0].id)
        return exact[0]

    def _claim(self, run: _Run, target_id: str) -> None:
        """A target id is linked to at most one source object per app."""
        other = run.claim(target_id)
        if other is not None and other != run.cmd.source_id:
            raise IdentityMismatchError(
                f"target id {target_id} is already linked to source object {other}; source object "
                f"{run.cmd.source_id} ({run.cmd.display_name or 'no display name'}) matches it too. "
                "Neither is written through this match: make the matching values unique")

    # -- users ---------------------------------------------------------------------------------

    async def _lookup_then_write(self, run: _Run) -> Outcome:
        found = await self._match(run)
        if run.decision.action == "skip":
            return self._skip(run, None)
        if run.decision.action == "create":
            state, found = await self._create(run)
            if state is not None:
                action = reported_action("create", run.decision)
                record = self._activity(run.cmd, action, "success", run.decision, state, run.trace)
                return Outcome(state, record)
            if self._skipped(run):
                return self._skip(run, None)
        assert found is not None
        return await self._adopt(run, found)

    async def _create(self, run: _Run) -> tuple[ManagedObject | None, ScimResource | None]:
        """POST the object: (its state, the answer); or, when the target answered 409 and a
        fresh lookup found the account, (None, that account) to adopt."""
        cmd = run.cmd
        values = _without_none(run.decision.changes)
        for path, candidates in cmd.unique_candidates.items():
            values[path] = await self._first_free(cmd, path, candidates)
            run.trace.step("action", "success", f"SelectUniqueValue chose a free {path}")
        body = build_resource(values, schemas_for="Group" if run.kind == GROUP else "User")
        try:
            created = await self._post(run, body)
        except ConflictError as exc:
            return None, await self._conflicted(run, exc)
        created = await self._verify_created(run, created)
        self._written(run, created.id)
        detail = (f" ({len(run.created_members)} members)" if run.created_members
                  else " (no members yet)" if run.kind == GROUP else "")
        if run.kind != GROUP:  # a group's action step follows its members
            run.trace.step("action", "success", reported_action("create", run.decision))
        run.trace.step("export", "success", f"POST /{_ENDPOINTS[run.kind]} -> 201, id {created.id}{detail}")
        chosen = {p: values[p] for p in cmd.unique_candidates}
        written = desired_state(cmd) | chosen | ({MEMBERS: sorted(run.created_members)}
                                                 if run.kind == GROUP else {})
        unstored = _unstored(values, created.body)
        return self._managed(cmd, created.id, written, "created", None, unstored), created

    async def _post(self, run: _Run, body: Mapping[str, Any]) -> ScimResource:
        """The create: in a bulk request when the target offers bulk, a group there with its
        linked members and the members whose creates wait in the same request (``bulkId:``)."""
        if self.batcher is None:
            return await self.client.create(run.kind, body)
        if run.kind != GROUP:
            return await self.batcher.create(run.kind, body, key=run.cmd.source_id)
        created, run.created_members = await self.batcher.create_group(
            body, members=run.members or [], pending=self._unlinked(run))
        return created

    @staticmethod
    def _unlinked(run: _Run) -> list[str]:
        """The group's members (source ids) without a link yet."""
        linked = {run.owner(t) for t in run.members or []}
        return [s for s in run.cmd.members if s not in linked]

    async def _write(self, kind: Kind, target_id: str, changes: Mapping[str, Any],
                     current: ScimResource | None) -> ScimResource | None:
        """An update (PATCH, or read-modify-write PUT): in a bulk request when the target offers bulk."""
        if self.batcher is not None:
            return await self.batcher.update(kind, target_id, changes, current=current)
        return await self.client.update(kind, target_id, changes, current=current)

    async def _conflicted(self, run: _Run, exc: ConflictError) -> ScimResource | None:
        """A 409 to a create: someone (or our own earlier attempt) created it meanwhile. Look
        it up again, by filter (the listing predates it); finding nothing is an error that
        is retried with backoff, never a tight loop of creates."""
        run.trace.step("action", "failure", "create answered 409 Conflict; looking it up again")
        run.snapshot = None
        found = await self._match(run)
        if found is None and run.decision.action == "create":
            filters = " or ".join(f"`{m.target} eq`" for m in run.cmd.matching) or "any"
            raise UnfindableConflictError(
                f"the target refuses the create as a duplicate ({exc.status}) but its filter does not "
                f"find the object: check that the target supports {filters} filters on "
                f"/{_ENDPOINTS[run.kind]}", status=exc.status, detail=exc.detail) from exc
        return found

    async def _verify_created(self, run: _Run, created: ScimResource) -> ScimResource:
        """The created account must carry the matching values sent, and be nobody else's."""
        checked = created
        for m in run.cmd.matching:
            if m.value is None:
                continue
            got = read_path(checked.body, m.target)
            if got is None and checked is created:
                checked = await self.client.get(run.kind, created.id)  # a minimal 201 answer
                got = read_path(checked.body, m.target)
            if not same_value(got, nfc(str(m.value)), case_exact=self.case_rule(run.kind)(m.target)):
                raise IdentityMismatchError(
                    f"the create answered with id {created.id} whose {m.target} is "
                    f"{self._show(run.cmd, m.target, got)!r}, not "
                    f"{self._show(run.cmd, m.target, m.value)!r}: that is another account; scimflow "
                    "does not link it and writes nothing more to it")
        self._claim(run, created.id)
        return created

    async def _first_free(self, cmd: ProvisioningCommand, path: str, candidates: list[Any]) -> Any:
        """SelectUniqueValue: the first candidate no target account uses yet."""
        for candidate in candidates:
            hits = await self.client.find_users(path, str(candidate))
            if not [h for h in hits if same_value(read_path(h.body, path), str(candidate),
                                                  case_exact=self.case_rule("user")(path))]:
                return candidate
        shown = [self._show(cmd, path, c) for c in candidates]
        raise RejectedError(f"SelectUniqueValue: every candidate for {path} is taken: {shown}")

    async def _adopt(self, run: _Run, found: ScimResource) -> Outcome:
        state = await self._adopted(run, found)
        run.trace.step("action", "success", "adopt")
        return Outcome(state, self._activity(run.cmd, "adopt", "success", run.decision, state, run.trace))

    async def _adopted(self, run: _Run, found: ScimResource) -> ManagedObject:
        """Write what differs to the found account (nothing when it already agrees)."""
        changes = run.decision.changes
        answer = None
        if changes:
            # The client picks PATCH or PUT and the dialect per app, conditional on the ETag.
            answer = await self._write(run.kind, found.id, changes, found)
            self._written(run, found.id)
            run.trace.step("export", "success",
                           f"{self._method} /{_ENDPOINTS[run.kind]}/{found.id} ({len(changes)} attributes)")
        written = {p: read_path(found.body, p) for p in desired_state(run.cmd)} | changes
        unstored = _unstored(changes, answer.body) if answer is not None else []
        return self._managed(run.cmd, found.id, written, "adopted", None, unstored)

    async def _update(self, run: _Run, managed: ManagedObject) -> Outcome:
        decision = run.decision
        current = run.listed
        try:
            answer = await self._write(run.kind, managed.target_id, decision.changes, current)
        except NotFoundError:
            return await self._vanished(run, managed)
        self._written(run, managed.target_id)
        run.trace.step("action", "success", decision.action)
        run.trace.step("export", "success",
                       f"{self._method} /{_ENDPOINTS[run.kind]}/{managed.target_id} "
                       f"({len(decision.changes)} attributes)")
        written = {**managed.attributes, **decision.changes}
        unstored = _unstored(decision.changes, answer.body) if answer is not None else list(managed.unstored)
        new = self._managed(run.cmd, managed.target_id, written, managed.origin, managed, unstored)
        action = reported_action("disable" if decision.action == "disable" else "update", decision)
        return Outcome(new, self._activity(run.cmd, action, "success", decision, new, run.trace))

    async def _vanished(self, run: _Run, managed: ManagedObject) -> Outcome:
        """The managed object is gone from the target (404)."""
        if run.decision.action == "disable":
            run.trace.step("export", "success", "account already gone from the target")
            return Outcome(None, self._activity(run.cmd, "disable", "warning", run.decision, None, run.trace))
        # We manage it and it vanished in the target: recreate (matching first).
        run.trace.step("action", "failure", f"target id {managed.target_id} is gone (404); recreating")
        run.managed, run.snapshot = None, None
        return await self._lookup_then_write(run)

    async def _delete(self, run: _Run, managed: ManagedObject) -> Outcome:
        where = f"/{_ENDPOINTS[run.kind]}/{managed.target_id}"
        try:
            await self.client.delete(run.kind, managed.target_id)
            run.trace.step("export", "success", f"DELETE {where} -> 204")
        except NotFoundError:
            run.trace.step("export", "success", f"DELETE {where} -> 404 (already gone)")
        self._written(run, managed.target_id)
        run.trace.step("action", "success", "delete")
        return Outcome(None, self._activity(run.cmd, "delete", "success", run.decision, managed, run.trace))

    def _written(self, run: _Run, target_id: str) -> None:
        if self.snapshot is not None:
            self.snapshot.forget(run.kind, target_id)

    # -- groups --------------------------------------------------------------------------------

    async def _group(self, run: _Run) -> Outcome:
        """Make sure the group exists with the mapped attributes, then write member deltas."""
        if self.app.dry_run:
            return await self._dry_run(run)
        if run.decision.action == "skip":
            return self._skip(run, run.managed)
        if run.decision.action == "lookup":
            return await self._new_group(run)
        managed = run.managed
        assert managed is not None  # decide() asks for lookup when we do not manage it
        run.trace.step("match", "success", f"managed by scimflow as target id {managed.target_id}")
        listed = run.listed if self.app.drift != "ignore" else None
        try:
            state, answer = await self._group_update(run, managed, listed)
        except NotFoundError:
            run.trace.step("action", "failure", f"group {managed.target_id} is gone (404); recreating")
            run.managed, run.snapshot = None, None
            run.decision = Decision("lookup", run.cmd.reason, repair=run.decision.repair)
            return await self._new_group(run)
        actual = answer if answer is not None and has_members(answer.body) else listed
        return await self._group_members(run, state, written_members(managed), actual)

    async def _new_group(self, run: _Run) -> Outcome:
        """Adopt the matching group (its members as they are) or create one without members."""
        found = await self._match(run)
        if run.decision.action == "skip":
            return self._skip(run, None)
        if run.decision.action == "create":
            state, found = await self._create(run)
            if state is not None:
                return await self._group_members(run, state, set(), found, created=True)
            if self._skipped(run):
                return self._skip(run, None)
        assert found is not None
        state = await self._adopted(run, found)
        return await self._group_members(run, state, set(), found)

    async def _group_update(self, run: _Run, managed: ManagedObject,
                            listed: ScimResource | None) -> tuple[ManagedObject, ScimResource | None]:
        decision = run.decision
        if decision.action != "update":
            return managed, None
        answer = await self._write(GROUP, managed.target_id, decision.changes, listed)
        self._written(run, managed.target_id)
        run.trace.step("export", "success",
                       f"{self._method} /Groups/{managed.target_id} ({len(decision.changes)} attributes)")
        unstored = _unstored(decision.changes, answer.body) if answer is not None else list(managed.unstored)
        state = self._managed(run.cmd, managed.target_id, {**managed.attributes, **decision.changes},
                              managed.origin, managed, unstored)
        return state, answer

    async def _group_members(self, run: _Run, state: ManagedObject, written: set[str],
                             seen: ScimResource | None, *, created: bool = False) -> Outcome:
        """Bring the group's members to the desired ones, against what the target has."""
        if created:
            written = set(run.created_members)  # what the create carried (none when sent singly)
        desired = set(run.members or []) | written if created else set(run.members or [])
        actual = written if created else await self._actual_members(run, state, written, desired, seen)
        sources = set(run.cmd.members)
        delta = member_delta(written, desired, actual=actual, owned=lambda t: run.owner(t) is not None,
                             keep=lambda t: run.owner(t) in sources)
        # No await from here to the write: members whose creates wait in the batcher now can
        # be referred to by bulkId in the same request.
        pending = self.batcher.queued(self._unlinked(run)) if self.batcher is not None else []
        before = run.managed
        drifted = bool(delta) and not member_delta(written, desired) and not created
        run.decision = decision = members_decision(run.decision, delta, pending, drifted=drifted,
                                                   drift=self.app.drift)
        if decision.action == "skip":  # member drift, reported only (a skip never gets here)
            return self._skip(run, before)
        if delta or pending:
            try:
                added = await self._send_members(state.target_id, delta, pending)
            except TargetError as exc:
                # The group itself is written: keep its state, so a retry sends only members.
                return self._failure(run, exc, state=state, changed_state=state is not before)
            desired |= added
            delta = MemberDelta(sorted({*delta.add, *added}), delta.remove)
            self._written(run, state.target_id)
            run.trace.step("export", "success", f"{self._method} /Groups/{state.target_id} members "
                                                f"{delta.describe()}")
        if written != desired:
            state = self._managed(run.cmd, state.target_id, {**state.attributes, MEMBERS: sorted(desired)},
                                  state.origin, state, list(state.unstored))
        if not delta and decision.action == "noop":
            # Nothing written: at most the members found in place are now counted as ours.
            return Outcome(state, None, changed_state=state is not before)
        action = reported_action(group_action(decision, delta), decision)
        run.trace.step("action", "success", action)
        extra = (_member_props(set(), sorted(desired), MemberDelta(sorted(desired), []))
                 if created and desired else _member_props(written, sorted(desired), delta))
        return Outcome(state, self._activity(run.cmd, action, "success", decision, state, run.trace,
                                             extra=extra))

    async def _send_members(self, group_id: str, delta: MemberDelta, pending: list[str]) -> set[str]:
        """Write a member delta, and add the ``pending`` members (source ids whose creates
        wait in the batcher) by bulkId; the target ids added that way."""
        if self.batcher is not None:
            return await self.batcher.patch_members(group_id, delta.add, delta.remove, pending=pending)
        await self.client.patch_members(group_id, add=delta.add, remove=delta.remove)
        return set()

    async def _actual_members(self, run: _Run, state: ManagedObject, written: set[str],
                              desired: set[str], seen: ScimResource | None) -> set[str]:
        """The members the target has: from a resource read in this run; else a GET when
        ``must_read_members`` says so. Otherwise the members scimflow wrote are what the
        target has as far as it knows: no read."""
        if seen is not None and has_members(seen.body):
            return current_members(seen.body)
        managed = run.managed
        if managed is not None:
            listed = run.snapshot is not None and managed.updated_at < run.snapshot.taken_at
            if not must_read_members(managed, written, desired, listed=listed, drift=self.app.drift):
                return written
        fresh = await self.client.get(GROUP, state.target_id)
        return current_members(fresh.body) if has_members(fresh.body) else written

    # -- dry run -------------------------------------------------------------------------------

    async def _dry_run(self, run: _Run) -> Outcome:
        """Every decision, reads included, reported as ``dryRun``; nothing written anywhere."""
        written = written_members(run.managed)
        if run.decision.action == "lookup":
            found = await self._match(run)
            if found is not None and run.members is not None:
                written = current_members(found.body) & set(run.members)
        decision = run.decision
        action, delta = dry_run(decision, written, run.members)
        if action is None:
            return Outcome(run.managed, None, changed_state=False)
        run.trace.step("action", "skipped", f"dry run: would {action}; nothing was written")
        extra = _member_props(written, run.members, delta) if run.members is not None else []
        status = "skipped" if action == "skip" else "dryRun"
        return Outcome(run.managed, self._activity(run.cmd, action, status, decision, run.managed, run.trace,
                                                   extra=extra), changed_state=False)

    # -- records -------------------------------------------------------------------------------

    @property
    def _method(self) -> str:
        """How the client sent the last update (PUT once a target refused PATCH)."""
        return "PUT" if self.client.uses_put else "PATCH"

    def _managed(self, cmd: ProvisioningCommand, target_id: str, written: Mapping[str, Any],
                 origin: Any, before: ManagedObject | None,
                 unstored: list[str] | None = None) -> ManagedObject:
        now = datetime.now(UTC)
        return ManagedObject(
            app=cmd.app, object_type=cmd.object_type, source_id=cmd.source_id, target_id=target_id,
            attributes=dict(written), active=bool(written.get("active", True)), origin=origin,
            display_name=cmd.display_name, created_at=before.created_at if before else now,
            updated_at=now, unstored=sorted(unstored or []),
        )

    def _show(self, cmd: ProvisioningCommand, path: str, value: Any) -> Any:
        return REDACTED if path in cmd.redacted else value

    def _activity(self, cmd: ProvisioningCommand, action: Any, status: Any, decision: Decision,
                  managed: ManagedObject | None, trace: _Trace, error_code: str | None = None,
                  extra: list[ModifiedProperty] | None = None) -> ActivityRecord:
        desired = desired_state(cmd)
        names = dict(decision.changes) or {p: desired.get(p) for p in decision.drift}
        props = [
            ModifiedProperty(name=p, old_value=self._show(cmd, p, decision.old.get(p, decision.drift.get(p))),
                             new_value=self._show(cmd, p, v))
            for p, v in names.items()
        ] + (extra or [])
        return ActivityRecord(
            id=str(uuid.uuid4()), at=datetime.now(UTC), app=cmd.app, object_type=cmd.object_type,
            action=action, status=status, source=cmd.source, source_id=cmd.source_id,
            source_identity=cmd.display_name, target_id=managed.target_id if managed else None,
            cycle_id=cmd.cycle_id, change_id=cmd.change_id, reason=decision.reason,
            modified_properties=props, steps=trace.steps,
            duration_ms=round((time.perf_counter() - trace.started) * 1000, 3), error_code=error_code,
        )

    def _failure(self, run: _Run, exc: TargetError, *, state: ManagedObject | None = None,
                 changed_state: bool = False) -> Outcome:
        cmd, decision, trace = run.cmd, run.decision, run.trace
        managed = state or run.managed
        trace.step("export", "failure", str(exc))
        action = failed_action(decision)
        activity = self._activity(cmd, action, "failure", decision, managed, trace, error_code=exc.code)
        error = error_record(
            "writer", exc.code, str(exc), exc.recommended_action, attempts=int(getattr(exc, "attempts", 1)),
            app=cmd.app, object_type=cmd.object_type, source_id=cmd.source_id,
            change_id=cmd.change_id, cycle_id=cmd.cycle_id, target_status=exc.status,
        )
        retry = exc if isinstance(exc, TransientError) else None
        if retry is not None and decision.action == "create":
            self._unsure.add(cmd.source_id)
        # A transient failure is retried (the processor logs the wait); the rest is final.
        (log.info if retry else log.warning)(
            "target call failed", app=cmd.app, source_id=cmd.source_id, action=action,
            error_code=exc.code, status=exc.status)
        return Outcome(managed, activity, error, changed_state=changed_state, retry=retry)


def _member_props(written: set[str], members: list[str] | None, delta: MemberDelta) -> list[ModifiedProperty]:
    """Membership in the provisioning log: counts, not the (possibly huge) id lists."""
    if members is None or not delta:
        return []
    return [ModifiedProperty(name=MEMBERS, old_value=len(written),
                             new_value=f"{len(set(members))} ({delta.describe()})")]


def _unstored(sent: Mapping[str, Any], answer: Mapping[str, Any]) -> list[str]:
    """Paths the target's answer shows it did not keep as sent (left out or changed)."""
    return sorted(p for p, v in sent.items() if v is not None and p != MEMBERS
                  and not same_value(read_path(answer, p), v, case_exact=False))


def _observe(managed: ManagedObject | None, snapshot: TargetSnapshot | None,
             kind: Kind) -> tuple[Observed, ScimResource | None]:
    """What a scan's listing tells of a managed object's resource, and the listed resource."""
    if snapshot is None or managed is None or managed.updated_at >= snapshot.taken_at:
        return UNKNOWN, None  # no listing, or written after it (here or by another replica)
    listed = snapshot.resource(kind, managed.target_id)
    if not snapshot.knows(kind, managed.target_id):
        return UNKNOWN, listed
    return (listed.body if listed is not None else ABSENT), listed


def owned(cmd: ProvisioningCommand, managed: ManagedObject | None) -> ManagedObject | None:
    """``managed`` without the attributes scimflow no longer owns: an upsert carries every
    attribute its app's current mapping writes, so a path it does not carry is no longer
    mapped (or its value is left alone this time: IgnoreFlowIfNullOrEmpty). Forgetting what
    was written there means the writer leaves it in the target as it is (never removed, not
    drift), and writes it afresh should a later version map it again."""
    if managed is None or cmd.operation != "upsert":
        return managed
    carried = {*desired_state(cmd), *cmd.create_only, *cmd.unique_candidates, *cmd.references, MEMBERS}
    if carried.issuperset(managed.attributes):
        return managed
    return msgspec.structs.replace(
        managed, attributes={p: v for p, v in managed.attributes.items() if p in carried},
        unstored=[p for p in managed.unstored if p in carried])


def _without_none(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}
