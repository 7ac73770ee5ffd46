"""The writer process on a real broker: retries survive kill -9, escrow survives a restart,
references and group members resolve, and the control topic's Restart and AppHealth work.

Only the writer runs: the tests produce provisioning commands themselves (as the mapper
would), so each test controls exactly what the writer sees. A fault proxy sits between the
writer and the real scim2-server.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from kafka import KafkaAdminClient

from schemas import ProvisioningCommand
from schemas.codecs import encode
from schemas.control import AppHealth, Restart
from services.runtime.kafka import consume, plain_producer
from tests.conftest import Pipeline
from tests.support.faultproxy import FaultProxy
from tests.support.writer_harness import MANAGER, group_cmd, user_cmd

pytestmark = pytest.mark.e2e

Factory = Callable[..., Pipeline]


def writer_app(proxy: FaultProxy, **retries: Any) -> dict[str, Any]:
    return {
        "name": "app",
        "target": {"base_url": proxy.url, "token": "env:TEST_SCIM_TOKEN",
                   "retries": {"attempts": 1, "initial_wait": 0.2, "max_wait": 1.0, **retries},
                   # These tests are about per-object retries, not about the app's quarantine,
                   # and about single creates (scim2-server offers /Bulk, which would batch them).
                   "quarantine": {"min_calls": 100000}, "bulk": "off"},
        "deletion_threshold": 0,
        "mappings": {"user": {"attributes": [{"target": "userName", "source": "upn", "matching": 1}]},
                     "group": {"attributes": [{"target": "displayName", "source": "name", "matching": 1}]}},
    }


def writer_only(factory: Factory, proxy: FaultProxy, **retries: Any) -> Pipeline:
    p = factory([], app=writer_app(proxy, **retries), start=False)
    p.sup.start(["writer"])
    return p


def produce(p: Pipeline, *commands: ProvisioningCommand) -> None:
    producer = plain_producer(p.bootstrap)
    for c in commands:
        producer.send(p.topics.commands, key=f"{c.app}/{c.source_id}".encode(), value=encode(c))
    producer.flush()
    producer.close()


def control(p: Pipeline, key: str, message: msgspec.Struct) -> None:
    producer = plain_producer(p.bootstrap)
    producer.send(p.topics.control, key=key.encode(), value=encode(message))
    producer.flush()
    producer.close()


def committed(p: Pipeline) -> int:
    """Commands the writer's consumer group has committed, over all partitions."""
    admin = KafkaAdminClient(bootstrap_servers=p.bootstrap)
    try:
        group = p.topics.app_id("writer")
        offsets = admin.list_group_offsets(group).get(group, {})
    finally:
        admin.close()
    return sum(o.offset for tp, o in offsets.items() if tp.topic == p.topics.commands and o.offset > 0)


def user_names(p: Pipeline) -> Counter[str]:
    return Counter(u["userName"] for u in p.scim.users())


def test_kill_9_while_objects_wait_for_retry_loses_nothing(pipeline_factory: Factory,
                                                           proxy: FaultProxy) -> None:
    p = writer_only(pipeline_factory, proxy, escrow_after=1000)
    proxy.fail(503, method="POST", path="/Users")
    produce(p, *(user_cmd(i) for i in range(40)))
    p.wait_for("every object failed at least once",
               lambda: len({e.json()["userName"] for e in proxy.requests("POST", "/Users")}) == 40)
    p.sup.kill("writer")
    assert user_names(p) == Counter()
    proxy.clear()
    p.sup.start_one("writer")
    p.wait_for("40 users", lambda: p.scim.count() >= 40, timeout=60)
    names = user_names(p)
    assert set(names) == {f"u{i}@example.com" for i in range(40)} and max(names.values()) == 1
    assert [e for e in p.errors() if e.error_code != "TransientTargetError"] == []


