"""Quarantine of one target application: stop hammering an app whose calls mostly fail.

Entra quarantines an app whose provisioning calls mostly fail and retries it less and less
often; scimflow does the same per client, in seconds instead of hours:

- :class:`FailureWindow` (pure, injected clock) keeps the outcomes of the calls of the last
  ``window`` seconds. Transient failures (network, timeouts, 429, 5xx) and credential
  failures count against the app; answers that prove the app works (2xx, 404, 409, other
  4xx rejections of one object) count for it. With at least ``min_calls`` calls and a
  failure ratio of at least ``failure_ratio`` the app is quarantined; so it is after
  ``consecutive_failures`` failed calls in a row, whatever came before (a sudden outage
  after hours of good calls would otherwise need most of the window to show).
- A :class:`CredentialsError` quarantines at once: every further call would fail the same way.
- :class:`QuarantineGate` is what calls pass through. While quarantined every call waits
  at the gate (nothing is dropped: it simply resumes later); one probe (the test-connection
  GET) is sent after ``probe_initial`` seconds, then after a doubling interval up to
  ``probe_max``; the first probe that succeeds opens the gate.

Listeners (:meth:`QuarantineGate.on_quarantine`) hear one :class:`QuarantineEvent` when the
app enters quarantine for a reason and one when it leaves, so the writer publishes one error
record per reason, not one per waiting object. The ``scimflow_app_quarantined`` gauge follows.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

import structlog

from services.runtime import metrics
from services.runtime.config import Quarantine
from services.runtime.errors import CredentialsError, TargetError, TransientError

__all__ = [
    "CREDENTIALS",
    "FAILURE_RATIO",
    "FailureWindow",
    "QuarantineEvent",
    "QuarantineGate",
    "counts_as_failure",
]

CREDENTIALS: Final = "credentials"
"""Reason: the target refused the credentials (after a token refresh, where possible)."""
FAILURE_RATIO: Final = "failure_ratio"
"""Reason: too many of the recent calls failed transiently."""

log = structlog.get_logger("scimflow.writer")

Probe = Callable[[], Awaitable[None]]
Listener = Callable[["QuarantineEvent"], None]


@dataclass(frozen=True, slots=True)
class QuarantineEvent:
    """The app entered (``quarantined``) or left quarantine.

    ``reason`` is a small fixed code (:data:`CREDENTIALS`, :data:`FAILURE_RATIO`), fit for a
    metric label; ``detail`` says it for a human (the failure ratio, or the last error's
    message, which never holds credentials).
    """

    app: str
    quarantined: bool
    reason: str
    detail: str
    since: datetime
    next_probe: datetime | None
    at: datetime


def counts_as_failure(exc: BaseException) -> bool:
    """Whether an error says the *app* is unwell (not just that one object was refused)."""
    return isinstance(exc, TransientError | CredentialsError)


class FailureWindow:
    """Outcomes of the calls of the last ``window`` seconds, and whether they trip quarantine."""

    def __init__(self, settings: Quarantine, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._settings = settings
        self._clock = clock
        self._outcomes: deque[tuple[float, bool]] = deque()
        self._failures = 0
        self._in_a_row = 0

    def record(self, *, failed: bool) -> bool:
        """Record one call; True when the window now says "quarantine"."""
        self._outcomes.append((self._clock(), failed))
        self._failures += failed
        self._in_a_row = self._in_a_row + 1 if failed else 0
        self._expire()
        return self.tripped

    @property
    def calls(self) -> int:
        self._expire()
        return len(self._outcomes)

    @property
    def ratio(self) -> float:
        self._expire()
        return self._failures / len(self._outcomes) if self._outcomes else 0.0

    @property
    def tripped(self) -> bool:
        if self._in_a_row >= self._settings.consecutive_failures:
            return True
        return self.calls >= self._settings.min_calls and self.ratio >= self._settings.failure_ratio

    def describe(self) -> str:
        if self._in_a_row >= self._settings.consecutive_failures:
            return f"{self._in_a_row} calls in a row failed (threshold {self._settings.consecutive_failures})"
        return (f"failure ratio {self.ratio:.2f} over {self.calls} calls in the last "
                f"{self._settings.window:g}s (threshold {self._settings.failure_ratio:g})")

    def clear(self) -> None:
        """Forget everything: after a quarantine, the app starts with a clean record."""
        self._outcomes.clear()
        self._failures = 0
        self._in_a_row = 0

    def _expire(self) -> None:
        horizon = self._clock() - self._settings.window
        while self._outcomes and self._outcomes[0][0] < horizon:
            _, failed = self._outcomes.popleft()
            self._failures -= failed


class QuarantineGate:
    """The gate every call of one client passes; closed while the app is quarantined.

    ``probe`` is the test-connection call, sent by the gate's own task while closed; it must
    not pass through the gate itself. ``sleep`` and ``clock`` are injectable for tests.
    """

    def __init__(self, settings: Quarantine, *, app: str = "", probe: Probe | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.settings = settings
        self.window = FailureWindow(settings, clock=clock)
        self.probe = probe
        self._app = app
        self._sleep = sleep
        self._open = asyncio.Event()
        self._open.set()
        self._listeners: list[Listener] = []
        self._prober: asyncio.Task[None] | None = None
        self.reason: str | None = None
        self.detail: str | None = None
        self.since: datetime | None = None
        self.next_probe: datetime | None = None
        self.probes = 0

    @property
    def active(self) -> bool:
        return self.reason is not None

    def on_quarantine(self, listener: Listener) -> None:
        """Call ``listener`` on entering (once per reason) and on leaving quarantine."""
        self._listeners.append(listener)

    async def wait(self) -> None:
        """Return at once when open; else when a probe has succeeded."""
        await self._open.wait()

    def succeeded(self) -> None:
        """A call got an answer that shows the app works (2xx, or a 4xx about one object)."""
        if not self.active:
            self.window.record(failed=False)

    def failed(self, exc: TargetError) -> None:
        """A call failed; ``exc`` decides whether and how that counts against the app."""
        if isinstance(exc, CredentialsError):
            self.enter(CREDENTIALS, str(exc))
        elif not counts_as_failure(exc):
            self.succeeded()
        elif not self.active and self.window.record(failed=True):
            self.enter(FAILURE_RATIO, self.window.describe())

    def enter(self, reason: str, detail: str) -> None:
        """Close the gate for ``reason``; a repeated reason changes nothing."""
        if reason == self.reason:
            return
        first = not self.active
        self.reason, self.detail = reason, detail
        if first:
            self.since = datetime.now(UTC)
            self.next_probe = self.since + timedelta(seconds=self.settings.probe_initial)
            self._open.clear()
            self._start_probing()
        if self._app:
            metrics.set_quarantined(self._app, reason)
            metrics.QUARANTINES.labels(app=self._app, reason=reason).inc()
        log.warning("target quarantined", app=self._app, reason=reason, detail=detail)
        self._emit(quarantined=True)

    async def aclose(self) -> None:
        """Stop probing (the client is closing); waiting calls stay where they are."""
        if self._prober is not None:
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prober
            self._prober = None

    # -- probing -------------------------------------------------------------------------

    def _start_probing(self) -> None:
        if self.probe is None:
            raise RuntimeError("a QuarantineGate needs a probe before it can quarantine")
        self._prober = asyncio.get_running_loop().create_task(
            self._probe_until_healthy(), name=f"quarantine-probe-{self._app}")

    async def _probe_until_healthy(self) -> None:
        delay = self.settings.probe_initial
        while True:
            self.next_probe = datetime.now(UTC) + timedelta(seconds=delay)
            await self._sleep(delay)
            if await self._probe_once():
                self._leave()
                return
            delay = min(delay * 2, self.settings.probe_max)

    async def _probe_once(self) -> bool:
        assert self.probe is not None  # checked by _start_probing
        self.probes += 1
        try:
            await self.probe()
        except CredentialsError as exc:
            self.enter(CREDENTIALS, str(exc))
            return False
        except TargetError as exc:
            # Only failures that say "the app is unwell" keep it quarantined.
            return not counts_as_failure(exc)
        return True

    def reset(self) -> None:
        """Leave quarantine now (an operator's restart): stop probing, open the gate, forget
        the recent calls, so the app starts from a clean slate."""
        if self._prober is not None:
            self._prober.cancel()
            self._prober = None
        if self.active:
            self._leave()
        else:
            self.window.clear()

    def _leave(self) -> None:
        assert self.reason is not None
        assert self.detail is not None
        assert self.since is not None
        event = self._event(quarantined=False, reason=self.reason, detail=self.detail, since=self.since)
        log.warning("target left quarantine", app=self._app, reason=self.reason)
        # Open first, then tell: a listener that looks at the gate sees it open.
        self.reason = self.detail = self.since = self.next_probe = None
        self.window.clear()
        if self._app:
            metrics.set_quarantined(self._app, None)
        self._open.set()
        self._notify(event)

    def _emit(self, *, quarantined: bool) -> None:
        assert self.reason is not None
        assert self.detail is not None
        assert self.since is not None
        self._notify(self._event(quarantined=quarantined, reason=self.reason, detail=self.detail,
                                 since=self.since))

    def _event(self, *, quarantined: bool, reason: str, detail: str, since: datetime) -> QuarantineEvent:
        return QuarantineEvent(app=self._app, quarantined=quarantined, reason=reason, detail=detail,
                               since=since, next_probe=self.next_probe if quarantined else None,
                               at=datetime.now(UTC))

    def _notify(self, event: QuarantineEvent) -> None:
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:  # a listener's bug must not wedge the gate
                log.exception("quarantine listener failed", app=self._app)
