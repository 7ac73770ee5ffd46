"""Benchmark: an unchanged full scan end to end (ingest -> mapper -> writer), at scale.

    python bench/scan_scale.py [--sizes 100000,1000000] [--partitions 6] [--store rocksdb]

For each size N, on a fresh topic prefix, one real broker and one real scim2-server:

1. synthetic preload (the state after a first sync of N users): N ``ManagedObject``
   records (``writer.managed.v1``) produced straight onto the writer's ``managed``
   changelog, each on the partition the writer's table would put it, holding exactly the
   attributes the app's mapping produces for the users of the directory file (so the
   writer believes it provisioned every one of them and wrote what the mapping wants).
   The mapper keeps no per-object state, so it needs no preload. The app's ``drift`` is
   ``ignore``: the target is empty (the writer still lists it at the scan's start), and
   with ``repair`` an empty listing would count as every account deleted in the target;
2. the mapper and the writer start (RocksDB state store by default) and restore; once the
   writer logs "writer state restored", the ingest worker starts on a JSON Lines file of
   the same N users and runs its start-up full scan;
3. end to end: seconds from the ingest process start to the writer's last
   ``full scan finished`` log line (one per commands partition: its scan-end handling,
   the sweep for objects the scan did not mention, done);
4. target writes: POST/PUT/PATCH/DELETE requests in scim2-server's request log (goal 0);
   RSS per service (sampled every 0.2 s, peak: ``peak_rss_mb`` during the scan,
   ``peak_rss_restore_mb`` while the writer restored) and CPU seconds per service over the run,
   and the machine's load average at the end.

The last line printed is one JSON object with every figure. Goals (issue 18), at
1,000,000: 0 target writes, <= 180 s end to end, ingest RSS <= 500 MB.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import psutil
import yaml
from kafka import KafkaProducer

from schemas import ManagedObject
from services.devstack.broker import start_broker
from services.devstack.scim_target import start_scim_target
from services.devstack.supervisor import Supervisor
from services.runtime.kafka import create_topics, partition_for
from services.runtime.settings import load_settings
from services.runtime.topics import Topics

GOALS = {"writes": 0, "end_to_end_s_at_1m": 180, "ingest_rss_mb": 500}
APP = "bench"
_encode = msgspec.json.Encoder().encode
_WRITE = re.compile(rb'"(POST|PUT|PATCH|DELETE) ')


def log(msg: str) -> None:
    sys.stderr.write(f"[bench-scan] {msg}\n")
    sys.stderr.flush()


def user(i: int) -> dict[str, Any]:
    return {"id": f"u{i:07d}", "userPrincipalName": f"user{i}@example.com", "givenName": f"G{i}",
            "surname": f"S{i}", "displayName": f"User {i}", "accountEnabled": True}


def desired(i: int) -> dict[str, Any]:
    """What the bench app's mapping (``MAPPING``) makes of ``user(i)``, ``active`` included."""
    return {"userName": f"user{i}@example.com", "displayName": f"User {i}",
            "name.givenName": f"G{i}", "name.familyName": f"S{i}", "active": True}


MAPPING = [
    {"target": "userName", "source": "userPrincipalName", "matching": 1},
    {"target": "displayName", "source": "displayName"},
    {"target": "name.givenName", "source": "givenName"},
    {"target": "name.familyName", "source": "surname"},
]


def write_directory(path: Path, n: int) -> None:
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps(user(i)) + "\n")


def preload(bootstrap: str, topic: str, n: int, partitions: int) -> float:
    """The writer's managed changelog as after a first sync of ``n`` users; seconds taken."""
    started = time.monotonic()
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=50,
                             batch_size=1 << 20, max_request_size=8 << 20)
    # Provisioned a day ago: a scan that missed one would find it deleted in the source.
    then = datetime.now(UTC) - timedelta(days=1)
    for i in range(n):
        key = f"{APP}/u{i:07d}".encode()
        state = ManagedObject(app=APP, object_type="user", source_id=f"u{i:07d}",
                              target_id=str(uuid.uuid4()), attributes=desired(i), origin="created",
                              display_name=f"user{i}@example.com", created_at=then, updated_at=then)
        producer.send(topic, key=key, value=_encode(state), partition=partition_for(key, partitions))
    producer.flush()
    producer.close()
    return time.monotonic() - started


class Sampler:
    """Peak RSS and CPU seconds per service of a supervisor, sampled every 0.2 s."""

    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        self.peak_mb: dict[str, float] = {}
        self.cpu_s: dict[str, float] = {}
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            self.sample()
            time.sleep(0.2)

    def sample(self) -> None:
        for name, proc in list(self.sup.procs.items()):
            with contextlib.suppress(psutil.Error):
                p = psutil.Process(proc.pid)
                rss = p.memory_info().rss / 2**20
                times = p.cpu_times()
                self.peak_mb[name] = max(self.peak_mb.get(name, 0.0), rss)
                self.cpu_s[name] = times.user + times.system

    def restart_peaks(self) -> dict[str, float]:
        """The peaks so far (rounded); from now on, peaks start again."""
        self.sample()
        peaks, self.peak_mb = self.peak_mb, {}
        return {k: round(v, 1) for k, v in peaks.items()}

    def stop(self) -> None:
        self.sample()
        self._stop = True
        self._thread.join(2)


