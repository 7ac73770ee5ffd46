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

__all__ = ["ESCROW_RETRY_MIN", "escrow_interval", "retry_delay", "should_escrow"]

ESCROW_RETRY_MIN = 1.0
"""Shortest pause between two retries of one escrowed object (seconds)."""


def retry_delay(attempt: int, retries: Retries, *, retry_after: float | None = None,
                rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based) of one object.

    "Equal jitter": half the exponential step is fixed, half random, so the wait still
    grows with each attempt. A ``Retry-After`` from the target is a floor: the target
    said when it can take the request again, asking sooner only earns another 429.
    """
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, not {attempt}")
    step = min(retries.max_wait, retries.initial_wait * 2.0 ** (attempt - 1))
    jittered = step / 2 + step / 2 * rand()
    if retry_after is not None and retry_after > jittered:
        return retry_after
    return jittered


def should_escrow(attempts: int, retries: Retries) -> bool:
    """Whether an object that failed ``attempts`` times in a row goes to escrow now."""
    return attempts >= retries.escrow_after


def escrow_interval(retries: Retries) -> float:
    """How often an escrowed object is tried again: the longest regular backoff step."""
    return max(ESCROW_RETRY_MIN, retries.max_wait)
