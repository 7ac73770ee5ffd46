"""When to try an object again after the SCIM client gave up on a transient failure — pure.

The client retries one *call* a few times within seconds. When it still fails, the writer
parks the *object* and tries its command again later, without holding a concurrency slot
or stalling the other objects of its partition. The waits grow exponentially from
``retries.initial_wait`` to ``retries.max_wait`` with jitter (so objects that failed
together do not come back together), and never undercut the target's ``Retry-After``.
After ``retries.escrow_after`` failed attempts the object is escrowed instead.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from services.runtime.config import Retries
from services.runtime.http import backoff_delay

__all__ = ["ESCROW_RETRY_MIN", "escrow_interval", "retry_delay", "should_escrow"]

ESCROW_RETRY_MIN = 1.0
"""Shortest pause between two retries of one escrowed object (seconds)."""


def retry_delay(attempt: int, retries: Retries, *, retry_after: float | None = None,
                rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based) of one object: the
    shared backoff (:func:`services.runtime.http.backoff_delay`, equal jitter, the target's
    ``Retry-After`` as a floor) between the app's ``initial_wait`` and ``max_wait``."""
    return backoff_delay(attempt, retries.initial_wait, retries.max_wait, retry_after=retry_after,
                         rand=rand)


def should_escrow(attempts: int, retries: Retries) -> bool:
    """Whether an object that failed ``attempts`` times in a row goes to escrow now."""
    return attempts >= retries.escrow_after


def escrow_interval(retries: Retries) -> float:
    """How often an escrowed object is tried again: the longest regular backoff step."""
    return max(ESCROW_RETRY_MIN, retries.max_wait)
