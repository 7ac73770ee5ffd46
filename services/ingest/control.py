"""What operators ask of ingest through the control topic: Restart and provision on demand.

- ``Restart``: a full scan of every source now (the initial cycle again). A restart made
  before this process started is already covered by the start-up scans.
- ``AppStatus`` back to ``on``: a full scan of every source now, the immediate catch-up
  cycle. The writer already applies what it held while the app was off, but a writer that
  restarted meanwhile held nothing; the scan re-sends every object, so nothing is lost.
- A new definition of an app on ``control.config`` (or a new app): a full scan of every
  source (see :func:`services.ingest.main.rescan_on_config`), so the mapper re-evaluates
  every object with the new mappings and scope.
- ``ProvisionRequest``: read the one object from its source (or from every source) and publish
  it on ``directory.changes`` with ``change_id`` = the request id, so mapper and writer treat
  it like any change and its trace can be followed by that id. If no source has it, an
  ErrorRecord (``ObjectNotFound``) says so at once.

The control topic is compacted and read from the beginning at every start, so the id of the
last request acted on per app and kind is kept in ``source.positions`` (key
``control:{app}/{kind}``): a replayed request is recognised and not acted on twice.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import structlog

from schemas import ErrorRecord
from schemas.control import AppStatus, ControlMessage, ProvisionRequest, Restart
from services.ingest.positions import Positions
from services.ingest.sources.base import SourceError
from services.ingest.worker import SourceIngest
from services.runtime import metrics
from services.runtime.records import error_record

__all__ = ["Controller"]

log = structlog.get_logger("scimflow.ingest.control")

_PREFIX = "control:"


class Controller:
    """Acts on the control messages meant for ingest; ignores the others."""

    def __init__(self, ingests: dict[str, SourceIngest], error: Callable[[ErrorRecord], Awaitable[None]],
                 positions: Positions | None = None, *, started_at: datetime | None = None) -> None:
        self.ingests = ingests
        self.error = error
        self.positions = positions
        self.started_at = started_at or datetime.now(UTC)
        self.handled: dict[str, str] = {}

    async def load(self) -> None:
        """The requests a previous ingest already acted on."""
        if self.positions is not None:
            stored = await self.positions.load_prefixed(_PREFIX)
            self.handled = {k.removeprefix(_PREFIX): v.decode("utf-8", "replace") for k, v in stored.items()}

    async def handle(self, message: ControlMessage) -> None:
        match message:
            case Restart():
                if self._new(f"{message.app}/restart", message.request_id):
                    await self._restart(message)
                    await self._done(f"{message.app}/restart", message.request_id)
            case AppStatus(status="on") if message.at >= self.started_at:
                # Older ones are covered by the start-up scans (and replayed at every start).
                log.info("provisioning on again: catch-up scan of every source", app=message.app,
                         by=message.by)
                self.scan_all()
            case ProvisionRequest():
                if self._new(f"{message.app}/provision", message.request_id):
                    await self._provision(message)
                    await self._done(f"{message.app}/provision", message.request_id)
            case _:
                return

    def _new(self, key: str, request_id: str) -> bool:
        return self.handled.get(key) != request_id

    async def _done(self, key: str, request_id: str) -> None:
        self.handled[key] = request_id
        if self.positions is not None:
            await self.positions.store(f"{_PREFIX}{key}", request_id.encode())

    async def _restart(self, request: Restart) -> None:
        if request.at < self.started_at:
            log.info("restart covered by the start-up scans", app=request.app, request_id=request.request_id)
            return
        log.info("restart: full scan of every source", app=request.app, request_id=request.request_id,
                 by=request.by)
        self.scan_all()

    def scan_all(self) -> None:
        """A full scan of every source that scans, as soon as its running one (if any) is over."""
        for ingest in self.ingests.values():
            if ingest.source.scans:
                ingest.request_scan()

    async def _provision(self, request: ProvisionRequest) -> None:
        names = [request.source] if request.source is not None else list(self.ingests)
        found, failed = False, False
        for name in names:
            ingest = self.ingests.get(name)
            if ingest is None:
                continue
            try:
                provided = await ingest.provide(request.object_id, request.object_type, request.request_id)
            except SourceError as exc:
                failed = True
                await self._report(request, exc.code, f"source {name}: {exc}", exc.recommended_action)
            else:
                found = found or provided
        if not found and not failed:
            where = f"source {request.source!r}" if request.source else "any source"
            if request.source is not None and request.source not in self.ingests:
                where = f"{where} (no source of that name is configured here)"
            await self._report(request, "ObjectNotFound",
                               f"no {request.object_type} with id {request.object_id!r} in {where}",
                               "Check the object id (the source's stable id, e.g. entryUUID or Graph id) "
                               "and the source name.")

    async def _report(self, request: ProvisionRequest, code: str, reason: str, action: str) -> None:
        metrics.ERRORS.labels(service="ingest", error_code=code).inc()
        log.warning("provision on demand failed", app=request.app, request_id=request.request_id,
                    reason=reason)
        await self.error(error_record("ingest", code, reason, action, app=request.app,
                                      object_type=request.object_type, source_id=request.object_id,
                                      change_id=request.request_id))
