"""Creates of many objects gathered into SCIM ``/Bulk`` requests, for targets that offer it.

The writer works object by object (each object's commands in order, many objects at
once); a target that declares bulk (``/ServiceProviderConfig``) can take many creates in
one request. :class:`CreateBatcher` sits between the two: each object's create waits on a
future while creates of other objects gather for a moment (``linger``) or until a request
is full (the target's ``maxOperations``); one ``POST /Bulk`` then carries them all, and
each object gets its own result back: its new resource, or the error a single create with
that status would have raised (409: look up and adopt, as ever).

A bulk request that fails as a whole (network, 413, 5xx, an answer that is not a
BulkResponse) costs nothing: its creates are sent one by one instead. A target whose
``/Bulk`` turns out not to exist (404, 405, 501) is not asked again by this process.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import structlog

from services.runtime.errors import RejectedError
from services.scim.client import Kind, ScimClient, ScimResource
from services.writer.bulk import BulkLimits, BulkOperation, BulkResult, send_bulk

__all__ = ["CreateBatcher"]

log = structlog.get_logger("scimflow.writer")

_ENDPOINTS: Final = {"user": "/Users", "group": "/Groups"}
_NOT_OFFERED: Final = (404, 405, 501)


@dataclass(slots=True)
class _Pending:
    kind: Kind
    body: Mapping[str, Any]
    done: asyncio.Future[ScimResource] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())


class CreateBatcher:
    """Gathers one app's creates into bulk requests within the target's limits."""

    def __init__(self, client: ScimClient, limits: BulkLimits, *, linger: float = 0.02) -> None:
        self.client = client
        self.limits = limits
        self.linger = linger
        self.enabled = True
        self.requests = 0
        """Bulk requests sent (for tests and the bench)."""
        self._queue: list[_Pending] = []
        self._timer: asyncio.TimerHandle | None = None
        self._sending: set[asyncio.Task[None]] = set()

    async def create(self, kind: Kind, body: Mapping[str, Any]) -> ScimResource:
        """The created resource, as a single ``POST`` would return it (or its error)."""
        if not self.enabled:
            return await self.client.create(kind, body)
        pending = _Pending(kind, body)
        self._queue.append(pending)
        if len(self._queue) >= self.limits.max_operations:
            self._flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.linger, self._flush)
        return await asyncio.shield(pending.done)

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        size = self.limits.max_operations
        batch, self._queue = self._queue[:size], self._queue[size:]
        if self._queue:
            self._timer = asyncio.get_running_loop().call_later(self.linger, self._flush)
        if batch:
            task = asyncio.get_running_loop().create_task(self._send(batch))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[_Pending]) -> None:
        results: list[BulkResult | None]
        try:
            results = list(await self._bulk(batch))
        except Exception as exc:  # never leave a create waiting: send them one by one
            log.warning("bulk request failed; creating one by one", app=self.client.app, error=str(exc))
            results = [None] * len(batch)
        for pending, result in zip(batch, results, strict=True):
            await self._settle(pending, result)

    async def _bulk(self, batch: list[_Pending]) -> list[BulkResult]:
        operations = [BulkOperation("POST", _ENDPOINTS[p.kind], data=p.body, bulk_id=uuid.uuid4().hex)
                      for p in batch]
        self.requests += 1
        results = await send_bulk(self.client, operations, max_operations=self.limits.max_operations,
                                  max_payload_size=self.limits.max_payload_size)
        whole = next((r.error for r in results if r.status is None and r.error is not None), None)
        if isinstance(whole, RejectedError) and whole.status in _NOT_OFFERED:
            log.warning("the target's /Bulk is not usable; creating one by one from now on",
                        app=self.client.app, status=whole.status)
            self.enabled = False
        return results

    async def _settle(self, pending: _Pending, result: BulkResult | None) -> None:
        if pending.done.done():
            return
        if result is not None and result.status is not None and result.error is not None:
            pending.done.set_exception(result.error)  # this operation failed: as a single POST would
            return
        try:
            resource = (_created(pending, result) if result is not None and result.error is None
                        else await self.client.create(pending.kind, pending.body))  # the request failed
        except Exception as exc:
            pending.done.set_exception(exc)
        else:
            pending.done.set_result(resource)

    async def aclose(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for task in list(self._sending):
            task.cancel()


def _created(pending: _Pending, result: BulkResult) -> ScimResource:
    """The created resource: the target's answer when it sent one, else what was sent with
    the id its ``location`` names (scim2-server answers a bulk POST with the location only)."""
    if result.id is None:
        raise RejectedError(f"bulk POST {_ENDPOINTS[pending.kind]} -> {result.status}: the answer names "
                            "no id (no location, no resource)", status=result.status)
    body = dict(result.resource) if result.resource else {**pending.body, "id": result.id}
    return ScimResource(id=result.id, body=body, etag=result.version)
