"""A writer's on-disk state kept across a deleted and created-again changelog is rebuilt.

The same cluster, the same topic prefix and state dir: only the writer's changelog topics
were deleted (an operator's reset, a topic lost and created again) while its RocksDB slot
kept the table and offsets read from the old ones. Trusted, faust's recovery stops the
writer (offsets past the new topic's end: ConsistencyError) or the writer acts on accounts
the new changelog has no record of. The slot must be emptied and restored instead.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from kafka import KafkaAdminClient

from services.devstack.broker import Broker
from services.devstack.scim_target import ScimTarget
from tests.integration.test_state_provenance import _active, _run

pytestmark = pytest.mark.integration


def _delete_changelogs(bootstrap: str, app_id: str) -> list[str]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="test-reset")
    try:
        names = [t for t in admin.list_topics() if t.startswith(f"{app_id}-") and t.endswith("-changelog")]
        admin.delete_topics(names, timeout_ms=30_000)
        deadline = time.monotonic() + 30
        while set(names) & set(admin.list_topics()) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        admin.close()
    return names


def test_a_state_dir_kept_across_a_recreated_changelog_is_rebuilt(
        broker: Broker, scim_target: ScimTarget, tmp_path: Path) -> None:
    prefix, state_dir = f"t{uuid.uuid4().hex[:8]}.", tmp_path / "state"
    names = [f"user{i}@example.com" for i in range(6)]

    first = _run(broker.bootstrap, scim_target, tmp_path / "first", prefix, state_dir, list(range(6)))
    try:
        first.wait_for("six users provisioned", lambda: sorted(_active(first)) == names)
    finally:
        first.sup.stop()
    assert _delete_changelogs(broker.bootstrap, f"{prefix}writer")

    second = _run(broker.bootstrap, scim_target, tmp_path / "second", prefix, state_dir, [0, 1, 2])
    try:
        second.wait_for("the scan's three users adopted", lambda: {
            a.source_id for a in second.activity() if a.action == "adopt"} == {
            "u00000", "u00001", "u00002"})
        time.sleep(3)  # the sweep of a scan runs after its last object: give it its time
        assert not second.sup.dead()
        assert _active(second) == dict.fromkeys(names, True)  # none disabled
        assert second.errors() == []
    finally:
        second.sup.kill_all()
    log = (tmp_path / "second" / "logs" / "writer.log").read_text()
    assert "was deleted and created again" in log and "ConsistencyError" not in log
