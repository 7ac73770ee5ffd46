"""Timing a burst of requests through a SCIM client's rate limiter."""

from __future__ import annotations

import asyncio
import time

from services.scim.ratelimit import Operation, RateLimiter

__all__ = ["burst_seconds"]


async def burst_seconds(limiter: RateLimiter, operation: Operation, n: int) -> float:
    """Seconds ``n`` concurrent requests of ``operation`` take to get their turn."""
    started = time.monotonic()

    async def one() -> None:
        async with limiter.slot(operation):
            pass

    await asyncio.gather(*(one() for _ in range(n)))
    return time.monotonic() - started
