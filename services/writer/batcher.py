"""Writes of many objects gathered into SCIM ``/Bulk`` requests, for targets that offer it.

The writer works object by object (each object's commands in order, many objects at
once); a target that declares bulk (``/ServiceProviderConfig``) can take many writes in
one request. :class:`BulkBatcher` sits between the two: each object's write (a create, an
update, a group's member change) waits on a future while writes of other objects gather
for a moment (``linger``) or until a request is full (the target's ``maxOperations``);
one :func:`~services.writer.bulk.send_bulk` then carries them all, and each object gets
its own result back, as the single call it stands for would give it:

- **Creates** answer the new resource, or the error a single ``POST`` would raise (409:
  look up and adopt, as ever).
- **Updates** are the PATCH a single update sends (the app's dialect, ``version`` = the
  resource's ETag when the writer has it), or, for an app that updates with PUT, the PUT of
  a read-modify-write whose GET is still a single call just before. A 412 (the ETag lost a
  race) re-reads and updates once more with single calls, as a single update does; 404
  is the NotFoundError a single call raises (the writer recreates).
- **Member changes** of a group are its PATCH (or read-modify-write PUT) of deltas. A group
  created or given members while creates of those members wait in the same batcher refers
  to them as ``bulkId:<id>`` (RFC 7644 §3.7.2) instead of waiting for their links; if such
  a member's create fails, the group's operation is not sent (RFC 7644 §3.7.2) and the
  group is written with single calls without that member, which is added when its link
  appears, as any unlinked member is.

Failures: an operation whose own answer is a transient failure (5xx, 429, unsent after
``failOnErrors``) is done again with its single call, and only that operation; a request
that fails as a whole (network, 413, 5xx, an answer that is no BulkResponse) costs
nothing more than that: each of its writes is sent on its own. A target whose ``/Bulk``
turns out not to exist (404, 405, 501) is not asked again by this process.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote

import structlog

from services.runtime.errors import NotFoundError, RejectedError, TargetError, TransientError
from services.scim.client import Kind, ScimClient, ScimResource
from services.scim.errors import OutcomeUnknownError
from services.scim.paths import PATCH_OP, apply_changes, member_operations, patch_operations
from services.writer.bulk import BulkLimits, BulkOperation, BulkResult, send_bulk

__all__ = ["BulkBatcher"]

log = structlog.get_logger("scimflow.writer")

_ENDPOINTS: Final = {"user": "/Users", "group": "/Groups"}
_NOT_OFFERED: Final = (404, 405, 501)
_PATCH_REFUSED: Final = (405, 501)
_REFERENCE: Final = "bulkId:"

Ids = Mapping[str, str]
"""bulk_id -> target id of the creates of one send_bulk call that succeeded."""


@dataclass(eq=False, slots=True)
class _Pending:
    """One object's write waiting in the batcher."""

    operation: BulkOperation
    single: Callable[[], Awaitable[Any]]
    """The single call(s) the operation stands for: the fallback."""
    read: Callable[[BulkResult, Ids], Any]
    """The caller's value of a successful result."""
    again: Callable[[TargetError], bool]
    """Whether a failure the target gave this operation is done again with ``single``."""
    key: tuple[Kind, str] | None = None
    """(kind, source id) of a create that others may refer to while it waits."""
    done: asyncio.Future[Any] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())


class _Counting:
    """The client as send_bulk's transport, counting the HTTP requests it sends."""

    def __init__(self, client: ScimClient, counts: Counter[str]) -> None:
        self._client = client
        self._counts = counts

    async def post_document(self, path: str, body: Mapping[str, Any], *,
                            attempts: int | None = None) -> dict[str, Any]:
        self._counts["requests"] += 1
        for operation in body.get("Operations", []):
            self._counts[str(operation.get("method"))] += 1
        return await self._client.post_document(path, body, attempts=attempts)

    def redact(self, text: str) -> str:
        return self._client.redact(text)