def wait_log(path: Path, text: bytes, count: int, sup: Supervisor, timeout: float) -> float:
    """Wait until ``text`` appears ``count`` times in ``path``; the monotonic time it did."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(FileNotFoundError):
            if path.read_bytes().count(text) >= count:
                return time.monotonic()
        if sup.dead():
            raise SystemExit(f"a worker exited: {sup.dead()}; logs in {path.parent}")
        if time.monotonic() > deadline:
            raise SystemExit(f"{text!r} x{count} not in {path} after {timeout:.0f}s")
        time.sleep(0.2)


def _profile(sup: Supervisor, names: list[str], out: str | None, n: int) -> list[subprocess.Popen[bytes]]:
    """py-spy samples of each named worker (raw folded stacks, 50/s) into ``out``, if given."""
    if not out:
        return []
    Path(out).mkdir(parents=True, exist_ok=True)
    spy = str(Path(sys.executable).with_name("py-spy"))
    return [subprocess.Popen([spy, "record", "--format", "raw", "-r", "50", "-p", str(sup.procs[name].pid),
                              "-o", f"{out}/{name}-{n}.txt"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL) for name in names]


def run_size(bootstrap: str, n: int, args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix=f"scimflow-scan-{n}-"))
    topics = Topics(f"scan{uuid.uuid4().hex[:6]}.", args.partitions)
    create_topics(bootstrap, topics.specs())
    directory = work / "directory.jsonl"
    write_directory(directory, n)
    log(f"{n}: preloading {topics.writer_state}")
    load_s = preload(bootstrap, topics.writer_state, n, args.partitions)
    target = start_scim_target(log_file=work / "target.log")
    config = {
        "sources": [{"name": "hr", "type": "file", "path": str(directory), "full_scan_interval": 86400}],
        "applications": [{"name": APP, "scope": "all", "drift": "ignore",
                          "target": {"base_url": target.base_url, "token": "env:BENCH_TOKEN"},
                          "mappings": {"user": {"attributes": MAPPING}}}],
    }
    (work / "bench.yaml").write_text(yaml.safe_dump(config))
    env = {"SCIMFLOW_KAFKA_BOOTSTRAP": bootstrap, "SCIMFLOW_TOPIC_PREFIX": topics.prefix,
           "SCIMFLOW_PARTITIONS": str(args.partitions), "SCIMFLOW_DATA_DIR": str(work / "data"),
           "SCIMFLOW_STATE_STORE": args.store, "SCIMFLOW_STATE_DIR": str(work / "state"),
           "SCIMFLOW_LOG_FORMAT": "json", "SCIMFLOW_LOG_LEVEL": "info", "BENCH_TOKEN": target.token,
           "SCIMFLOW_EVENT_LOOP": args.event_loop}
    sup = Supervisor(config=work / "bench.yaml", env=env, log_dir=work / "logs")
    sampler = Sampler(sup)
    writer_log = work / "logs" / "writer.log"
    try:
        started = time.monotonic()
        sup.start(["mapper", "writer"])
        spies = _profile(sup, ["mapper", "writer"], args.profile, n)
        wait_log(writer_log, b"writer state restored", 1, sup, args.timeout)
        restore_s = time.monotonic() - started
        log(f"{n}: writer restored in {restore_s:.1f}s; starting ingest (the full scan)")
        restore_peak_mb = sampler.restart_peaks()
        scan_start = time.monotonic()
        sup.start_one("ingest")
        done = wait_log(writer_log, b"full scan finished", args.partitions, sup, args.timeout)
        end_to_end = done - scan_start
        time.sleep(2)  # a write the scan's end let through would show in the log by now
    finally:
        sampler.stop()
        for spy in spies if "spies" in locals() else []:
            spy.send_signal(2)
            with contextlib.suppress(subprocess.TimeoutExpired):
                spy.wait(20)
        sup.stop()
        writes = len(_WRITE.findall((work / "target.log").read_bytes()))
        target.stop()
    figures = {"objects": n, "preload_s": round(load_s, 1), "writer_restore_s": round(restore_s, 1),
               "end_to_end_s": round(end_to_end, 1), "target_writes": writes,
               "peak_rss_mb": {k: round(v, 1) for k, v in sampler.peak_mb.items()},
               "peak_rss_restore_mb": restore_peak_mb,
               "cpu_s": {k: round(v, 1) for k, v in sampler.cpu_s.items()},
               "loadavg": [round(x, 2) for x in os.getloadavg()]}
    log(f"{n}: {figures}")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--store", default="rocksdb", choices=["rocksdb", "memory"])
    parser.add_argument("--timeout", type=float, default=1200.0)
    parser.add_argument("--event-loop", default="uvloop", choices=["asyncio", "uvloop"])
    parser.add_argument("--profile", metavar="DIR",
                        help="py-spy the mapper and the writer into DIR (needs py-spy installed)")
    args = parser.parse_args()
    result: dict[str, Any] = {
        "load": "synthetic: the writer's managed changelog preloaded with one writer.managed.v1 "
                "record per user (the mapping's attributes), app drift=ignore, empty scim2-server "
                "target; ingest reads a JSON Lines file of the same users",
        "partitions": args.partitions, "store": args.store, "event_loop": args.event_loop,
        "goals": GOALS}
    with start_broker(load_settings(partitions=args.partitions)) as broker:
        for n in (int(s) for s in args.sizes.split(",") if s):
            result[f"scan_{n}"] = run_size(broker.bootstrap, n, args)
    print(json.dumps(result))  # the last line: machine-readable


if __name__ == "__main__":
    main()
