"""Benchmark: the file source at scale, ingest alone on a real broker.

    python bench/ingest_scale.py [--latency-users 10000,40000] [--scan-objects 100000] [--edits 50]

1. change latency: the ingest worker follows a directory file of N users (N per
   ``--latency-users``), JSON (a whole document, rewritten atomically per edit, as an HR export
   would) and JSON Lines (one line appended per edit); ``--edits`` single-user edits one at a
   time, from the file write to the change record read back from ``directory.changes``
   (p50/p99 ms);
2. full scan: a synthetic JSON Lines file of ``--scan-objects`` objects (users ``u0000000``..
   with five attributes, plus one group per 1,000 users listing them), the worker's start-up
   full scan: seconds from the first record on the topic to the last (every object and the
   cycle markers), objects per second over that time, the CPU seconds ingest used from its
   start until the scan was on the topic (start-up included), and ingest's peak RSS sampled
   every 0.2 s.

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import yaml
from kafka import KafkaConsumer, TopicPartition

from services.devstack.broker import start_broker
from services.devstack.supervisor import Supervisor
from services.runtime.kafka import create_topics
from services.runtime.settings import load_settings
from services.runtime.topics import Topics

PARTITIONS = 6


def log(msg: str) -> None:
    sys.stderr.write(f"[bench] {msg}\n")
    sys.stderr.flush()


def user(i: int, given: str | None = None) -> dict[str, Any]:
    return {"id": f"u{i:07d}", "userPrincipalName": f"user{i}@example.com", "givenName": given or f"G{i}",
            "surname": f"S{i}", "displayName": f"User {i}", "accountEnabled": True}


def write_json(path: Path, people: list[dict[str, Any]]) -> None:
    """Replace the whole-document file atomically."""
    tmp = path.with_suffix(".tmp")
    group = {"id": "g-all", "displayName": "All", "members": [u["id"] for u in people]}
    tmp.write_text(json.dumps({"users": people, "groups": [group]}))
    tmp.replace(path)


def write_jsonl(path: Path, users: int) -> None:
    """``users`` user lines, then one group per 1,000 users listing them, written streaming."""
    with path.open("w") as f:
        for i in range(users):
            f.write(json.dumps(user(i)) + "\n")
        for g in range(0, users, 1000):
            members = [f"u{i:07d}" for i in range(g, min(users, g + 1000))]
            f.write(json.dumps({"objectType": "group", "id": f"g{g // 1000:05d}", "displayName": f"G{g}",
                                "members": members}) + "\n")


class Ingest:
    """The ingest worker alone on unique topics, following ``directory``."""

    def __init__(self, bootstrap: str, directory: Path, work: Path) -> None:
        self.bootstrap = bootstrap
        self.topics = Topics(f"ibench{uuid.uuid4().hex[:6]}.", PARTITIONS)
        create_topics(bootstrap, self.topics.specs())
        config = {
            "sources": [{"name": "hr", "type": "file", "path": str(directory), "poll_interval": 0.05,
                         "full_scan_interval": 86400}],
            "applications": [{"name": "bench", "target": {"base_url": "http://127.0.0.1:9",
                                                          "token": "env:BENCH_TOKEN"},
                              "assignments": {"groups": ["g-all"]},
                              "mappings": {"user": {"attributes": [
                                  {"target": "userName", "source": "userPrincipalName", "matching": 1}]}}}],
        }
        (work / "bench.yaml").write_text(yaml.safe_dump(config))
        env = {"SCIMFLOW_KAFKA_BOOTSTRAP": bootstrap, "SCIMFLOW_TOPIC_PREFIX": self.topics.prefix,
               "SCIMFLOW_PARTITIONS": str(PARTITIONS), "SCIMFLOW_DATA_DIR": str(work / "data"),
               "SCIMFLOW_LOG_FORMAT": "json", "SCIMFLOW_LOG_LEVEL": "warning", "BENCH_TOKEN": "unused"}
        self.sup = Supervisor(config=work / "bench.yaml", env=env, log_dir=work / "logs")
        self.peak_rss_mb = 0.0
        self._stop = False
        self._sampler = threading.Thread(target=self._sample, daemon=True)

    def start(self) -> None:
        self.sup.start(["ingest"])
        self._sampler.start()

    def stop(self) -> None:
        self._stop = True
        self._sampler.join(2)
        self.sup.stop()

    def _sample(self) -> None:
        while not self._stop:
            for proc in list(self.sup.procs.values()):
                try:
                    rss = psutil.Process(proc.pid).memory_info().rss / 2**20
                except psutil.Error:
                    continue
                self.peak_rss_mb = max(self.peak_rss_mb, rss)
            time.sleep(0.2)

    def cpu_seconds(self) -> float:
        """User + system CPU the ingest process has used so far."""
        total = 0.0
        for proc in list(self.sup.procs.values()):
            with contextlib.suppress(psutil.Error):
                times = psutil.Process(proc.pid).cpu_times()
                total += times.user + times.system
        return total

    def wait_for_scan(self, objects: int, timeout: float) -> float:
        """Seconds from the first record on the changes topic to the scan's last one."""
        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap)
        partitions = [TopicPartition(self.topics.changes, p) for p in range(PARTITIONS)]
        want = objects + 2 * PARTITIONS  # every object, and a start and an end marker per partition
        first: float | None = None
        deadline = time.monotonic() + timeout
        try:
            while True:
                total = sum(consumer.end_offsets(partitions).values())
                now = time.monotonic()
                if total and first is None:
                    first = now
                if total >= want:
                    return now - (first or now)
                if self.sup.dead() or now > deadline:
                    raise SystemExit(f"scan did not finish: {total} of {want} records ({self.sup.dead()})")
                time.sleep(0.1)
        finally:
            consumer.close()


