"""A target that throttles, fails and goes down for a minute in the middle of a sync.

The whole pipeline (three worker processes, real broker) provisions 200 users into a real
scim2-server through the fault proxy: 30 % of requests fail transiently (503 with
``Retry-After: 1``), and after the first 60 users the target is unreachable for 60 s.
The app is quarantined, leaves quarantine by itself, and the target ends exactly right.
(429s, which also lower the client's rate limits, are covered by
tests/integration/test_scim_client_faults.py and test_writer_objects.py.)
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

from schemas.control import AppHealth, ControlMessage
from services.devstack.scim_target import ScimTarget
from tests.conftest import APP, Pipeline, read_all, user
from tests.support.faultproxy import FaultProxy, LogEntry

USERS = 200
OUTAGE = 60.0


def _app(proxy: FaultProxy) -> dict[str, Any]:
    target = {"base_url": proxy.url, "token": "env:TEST_SCIM_TOKEN",
              "retries": {"attempts": 3, "escrow_after": 1000, "initial_wait": 0.2, "max_wait": 5},
              "quarantine": {"min_calls": 20, "failure_ratio": 0.8, "window": 20,
                             "probe_initial": 2, "probe_max": 8},
              # One request per create: the faults and the quarantine count requests, and a
              # /Bulk would carry the whole sync in a few.
              "bulk": "off"}
    return {**APP, "target": target}


def _health(p: Pipeline) -> list[AppHealth]:
    return [m for m in read_all(p.bootstrap, p.topics.control, ControlMessage) if isinstance(m, AppHealth)]


def _retry_after_gaps(log: list[LogEntry]) -> list[float]:
    """For every 503 the proxy sent, the time until the same request came again."""
    last_429: dict[tuple[str, str, str, bytes], float] = {}
    gaps = []
    for entry in log:
        key = (entry.method, entry.path, entry.query, entry.body)
        if key in last_429:
            gaps.append(entry.at - last_429.pop(key))
        if entry.fault == "503":
            last_429[key] = entry.at
    return gaps


def test_transient_failures_and_a_minute_long_outage_lose_nothing(
        pipeline_factory: Callable[..., Pipeline], scim_target: ScimTarget) -> None:
    with FaultProxy(scim_target.base_url) as proxy:
        proxy.fail(503, retry_after="1", probability=0.3)
        users = [user(i) for i in range(USERS)]
        p = pipeline_factory(users, app=_app(proxy))
        p.wait_for("the first 60 users", lambda: p.scim.count() >= 60, timeout=120)

        proxy.outage(OUTAGE)
        down = time.monotonic()
        p.wait_for("quarantine", lambda: any(h.quarantined for h in _health(p)), timeout=OUTAGE)
        assert p.scim.count() < USERS, "the outage must hit the sync in the middle"
        p.wait_for("every user", lambda: p.scim.count() == USERS, timeout=OUTAGE + 180)
        assert time.monotonic() - down >= OUTAGE - 1

        health = _health(p)
        entered = next(i for i, h in enumerate(health) if h.quarantined)
        assert any(not h.quarantined for h in health[entered + 1:]), "quarantine must end by itself"
        quarantined = [e for e in p.errors() if e.error_code == "AppQuarantined"]
        assert len(quarantined) == 1, [e.reason for e in quarantined]  # once per reason

        names = Counter(u["userName"] for u in p.scim.users())
        assert names == Counter(f"user{i}@example.com" for i in range(USERS))  # none missing, no duplicate

        log = proxy.log
        faults: dict[str | None, int] = defaultdict(int)
        for entry in log:
            faults[entry.fault] += 1
        assert faults["503"] > 30 and faults["outage"] > 0
        gaps = _retry_after_gaps(log)
        assert gaps, "some throttled request must have been retried"
        assert min(gaps) >= 0.95, f"a retry came {min(gaps):.2f}s after a Retry-After: 1"


def test_a_target_failing_everything_after_a_good_sync_shows_within_seconds(
        pipeline_factory: Callable[..., Pipeline], scim_target: ScimTarget) -> None:
    with FaultProxy(scim_target.base_url) as proxy:
        # The default quarantine settings: a 300 s window that hundreds of good calls fill.
        app = {**APP, "target": {"base_url": proxy.url, "token": "env:TEST_SCIM_TOKEN", "bulk": "off"}}
        users = [user(i) for i in range(100)]
        p = pipeline_factory(users, app=app)
        p.wait_for("the initial sync", lambda: p.scim.count() == 100, timeout=120)

        proxy.fail(500)  # every request, until cleared
        failing = time.monotonic()
        p.write_directory([{**u, "displayName": f"Renamed {u['id']}"} for u in users])
        p.wait_for("the app quarantined", lambda: any(h.quarantined for h in _health(p)), timeout=30)
        assert time.monotonic() - failing < 20
        [error] = [e for e in p.errors() if e.error_code == "AppQuarantined"]
        assert "calls in a row failed" in error.reason

        proxy.clear()
        p.wait_for("quarantine over", lambda: not _health(p)[-1].quarantined, timeout=60)
