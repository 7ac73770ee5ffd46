"""What the ScimClient tests against real servers share: a backoff that never waits, and user
names no other test uses (a server shared by a module keeps every test's accounts)."""

from __future__ import annotations

import uuid

from services.scim.client import Backoff

__all__ = ["NO_WAIT", "unique"]

NO_WAIT = Backoff(wait_initial=0.0, wait_max=0.0, wait_jitter=0.0)


def unique(prefix: str = "user") -> str:
    """A userName (an email address) no other test uses: ``{prefix}-<10 hex digits>@example.com``."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}@example.com"
