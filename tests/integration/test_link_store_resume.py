"""The writer's on-disk link index on a real broker: a restart resumes from the offsets it
stored and still resolves references; a changelog that no longer has those offsets (the
topic was recreated) is read again from its start into an emptied store."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from schemas import ManagedObject, ProvisioningCommand
from schemas.codecs import encode
from services.devstack.broker import Broker
from services.runtime.kafka import create_topics, partition_for, plain_producer
from services.runtime.topics import TopicSpec
from services.writer.link_store import RocksLinkStore, follow_links
from services.writer.links import LinkIndex, resolve

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

PARTITIONS = 3
NOW = datetime.now(UTC)


def state(source_id: str, target_id: str) -> ManagedObject:
    return ManagedObject(app="a", object_type="user", source_id=source_id, target_id=target_id,
                         attributes={}, origin="created", created_at=NOW, updated_at=NOW)


def produce(bootstrap: str, topic: str, records: list[tuple[str, bytes | None]]) -> None:
    producer = plain_producer(bootstrap)
    for source_id, value in records:
        key = f"a/{source_id}".encode()
        producer.send(topic, key=key, value=value, partition=partition_for(key, PARTITIONS))
    producer.flush()
    producer.close()


async def run_until_caught_up(bootstrap: str, topic: str, path: Path) -> tuple[LinkIndex, list[bytes]]:
    """Follow ``topic`` with a store at ``path`` until caught up, then stop (as at shutdown);
    the keys of the records it read."""
    links = LinkIndex(RocksLinkStore(path))
    seen: list[bytes] = []
    caught_up = asyncio.Event()
    calls: list[int] = []

    def on_record(key: bytes | None, value: bytes | None) -> None:
        seen.append(key or b"")
        links.apply(key, value)

    def done() -> None:
        calls.append(1)
        caught_up.set()

    task = asyncio.create_task(follow_links(bootstrap, topic, links, on_record=on_record,
                                            on_caught_up=done))
    await asyncio.wait_for(caught_up.wait(), 60)
    await asyncio.sleep(0.5)  # nothing more arrives: nothing more is read
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert calls == [1]
    return links, seen


def close(links: LinkIndex) -> None:
    """Close the store as a stopping worker does (a restart opens the same files again)."""
    assert isinstance(links.store, RocksLinkStore)
    links.store.close()


def group(members: list[str]) -> ProvisioningCommand:
    return ProvisioningCommand(app="a", object_type="group", source="s", source_id="g1",
                               operation="upsert", reason="in scope", change_id="c",
                               observed_at=NOW, members=members)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_restarted_link_index_resumes_from_its_offsets(broker: Broker, tmp_path: Path,
                                                               anyio_backend: str) -> None:
    topic = f"links-{uuid.uuid4().hex[:8]}"
    create_topics(broker.bootstrap, [TopicSpec(topic, PARTITIONS, compacted=True)])
    produce(broker.bootstrap, topic, [(f"u{i}", encode(state(f"u{i}", f"T{i}"))) for i in range(12)])
    links, seen = await run_until_caught_up(broker.bootstrap, topic, tmp_path / "links")
    assert len(seen) == 12 and len(links) == 12
    close(links)

    later: list[tuple[str, bytes | None]] = [("u1", None), ("u2", encode(state("u2", "T2b"))),
                                             ("u12", encode(state("u12", "T12")))]
    produce(broker.bootstrap, topic, later)
    links, seen = await run_until_caught_up(broker.bootstrap, topic, tmp_path / "links")
    assert sorted(seen) == sorted(f"a/{s}".encode() for s, _ in later)  # only what came after
    resolved = resolve(group(["u0", "u1", "u2", "u12"]), links)
    assert resolved.members == sorted(["T0", "T2b", "T12"]) and resolved.missing == ["u1"]
    assert links.owner("a", "T2") is None and links.owner("a", "T2b") == "u2" and len(links) == 12
    close(links)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_offsets_past_the_end_of_a_recreated_changelog_read_it_again_from_the_start(
        broker: Broker, tmp_path: Path, anyio_backend: str) -> None:
    old = f"links-{uuid.uuid4().hex[:8]}"
    create_topics(broker.bootstrap, [TopicSpec(old, PARTITIONS, compacted=True)])
    produce(broker.bootstrap, old, [(f"u{i}", encode(state(f"u{i}", f"T{i}"))) for i in range(9)])
    links, _ = await run_until_caught_up(broker.bootstrap, old, tmp_path / "links")
    close(links)

    # The same store against a changelog with fewer records: its offsets are past the end.
    new = f"links-{uuid.uuid4().hex[:8]}"
    create_topics(broker.bootstrap, [TopicSpec(new, PARTITIONS, compacted=True)])
    produce(broker.bootstrap, new, [("u0", encode(state("u0", "N0")))])
    links, seen = await run_until_caught_up(broker.bootstrap, new, tmp_path / "links")
    assert seen == [b"a/u0"]
    assert (links.target_id("a", "u0"), links.target_id("a", "u5"), len(links)) == ("N0", None, 1)
    close(links)