def test_escrowed_object_is_reported_once_survives_a_restart_and_is_applied_later(
        pipeline_factory: Factory, proxy: FaultProxy) -> None:
    p = writer_only(pipeline_factory, proxy, escrow_after=2)
    proxy.fail(503, method="POST", path="/Users")
    produce(p, user_cmd(1))
    p.wait_for("the escrow record", lambda: any(e.error_code == "ObjectEscrowed" for e in p.errors()))
    produce(p, user_cmd(2, operation="deprovision"))  # the partition goes on (nothing to do: unmanaged)
    p.wait_for("the next command's outcome", lambda: any(a.source_id == "u2" for a in p.activity()))
    # Escrowed means acknowledged: the group's committed offsets cover both commands, so
    # after the restart u1 can only come back from the escrow table, not from a replay.
    p.wait_for("both offsets committed", lambda: committed(p) == 2, timeout=30)
    time.sleep(1.5)  # the escrow timer retries it at least once more, silently
    p.sup.stop_one("writer")
    proxy.clear()
    p.sup.start_one("writer")
    p.wait_for("the escrowed user", lambda: p.scim.count() == 1, timeout=60)
    assert user_names(p) == Counter({"u1@example.com": 1})
    escrowed = [e for e in p.errors() if e.error_code == "ObjectEscrowed"]
    assert len(escrowed) == 1 and escrowed[0].source_id == "u1" and escrowed[0].attempts == 2
    assert "503" in escrowed[0].reason
    p.wait_for("the create record", lambda: any(a.action == "create" for a in p.activity()))


def test_references_and_members_resolve_across_partitions_and_restart_resets_links(
        pipeline_factory: Factory, proxy: FaultProxy) -> None:
    p = writer_only(pipeline_factory, proxy)
    produce(p, user_cmd("report", manager="boss"), group_cmd("g1", "Team", ["report", "boss"]))
    p.wait_for("report and group", lambda: len(p.activity()) >= 2)
    produce(p, user_cmd("boss"))
    p.wait_for("boss is the manager", lambda: _manager_of(p, "report@example.com") is not None)
    users = p.scim.by_username()
    assert _manager_of(p, "report@example.com") == users["boss@example.com"]["id"]
    group = p.scim.http.get("/Groups").json()["Resources"][0]
    p.wait_for("two members", lambda: len(p.scim.http.get(f"/Groups/{group['id']}").json()
                                          .get("members", [])) == 2)

    control(p, "app/restart", Restart(app="app", request_id="r1", reset_links=True, by="test",
                                      at=datetime.now(UTC)))
    p.wait_for("restart handled", lambda: "writer state of app cleared" in _log(p))
    produce(p, user_cmd("boss"), user_cmd("report", manager="boss"))
    p.wait_for("adopted again", lambda: sum(a.action == "adopt" for a in p.activity()) == 2)
    assert user_names(p) == Counter({"boss@example.com": 1, "report@example.com": 1})


def test_quarantine_is_published_on_the_control_topic(pipeline_factory: Factory,
                                                      proxy: FaultProxy) -> None:
    app = writer_app(proxy)
    app["target"]["quarantine"] = {"min_calls": 5, "failure_ratio": 0.8, "probe_initial": 1.0}
    p = pipeline_factory([], app=app, start=False)
    p.sup.start(["writer"])
    # The outage starts once the writer consumes: started before, it could end (on a loaded
    # machine) before the writer made a single call, and nothing would be quarantined.
    p.wait_for("the writer to restore its state", lambda: "writer state restored" in _log(p), timeout=90)
    proxy.outage(4.0, mode="503")
    produce(p, *(user_cmd(i) for i in range(10)))
    p.wait_for("10 users after the outage", lambda: p.scim.count() == 10, timeout=60)
    health = [msgspec.json.decode(r.value, type=AppHealth) for r in consume(p.bootstrap, p.topics.control)
              if r.key == b"app/health"]
    assert [h.quarantined for h in health] == [True, False]
    assert [e.error_code for e in p.errors() if e.error_code == "AppQuarantined"] == ["AppQuarantined"]


def _manager_of(p: Pipeline, user_name: str) -> str | None:
    user = p.scim.by_username().get(user_name, {})
    value = user.get(MANAGER.rsplit(":", 1)[0], {}).get("manager", {}).get("value")
    return str(value) if value else None


def _log(p: Pipeline) -> str:
    return (p.dir / "logs" / "writer.log").read_text(errors="replace")
