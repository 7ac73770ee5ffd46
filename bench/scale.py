"""Benchmark: the writer's memory and recovery time with many managed objects.

    python bench/scale.py [--sizes 100000,1000000] [--stores rocksdb,memory] [--partitions 6]

For each size N, on a fresh topic prefix:

1. a synthetic load: N ``ManagedObject`` records (``writer.managed.v1``, key ``bench/u…``,
   a realistic user: six attributes, a UUID target id) produced straight onto the writer's
   ``managed`` changelog topic, each on the partition the writer's own table would put it
   (Kafka's murmur2 of the key). No target write and no command is involved: this is the
   state a writer finds after it provisioned N objects;
2. cold start: one writer process with an empty state dir restores everything from the
   changelog. Recovery time is from the process start to both ``/readyz`` answering 200
   (faust's tables restored) and the writer logging "writer state restored" (its link
   index has read the whole changelog too);
3. steady: the writer runs ``--steady`` seconds more (its 5-second timers included);
4. warm restart (``rocksdb`` only): SIGTERM, then a new writer on the same state dir.

RSS is the writer's resident set, sampled every 0.2 s: at readiness and the peak over the
whole run. Each start also reports, from the writer's log, how long the bulk restore of its
tables took (``bulk_restore_s``, before faust starts) and the link index's read of the
changelog (``link_index_s``), and the machine's load average (the bench host is shared).
The last line printed is one JSON object with every figure. Goals (issue 18):
RSS <= 500 MB at 1,000,000, cold recovery <= 60 s, warm restart <= 5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import psutil
import yaml
from kafka import KafkaProducer

from schemas import ManagedObject
from services.devstack.broker import start_broker
from services.devstack.scim_target import start_scim_target
from services.runtime.kafka import create_topics, partition_for
from services.runtime.settings import load_settings
from services.runtime.topics import Topics

GOALS = {"rss_mb_at_1m": 500, "cold_recovery_s": 60, "warm_restart_s": 5}
_encode = msgspec.json.Encoder().encode


def log(msg: str) -> None:
    sys.stderr.write(f"[bench-scale] {msg}\n")
    sys.stderr.flush()


def managed_object(i: int, now: datetime) -> ManagedObject:
    return ManagedObject(
        app="bench", object_type="user", source_id=f"u{i:07d}", target_id=str(uuid.uuid4()),
        attributes={"userName": f"user{i}@example.com", "externalId": f"u{i:07d}",
                    "displayName": f"User {i}", "name.givenName": f"G{i}", "name.familyName": f"S{i}",
                    "active": True},
        origin="created", display_name=f"User {i}", created_at=now, updated_at=now)


def load_changelog(bootstrap: str, topic: str, n: int, partitions: int) -> float:
    """Produce ``n`` managed objects onto ``topic``; returns the seconds it took."""
    started = time.monotonic()
    # zstd, as the writer's own producer compresses its changelog (SCIMFLOW_KAFKA_COMPRESSION)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=50, compression_type="zstd",
                             batch_size=1 << 20, max_request_size=8 << 20)
    now = datetime.now(UTC)
    for i in range(n):
        key = f"bench/u{i:07d}".encode()
        producer.send(topic, key=key, value=_encode(managed_object(i, now)),
                      partition=partition_for(key, partitions))
        if i % 100_000 == 99_999:
            log(f"  {i + 1} records produced")
    producer.flush()
    producer.close()
    return time.monotonic() - started


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Writer:
    """One writer process, its RSS sampled until it is stopped."""

    def __init__(self, work: Path, env: dict[str, str], name: str) -> None:
        self.port = free_port()
        self.log_path = work / f"writer-{name}.log"
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "writer", "--config", str(work / "bench.yaml")],
            env={**os.environ, **env, "SCIMFLOW_METRICS_PORT": str(self.port)},
            stdout=subprocess.DEVNULL, stderr=self.log_path.open("wb"))
        self.rss_mb: list[float] = []
        self._stop = False
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop:
            try:
                self.rss_mb.append(psutil.Process(self.proc.pid).memory_info().rss / 2**20)
            except psutil.Error:
                return
            time.sleep(0.2)

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=1) as r:
                tables = r.status == 200
        except (urllib.error.URLError, OSError):
            tables = False
        return tables and b"writer state restored" in self.log_path.read_bytes()

    def wait_ready(self, timeout: float) -> float:
        while time.monotonic() - self.started < timeout:
            if self.proc.poll() is not None:
                raise SystemExit(f"writer exited ({self.proc.returncode}); see {self.log_path}")
            if self.ready():
                return time.monotonic() - self.started
            time.sleep(0.1)
        raise SystemExit(f"writer not ready after {timeout:.0f}s; see {self.log_path}")

    def stop(self) -> float:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._stop = True
        self._thread.join(2)
        return max(self.rss_mb, default=0.0)


def run_writer(work: Path, env: dict[str, str], name: str, args: argparse.Namespace) -> dict[str, Any]:
    writer = Writer(work, env, name)
    try:
        seconds = writer.wait_ready(args.timeout)
        at_ready = writer.rss_mb[-1] if writer.rss_mb else 0.0
        time.sleep(args.steady)
        steady = writer.rss_mb[-1] if writer.rss_mb else 0.0
    finally:
        peak = writer.stop()
    phases = phase_seconds(writer.log_path)
    log(f"  {name}: ready in {seconds:.1f}s ({phases}), RSS {at_ready:.0f} MB at ready, "
        f"{steady:.0f} MB after {args.steady:.0f}s, peak {peak:.0f} MB")
    return {"recovery_s": round(seconds, 2), "rss_mb_at_ready": round(at_ready, 1),
            "rss_mb_steady": round(steady, 1), "peak_rss_mb": round(peak, 1),
            "load_avg_1m": round(os.getloadavg()[0], 1), **phases}


_PHASES = {"tables restored from changelogs": "bulk_restore_s", "link index caught up": "link_index_s"}
"""Log events whose ``seconds`` show where a start's time went (the bulk restore of the
faust tables before faust starts; the link index reading the managed changelog)."""


def phase_seconds(log_path: Path) -> dict[str, float]:
    found: dict[str, float] = {}
    for line in log_path.read_bytes().splitlines():
        if not line.startswith(b"{"):
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        phase = _PHASES.get(entry.get("event", ""))
        if phase is not None and "seconds" in entry:
            found[phase] = entry["seconds"]
    return found


def run_size(bootstrap: str, n: int, store: str, target: Any, args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix=f"scimflow-scale-{n}-"))
    topics = Topics(f"scale{uuid.uuid4().hex[:6]}.", args.partitions)
    create_topics(bootstrap, topics.specs())
    log(f"{n} managed objects, {store} store: loading {topics.writer_state}")
    load_s = load_changelog(bootstrap, topics.writer_state, n, args.partitions)
    (work / "directory.json").write_text("[]")
    config = {
        "sources": [{"name": "hr", "type": "file", "path": str(work / "directory.json")}],
        "applications": [{
            "name": "bench", "target": {"base_url": target.base_url, "token": "env:BENCH_TOKEN"},
            "mappings": {"user": {"attributes": [
                {"target": "userName", "source": "userPrincipalName", "matching": 1}]}}}],
    }
    (work / "bench.yaml").write_text(yaml.safe_dump(config))
    env = {"SCIMFLOW_KAFKA_BOOTSTRAP": bootstrap, "SCIMFLOW_TOPIC_PREFIX": topics.prefix,
           "SCIMFLOW_PARTITIONS": str(args.partitions), "SCIMFLOW_DATA_DIR": str(work / "data"),
           "SCIMFLOW_STATE_STORE": store, "SCIMFLOW_STATE_DIR": str(work / "state"),
           "SCIMFLOW_LOG_FORMAT": "json", "SCIMFLOW_LOG_LEVEL": "info", "BENCH_TOKEN": target.token}
    result: dict[str, Any] = {"load_s": round(load_s, 1), "cold": run_writer(work, env, "cold", args)}
    if store == "rocksdb":
        result["warm"] = run_writer(work, env, "warm", args)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--stores", default="rocksdb")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--steady", type=float, default=12.0, help="seconds to run after ready")
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    stores = [s for s in args.stores.split(",") if s]
    broker = start_broker(load_settings())
    target = start_scim_target()
    figures: dict[str, Any] = {
        "load": "synthetic: writer.managed.v1 records produced straight onto the writer's managed "
                "changelog topic (the table's own format and partitioning), no target writes",
        "partitions": args.partitions, "goals": GOALS}
    try:
        for n in sizes:
            for store in stores:
                figures[f"writer_{store}_{n}"] = run_size(broker.bootstrap, n, store, target, args)
    finally:
        target.stop()
        broker.stop()
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
