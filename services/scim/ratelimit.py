"""How hard scimflow may push one target: a concurrency cap and a requests/s cap that adapt.

Both caps start at the application's configured maxima (``target.rate_limit``). A 429
cuts both multiplicatively (halves them, never below one request in flight and a floor
rate); every success raises them additively and slowly, TCP-style: about +1 per "round" of
successes at the current level. This is AIMD (additive increase, multiplicative decrease):
it settles just under what the target tolerates, and it never exceeds the configured maxima.

:class:`AimdLimits` is the arithmetic alone (no I/O, an injected clock) so it can be tested
in microseconds; :class:`RateLimiter` applies it to real calls. A slot is held only while a
request is on the wire: a call that waits for its next retry holds nothing, so one slow
object never blocks the others (no head-of-line blocking).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiolimiter import AsyncLimiter

from services.runtime import metrics

__all__ = ["AimdLimits", "Limits", "RateLimiter"]

_DECREASE = 0.5
_COOLDOWN = 1.0
_MIN_RATE = 1.0
_RATE_QUANTUM = 0.05  # rebuild the token bucket only when the rate moved by 5 % or more


@dataclass(frozen=True, slots=True)
class Limits:
    """The limits in force right now (what a gauge would export)."""

    concurrency: int
    requests_per_second: float


class AimdLimits:
    """AIMD arithmetic for one target's two caps.

    Several requests in flight at the same moment usually get their 429s together; they are
    one signal, not many, so cuts closer than ``cooldown`` seconds to the last one are ignored.
    """

    def __init__(self, max_concurrency: int, max_requests_per_second: float, *,
                 decrease: float = _DECREASE, cooldown: float = _COOLDOWN,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_concurrency < 1 or max_requests_per_second <= 0:
            raise ValueError("rate limits must be positive: max_concurrency >= 1, "
                             "max_requests_per_second > 0")
        if not 0 < decrease < 1:
            raise ValueError(f"decrease must be between 0 and 1 (exclusive), not {decrease}")
        self.max_concurrency = max_concurrency
        self.max_requests_per_second = max_requests_per_second
        self.min_requests_per_second = min(_MIN_RATE, max_requests_per_second)
        self._decrease = decrease
        self._cooldown = cooldown
        self._clock = clock
        self._concurrency = float(max_concurrency)
        self._rate = float(max_requests_per_second)
        self._last_cut: float | None = None

    @property
    def limits(self) -> Limits:
        return Limits(max(1, int(self._concurrency)), self._rate)

    def throttled(self) -> bool:
        """The target answered 429: cut both caps, unless we just did. True if they were cut."""
        now = self._clock()
        if self._last_cut is not None and now - self._last_cut < self._cooldown:
            return False
        self._last_cut = now
        self._concurrency = max(1.0, self._concurrency * self._decrease)
        self._rate = max(self.min_requests_per_second, self._rate * self._decrease)
        return True

    def succeeded(self) -> None:
        """One request succeeded: creep back up (+1 per current-level's worth of successes)."""
        self._concurrency = min(float(self.max_concurrency), self._concurrency + 1 / self._concurrency)
        self._rate = min(self.max_requests_per_second, self._rate + 1 / self._rate)


class RateLimiter:
    """Slots for requests to one target, within the current AIMD limits.

    The requests/s part is an ``aiolimiter.AsyncLimiter`` of one request per ``1/rate``
    seconds (no bursts above the rate); it is rebuilt when the rate moved noticeably.
    """

    def __init__(self, max_concurrency: int, max_requests_per_second: float, *,
                 clock: Callable[[], float] = time.monotonic, cooldown: float = _COOLDOWN,
                 app: str = "") -> None:
        self.aimd = AimdLimits(max_concurrency, max_requests_per_second, clock=clock, cooldown=cooldown)
        self._app = app  # the metrics label; "" (tools, tests) exports nothing
        self._in_flight = 0
        self._waiters: list[asyncio.Future[None]] = []
        self._bucket_rate = max_requests_per_second
        self._bucket = _bucket(max_requests_per_second)
        self._report()

    @property
    def limits(self) -> Limits:
        return self.aimd.limits

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one in-flight slot, paced to the rate, for the duration of one request."""
        await self._acquire()
        try:
            await self._bucket.acquire()
            yield
        finally:
            self._release()

    def throttled(self) -> None:
        """A 429 arrived: lower the limits (once per cooldown)."""
        if self._app:
            metrics.TARGET_THROTTLED.labels(app=self._app).inc()
        if self.aimd.throttled():
            self._sync_bucket(force=True)
            self._report()

    def succeeded(self) -> None:
        """A request succeeded: raise the limits a little, wake waiters a new slot admits."""
        self.aimd.succeeded()
        self._sync_bucket(force=False)
        self._wake()
        self._report()

    def _report(self) -> None:
        if self._app:
            limits = self.aimd.limits
            metrics.TARGET_RATE_LIMIT.labels(app=self._app, limit="concurrency").set(limits.concurrency)
            metrics.TARGET_RATE_LIMIT.labels(app=self._app, limit="requests_per_second").set(
                limits.requests_per_second)

    async def _acquire(self) -> None:
        loop = asyncio.get_running_loop()
        while self._in_flight >= self.limits.concurrency:
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                self._wake()  # we may have been handed a slot: pass it on
                raise
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        self._in_flight += 1

    def _release(self) -> None:
        self._in_flight -= 1
        self._wake()

    def _wake(self) -> None:
        free = self.limits.concurrency - self._in_flight
        for waiter in [w for w in self._waiters if not w.done()][:max(0, free)]:
            waiter.set_result(None)

    def _sync_bucket(self, *, force: bool) -> None:
        rate = self.aimd.limits.requests_per_second
        if force or abs(rate - self._bucket_rate) >= _RATE_QUANTUM * self._bucket_rate:
            self._bucket_rate = rate
            self._bucket = _bucket(rate)


def _bucket(rate: float) -> AsyncLimiter:
    # max_rate=1 per 1/rate seconds: evenly spaced requests, no burst above the rate.
    return AsyncLimiter(1, 1.0 / rate)
