"""Provision on demand: ask for one object now and assemble its step-by-step trace.

The admin side only asks and listens: it sends a ``ProvisionRequest`` on the control topic,
ingest reads the object from its source and publishes it with ``change_id`` = the request id,
and mapper and writer treat it like any other change. Everything that carries that id is
the trace, in Entra's steps:

- **import**: the ``DirectoryChange`` (the source attributes), or ingest's ``ObjectNotFound``;
- **scope**: the ``ProvisioningCommand``'s reason (which assignment or filter decided);
- **match**, **action**, **export**: the steps of the writer's ``ActivityRecord``.

Listening starts at the topics' end offsets *before* the request is sent, so nothing that
answers it can be missed, and nothing older is read. A group brings up to five of its
members along (one request each), as Entra's provision on demand does.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec

from schemas import ActivityRecord, DirectoryChange, ErrorRecord, ProvisioningCommand
from schemas.codecs import decoder
from schemas.control import ProvisionRequest
from services.runtime.kafka import TopicReader
from services.runtime.topics import Topics

__all__ = ["MAX_MEMBERS", "ObjectTrace", "provision"]

MAX_MEMBERS = 5
"""Members of a group provisioned along with it (Entra: up to five)."""

Send = Callable[[ProvisionRequest], None]


@dataclass
class ObjectTrace:
    """What has arrived so far for one requested object."""

    object_id: str
    object_type: str
    request_id: str
    change: DirectoryChange | None = None
    command: ProvisioningCommand | None = None
    activity: ActivityRecord | None = None
    error: ErrorRecord | None = None
    members: list[ObjectTrace] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        """The writer reported the outcome, or an earlier stage said it will not come."""
        own = self.activity is not None or (self.error is not None and self.error.service != "writer")
        return own and all(m.finished for m in self.members)

    def report(self, timeout: float) -> dict[str, Any]:
        """The trace as JSON-able data (what the API returns and the CLI prints)."""
        return {
            "object_id": self.object_id, "object_type": self.object_type,
            "request_id": self.request_id, "outcome": self._outcome(),
            "action": self.activity.action if self.activity else None,
            "target_id": self.activity.target_id if self.activity else None,
            "message": self._message(timeout),
            "source_attributes": self.change.attributes if self.change else None,
            "steps": self._steps(),
            "members": [m.report(timeout) for m in self.members],
        }

    def _outcome(self) -> str:
        if self.activity is not None:
            return self.activity.status
        if self.error is not None:
            return "notFound" if self.error.error_code == "ObjectNotFound" else "failure"
        return "timeout"

    def _message(self, timeout: float) -> str:
        if self.activity is not None:
            return self.activity.reason or self.activity.action
        if self.error is not None:
            return f"{self.error.error_code}: {self.error.reason}"
        if self.command is not None:
            return f"no outcome within {timeout:g} s: waiting for the writer (is it running?)"
        stage = "the mapper" if self.change else "ingest"
        return f"no outcome within {timeout:g} s: waiting for {stage} (is it running?)"

    def _steps(self) -> list[dict[str, str]]:
        steps = [_import(self)]
        if self.command is not None:
            status = "success" if self.command.operation == "upsert" else "skipped"
            steps.append({"name": "scope", "status": status, "detail": self.command.reason})
        if self.activity is not None:
            steps += [{"name": s.name, "status": s.status, "detail": s.detail}
                      for s in self.activity.steps if s.name not in ("import", "scope")
                      or (s.name == "scope" and self.command is None)]
        return steps


def _import(trace: ObjectTrace) -> dict[str, str]:
    if trace.change is not None:
        c = trace.change
        return {"name": "import", "status": "success",
                "detail": f"{c.object_type} {c.object_id} from source {c.source} "
                          f"({len(c.attributes)} attributes)"}
    if trace.error is not None and trace.error.service == "ingest":
        return {"name": "import", "status": "failure", "detail": trace.error.reason}
    return {"name": "import", "status": "skipped", "detail": "no answer from ingest yet"}


@dataclass
class _Run:
    app: str
    by: str
    send: Send
    traces: dict[str, ObjectTrace] = field(default_factory=dict)

    def request(self, object_id: str, object_type: Literal["user", "group"]) -> ObjectTrace:
        request_id = uuid.uuid4().hex
        trace = ObjectTrace(object_id, object_type, request_id)
        self.traces[request_id] = trace
        self.send(ProvisionRequest(app=self.app, object_id=object_id, object_type=object_type,
                                   request_id=request_id, by=self.by, at=datetime.now(UTC)))
        return trace

    def take(self, kind: str, value: bytes) -> None:
        message = _decode(kind, value)
        change_id = getattr(message, "change_id", None)
        trace = self.traces.get(change_id or "")
        if trace is None or getattr(message, "app", self.app) not in (self.app, None):
            return
        if isinstance(message, DirectoryChange):
            trace.change = trace.change or message
            self._members(trace, message)
        elif isinstance(message, ProvisioningCommand):
            trace.command = message
        elif isinstance(message, ActivityRecord):
            trace.activity = message
        elif isinstance(message, ErrorRecord):
            trace.error = trace.error or message

    def _members(self, trace: ObjectTrace, change: DirectoryChange) -> None:
        if trace.object_type == "group" and not trace.members:
            trace.members = [self.request(m, "user") for m in change.members[:MAX_MEMBERS]]


def _decode(kind: str, value: bytes) -> Any:
    try:
        return decoder(kind).decode(value)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def provision(bootstrap: str, topics: Topics, send: Send, *, app: str, object_id: str,
              object_type: Literal["user", "group"], by: str, timeout: float) -> ObjectTrace:
    """Request one object (a group: with up to five members) and wait up to ``timeout``
    seconds for its whole trace; returns what arrived (``report()`` says what is missing)."""
    roles = {topics.changes: "directory.changes", topics.commands: "provisioning.commands",
             topics.activity: "provisioning.activity", topics.errors: "provisioning.errors"}
    # From the end offsets as of now, before the request is sent: no answer can be missed.
    with TopicReader(bootstrap, roles, start="end", client_id="scimflow-admin-provision") as reader:
        run = _Run(app, by, send)
        trace = run.request(object_id, object_type)
        deadline = time.monotonic() + timeout
        while not trace.finished and (left := deadline - time.monotonic()) > 0:
            for record in reader.poll(min(left, 0.2)):
                if record.value is not None:
                    run.take(roles[record.topic], record.value)
        return trace