class BulkBatcher:
    """Gathers one app's creates and updates into bulk requests within the target's limits."""

    def __init__(self, client: ScimClient, limits: BulkLimits, *, linger: float = 0.02,
                 resolves_references: bool = False) -> None:
        self.client = client
        self.limits = limits
        self.linger = linger
        self.resolves_references = resolves_references
        """Send an operation in the same request as the create it refers to (the target
        resolves ``bulkId:``); else in the next one with the real id (send_bulk's default:
        SCIMMY 1.3 gets several references in one request wrong and still answers 201)."""
        self.enabled = True
        self.counts: Counter[str] = Counter()
        """HTTP requests to ``/Bulk`` (``requests``) and the operations they carried, by
        method (``POST``, ``PATCH``, ``PUT``): for tests and the bench."""
        self._transport = _Counting(client, self.counts)
        self._queue: list[_Pending] = []
        self._queued: dict[tuple[Kind, str], _Pending] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._sending: set[asyncio.Task[None]] = set()

    @property
    def requests(self) -> int:
        """Bulk requests sent."""
        return self.counts["requests"]

    # -- creates ---------------------------------------------------------------------------

    async def create(self, kind: Kind, body: Mapping[str, Any], *, key: str | None = None) -> ScimResource:
        """The created resource, as a single ``POST`` would return it (or its error).
        ``key`` (the source id) lets a group created meanwhile refer to it."""
        if not self.enabled:
            return await self.client.create(kind, body)
        pending = _Pending(_post(kind, body), lambda: self.client.create(kind, body),
                           lambda result, _: _created(kind, body, result), _transient,
                           key=(kind, key) if key is not None else None)
        resource: ScimResource = await self._enqueue(pending)
        return resource

    async def create_group(self, body: Mapping[str, Any], *, members: Sequence[str] = (),
                           pending: Iterable[str] = ()) -> tuple[ScimResource, set[str]]:
        """Create a group with ``members`` (target ids) and the ``pending`` members (source
        ids) whose creates wait here: (the group, the target ids of the members it was
        created with). Sent on its own, the group is created without members, as ever: the
        writer adds them as deltas."""
        if not self.enabled:
            return await self.client.create("group", body), set()
        references = self._references(pending)
        values = [{"value": m} for m in members] + [{"value": _REFERENCE + b} for b in references]
        data = {**body, "members": values} if values else body

        def read(result: BulkResult, ids: Ids) -> tuple[ScimResource, set[str]]:
            return _created("group", data, result), {*members, *(ids[b] for b in references if b in ids)}

        async def single() -> tuple[ScimResource, set[str]]:
            return await self.client.create("group", body), set()

        # Refused with members (a member that failed, a reference the target would not take):
        # created singly without them, as ever; a 409 then answers the single create too.
        again = (lambda _: True) if values else _transient
        created: tuple[ScimResource, set[str]] = await self._enqueue(
            _Pending(_post("group", data), single, read, again))
        return created

    # -- updates ---------------------------------------------------------------------------

    async def update(self, kind: Kind, id: str, changes: Mapping[str, Any], *,
                     current: ScimResource | None = None) -> ScimResource | None:
        """``ScimClient.update`` through a bulk request: the resource when the target
        answered with it, else None; the error a single update would raise."""
        if not changes:
            return None
        if not self.enabled:
            return await self.client.update(kind, id, changes, current=current)
        if self.client.uses_put:
            return await self._put(kind, id, changes)
        operations = patch_operations(changes, dialect=self.client.dialect,
                                      current=current.body if current is not None else None)
        if not operations:
            return None  # the target already holds every value
        if len(operations) > self.client.max_patch_operations:
            return await self.client.update(kind, id, changes, current=current)  # chunked, in order

        async def single() -> ScimResource | None:
            return await self.client.update(kind, id, changes, current=current)

        async def reread() -> ScimResource | None:  # 412, as a single update does it
            return await self.client.update(kind, id, changes, current=await self.client.get(kind, id))

        operation = BulkOperation("PATCH", _path(kind, id), data=_patch_body(operations),
                                  version=current.etag if current is not None else None)
        return await self._update(operation, single, reread, patch=True)

    async def _put(self, kind: Kind, id: str, changes: Mapping[str, Any]) -> ScimResource | None:
        """Read-modify-write: the GET is a single call now, the PUT goes in a bulk,
        conditional on the ETag the GET gave."""
        resource = await self.client.get(kind, id)

        async def single() -> ScimResource | None:
            return await self.client.update(kind, id, changes)

        operation = BulkOperation("PUT", _path(kind, resource.id), data=apply_changes(resource.body, changes),
                                  version=resource.etag)
        return await self._update(operation, single, single, patch=False)

    async def _update(self, operation: BulkOperation, single: Callable[[], Awaitable[ScimResource | None]],
                      reread: Callable[[], Awaitable[ScimResource | None]], *,
                      patch: bool) -> ScimResource | None:
        conflicted = False

        def again(error: TargetError) -> bool:
            nonlocal conflicted
            conflicted = error.status == 412
            return conflicted or _transient(error) or (patch and error.status in _PATCH_REFUSED)

        async def fallback() -> ScimResource | None:
            return await (reread() if conflicted else single())

        answer: ScimResource | None = await self._enqueue(
            _Pending(operation, fallback, lambda result, _: _answer(result), again))
        return answer

    # -- group members ---------------------------------------------------------------------

    async def patch_members(self, group_id: str, add: Sequence[str], remove: Sequence[str], *,
                            pending: Iterable[str] = ()) -> set[str]:
        """``ScimClient.patch_members`` through a bulk request, with the ``pending`` members
        (source ids) whose creates wait here referred to by ``bulkId:``; the target ids of
        the members added that way."""
        if not self.enabled:
            await self._members_singly(group_id, add, remove)
            return set()
        if self.client.uses_put:
            await self._put_members(group_id, add, remove)
            return set()
        references = self._references(pending)
        requests = member_operations([*add, *(_REFERENCE + b for b in references)], remove,
                                     dialect=self.client.dialect,
                                     max_values=self.client.max_patch_operations)
        if len(requests) != 1:  # several requests must go in order: each waits for the one before
            await self._members_singly(group_id, add, remove)
            return set()

        def read(_: BulkResult, ids: Ids) -> set[str]:
            return {ids[b] for b in references if b in ids}

        async def single() -> set[str]:
            await self._members_singly(group_id, add, remove)
            return set()

        def again(error: TargetError) -> bool:  # 412 cannot be: a member PATCH has no version
            return _transient(error) or error.status in _PATCH_REFUSED

        operation = BulkOperation("PATCH", _path("group", group_id), data=_patch_body(requests[0]))
        added: set[str] = await self._enqueue(_Pending(operation, single, read, again))
        return added

    async def _put_members(self, group_id: str, add: Sequence[str], remove: Sequence[str]) -> None:
        """The read-modify-write PUT of the group's members (``ScimClient.patch_members`` for a
        target without member PATCH), the PUT in a bulk. Anything but success is done again
        singly: the single call's 412 retry and its advice on a refusal."""
        group = await self.client.get("group", group_id)
        gone = set(remove)
        kept = [m for m in _members_of(group.body) if str(m.get("value")) not in gone]
        present = {str(m.get("value")) for m in kept}
        members = kept + [{"value": m} for m in add if m not in present]
        operation = BulkOperation("PUT", _path("group", group.id),
                                  data=apply_changes(group.body, {"members": members}), version=group.etag)
        await self._enqueue(_Pending(operation, lambda: self._members_singly(group_id, add, remove),
                                     lambda _, __: None, lambda error: not isinstance(error, NotFoundError)))

    async def _members_singly(self, group_id: str, add: Sequence[str], remove: Sequence[str]) -> None:
        if add or remove:
            await self.client.patch_members(group_id, add=add, remove=remove)

    def queued(self, sources: Iterable[str]) -> list[str]:
        """The users among ``sources`` whose creates wait here now: a group written before
        the next await can refer to them."""
        return [s for s in sources if ("user", s) in self._queued]

    def _references(self, pending: Iterable[str]) -> dict[str, str]:
        """bulk_id -> source id of the ``pending`` members whose creates wait here (in this
        very request-to-be: only those can be referred to)."""
        queued = ((s, self._queued.get(("user", s))) for s in pending)
        return {p.operation.bulk_id: s for s, p in queued if p is not None and p.operation.bulk_id}

    # -- gathering and sending -------------------------------------------------------------

    def _enqueue(self, pending: _Pending) -> asyncio.Future[Any]:
        self._queue.append(pending)
        if pending.key is not None:
            self._queued[pending.key] = pending
        if len(self._queue) >= self.limits.max_operations:
            self._flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.linger, self._flush)
        return asyncio.shield(pending.done)

    def _flush(self) -> None:
        """Send everything queued in one send_bulk call (which splits it into requests):
        a reference never points outside the call."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._queue = self._queue, []
        self._queued.clear()
        if batch:
            task = asyncio.get_running_loop().create_task(self._send(batch))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[_Pending]) -> None:
        results: list[BulkResult | None]
        try:
            results = list(await self._bulk(batch))
        except Exception as exc:  # never leave a write waiting: send them one by one
            log.warning("bulk request failed; writing one by one", app=self.client.app, error=str(exc))
            results = [None] * len(batch)
        ids = {r.bulk_id: r.id for r in results
               if r is not None and r.ok and r.bulk_id is not None and r.id is not None}
        singly = [self._settle(p, r, ids) for p, r in zip(batch, results, strict=True)]
        await asyncio.gather(*(s for s in singly if s is not None))

    async def _bulk(self, batch: list[_Pending]) -> list[BulkResult]:
        results = await send_bulk(self._transport, [p.operation for p in batch],
                                  max_operations=self.limits.max_operations,
                                  max_payload_size=self.limits.max_payload_size,
                                  target_resolves_references=self.resolves_references)
        whole = next((r.error for r in results if r.status is None and r.error is not None), None)
        if isinstance(whole, RejectedError) and whole.status in _NOT_OFFERED:
            log.warning("the target's /Bulk is not usable; writing one by one from now on",
                        app=self.client.app, status=whole.status)
            self.enabled = False
        return results

    def _settle(self, pending: _Pending, result: BulkResult | None,
                ids: Ids) -> Awaitable[None] | None:
        """Give ``pending`` its outcome now, or the single call that gets it."""
        if pending.done.done():
            return None
        if result is not None and result.error is None:
            try:
                pending.done.set_result(pending.read(result, ids))
            except TargetError as exc:
                pending.done.set_exception(exc)
            return None
        error = result.error if result is not None else None
        if isinstance(error, OutcomeUnknownError) and pending.operation.method == "POST":
            # The bulk may have landed with this create in it: sent again singly, a target
            # without a uniqueness constraint would hold two accounts. Failed instead, the
            # writer looks the object up before any new create (apply.py, ``_unsure``).
            pending.done.set_exception(error)
            return None
        if result is not None and result.status is not None and error is not None \
                and not pending.again(error):
            pending.done.set_exception(error)  # this operation failed: as its single call would
            return None
        return self._singly(pending)  # not sent, unanswered, or worth a single try

    @staticmethod
    async def _singly(pending: _Pending) -> None:
        try:
            value = await pending.single()
        except Exception as exc:
            pending.done.set_exception(exc)
        else:
            pending.done.set_result(value)

    async def aclose(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for task in list(self._sending):
            task.cancel()


# -- helpers without state ---------------------------------------------------------------


def _transient(error: TargetError) -> bool:
    return isinstance(error, TransientError)


def _post(kind: Kind, body: Mapping[str, Any]) -> BulkOperation:
    return BulkOperation("POST", _ENDPOINTS[kind], data=body, bulk_id=uuid.uuid4().hex)


def _path(kind: Kind, id: str) -> str:
    # Quoted whole: an id such as "../Groups" must not leave its endpoint.
    return f"{_ENDPOINTS[kind]}/{quote(id, safe='')}"


def _patch_body(operations: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return {"schemas": [PATCH_OP], "Operations": list(operations)}


def _created(kind: Kind, body: Mapping[str, Any], result: BulkResult) -> ScimResource:
    """The created resource: the target's answer when it sent one, else what was sent with
    the id its ``location`` names (scim2-server answers a bulk POST with the location only)."""
    if result.id is None:
        raise RejectedError(f"bulk POST {_ENDPOINTS[kind]} -> {result.status}: the answer names "
                            "no id (no location, no resource)", status=result.status)
    answered = dict(result.resource) if result.resource else {**body, "id": result.id}
    return ScimResource(id=result.id, body=answered, etag=result.version)


def _answer(result: BulkResult) -> ScimResource | None:
    """An update's answer: the resource when the target returned it (what it kept)."""
    if result.resource is None or result.id is None:
        return None
    return ScimResource(id=result.id, body=dict(result.resource), etag=result.version)


def _members_of(resource: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A group's ``members`` as the target returned them (case-insensitive attribute name)."""
    value = next((v for k, v in resource.items() if isinstance(k, str) and k.lower() == "members"), None)
    return [m for m in value if isinstance(m, dict)] if isinstance(value, list) else []
