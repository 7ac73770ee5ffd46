"""Control messages: what operators ask of one application (topic ``control``, compacted).

Key: ``"{app}/{kind}"`` so each kind of request keeps its latest value under compaction.
"""

from __future__ import annotations

from datetime import datetime

from schemas.messages import Message

__all__ = ["AllowDeletes"]


class AllowDeletes(Message, tag="control.allow-deletes.v1", frozen=True, kw_only=True):
    """Release the removals held by accidental-deletion prevention, staged before ``before``."""

    app: str
    before: datetime
    by: str
    """Who asked (user or token name), for the audit trail."""
