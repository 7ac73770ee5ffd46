"""Adaptive rate limits: the arithmetic (injected clock, simulated targets) and the turns and
slots real calls take."""

from __future__ import annotations

import asyncio
import heapq
import random
import time

import pytest

from services.scim.ratelimit import SCALE, AdaptiveRate, CubicCurve, Limits, RateLimiter, operation_of
from tests.support.limiter import burst_seconds

pytestmark = pytest.mark.anyio


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class TokenBucket:
    """A target that lets ``rate`` requests/s through (``burst`` at once) and answers 429
    beyond, as SaaS APIs with a published limit do."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.at = burst, 0.0

    def throttles(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return False
        return True


def simulate(rate: AdaptiveRate, clock: Clock, seconds: float, throttles: object) -> list[tuple[float, bool]]:
    """Send as fast as ``rate`` allows for ``seconds``: (time, throttled) of every answer."""
    answers = []
    end = clock.now + seconds
    while clock.now < end:
        throttled = throttles(clock.now)  # type: ignore[operator]
        answers.append((clock.now, throttled))
        rate.observe(throttled)
        clock.now += 1 / rate.limits.requests_per_second
    return answers


def simulate_in_flight(rate: AdaptiveRate, clock: Clock, seconds: float, throttles: object,
                       latency: float, jitter: random.Random | None = None) -> list[tuple[float, bool]]:
    """Send as fast as the rate and the concurrency allow, each answer ``latency`` seconds
    (times 0.5 to 1.5 drawn from ``jitter``) after its request (which the target judges when
    it arrives): (sent, throttled) of every answer. Requests are in flight at every cut, sent
    at the rate before it."""
    answers: list[tuple[float, bool]] = []
    flight: list[tuple[float, float, bool]] = []
    end, next_send = clock.now + seconds, clock.now
    while clock.now < end:
        limits = rate.limits
        if len(flight) < limits.concurrency and (not flight or next_send <= flight[0][0]):
            clock.now = max(clock.now, next_send)
            took = latency * (jitter.uniform(0.5, 1.5) if jitter else 1)
            heapq.heappush(flight, (clock.now + took, clock.now, throttles(clock.now)))  # type: ignore[operator]
            next_send = clock.now + 1 / limits.requests_per_second
            continue
        clock.now, sent, throttled = heapq.heappop(flight)
        answers.append((sent, throttled))
        rate.observe(throttled, sent_at=sent)
    return answers


def test_starts_at_the_configured_maxima() -> None:
    assert AdaptiveRate(16, 50.0).limits == Limits(16, 50.0)


def test_the_cubic_curve_cuts_to_beta_and_is_back_at_w_max_after_k_seconds() -> None:
    curve = CubicCurve(100.0, 10.0)
    k = (100 * 0.3 / SCALE) ** (1 / 3)
    assert curve.rate(10.0) == pytest.approx(70.0)
    assert curve.rate(10.0 + k) == pytest.approx(100.0)
    assert curve.rate(10.0 + k / 2) > 95  # concave: most of the way back in half the time
    assert curve.rate(10.0 + 2 * k) == pytest.approx(130.0)  # and beyond, probing


def test_a_throttled_interval_cuts_to_beta_of_what_the_target_let_through() -> None:
    clock = Clock()
    rate = AdaptiveRate(16, 500.0, clock=clock)
    for i in range(101):  # 200 answers/s for 0.5 s, 40 % of them 429: 120/s got through
        clock.now = i / 200
        rate.observe(i % 5 < 2)
    assert rate.w_max == pytest.approx(120.0, rel=0.05)
    assert rate.limits.requests_per_second == pytest.approx(84.0, rel=0.05)
    assert rate.limits.concurrency == 11  # 16 * 0.7


def test_429s_of_one_interval_cut_once() -> None:
    clock = Clock()
    rate = AdaptiveRate(16, 500.0, clock=clock)
    for i in range(101):  # every answer a 429, all within one interval
        clock.now = i / 200
        rate.observe(True)
    assert rate.limits.concurrency == 11
    assert rate.w_max == 0.5  # nothing got through


def test_finds_and_holds_a_token_bucket_limit() -> None:
    clock = Clock()
    target = TokenBucket(50, burst=10)
    rate = AdaptiveRate(16, 500.0, clock=clock)
    answers = simulate(rate, clock, 120, target.throttles)
    steady = [throttled for at, throttled in answers if at >= 20]
    passed = steady.count(False) / 100
    assert passed >= 0.9 * 50, passed
    assert steady.count(True) / len(steady) <= 0.05
    assert rate.noise < 0.02  # the cuts helped: (nearly) nothing learnt as noise


def test_random_429s_do_not_collapse_the_rate() -> None:
    clock = Clock()
    noise = random.Random(1)
    rate = AdaptiveRate(16, 200.0, clock=clock)
    answers = simulate(rate, clock, 60, lambda _: noise.random() < 0.1)
    late = [at for at, _ in answers if at >= 30]
    assert len(late) / 30 >= 0.8 * 200  # sends at nearly the configured maximum
    assert rate.noise == pytest.approx(0.1, abs=0.06)


def test_a_real_limit_is_still_found_beyond_random_429s() -> None:
    clock = Clock()
    noise = random.Random(2)
    target = TokenBucket(50, burst=10)
    rate = AdaptiveRate(16, 500.0, clock=clock)
    answers = simulate(rate, clock, 90, lambda now: target.throttles(now) or noise.random() < 0.05)
    steady = [throttled for at, throttled in answers if at >= 30]
    # 5 % of what the bucket let through is lost to the noise; of the rest at least 70 %
    # (the noise makes the limit's own 429s harder to see: cuts wait for a clearer signal).
    assert steady.count(False) / 60 >= 0.7 * 50 * 0.95


@pytest.mark.parametrize(("latency", "concurrency"), [(0.05, 16), (0.2, 16), (0.2, 64), (0.5, 64)])
def test_holds_a_token_bucket_limit_with_requests_in_flight_at_each_cut(latency: float,
                                                                        concurrency: int) -> None:
    # Answers to requests sent before a cut arrive after it. Counted as answers at the cut
    # rate, they made every cut look useless: taken back, their 429s learnt as noise (0.37
    # at 0.2 s and 16 in flight; 0.43 at 0.5 s and 64), and 18-57 % of requests were 429s.
    clock = Clock()
    target = TokenBucket(50, burst=10)
    rate = AdaptiveRate(concurrency, 500.0, clock=clock)
    answers = simulate_in_flight(rate, clock, 120, target.throttles, latency)
    steady = [throttled for sent, throttled in answers if sent >= 20]
    assert steady.count(False) / 100 >= 0.9 * 50
    assert steady.count(True) / len(steady) <= 0.06
    assert rate.noise < 0.02


def test_holds_a_bucket_with_a_second_of_burst_over_many_seeds() -> None:
    # bench/ratelimit.py's target: 50 requests/s and a bucket holding a second's worth, so
    # the rate runs past the limit for seconds before the first 429, and the interval that
    # cuts measures more let through than the limit. Before: 4.5 % of requests were 429s on
    # average, up to 6.6 % (cuts whose drop was within chance were taken back, their share
    # set as the floor, and the cubic curve probed beyond W_max four times faster).
    shares = []
    for seed in range(30):
        clock, draw = Clock(), random.Random(seed)
        clock.now = draw.random()
        target = TokenBucket(50, burst=50)
        target.at = clock.now
        rate = AdaptiveRate(16, 500.0, clock=clock)
        start = clock.now
        answers = simulate_in_flight(rate, clock, 35, target.throttles, 0.05, jitter=draw)
        steady = [throttled for sent, throttled in answers if sent >= start + 10]
        assert steady.count(False) / 25 >= 0.9 * 50, seed
        shares.append(steady.count(True) / len(steady))
    assert max(shares) <= 0.05, max(shares)
    assert sum(shares) / len(shares) <= 0.03, sum(shares) / len(shares)


def test_random_429s_with_requests_in_flight_are_learnt_as_noise_not_cut_for() -> None:
    clock = Clock()
    noise = random.Random(3)
    rate = AdaptiveRate(16, 200.0, clock=clock)
    answers = simulate_in_flight(rate, clock, 60, lambda _: noise.random() < 0.1, 0.05)
    late = [sent for sent, _ in answers if sent >= 30]
    assert len(late) / 30 >= 0.8 * 200
    assert rate.noise == pytest.approx(0.1, abs=0.06)


def test_never_below_the_floor_rate_and_one_request_in_flight() -> None:
    clock = Clock()
    rate = AdaptiveRate(4, 8.0, clock=clock)
    for _ in range(2000):
        clock.now += 0.1
        rate.observe(True)
    assert rate.limits.concurrency == 1
    assert rate.limits.requests_per_second >= 0.5


def test_never_above_the_configured_maximum() -> None:
    clock = Clock()
    rate = AdaptiveRate(16, 50.0, clock=clock)
    simulate(rate, clock, 2, lambda now: now < 1)  # throttled, then never again
    simulate(rate, clock, 60, lambda _: False)
    assert rate.limits == Limits(16, 50.0)


@pytest.mark.parametrize(("concurrency", "rps"), [(0, 1.0), (1, 0.0), (1, -5.0)])
def test_limits_must_be_positive(concurrency: int, rps: float) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        AdaptiveRate(concurrency, rps)


@pytest.mark.parametrize(("method", "operation"), [
    ("GET", "read"), ("POST", "create"), ("PATCH", "update"), ("PUT", "update"), ("DELETE", "delete")])
def test_operations_by_method(method: str, operation: str) -> None:
    assert operation_of(method) == operation


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


async def test_requests_are_paced_to_the_rate() -> None:
    limiter = RateLimiter(10, 20.0)  # one request per 50 ms
    started = time.monotonic()

    async def request() -> None:
        async with limiter.slot():
            pass

    await asyncio.gather(*(request() for _ in range(6)))
    assert time.monotonic() - started >= 0.24  # 5 gaps of 50 ms (the first is free)


async def test_an_operation_with_its_own_limit_is_paced_to_it_and_others_are_not() -> None:
    limiter = RateLimiter(10, 1000.0, per_operation={"delete": 10.0})  # 100 ms between deletes
    assert await burst_seconds(limiter, "delete", 4) >= 0.29
    assert await burst_seconds(limiter, "read", 20) < 0.15


async def test_a_cancelled_waiter_does_not_leak_a_slot_or_a_turn() -> None:
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


def _time_to_deliver(rate: AdaptiveRate, clock: Clock, wanted: int, demand: float,
                     throttles: object) -> float:
    """Seconds until ``wanted`` answers were not 429s, sending at the rate or ``demand``
    (what the writer has to send), whichever is lower."""
    delivered = 0
    while delivered < wanted:
        throttled = throttles(clock.now)  # type: ignore[operator]
        delivered += not throttled
        rate.observe(throttled)
        clock.now += 1 / min(rate.limits.requests_per_second, demand)
    return clock.now


def test_random_429s_never_slow_a_run_to_half_over_many_seeds() -> None:
    # 10 % random 429s whatever the rate, a writer with 100 requests/s to send: a cut they
    # cause must be taken back, whichever interval happened to be unlucky. (Before: cuts
    # "helped" by chance one after another, and one run in fifty crawled at a fifth.)
    slowest = 1.0
    for seed in range(100):
        clock, draw = Clock(), random.Random(seed).random
        elapsed = _time_to_deliver(AdaptiveRate(16, 500.0, clock=clock), clock, 1000, 100.0,
                                   lambda _, draw=draw: draw() < 0.1)
        slowest = min(slowest, (1000 / 100) / elapsed)
    assert slowest >= 0.5, slowest


def test_a_cut_on_a_saturated_bucket_stands_and_learns_no_noise() -> None:
    # The same decision on a target's real limit: after a cut its 429s are gone, so cuts
    # are kept, the limit is held, and its 429s are not mistaken for noise.
    for seed in range(20):
        clock = Clock()
        target = TokenBucket(50, burst=10)
        rate = AdaptiveRate(16, 80.0, clock=clock)
        clock.now = target.at = seed / 1000
        answers = simulate(rate, clock, 20, target.throttles)
        late = [throttled for at, throttled in answers if at >= clock.now - 15]
        assert late.count(False) / 15 >= 0.9 * 50
        assert late.count(True) / len(late) <= 0.05
        assert rate.noise < 0.02
