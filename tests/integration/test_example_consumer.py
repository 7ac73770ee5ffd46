"""examples/consume_activity.py works against a real broker and the published contract."""

from __future__ import annotations

import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import pytest

from schemas import ActivityRecord, ModifiedProperty
from schemas.codecs import encode
from services.devstack.broker import Broker
from services.runtime.kafka import create_topics, plain_producer
from services.runtime.topics import Topics

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).parents[2] / "examples" / "consume_activity.py"


def activity(app: str, status: Literal["success", "failure"], who: str) -> ActivityRecord:
    return ActivityRecord(
        id=str(uuid.uuid4()), at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), app=app,
        object_type="user", action="update", status=status, source="hr", source_id=who,
        source_identity=f"{who}@example.com", target_id="t-1",
        modified_properties=[ModifiedProperty(name="title", old_value="A", new_value="B")],
    )


def test_example_consumer_filters_and_prints_outcomes(broker: Broker) -> None:
    topics = Topics(f"ex{uuid.uuid4().hex[:6]}.", 3)
    create_topics(broker.bootstrap, topics.specs())
    producer = plain_producer(broker.bootstrap)
    for record in (activity("crm", "success", "ada"), activity("crm", "failure", "bob"),
                   activity("hr", "failure", "eve")):
        producer.send(topics.activity, key=record.source_id.encode(), value=encode(record))
    producer.send(topics.activity, key=b"junk", value=b"not json")
    producer.flush()
    producer.close()
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), "--bootstrap", broker.bootstrap, "--prefix", topics.prefix,
         "--from-beginning", "--status", "failure", "--idle", "5", "--group", uuid.uuid4().hex],
        capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert sorted(lines) == sorted([
        "2026-01-02T03:04:05Z crm update failure bob@example.com target=t-1 title: 'A' -> 'B'",
        "2026-01-02T03:04:05Z hr update failure eve@example.com target=t-1 title: 'A' -> 'B'",
    ])
    assert "not an ActivityRecord" in done.stderr
