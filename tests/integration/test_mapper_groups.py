"""The mapper's group and reference commands on a real broker: real ingest and mapper
workers, and the commands topic read back (the writer is not running)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from schemas import DirectoryChange, ProvisioningCommand
from schemas.codecs import encode
from services.devstack.broker import Broker
from services.mapper.group_feed import GroupFeed
from services.runtime.kafka import create_topics, follow_from_start, plain_producer
from services.runtime.topics import TopicSpec
from tests.conftest import APP, Pipeline, read_all, user

pytestmark = pytest.mark.integration

Factory = Callable[..., Pipeline]
MANAGER = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager"

GROUP_APP: dict[str, Any] = {
    **APP,
    "assignments": {"groups": ["eng"]},
    "mappings": {
        "user": {"attributes": [
            {"target": "userName", "source": "userPrincipalName", "matching": 1},
            {"target": MANAGER, "source": "manager", "reference": "user"},
        ]},
        "group": {"attributes": [
            {"target": "displayName", "source": "displayName", "matching": 1},
            {"target": "externalId", "source": "id"},
        ]},
    },
}


def commands(p: Pipeline, expected: int, timeout: float = 40.0) -> dict[str, ProvisioningCommand]:
    """The latest command per source id, once ``expected`` objects have one."""
    deadline = time.monotonic() + timeout
    while True:
        latest = {c.source_id: c for c in read_all(p.bootstrap, p.topics.commands, ProvisioningCommand)}
        if len(latest) >= expected or time.monotonic() > deadline:
            return latest
        assert not p.sup.dead(), f"workers died; logs in {p.dir / 'logs'}"
        time.sleep(0.3)


def test_groups_and_references_on_the_commands_topic(pipeline_factory: Factory) -> None:
    users = [user(0), user(1, manager="u00000"), user(2, manager=None)]
    groups = [{"id": "eng", "displayName": "Engineering", "members": ["u00000", "u00001", "backend"]},
              {"id": "backend", "displayName": "Backend", "members": ["u00002"]}]
    p = pipeline_factory(users, app=GROUP_APP, groups=groups, start=False)
    p.sup.start(["ingest", "mapper"])
    got = commands(p, 5)
    assert set(got) == {"u00000", "u00001", "u00002", "eng", "backend"}
    eng = got["eng"]
    assert (eng.object_type, eng.operation, eng.reason) == ("group", "upsert", "group eng is assigned")
    assert eng.members == ["u00000", "u00001", "backend"]
    assert eng.attributes == {"displayName": "Engineering", "externalId": "eng"}
    assert [(m.target, m.value) for m in eng.matching] == [("displayName", "Engineering")]
    backend = got["backend"]
    assert (backend.operation, backend.reason) == ("deprovision", "group backend is not assigned")
    assert got["u00001"].references == {MANAGER: "u00000"}
    assert MANAGER not in got["u00001"].attributes
    # u00002 is in backend only, and this app does not expand nested groups.
    assert got["u00002"].operation == "deprovision"
    assert got["u00000"].references == {} and got["u00000"].attributes[MANAGER] is None


def test_group_feed_is_ready_only_with_every_group_of_the_topic_then_follows(broker: Broker) -> None:
    topic = f"t{uuid.uuid4().hex[:8]}.directory.changes"
    create_topics(broker.bootstrap, [TopicSpec(topic, 3)])
    producer = plain_producer(broker.bootstrap)
    expected: dict[str, frozenset[str]] = {}
    for version in range(3):  # later versions replace earlier ones, per key, in order
        for i in range(300):
            gid = f"g{i}"
            members = frozenset({f"u{i}-{version}", f"g{i + 1}"})
            producer.send(topic, key=gid.encode(), value=encode(_group(gid, members)))
            expected[gid] = members
    for i in range(0, 300, 10):
        producer.send(topic, key=f"g{i}".encode(), value=encode(_group(f"g{i}", frozenset(), "delete")))
        expected.pop(f"g{i}")
    producer.send(topic, key=b"junk", value=b"{not json")
    producer.flush()

    async def values_before_caught_up() -> int:
        seen = 0
        async for value in follow_from_start(broker.bootstrap, topic):
            if value is None:
                return seen
            seen += 1
        raise AssertionError("the topic ended")  # unreachable: following never ends

    # Every record on the topic when the read began comes before the caught-up mark.
    assert asyncio.run(asyncio.wait_for(values_before_caught_up(), 20)) == 3 * 300 + 30 + 1

    async def run() -> None:
        feed = GroupFeed(broker.bootstrap, topic)
        task = asyncio.create_task(feed.run())
        try:
            await asyncio.wait_for(feed.ready.wait(), 20)
            assert len(feed.graph) == len(expected)
            assert {g: feed.graph.members(g) for g in expected} == expected
            assert feed.graph.path_to(["u7-2"], {"g3"}) == ["u7-2", "g7", "g6", "g5", "g4", "g3"]
            live = frozenset({"late-user"})
            producer.send(topic, key=b"g-late", value=encode(_group("g-late", live)))
            producer.flush()
            deadline = time.monotonic() + 10
            while feed.graph.members("g-late") != live:
                assert time.monotonic() < deadline, "the feed did not follow a new group"
                await asyncio.sleep(0.05)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    try:
        asyncio.run(run())
    finally:
        producer.close()


def _group(gid: str, members: frozenset[str], op: Any = "upsert") -> DirectoryChange:
    return DirectoryChange(source="hr", object_type="group", object_id=gid, operation=op,
                           members=sorted(members), change_id="c", observed_at=datetime.now(UTC))
