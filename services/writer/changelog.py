"""Follow a compacted changelog topic whole — keys, values and tombstones — without a group.

``services.runtime.kafka.follow_topic`` yields values only and skips tombstones, which is
right for the control topic but not for the managed-state changelog: a deleted object's
tombstone must remove its link. This belongs in ``services/runtime/kafka.py`` (the one
module that owns Kafka clients) as ``follow_records``; it lives here until that lands.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiokafka import AIOKafkaConsumer, TopicPartition

__all__ = ["follow_records"]


async def follow_records(bootstrap: str, topic: str) -> AsyncIterator[tuple[bytes | None, bytes | None]]:
    """Every ``(key, value)`` of ``topic`` from the beginning of every partition, then new
    ones as they come; ``value`` is None for a tombstone. No consumer group, no commits:
    each writer replica sees every partition."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or {0}
        consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
        async for record in consumer:
            yield record.key, record.value
    finally:
        await consumer.stop()
