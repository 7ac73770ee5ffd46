"""A partition whose records the consumer stops delivering is read again (watch_delivery).

faust sometimes drops every record of a partition after a rebalance (its read offset left
ahead of the records fetched again), with no later record to show the gap: under load a
writer restarted by kill -9 once left a third of a sync unwritten, with no error and no
activity. The worker here is a real faust worker on the real broker whose consumer is made
to do exactly that (tests.support.stall_worker); the watch must bring the records back while
the other partition goes on.

Records faust skips (fetched in an older generation) are sought back; the records after
them, which faust has already fetched, must wait for them, not be handled first, and each
record must reach the agent once.
"""

from __future__ import annotations

import contextlib
import os
import queue
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from kafka import KafkaAdminClient, TopicPartition

from services.devstack.broker import Broker
from services.runtime.kafka import create_topics, plain_producer
from services.runtime.topics import TopicSpec
from tests.support.stall_worker import topic_name

ROOT = Path(__file__).resolve().parents[2]


def _lines(stream: object, into: queue.Queue[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        into.put(line.rstrip("\n"))


class Worker:
    """tests.support.stall_worker on a fresh topic, and what it printed."""

    def __init__(self, broker: Broker, tmp_path: Path) -> None:
        prefix = f"st{uuid.uuid4().hex[:6]}."
        self.topic, self.group = topic_name(prefix), f"{prefix}stall"
        create_topics(broker.bootstrap, [TopicSpec(self.topic, 2)])
        env = {**os.environ, "SCIMFLOW_KAFKA_BOOTSTRAP": broker.bootstrap, "SCIMFLOW_TOPIC_PREFIX": prefix,
               "SCIMFLOW_PARTITIONS": "2", "SCIMFLOW_DATA_DIR": str(tmp_path / "data"),
               "SCIMFLOW_LOG_FORMAT": "console"}
        self.process = subprocess.Popen([sys.executable, "-m", "tests.support.stall_worker"], env=env,
                                        cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=_lines, args=(self.process.stdout, self._lines), daemon=True).start()
        self.seen: list[str] = []

    def wait_for(self, done: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            remaining = deadline - time.monotonic()
            assert remaining > 0, "timed out; the worker printed:\n" + "\n".join(self.seen[-40:])
            with contextlib.suppress(queue.Empty):
                self.seen.append(self._lines.get(timeout=min(remaining, 1.0)))

    def read_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            with contextlib.suppress(queue.Empty):
                self.seen.append(self._lines.get(timeout=remaining))

    def got(self, partition: int) -> list[str]:
        return [line.split()[3] for line in self.seen if line.startswith(f"got {partition} ")]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        finally:
            self.process.kill()


def _committed(broker: Broker, group: str, topic: str, partition: int, *, until: int) -> int | None:
    """The group's committed offset of the partition, once it is ``until`` (or after 30 s)."""
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        deadline, offset = time.monotonic() + 30, None
        while time.monotonic() < deadline:
            found = admin.list_group_offsets(group).get(group, {}).get(TopicPartition(topic, partition))
            offset = found.offset if found is not None else None
            if offset == until:
                break
            time.sleep(0.5)
        return offset
    finally:
        admin.close()


@contextlib.contextmanager
def _worker(broker: Broker, tmp_path: Path) -> Iterator[Worker]:
    worker = Worker(broker, tmp_path)
    try:
        yield worker
    finally:
        worker.stop()


def _send_after_ready(broker: Broker, tmp_path: Path, partition: int,
                      values: list[str]) -> tuple[Worker, int | None]:
    """Start a worker, wait for it to read ``ready`` on partition 0, send ``values`` to
    ``partition``, wait until it got them and 2 s more (a record delivered twice would come
    then); the worker (stopped) and the group's committed offset of ``partition`` once it
    reaches the end."""
    producer = plain_producer(broker.bootstrap)
    with _worker(broker, tmp_path) as worker:
        try:
            producer.send(worker.topic, value=b"ready", partition=0).get(timeout=30)
            worker.wait_for(lambda: worker.got(0) == ["ready"], timeout=90)
            end = len(worker.got(partition)) + len(values)  # offsets of a fresh topic
            for value in values:
                producer.send(worker.topic, value=value.encode(), partition=partition)
            producer.flush()
            worker.wait_for(lambda: len(worker.got(partition)) >= end, timeout=60)
            worker.read_for(2.0)
            committed = _committed(broker, worker.group, worker.topic, partition, until=end)
        finally:
            producer.close()
    return worker, committed


def test_a_partition_the_consumer_stopped_delivering_is_read_again(broker: Broker, tmp_path: Path) -> None:
    producer = plain_producer(broker.bootstrap)
    with _worker(broker, tmp_path) as worker:
        try:
            producer.send(worker.topic, value=b"stall", partition=1).get(timeout=30)
            worker.wait_for(lambda: "stalled" in worker.seen, timeout=90)
            for i in range(20):
                producer.send(worker.topic, value=f"late-{i}".encode(), partition=1)
            for i in range(5):
                producer.send(worker.topic, value=f"other-{i}".encode(), partition=0)
            producer.flush()
            worker.wait_for(lambda: len(worker.got(1)) == 21 and len(worker.got(0)) == 5, timeout=60)
        finally:
            producer.close()
    assert worker.got(1) == ["stall", *(f"late-{i}" for i in range(20))]  # each once, in order
    assert worker.got(0) == [f"other-{i}" for i in range(5)]
    warnings = [line for line in worker.seen if "records are not delivered" in line]
    assert warnings, "the records came back without the watch: the test provoked nothing"
    assert all("partition=1 " in line and "first=1 " in line for line in warnings), warnings


def test_records_after_skipped_ones_wait_for_them_and_each_comes_once(broker: Broker, tmp_path: Path) -> None:
    # One batch: 10 records, 10 that faust skips the first time, 180 after them. When the
    # watch sees the gap, faust holds the rest of the batch; it must not reach the agent
    # before the skipped records, and the records fetched again must not be dropped.
    values = [f"a-{i}" for i in range(10)] + [f"skip-{i}" for i in range(10)] + [f"b-{i}" for i in range(180)]
    worker, committed = _send_after_ready(broker, tmp_path, 0, values)
    assert worker.got(0) == ["ready", *values]
    assert committed == 1 + len(values)  # the records dropped and read again were acknowledged
    skipped = [line for line in worker.seen if "records were skipped" in line]
    assert skipped and all("first=11 " in line for line in skipped), skipped
    assert not [line for line in worker.seen if "records are not delivered" in line]


def test_records_dropped_at_the_head_of_a_partition_never_committed_are_read_again(
        broker: Broker, tmp_path: Path) -> None:
    # A writer killed before its first commit leaves its partitions with no committed
    # offset; faust of the survivor dropped the first records it fetched of one. The watch
    # asks the group (the broker: no commit) and the log (it starts at 0), so the first
    # record delivered, at 5, shows the gap.
    values = [f"head-{i}" for i in range(5)] + [f"x-{i}" for i in range(5)]
    worker, committed = _send_after_ready(broker, tmp_path, 1, values)
    assert worker.got(1) == values
    assert committed == len(values)
    skipped = [line for line in worker.seen if "records were skipped" in line]
    assert skipped and all("partition=1 " in line and "first=0 " in line for line in skipped), skipped