def latency(bootstrap: str, fmt: str, users: int, edits: int) -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix="scimflow-ingest-bench-"))
    directory = work / f"directory.{fmt}"
    people = [user(i) for i in range(users)]
    if fmt == "json":
        write_json(directory, people)
    else:
        write_jsonl(directory, users)
    ingest = Ingest(bootstrap, directory, work)
    ingest.start()
    try:
        objects = users + (1 if fmt == "json" else -(-users // 1000))
        ingest.wait_for_scan(objects, 600)
        # The change is on the topic once the topic's end offsets move: asked every 2 ms.
        consumer = KafkaConsumer(bootstrap_servers=bootstrap)
        partitions = [TopicPartition(ingest.topics.changes, p) for p in range(PARTITIONS)]
        samples = []
        for k in range(edits):
            i = (k * 7919) % users
            before = sum(consumer.end_offsets(partitions).values())
            if fmt == "json":
                people[i] = user(i, f"Edited{k}")
                write_json(directory, people)
            else:
                with directory.open("a") as f:
                    f.write(json.dumps(user(i, f"Edited{k}")) + "\n")
            t0 = time.monotonic()
            while sum(consumer.end_offsets(partitions).values()) <= before:
                if time.monotonic() - t0 > 60:
                    raise SystemExit(f"edit {k} never reached the topic")
                time.sleep(0.002)
            samples.append((time.monotonic() - t0) * 1000)
        consumer.close()
    finally:
        ingest.stop()
    samples.sort()
    return {"p50_ms": round(statistics.median(samples), 1),
            "p99_ms": round(samples[min(len(samples) - 1, int(len(samples) * 0.99))], 1)}


def scan(bootstrap: str, users: int) -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix="scimflow-ingest-bench-"))
    directory = work / "directory.jsonl"
    write_jsonl(directory, users)
    objects = users + -(-users // 1000)
    ingest = Ingest(bootstrap, directory, work)
    ingest.start()
    try:
        seconds = ingest.wait_for_scan(objects, 1800)
        cpu = ingest.cpu_seconds()
        time.sleep(1)  # the RSS after the scan, too
    finally:
        ingest.stop()
    return {"objects": objects, "scan_s": round(seconds, 1),
            "objects_per_s": round(objects / seconds) if seconds else 0, "ingest_cpu_s": round(cpu, 1),
            "ingest_peak_rss_mb": round(ingest.peak_rss_mb, 1),
            "file_mb": round(directory.stat().st_size / 2**20, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--latency-users", default="10000,40000")
    parser.add_argument("--scan-objects", default="100000", help="users of each scan run, comma-separated")
    parser.add_argument("--edits", type=int, default=50)
    args = parser.parse_args()
    result: dict[str, Any] = {}
    with start_broker(load_settings(partitions=PARTITIONS)) as broker:
        for users in (int(n) for n in args.latency_users.split(",") if n):
            for fmt in ("json", "jsonl"):
                log(f"latency: {args.edits} edits of a {fmt} file of {users} users")
                figures = latency(broker.bootstrap, fmt, users, args.edits)
                for name, value in figures.items():
                    result[f"ingest_file_{fmt}_latency_{name}_{users}"] = value
        for users in (int(n) for n in args.scan_objects.split(",") if n):
            log(f"full scan: a JSON Lines file of {users} users")
            figures = scan(broker.bootstrap, users)
            for name, value in figures.items():
                result[f"ingest_scan_{name}_{users}"] = value
    for key, value in result.items():
        log(f"{key:>44}: {value}")
    print(json.dumps(result, sort_keys=True))  # the last line: machine-readable


if __name__ == "__main__":
    main()
