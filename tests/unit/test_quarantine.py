"""The quarantine state machine: the failure window (injected clock) and the gate's probes
(injected sleep, so growing intervals are asserted without waiting for them)."""

from __future__ import annotations

import asyncio

import pytest

from services.runtime import metrics
from services.runtime.config import Quarantine
from services.runtime.errors import (
    ConflictError,
    CredentialsError,
    NotFoundError,
    RejectedError,
    TransientError,
)
from services.scim.quarantine import (
    CREDENTIALS,
    FAILURE_RATIO,
    FailureWindow,
    QuarantineEvent,
    QuarantineGate,
)

pytestmark = pytest.mark.anyio

SETTINGS = Quarantine(failure_ratio=0.5, min_calls=4, window=60.0, probe_initial=5.0, probe_max=30.0)
DOWN = TransientError("GET /Users -> 503 Service Unavailable", status=503)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Probe:
    """A probe that fails while ``down`` and records each call."""

    def __init__(self) -> None:
        self.down = True
        self.error: Exception = DOWN
        self.calls = 0

    async def __call__(self) -> None:
        self.calls += 1
        if self.down:
            raise self.error


class Sleeps:
    """An injected sleep: records the delays, returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await asyncio.sleep(0)


def gate(probe: Probe, sleeps: Sleeps, events: list[QuarantineEvent], *, app: str = "") -> QuarantineGate:
    g = QuarantineGate(SETTINGS, app=app, probe=probe, clock=Clock(), sleep=sleeps)
    g.on_quarantine(events.append)
    return g


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


# -- the window ------------------------------------------------------------------------------


def test_trips_at_the_ratio_only_after_min_calls() -> None:
    window = FailureWindow(SETTINGS, clock=Clock())
    assert not window.record(failed=True)
    assert not window.record(failed=True)
    assert not window.record(failed=True)  # 3 calls < min_calls, even at 100 %
    assert window.record(failed=False)  # 3 of 4 failed: 0.75 >= 0.5
    assert window.describe().startswith("failure ratio 0.75 over 4 calls in the last 60s")


def test_a_mostly_healthy_app_is_not_quarantined() -> None:
    window = FailureWindow(SETTINGS, clock=Clock())
    outcomes = [False, False, True, False, False, True, False]
    assert not any(window.record(failed=f) for f in outcomes)
    assert window.calls == 7
    assert window.ratio == pytest.approx(2 / 7)


def test_old_calls_leave_the_window() -> None:
    clock = Clock()
    window = FailureWindow(SETTINGS, clock=clock)
    for _ in range(3):
        window.record(failed=True)
    clock.now += 61  # the failures are older than the window now
    assert not window.record(failed=True)
    assert window.calls == 1


def test_an_outage_after_many_good_calls_trips_on_failures_in_a_row() -> None:
    settings = Quarantine(failure_ratio=0.8, min_calls=20, window=300, consecutive_failures=50)
    window = FailureWindow(settings, clock=Clock())
    for _ in range(2000):  # hours of good calls keep the ratio low for most of the window
        window.record(failed=False)
    tripped = [window.record(failed=True) for _ in range(50)]
    assert tripped == [False] * 49 + [True]
    assert window.ratio < 0.1
    assert window.describe() == "50 calls in a row failed (threshold 50)"


def test_one_success_resets_the_run_of_failures() -> None:
    settings = Quarantine(failure_ratio=1.0, min_calls=1000, window=300, consecutive_failures=3)
    window = FailureWindow(settings, clock=Clock())
    assert not any(window.record(failed=f) for f in (True, True, False, True, True))
    assert window.record(failed=True)


# -- the gate --------------------------------------------------------------------------------


@pytest.mark.parametrize("error", [
    NotFoundError("404", status=404),
    ConflictError("409", status=409),
    RejectedError("400", status=400),
])
async def test_errors_about_one_object_do_not_count_against_the_app(error: Exception) -> None:
    events: list[QuarantineEvent] = []
    g = gate(Probe(), Sleeps(), events)
    for _ in range(10):
        g.failed(error)  # type: ignore[arg-type]
    assert not g.active
    assert g.window.calls == 10
    assert g.window.ratio == 0.0
    assert events == []


async def test_mostly_failing_calls_close_the_gate_until_a_probe_succeeds() -> None:
    probe, sleeps = Probe(), Sleeps()
    events: list[QuarantineEvent] = []
    g = gate(probe, sleeps, events, app="q-test")
    g.succeeded()
    for _ in range(3):
        g.failed(DOWN)
    assert g.active
    assert g.reason == FAILURE_RATIO
    assert g.since is not None
    [entered] = events
    assert entered.quarantined
    assert entered.reason == FAILURE_RATIO
    assert "failure ratio 0.75 over 4 calls" in entered.detail
    assert entered.next_probe is not None
    assert metrics.APP_QUARANTINED.labels(app="q-test", reason=FAILURE_RATIO)._value.get() == 1

    waiter = asyncio.create_task(g.wait())
    await settle()
    assert not waiter.done()  # calls wait at the gate...
    assert probe.calls >= 5
    # ...while probes back off: 5, 10, 20, then capped at 30
    assert sleeps.delays[:5] == [5.0, 10.0, 20.0, 30.0, 30.0]

    probe.down = False
    await settle()
    assert waiter.done()  # the one probe that succeeded opened the gate
    assert not g.active
    assert g.reason is None
    assert [e.quarantined for e in events] == [True, False]
    assert events[1].reason == FAILURE_RATIO
    assert metrics.APP_QUARANTINED.labels(app="q-test", reason="none")._value.get() == 0
    assert g.window.calls == 0  # a clean record after leaving
    await g.aclose()


async def test_a_credentials_error_quarantines_at_once_and_is_reported_once() -> None:
    probe, sleeps = Probe(), Sleeps()
    events: list[QuarantineEvent] = []
    probe.error = CredentialsError("GET /Users -> 401 Unauthorized", status=401)
    g = gate(probe, sleeps, events)
    g.failed(CredentialsError("POST /Users -> 401 Unauthorized", status=401))
    assert g.active
    assert g.reason == CREDENTIALS
    await settle()  # failing probes with the same reason: no new event
    g.failed(CredentialsError("again", status=401))
    assert len(events) == 1
    assert events[0].reason == CREDENTIALS
    assert "401 Unauthorized" in events[0].detail
    await g.aclose()
    assert g.active  # closing the client stops probing; it does not pretend recovery


async def test_a_new_reason_while_quarantined_is_reported_too() -> None:
    probe, sleeps = Probe(), Sleeps()
    events: list[QuarantineEvent] = []
    g = gate(probe, sleeps, events)
    for _ in range(4):
        g.failed(DOWN)
    probe.error = CredentialsError("401", status=401)  # the app is back, our token is not
    await settle()
    assert g.reason == CREDENTIALS
    assert [(e.quarantined, e.reason) for e in events] == [(True, FAILURE_RATIO), (True, CREDENTIALS)]
    await g.aclose()


async def test_a_probe_answered_with_a_rejection_counts_as_the_app_being_back() -> None:
    probe, sleeps = Probe(), Sleeps()
    events: list[QuarantineEvent] = []
    g = gate(probe, sleeps, events)
    for _ in range(4):
        g.failed(DOWN)
    probe.error = RejectedError("the filter is ignored", status=200)
    await settle()
    assert not g.active


async def test_an_open_gate_does_not_block() -> None:
    g = gate(Probe(), Sleeps(), [])
    await asyncio.wait_for(g.wait(), timeout=1)


def broken_listener(event: QuarantineEvent) -> None:
    raise RuntimeError(f"bug while handling {event.reason}")


async def test_listeners_see_the_gate_open_when_told_it_left() -> None:
    probe, sleeps = Probe(), Sleeps()
    seen: list[tuple[bool, bool]] = []
    g = QuarantineGate(SETTINGS, probe=probe, clock=Clock(), sleep=sleeps)
    g.on_quarantine(lambda e: seen.append((e.quarantined, g.active)))
    g.on_quarantine(broken_listener)  # a broken listener changes nothing for the others
    for _ in range(4):
        g.failed(DOWN)
    probe.down = False
    await settle()
    assert seen == [(True, True), (False, False)]
