"""AIMD rate limits: the arithmetic (injected clock) and the slots real calls take."""

from __future__ import annotations

import asyncio
import time

import pytest

from services.scim.ratelimit import AimdLimits, Limits, RateLimiter

pytestmark = pytest.mark.anyio


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_starts_at_the_configured_maxima() -> None:
    assert AimdLimits(16, 50.0).limits == Limits(16, 50.0)


def test_a_429_halves_both_limits() -> None:
    clock = Clock()
    aimd = AimdLimits(16, 50.0, clock=clock)
    assert aimd.throttled()
    assert aimd.limits == Limits(8, 25.0)
    clock.now += 1.0
    assert aimd.throttled()
    assert aimd.limits == Limits(4, 12.5)


def test_429s_arriving_together_count_once() -> None:
    clock = Clock()
    aimd = AimdLimits(16, 50.0, clock=clock, cooldown=1.0)
    assert aimd.throttled()
    clock.now += 0.5
    assert not aimd.throttled()  # same burst of in-flight requests
    assert aimd.limits == Limits(8, 25.0)


def test_never_below_one_request_in_flight_and_the_floor_rate() -> None:
    clock = Clock()
    aimd = AimdLimits(4, 8.0, clock=clock)
    for _ in range(20):
        aimd.throttled()
        clock.now += 10
    assert aimd.limits == Limits(1, 1.0)


def test_successes_raise_the_limits_slowly_and_never_above_the_maxima() -> None:
    clock = Clock()
    aimd = AimdLimits(16, 50.0, clock=clock)
    aimd.throttled()
    assert aimd.limits == Limits(8, 25.0)
    for _ in range(9):  # about one "round" of successes at concurrency 8 adds one
        aimd.succeeded()
    assert aimd.limits.concurrency == 9
    assert 25.0 < aimd.limits.requests_per_second < 25.5  # +1/rate per success: slow
    for _ in range(10_000):
        aimd.succeeded()
    assert aimd.limits == Limits(16, 50.0)


@pytest.mark.parametrize(("concurrency", "rate"), [(0, 1.0), (1, 0.0), (1, -5.0)])
def test_limits_must_be_positive(concurrency: int, rate: float) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        AimdLimits(concurrency, rate)


async def test_no_more_requests_in_flight_than_the_limit() -> None:
    limiter = RateLimiter(3, 1000.0)
    in_flight, peak = 0, 0

    async def request() -> None:
        nonlocal in_flight, peak
        async with limiter.slot():
            in_flight += 1
            peak = max(peak, in_flight)
            await asyncio.sleep(0.01)
            in_flight -= 1

    await asyncio.gather(*(request() for _ in range(20)))
    assert peak == 3
    assert limiter.in_flight == 0


async def test_a_cut_lowers_concurrency_for_the_next_requests() -> None:
    limiter = RateLimiter(4, 1000.0)
    limiter.throttled()
    assert limiter.limits.concurrency == 2
    in_flight, peak = 0, 0

    async def request() -> None:
        nonlocal in_flight, peak
        async with limiter.slot():
            in_flight += 1
            peak = max(peak, in_flight)
            await asyncio.sleep(0.01)
            in_flight -= 1

    await asyncio.gather(*(request() for _ in range(10)))
    assert peak == 2


async def test_requests_are_paced_to_the_rate() -> None:
    limiter = RateLimiter(10, 20.0)  # one request per 50 ms
    started = time.monotonic()
    for _ in range(6):
        async with limiter.slot():
            pass
    assert time.monotonic() - started >= 0.2  # 5 gaps of 50 ms (the first is free)


async def test_a_cancelled_waiter_does_not_leak_a_slot() -> None:
    limiter = RateLimiter(1, 1000.0)
    release = asyncio.Event()

    async def holder() -> None:
        async with limiter.slot():
            await release.wait()

    task = asyncio.create_task(holder())
    await asyncio.sleep(0)
    waiter = asyncio.create_task(limiter.slot().__aenter__())
    await asyncio.sleep(0.01)
    waiter.cancel()
    release.set()
    await task
    async with limiter.slot():  # would hang if the slot leaked
        assert limiter.in_flight == 1
    assert limiter.in_flight == 0
