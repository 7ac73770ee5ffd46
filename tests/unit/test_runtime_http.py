"""The HTTP helpers the SCIM client and the Graph source share: Retry-After in both of its
forms, and exponential backoff with jitter (its bounds, its growth, Retry-After as a floor).
OAuth2 client credentials are tested in tests/unit/test_auth.py."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from services.runtime.http import backoff_delay, parse_retry_after

NOW = datetime(2026, 1, 15, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("Thu, 15 Jan 2026 12:01:30 GMT", 90.0),
        ("Thursday, 15-Jan-26 12:00:45 GMT", 45.0),  # RFC 850, which recipients must accept
        ("Thu Jan 15 12:00:10 2026", 10.0),  # asctime
        ("Thu, 15 Jan 2026 11:00:00 GMT", 0.0),  # in the past: retry now
        ("soon", None),
        ("-5", None),
        ("1.5", None),  # delay-seconds is a whole number
        ("", None),
        (None, None),
    ],
)
def test_parse_retry_after(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header, now=NOW) == seconds


@pytest.mark.parametrize("attempt", [1, 2, 3, 4, 5, 6, 10])
def test_backoff_stays_within_half_and_whole_of_its_step(attempt: int) -> None:
    step = min(8.0, 0.5 * 2 ** (attempt - 1))
    assert backoff_delay(attempt, 0.5, 8.0, rand=lambda: 0.0) == step / 2
    assert backoff_delay(attempt, 0.5, 8.0, rand=lambda: 1.0) == step
    waits = [backoff_delay(attempt, 0.5, 8.0, rand=random.Random(attempt).random) for _ in range(200)]
    assert all(step / 2 <= wait <= step for wait in waits)


def test_backoff_is_jittered_so_failures_together_do_not_return_together() -> None:
    rand = random.Random(7).random
    waits = {backoff_delay(3, 1.0, 30.0, rand=rand) for _ in range(50)}
    assert len(waits) > 40


def test_retry_after_is_a_floor_never_a_ceiling() -> None:
    assert backoff_delay(1, 1.0, 30.0, retry_after=12.0, rand=lambda: 1.0) == 12.0
    assert backoff_delay(5, 1.0, 30.0, retry_after=0.5, rand=lambda: 0.0) == 8.0


def test_attempts_count_from_one() -> None:
    with pytest.raises(ValueError, match="counts from 1"):
        backoff_delay(0, 1.0, 30.0)
