"""On-disk state kept across a new Kafka cluster is emptied, not trusted.

`scimflow up` keeps its state dir in ~/.cache while each run may start a fresh embedded
broker; a pod's volume may outlive the cluster it was built from (disaster recovery, a
re-created dev cluster). The writer's RocksDB slot then holds a managed table that the new
cluster's changelogs do not have. Trusted, it makes faust's recovery stop the writer (its
stored offsets are past the new changelog's end: ConsistencyError) or, worse, makes the
writer believe it manages accounts it has no record of on this cluster, and the first full
scan's sweep disables every one missing from the directory.

Here the same workers (same topic prefix, same state dir) run first on the session broker,
provisioning six users, then on a second, new broker (or on the same one after the writer's
changelogs were deleted) whose directory holds three. The three others are in the target,
but this cluster's scimflow never provisioned them: they must be left alone, and the writer
must live.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
from kafka import KafkaAdminClient

from services.devstack.broker import Broker, start_broker
from services.devstack.scim_target import ScimTarget
from services.runtime.settings import load_settings
from services.runtime.state import MARKER
from tests.conftest import APP, Pipeline, Scim, launch, user

pytestmark = pytest.mark.integration


def _run(bootstrap: str, target: ScimTarget, folder: Path, prefix: str, state_dir: Path,
         users: list[int]) -> Pipeline:
    folder.mkdir()
    config = {"sources": [{"name": "hr", "type": "file", "path": "directory.yaml", "poll_interval": 0.1}],
              "applications": [APP]}
    env = {"SCIMFLOW_STATE_STORE": "rocksdb", "SCIMFLOW_STATE_DIR": str(state_dir)}
    topics, sup = launch(bootstrap, target, folder, config, env, prefix=prefix)
    p = Pipeline(folder, topics, bootstrap, Scim(target), sup, folder / "directory.yaml")
    p.write_directory([user(i) for i in users])
    sup.start()
    return p


def _active(p: Pipeline) -> dict[str, bool]:
    return {u["userName"]: u.get("active", True) for u in p.scim.users()}


def _provisioned_six(broker: Broker, target: ScimTarget, folder: Path, prefix: str,
                     state_dir: Path) -> list[str]:
    """Six users provisioned by workers on ``prefix`` with RocksDB state in ``state_dir``,
    then stopped; their user names."""
    names = [f"user{i}@example.com" for i in range(6)]
    first = _run(broker.bootstrap, target, folder, prefix, state_dir, list(range(6)))
    try:
        first.wait_for("six users provisioned", lambda: sorted(_active(first)) == names)
    finally:
        first.sup.stop()
    return names


def _three_adopted_none_disabled(bootstrap: str, target: ScimTarget, folder: Path, prefix: str,
                                 state_dir: Path, names: list[str]) -> str:
    """The same workers and state dir with three of the six in the directory: the writer
    lives, adopts the three, disables none of the others. Its log."""
    second = _run(bootstrap, target, folder, prefix, state_dir, [0, 1, 2])
    try:
        # The full scan ends with its sweep; the directory's three were adopted (matched by
        # userName): this cluster's scimflow never provisioned them.
        second.wait_for("the scan's three users adopted", lambda: {
            a.source_id for a in second.activity() if a.action == "adopt"} == {
            "u00000", "u00001", "u00002"})
        time.sleep(3)  # the sweep of a scan runs after its last object: give it its time
        assert not second.sup.dead()
        assert _active(second) == dict.fromkeys(names, True)  # none disabled
        assert second.errors() == []
    finally:
        second.sup.kill_all()
    return (folder / "logs" / "writer.log").read_text()


def test_a_state_dir_from_another_cluster_is_emptied_and_its_accounts_left_alone(
        broker: Broker, scim_target: ScimTarget, tmp_path: Path) -> None:
    prefix, state_dir = f"t{uuid.uuid4().hex[:8]}.", tmp_path / "state"
    names = _provisioned_six(broker, scim_target, tmp_path / "first", prefix, state_dir)
    [slot] = (state_dir / f"{prefix}writer").glob("slot-*")
    assert json.loads((slot / MARKER).read_text())["topics"]  # the changelogs it was built from

    with start_broker(load_settings(), kind=broker.kind) as other:
        log = _three_adopted_none_disabled(other.bootstrap, scim_target, tmp_path / "second", prefix,
                                           state_dir, names)
    # The dev broker formats every new cluster with the same id: its new topic ids tell.
    assert "emptied" in log and "ConsistencyError" not in log


def test_a_state_dir_kept_across_a_recreated_changelog_is_rebuilt(
        broker: Broker, scim_target: ScimTarget, tmp_path: Path) -> None:
    """The same cluster, prefix and state dir: only the writer's changelogs were deleted (an
    operator's reset, a topic lost and created again)."""
    prefix, state_dir = f"t{uuid.uuid4().hex[:8]}.", tmp_path / "state"
    names = _provisioned_six(broker, scim_target, tmp_path / "first", prefix, state_dir)
    assert _delete_changelogs(broker.bootstrap, f"{prefix}writer")
    log = _three_adopted_none_disabled(broker.bootstrap, scim_target, tmp_path / "second", prefix,
                                       state_dir, names)
    assert "was deleted and created again" in log and "ConsistencyError" not in log


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
