"""How hard scimflow may push one target: a requests/s rate that finds the target's real
limit and holds it, a concurrency cap, and optional fixed limits per operation.

The rate follows the AWS SDKs' adaptive retry mode (botocore ``retries/adaptive.py`` and
``throttling.py``): the sending rate is measured; when the target throttles, the rate it
was sending at becomes ``W_max`` and the rate drops to ``beta * W_max`` (beta 0.7); then it
grows again along the cubic curve of TCP CUBIC, ``C * (t - K)**3 + W_max``: fast at first,
flat near ``W_max`` (the last rate that worked), then faster again beyond it, probing for
more. Until the first throttle the rate is the configured ``max_requests_per_second``.

Two departures from botocore, because SCIM targets answer 429s that are not about rate:

- **One decision per measurement interval** (at least 0.5 s and 10 answers): the share of
  429s in the interval, not each 429, decides. Requests in flight together get throttled
  together; that is one signal.
- **A cut that did not help is undone.** A throttle caused by our rate goes away when the
  rate drops; a random one (a share of 429s whatever the rate) does not. So when the
  answers after a cut (30 of them, or 5 s worth) are about as throttled as before (not
  much less; and not more, which means the cut was not deep enough), the cut is taken
  back and that share is learnt into the *noise floor* (a moving average: a cut that was
  not deep enough looks the same, and must not set the floor at once). Fewer 429s, but
  not beyond chance, extend the probation (to 120 answers) rather than decide. "Before"
  is the share over the last 30 or so answers, not the cutting interval's alone (picked
  for being high, it makes any random share look lower afterwards), and "much less" must
  be beyond chance (two standard deviations); a cut that helped teaches the floor too,
  from its answers below the limit. Without that, random 429s could keep cuts that
  "helped" by luck, one after another, down to a crawl. Only 429s well beyond the floor
  (5 points, and three standard deviations of the difference between the interval's
  share and the floor, itself an estimate) count as a signal. The floor is a moving
  average over about 100 answers, learnt below the last throttled rate only (beyond it, a
  rate creeping past the limit would raise the floor with its own 429s). ``W_max`` is
  what the target let through (answers that were not 429), which is the target's real
  limit when we overshot, however far.

``Retry-After`` is honoured by the request that got it (:mod:`services.scim._transport`
waits it out before that request's next attempt, or, for the writer's object jobs, raises it
at once and the writer parks the object that long); it does not pause the others.

:class:`AdaptiveRate` is the arithmetic alone (no I/O, an injected clock) so it can be
tested in microseconds; :class:`RateLimiter` applies it to real calls. A request waits for
its turn at the rate (and at its operation's own rate) before it takes an in-flight slot,
and holds the slot only while it is on the wire: a call that waits for its next retry holds
nothing, so one slow object never blocks the others.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Final

import structlog

from services.runtime import metrics
from services.runtime.config import Operation

log = structlog.get_logger("scimflow.writer")

__all__ = ["AdaptiveRate", "CubicCurve", "Limits", "Operation", "RateLimiter", "operation_of"]


BETA: Final = 0.7
"""Multiplicative decrease on a throttle (botocore's and CUBIC's)."""
SCALE: Final = 0.1
"""CUBIC's C: how fast the rate grows back (requests/s per s**3). A quarter of botocore's
0.4: the curve stays near W_max longer and probes beyond it more slowly, so a target with
a burst allowance (which hides the limit until it is spent) is overrun by less each time;
against a 50 requests/s bucket with a second of burst, 2 % of requests were 429s instead
of 4.5 %, at the same throughput."""
_MIN_RATE: Final = 0.5
_INTERVAL: Final = 0.5
"""Shortest measurement interval (seconds)..."""
_MIN_ANSWERS: Final = 10
"""...and fewest answers in it, so that one 429 among three answers is not a 33 % share;"""
_FEW_429S: Final = 3
"""...unless this many of them were 429s: a slow app must not overshoot for long;"""
_MAX_INTERVAL: Final = 5.0
"""and a slow trickle still decides every few seconds."""
_MARGIN: Final = 0.05
"""A share of 429s this far above the noise floor means the target is throttling us..."""
_UNHELPED: Final = 0.7
"""A cut after which the share of 429s above the floor is still this much of what it was
did not help: it is taken back."""
_ROSE: Final = 1.3
"""...but one after which it clearly rose (by more than chance: two standard deviations)
was not deep enough (a random share stays where it was)."""
_MAX_NOISE: Final = 0.5
"""Random 429s above this share are treated as throttling all the same."""
_SIGMAS: Final = 3.0
"""...or this many standard deviations of the noise floor's share in an interval of that
many answers, so that random 429s rarely look like a signal by chance."""
_NOISE_ANSWERS: Final = 100
"""The noise floor is a moving average over about this many answers."""
_PROBATION_ANSWERS: Final = 30
"""Answers after a cut (at the lower rate) that tell whether it helped..."""
_MAX_PROBATION: Final = 5.0
"""...or seconds, for a slow app."""
_LONG_PROBATION_ANSWERS: Final = 120
"""Answers after a cut that fewer 429s but not clearly fewer (within chance) extend the probation to."""
_SMOOTHING: Final = 0.8
"""Weight of the newest interval in the measured sending rate (botocore's)."""


@dataclass(frozen=True, slots=True)
class Limits:
    """The limits in force right now (what a gauge exports)."""

    concurrency: int
    requests_per_second: float


@dataclass(frozen=True, slots=True)
class _Sample:
    """One closed measurement interval: answers/s, answers that were not 429 /s, 429 share."""

    answers: int
    sent: float
    passed: float
    share: float


class _Meter:
    """Counts answers into measurement intervals."""

    def __init__(self, now: float) -> None:
        self._start = now
        self._answers = 0
        self._throttled = 0

    def record(self, throttled: bool, now: float) -> _Sample | None:
        """Count one answer; the interval's figures when this answer closed it."""
        self._answers += 1
        self._throttled += throttled
        elapsed = now - self._start
        enough = self._answers >= _MIN_ANSWERS or self._throttled >= _FEW_429S
        if elapsed < _INTERVAL or (not enough and elapsed < _MAX_INTERVAL):
            return None
        sample = _Sample(self._answers, self._answers / elapsed, (self._answers - self._throttled) / elapsed,
                         self._throttled / self._answers)
        self._start, self._answers, self._throttled = now, 0, 0
        return sample


class CubicCurve:
    """TCP CUBIC's window curve as a rate (botocore's ``CubicCalculator``)."""

    def __init__(self, w_max: float, cut_at: float, *, beta: float = BETA, scale: float = SCALE) -> None:
        self.w_max = w_max
        self.cut_at = cut_at
        self._beta = beta
        self._scale = scale
        self._k = (w_max * (1 - beta) / scale) ** (1 / 3)

    def rate(self, now: float) -> float:
        """``C * (t - K)**3 + W_max``: ``beta * W_max`` at the cut, ``W_max`` K seconds later."""
        grown: float = self._scale * (now - self.cut_at - self._k) ** 3
        return grown + self.w_max


class AdaptiveRate:
    """The rate and concurrency arithmetic for one target (no I/O; ``clock`` injected).

    ``observe`` takes every answer of the target (``throttled``: it was a 429);
    ``limits`` is what may be sent now.
    """

    def __init__(self, max_concurrency: int, max_requests_per_second: float, *,
                 clock: Callable[[], float] = time.monotonic, beta: float = BETA,
                 scale: float = SCALE) -> None:
        if max_concurrency < 1 or max_requests_per_second <= 0:
            raise ValueError("rate limits must be positive: max_concurrency >= 1, "
                             "max_requests_per_second > 0")
        if not 0 < beta < 1:
            raise ValueError(f"beta must be between 0 and 1 (exclusive), not {beta}")
        self.max_concurrency = max_concurrency
        self.max_requests_per_second = max_requests_per_second
        self.min_requests_per_second = min(_MIN_RATE, max_requests_per_second)
        self.noise = 0.0
        """The share of 429s that comes whatever our rate (learnt from cuts that did not help)."""
        self._clock = clock
        self._beta = beta
        self._scale = scale
        self._meter = _Meter(clock())
        self._measured = 0.0
        self._rate = max_requests_per_second
        self._concurrency = float(max_concurrency)
        self._curve: CubicCurve | None = None
        """None until the first throttle: the rate is the configured maximum."""
        self._undo: tuple[float, float, CubicCurve | None] | None = None
        """(rate, concurrency, curve) before the last cut, while it is on probation."""
        self._probation = (0, 0)
        """(answers, 429s) since the cut on probation."""
        self._cut_excess = 0.0
        """How far above the noise floor the share of 429s was that made the last cut."""
        self._cut_answers = 1
        """How many answers that share was measured over."""
        self._recent: deque[_Sample] = deque()
        """The latest intervals, about ``_PROBATION_ANSWERS`` answers: the share a cut is judged against."""

    @property
    def limits(self) -> Limits:
        return Limits(max(1, int(self._concurrency)), self._rate)

    @property
    def w_max(self) -> float | None:
        """The rate that was last throttled (None: never throttled)."""
        return self._curve.w_max if self._curve is not None else None

    def observe(self, throttled: bool, sent_at: float | None = None) -> None:
        """One answer from the target (to a request sent at ``sent_at``, on the same clock;
        None: not known): measure, decide once per interval, follow the curve."""
        now = self._clock()
        if not throttled:
            self._concurrency = min(float(self.max_concurrency), self._concurrency + 1 / self._concurrency)
        curve = self._curve
        if self._undo is not None and curve is not None and (sent_at is None or sent_at >= curve.cut_at):
            # Only requests sent at the cut rate tell whether the cut helped: those in flight
            # at the cut were sent at the old rate, and judged with them the cut "did not
            # help", was taken back and their 429s became the noise floor (0.4 against a
            # 50 requests/s bucket, with 16 in flight and 0.2 s answers).
            answers, hits = self._probation
            self._probation = (answers + 1, hits + throttled)
        sample = self._meter.record(throttled, now)
        if sample is not None:
            self._measured = _SMOOTHING * sample.sent + (1 - _SMOOTHING) * self._measured
            self._decide(sample, now)
        self._follow(now)

    def _decide(self, sample: _Sample, now: float) -> None:
        if self._undo is not None:
            self._on_probation(now)
            return
        self._remember(sample)
        excess = sample.share - self.noise
        # The floor is an estimate too (over about _NOISE_ANSWERS answers): both vary by chance.
        spread = math.sqrt(self.noise * (1 - self.noise) * (1 / sample.answers + 1 / _NOISE_ANSWERS))
        if excess > max(_MARGIN, _SIGMAS * spread):
            self._cut(sample, now)
        elif self._curve is None or self._rate <= self._curve.w_max:
            # Learn the floor from answers below the last throttled rate only: beyond it a
            # rate creeping past the target's limit would raise the floor with its 429s.
            self._learn_noise(sample.share, sample.answers)

    def _learn_noise(self, share: float, answers: int) -> None:
        weight = answers / (answers + _NOISE_ANSWERS)
        self.noise = min(_MAX_NOISE, self.noise + weight * (share - self.noise))

    def _remember(self, sample: _Sample) -> None:
        """Keep the latest intervals, about ``_PROBATION_ANSWERS`` answers (the newest always)."""
        self._recent.append(sample)
        while sum(s.answers for s in self._recent) - self._recent[0].answers >= _PROBATION_ANSWERS:
            self._recent.popleft()

    def _recent_share(self) -> float:
        """The share of 429s over the latest intervals. Not the cutting interval's alone: it
        was picked for being high, and a random share looks lower after any cut (regression
        to the mean), which kept cuts that did not help, one after another."""
        answers = sum(s.answers for s in self._recent)
        return sum(s.share * s.answers for s in self._recent) / answers

    def _on_probation(self, now: float) -> None:
        """After a cut: gather enough answers at the lower rate, then keep it or take it back."""
        answers, throttled = self._probation
        assert self._curve is not None
        if answers < _PROBATION_ANSWERS and now - self._curve.cut_at < _MAX_PROBATION:
            return
        if not answers:
            return  # nothing sent since the cut has been answered yet: keep waiting
        share = throttled / answers
        excess = share - self.noise
        spread = 2 * math.sqrt(share * (1 - share) / answers)  # a random share varies this much
        rose = excess > _ROSE * self._cut_excess + spread
        unhelped = _UNHELPED * self._cut_excess <= excess
        if not unhelped and not rose and not self._dropped(share, answers) \
                and answers < _LONG_PROBATION_ANSWERS and now - self._curve.cut_at < _MAX_PROBATION:
            return  # fewer 429s, but not clearly: hear more before deciding
        if (unhelped or not self._dropped(share, answers)) and not rose and share <= _MAX_NOISE:
            self._take_back(share, answers)  # as throttled at the lower rate: not our rate
            return
        self._undo = None  # the cut helped: it stands, and the rate grows from now on
        # These answers came at a rate below the target's limit: their 429s are noise. Not
        # learnt, a random share kept cutting (each cut "helped" by chance) down to a crawl.
        self._learn_noise(share, answers)
        # The curve runs on from the cut, not from now: a long probation (held at the cut
        # rate) would otherwise cost a whole climb back more.

    def _dropped(self, share: float, answers: int) -> bool:
        """Whether the share of 429s after the cut is below the one before by more than
        chance (two standard deviations of the difference of two shares)."""
        before, counted = self._cut_excess + self.noise, self._cut_answers
        pooled = (before * counted + share * answers) / (counted + answers)
        spread = 2 * math.sqrt(pooled * (1 - pooled) * (1 / counted + 1 / answers))
        return before - share > spread

    def _cut(self, sample: _Sample, now: float) -> None:
        """The target throttled us: W_max is what it let through, the rate ``beta`` of it."""
        self._undo = (self._rate, self._concurrency, self._curve)
        self._probation = (0, 0)
        self._cut_excess = self._recent_share() - self.noise
        self._cut_answers = sum(s.answers for s in self._recent)
        self._recent.clear()
        w_max = max(self.min_requests_per_second, min(sample.passed, self._rate))
        self._curve = CubicCurve(w_max, now, beta=self._beta, scale=self._scale)
        self._concurrency = max(1.0, self._concurrency * self._beta)

    def _take_back(self, share: float, answers: int) -> None:
        assert self._undo is not None
        self._rate, self._concurrency, self._curve = self._undo
        self._undo = None
        # Learnt, not set: a cut that was not deep enough looks the same (its 429s as many
        # as before), and set outright its share (0.47 against a bucket with a second of
        # burst) was a floor that let the rate run over the limit until it decayed.
        self._learn_noise(share, answers + self._cut_answers)

    def _follow(self, now: float) -> None:
        """The rate on the curve, never above the configured maximum, nor above twice the
        measured rate (botocore's cap: an idle app does not bank an unbounded rate) unless
        that is below the last good rate."""
        if self._curve is None:
            return
        if self._undo is not None:  # on probation: hold the cut rate for a clean comparison
            self._rate = max(self.min_requests_per_second, self._curve.w_max * self._beta)
            return
        cap = max(2 * self._measured, self._curve.w_max)
        rate = min(self._curve.rate(now), cap, self.max_requests_per_second)
        self._rate = max(self.min_requests_per_second, rate)


class _Pacer:
    """Evenly spaced starts at a rate that may change (no burst above the rate).

    Waiters queue in order and a ticker lets one go every ``1/rate`` seconds, so a new rate
    applies to everyone still waiting (reserved start times would keep the old one).
    """

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._next = 0.0
        self._queue: deque[asyncio.Future[None]] = deque()
        self._ticker: asyncio.Task[None] | None = None

    async def wait(self) -> None:
        now = time.monotonic()
        if not self._queue and now >= self._next:
            self._next = now + 1 / self.rate
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(turn)
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.create_task(self._tick())
        try:
            await turn
        finally:
            if not turn.done():
                self._queue.remove(turn)

    async def _tick(self) -> None:
        while self._queue:
            delay = self._next - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            while self._queue:
                turn = self._queue.popleft()
                if not turn.done():
                    turn.set_result(None)
                    self._next = time.monotonic() + 1 / self.rate
                    break


def operation_of(method: str) -> Operation:
    """The operation a request is, for per-operation limits. A bulk request (POST) counts
    as a create."""
    match method.upper():
        case "GET" | "HEAD":
            return "read"
        case "DELETE":
            return "delete"
        case "PATCH" | "PUT":
            return "update"
        case _:
            return "create"


class RateLimiter:
    """Turns and in-flight slots for requests to one target, within the adaptive limits
    and the fixed per-operation maxima (``per_operation``: requests/s by operation)."""

    def __init__(self, max_concurrency: int, max_requests_per_second: float, *,
                 per_operation: Mapping[Operation, float] | None = None,
                 clock: Callable[[], float] = time.monotonic, app: str = "") -> None:
        self.adaptive = AdaptiveRate(max_concurrency, max_requests_per_second, clock=clock)
        self._app = app  # the metrics label; "" (tools, tests) exports nothing
        self._in_flight = 0
        self._waiters: list[asyncio.Future[None]] = []
        self._pacer = _Pacer(max_requests_per_second)
        self._operations = {op: _Pacer(rate) for op, rate in (per_operation or {}).items()}
        self._reported = Limits(0, 0.0)
        self._report()

    @property
    def limits(self) -> Limits:
        return self.adaptive.limits

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @asynccontextmanager
    async def slot(self, operation: Operation = "read") -> AsyncIterator[None]:
        """Wait for the request's turn at the rates, then hold one in-flight slot for it."""
        pacer = self._operations.get(operation)
        if pacer is not None:
            await pacer.wait()
        await self._pacer.wait()
        await self._acquire()
        try:
            yield
        finally:
            self._release()

    def answered(self, *, throttled: bool, sent_at: float | None = None) -> None:
        """The target answered (``throttled``: with 429) a request sent at ``sent_at``
        (``time.monotonic``; None: not known): adapt the limits."""
        if throttled and self._app:
            metrics.TARGET_THROTTLED.labels(app=self._app).inc()
        before = self.adaptive.w_max
        self.adaptive.observe(throttled, sent_at)
        if self.adaptive.w_max != before:
            self._log_change()
        self._pacer.rate = self.adaptive.limits.requests_per_second
        self._wake()
        self._report()

    def _log_change(self) -> None:
        """A cut, or a cut taken back: what an operator asks "why so slow" about."""
        adaptive = self.adaptive
        w_max = adaptive.w_max
        log.info("target rate limit adapted", app=self._app,
                 requests_per_second=round(adaptive.limits.requests_per_second, 1),
                 concurrency=adaptive.limits.concurrency,
                 last_throttled_rate=None if w_max is None else round(w_max, 1),
                 noise_429_share=round(adaptive.noise, 3))

    def _report(self) -> None:
        """Set the gauges when a limit moved (by 1 % or more for the rate)."""
        if not self._app:
            return
        limits = self.adaptive.limits
        if limits.concurrency != self._reported.concurrency:
            metrics.TARGET_RATE_LIMIT.labels(app=self._app, limit="concurrency").set(limits.concurrency)
        if not math.isclose(limits.requests_per_second, self._reported.requests_per_second, rel_tol=0.01):
            metrics.TARGET_RATE_LIMIT.labels(app=self._app, limit="requests_per_second").set(
                limits.requests_per_second)
        else:
            limits = Limits(limits.concurrency, self._reported.requests_per_second)
        self._reported = limits

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
