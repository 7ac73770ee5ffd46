"""Dry run through the whole pipeline: every decision reported as ``dryRun``, nothing written;
then the same app for real performs exactly the actions the dry run announced."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest
import yaml

from schemas.codecs import encode
from schemas.control import Restart
from services.runtime.kafka import plain_producer
from tests.conftest import APP, Pipeline, user

pytestmark = pytest.mark.e2e

Factory = Callable[..., Pipeline]


def test_dry_run_writes_nothing_and_a_real_run_then_does_what_it_announced(
        pipeline_factory: Factory) -> None:
    users = [user(i) for i in range(12)]
    p = pipeline_factory(users, app={**APP, "dry_run": True}, start=False)
    adopted = p.scim.create({"userName": "user3@example.com", "title": "Old"})
    p.sup.start()
    p.wait_for("12 dry-run records", lambda: len(p.activity()) >= 12)
    dry = sorted((a.source_id, a.action) for a in p.activity())
    assert {a.status for a in p.activity()} == {"dryRun"}
    assert [a for a, action in dry if action == "adopt"] == ["u00003"]
    assert p.scim.count() == 1 and p.scim.by_username()["user3@example.com"]["title"] == "Old"

    # The same config for real: restart the writer with dry_run off, then ask for a restart
    # of the app, which makes ingest scan the source again (the initial cycle).
    p.sup.stop_one("writer")
    config = yaml.safe_load(p.sup.config.read_text())
    config["applications"][0]["dry_run"] = False
    p.sup.config.write_text(yaml.safe_dump(config, sort_keys=False))
    p.sup.start_one("writer")
    producer = plain_producer(p.bootstrap)
    producer.send(p.topics.control, key=b"app/restart", value=encode(Restart(
        app="app", request_id="dry-then-real", by="test", at=datetime.now(UTC))))
    producer.flush()
    producer.close()
    p.wait_for("12 real outcomes", lambda: sum(a.status == "success" for a in p.activity()) >= 12,
               timeout=60)
    real = sorted((a.source_id, a.action) for a in p.activity() if a.status == "success")
    assert real == dry
    assert p.scim.count() == 12 and p.scim.by_username()["user3@example.com"]["id"] == adopted["id"]
