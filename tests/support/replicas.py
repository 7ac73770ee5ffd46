"""Replicas of a worker in one consumer group, watched from outside: how many members the
group has, and what each writer process did (from its own log file).

Used by the e2e tests that run two mappers and two writers on one broker
(``tests/e2e/test_replicas.py``) and by ``bench/replicas.py``.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path

from kafka import KafkaAdminClient
from kafka.errors import KafkaError

__all__ = ["members", "outcomes", "wait_members"]

# kafka-python warns at each describe that it cannot decode faust's member metadata (a
# custom assignor's): the group's state and member count, all we read, are decoded.
logging.getLogger("kafka.admin._groups").setLevel(logging.ERROR)


def members(bootstrap: str, group: str) -> int:
    """How many members ``group`` has while it is stable (0 while it rebalances)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="test-replicas")
    try:
        found = admin.describe_groups([group]).get(group, {})
    except KafkaError:
        return 0  # e.g. its coordinator is not elected yet
    finally:
        admin.close()
    return len(found.get("members", [])) if found.get("group_state") == "Stable" else 0


def wait_members(bootstrap: str, group: str, count: int, timeout: float = 60.0) -> None:
    """Wait until ``group`` is stable with ``count`` members (each has its partitions)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if members(bootstrap, group) == count:
            return
        time.sleep(0.5)
    raise AssertionError(f"group {group} did not become stable with {count} members in {timeout:.0f}s")


def outcomes(log: Path) -> Counter[tuple[str, str]]:
    """(action, status) of each outcome a writer process logged (``"event": "outcome"``)."""
    seen: Counter[tuple[str, str]] = Counter()
    if not log.exists():
        return seen
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        if '"outcome"' not in line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == "outcome":
            seen[(str(record.get("action")), str(record.get("status")))] += 1
    return seen
