"""A partition whose records the consumer stops delivering is read again (watch_delivery).

faust sometimes drops every record of a partition after a rebalance (its read offset left
ahead of the records fetched again), with no later record to show the gap: under load a
writer restarted by kill -9 once left a third of a sync unwritten, with no error and no
activity. The worker here is a real faust worker on the real broker whose consumer is made
to do exactly that (tests.support.stall_worker); the watch must bring the records back while
the other partition goes on.
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
from pathlib import Path

from services.devstack.broker import Broker
from services.runtime.kafka import create_topics, plain_producer
from services.runtime.topics import TopicSpec
from tests.support.stall_worker import topic_name

ROOT = Path(__file__).resolve().parents[2]


def _lines(stream: object, into: queue.Queue[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        into.put(line.rstrip("\n"))


def test_a_partition_the_consumer_stopped_delivering_is_read_again(broker: Broker, tmp_path: Path) -> None:
    prefix = f"st{uuid.uuid4().hex[:6]}."
    name = topic_name(prefix)
    create_topics(broker.bootstrap, [TopicSpec(name, 2)])
    env = {**os.environ, "SCIMFLOW_KAFKA_BOOTSTRAP": broker.bootstrap, "SCIMFLOW_TOPIC_PREFIX": prefix,
           "SCIMFLOW_PARTITIONS": "2", "SCIMFLOW_DATA_DIR": str(tmp_path / "data"),
           "SCIMFLOW_LOG_FORMAT": "console"}
    worker = subprocess.Popen([sys.executable, "-m", "tests.support.stall_worker"], env=env, cwd=ROOT,
                              text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_lines, args=(worker.stdout, lines), daemon=True).start()
    seen: list[str] = []

    def wait_for(done: object, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not done():  # type: ignore[operator]
            remaining = deadline - time.monotonic()
            assert remaining > 0, "timed out; the worker printed:\n" + "\n".join(seen[-40:])
            with contextlib.suppress(queue.Empty):
                seen.append(lines.get(timeout=min(remaining, 1.0)))

    def got(partition: int) -> list[str]:
        return [line.split()[3] for line in seen if line.startswith(f"got {partition} ")]

    producer = plain_producer(broker.bootstrap)
    try:
        producer.send(name, value=b"stall", partition=1).get(timeout=30)
        wait_for(lambda: "stalled" in seen, timeout=90)
        for i in range(20):
            producer.send(name, value=f"late-{i}".encode(), partition=1)
        for i in range(5):
            producer.send(name, value=f"other-{i}".encode(), partition=0)
        producer.flush()
        wait_for(lambda: len(got(1)) == 21 and len(got(0)) == 5, timeout=60)
    finally:
        producer.close()
        worker.terminate()
        try:
            worker.wait(timeout=30)
        finally:
            worker.kill()
    assert got(1) == ["stall", *(f"late-{i}" for i in range(20))]  # each once, in order
    assert got(0) == [f"other-{i}" for i in range(5)]
    warnings = [line for line in seen if "records are not delivered" in line]
    assert warnings, "the records came back without the watch: the test provoked nothing"
    assert all("partition=1 " in line and "first=1 " in line for line in warnings), warnings
