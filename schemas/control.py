"""Control messages: what operators ask of one application (topic ``control``, compacted).

Key: ``"{app}/{kind}"`` so each kind of request keeps its latest value under compaction.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from schemas.messages import Message

__all__ = ["AllowDeletes", "AppStatus", "ControlMessage"]


class AllowDeletes(Message, tag="control.allow-deletes.v1", frozen=True, kw_only=True):
    """Release the removals held by accidental-deletion prevention, staged before ``before``."""

    app: str
    before: datetime
    by: str
    """Who asked (user or token name), for the audit trail."""


class AppStatus(Message, tag="control.status.v1", frozen=True, kw_only=True):
    """Provisioning status of one app: ``off`` pauses every write to its target; ``on``
    resumes and applies what changed meanwhile. Overrides the config's ``status``."""

    app: str
    status: Literal["on", "off"]
    by: str
    at: datetime


ControlMessage = AllowDeletes | AppStatus
