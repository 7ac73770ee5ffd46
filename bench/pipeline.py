"""Benchmark: initial sync of N users through the whole pipeline vs a plain httpx loop.

    python bench/pipeline.py [--users 10000] [--changes 200] [--concurrency 16] [--target-threads 8]

One run, same machine, same kind of target (a fresh scim2-server each time, served with
``--target-threads`` worker threads and HTTP/1.1 keep-alive):

1. baseline: a plain asyncio + httpx loop does what the writer does for a new user
   (lookup by userName, then POST) at the same concurrency, straight to the target;
2. scimflow: the file source holds N users; ingest -> mapper -> writer provision them;
   throughput is N over the time from the first change ingest saw to the last write;
3. latency: 200 single-user edits of the file, one at a time; from the file write to the
   activity record of the SCIM write (p50/p99);
4. peak RSS of each worker process, sampled every 0.2 s.

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec
import psutil
import yaml
from kafka import KafkaConsumer
from mapping import run_mapping

from schemas import ActivityRecord, DirectoryChange
from services.runtime.broker import start_broker
from services.runtime.kafka import consume, create_topics
from services.runtime.scim_target import ScimTarget, start_scim_target
from services.runtime.settings import load_settings
from services.runtime.supervisor import Supervisor
from services.runtime.topics import Topics

SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"


def users(n: int) -> list[dict[str, Any]]:
    return [{"id": f"u{i:06d}", "userPrincipalName": f"user{i}@example.com", "givenName": f"G{i}",
             "surname": f"S{i}", "displayName": f"User {i}", "accountEnabled": True} for i in range(n)]


def log(msg: str) -> None:
    sys.stderr.write(f"[bench] {msg}\n")
    sys.stderr.flush()


async def baseline(target: ScimTarget, people: list[dict[str, Any]], concurrency: int) -> float:
    """Users/s of a plain asyncio httpx loop doing lookup + POST per user."""
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=target.base_url, limits=limits, timeout=30,
                                 headers={"Authorization": f"Bearer {target.token}"}) as client:
        sem = asyncio.Semaphore(concurrency)

        async def one(u: dict[str, Any]) -> None:
            async with sem:
                name = u["userPrincipalName"]
                r = await client.get("/Users", params={"filter": f'userName eq "{name}"'})
                r.raise_for_status()
                body = {"schemas": [SCHEMA], "userName": name, "externalId": u["id"],
                        "displayName": u["displayName"], "active": True,
                        "name": {"givenName": u["givenName"], "familyName": u["surname"]}}
                (await client.post("/Users", json=body)).raise_for_status()

        t0 = time.perf_counter()
        await asyncio.gather(*(one(u) for u in people))
        return len(people) / (time.perf_counter() - t0)


class Activity:
    """Follows the activity topic in a thread; remembers each record's arrival."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.records: list[ActivityRecord] = []
        self._consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                       enable_auto_commit=False, consumer_timeout_ms=200)
        self._stop = False
        self._dec = msgspec.json.Decoder(ActivityRecord)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            for m in self._consumer:
                self.records.append(self._dec.decode(m.value))

    def close(self) -> None:
        self._stop = True
        self._thread.join(5)
        self._consumer.close()


class RssSampler:
    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        self.peak: dict[str, float] = {}
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            for name, proc in list(self.sup.procs.items()):
                try:
                    rss = psutil.Process(proc.pid).memory_info().rss / 2**20
                except psutil.Error:
                    continue
                self.peak[name] = max(self.peak.get(name, 0.0), rss)
            time.sleep(0.2)

    def close(self) -> dict[str, float]:
        self._stop = True
        self._thread.join(2)
        return {k: round(v, 1) for k, v in self.peak.items()}


def wait(what: str, check: Any, timeout: float, sup: Supervisor) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if sup.dead():
            raise SystemExit(f"workers died: {sup.dead()}")
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def write_directory(path: Path, people: list[dict[str, Any]]) -> None:
    """Replace the directory file atomically, as an editor or an HR export would."""
    tmp = path.with_suffix(".tmp")
    group = {"id": "g-all", "displayName": "All", "members": [u["id"] for u in people]}
    tmp.write_text(json.dumps({"users": people, "groups": [group]}))
    tmp.replace(path)


def run(args: argparse.Namespace) -> dict[str, Any]:
    people = users(args.users)
    result: dict[str, Any] = {"users": args.users, "concurrency": args.concurrency,
                              "target_threads": args.target_threads}
    with start_scim_target(threads=args.target_threads) as target:
        log(f"baseline: plain httpx loop, {args.users} users, concurrency {args.concurrency}")
        result["baseline_users_per_s"] = round(asyncio.run(baseline(target, people, args.concurrency)), 1)
    work = Path(tempfile.mkdtemp(prefix="scimflow-bench-"))
    settings = load_settings(partitions=args.partitions)
    with start_broker(settings) as broker, start_scim_target(threads=args.target_threads) as target:
        result["broker"] = broker.kind
        topics = Topics(f"bench{uuid.uuid4().hex[:6]}.", args.partitions)
        create_topics(broker.bootstrap, topics.specs())
        # JSON, not YAML: parsing a 10,000-user YAML file takes ~0.3 s even with libyaml,
        # which would measure the file format rather than the pipeline.
        directory = work / "directory.json"
        write_directory(directory, people)
        config = {
            "sources": [{"name": "hr", "type": "file", "path": str(directory), "poll_interval": 0.05}],
            "applications": [{
                "name": "bench", "target": {"base_url": target.base_url, "token": "env:BENCH_TOKEN",
                                            "max_connections": args.concurrency},
                "assignments": {"groups": ["g-all"]},
                "mappings": {"user": {"attributes": [
                    {"target": "userName", "source": "userPrincipalName", "matching": 1},
                    {"target": "externalId", "source": "id"},
                    {"target": "displayName", "source": "displayName"},
                    {"target": "name.givenName", "source": "givenName"},
                    {"target": "name.familyName", "source": "surname"}]}}}],
        }
        (work / "bench.yaml").write_text(yaml.safe_dump(config))
        env = {"SCIMFLOW_KAFKA_BOOTSTRAP": broker.bootstrap, "SCIMFLOW_TOPIC_PREFIX": topics.prefix,
               "SCIMFLOW_PARTITIONS": str(args.partitions), "SCIMFLOW_DATA_DIR": str(work / "data"),
               "SCIMFLOW_WRITER_CONCURRENCY": str(args.concurrency), "SCIMFLOW_LOG_FORMAT": "json",
               "SCIMFLOW_LOG_LEVEL": "warning", "BENCH_TOKEN": target.token}
        sup = Supervisor(config=work / "bench.yaml", env=env, log_dir=work / "logs")
        activity = Activity(broker.bootstrap, topics.activity)
        rss = RssSampler(sup)
        try:
            log(f"scimflow: initial sync of {args.users} users (logs in {work / 'logs'})")
            sup.start()
            wait("initial sync", lambda: len(activity.records) >= args.users, args.timeout, sup)
            first_seen = _first_change(broker.bootstrap, topics.changes)
            last_write = max(r.at for r in activity.records)
            elapsed = (last_write - first_seen).total_seconds()
            result["scimflow_users_per_s"] = round(args.users / elapsed, 1)
            result["initial_sync_s"] = round(elapsed, 2)
            result["ratio_scimflow_to_baseline"] = round(
                result["scimflow_users_per_s"] / result["baseline_users_per_s"], 3)
            result.update(latency(directory, people, activity, args.changes, sup))
        finally:
            result["peak_rss_mb"] = rss.close()
            activity.close()
            sup.stop()
    return result


def _first_change(bootstrap: str, topic: str) -> datetime:
    dec = msgspec.json.Decoder(DirectoryChange)
    for m in consume(bootstrap, topic, idle_timeout=1.0):
        try:
            return dec.decode(m.value).observed_at
        except msgspec.ValidationError:
            continue  # a cycle marker
    raise SystemExit("no change on the changes topic")


def latency(directory: Path, people: list[dict[str, Any]], activity: Activity, changes: int,
            sup: Supervisor) -> dict[str, Any]:
    log(f"latency: {changes} single-user edits of the directory file")
    samples = []
    for k in range(changes):
        i = (k * 7919) % len(people)
        people[i] = {**people[i], "givenName": f"Edited{k}"}
        before = len(activity.records)
        write_directory(directory, people)
        t0 = datetime.now(UTC)  # the file has changed now
        source_id = people[i]["id"]

        def written(source_id: str = source_id, before: int = before) -> bool:
            return any(r.action == "update" and r.source_id == source_id
                       for r in activity.records[before:])

        wait("the edit's write", written, 60, sup)
        done = next(r for r in activity.records[before:] if r.source_id == source_id)
        samples.append((done.at - t0).total_seconds() * 1000)
    samples.sort()
    return {"latency_p50_ms": round(statistics.median(samples), 1),
            "latency_p99_ms": round(samples[min(len(samples) - 1, int(len(samples) * 0.99))], 1),
            "latency_samples": len(samples)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--changes", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--target-threads", type=int, default=8,
                        help="worker threads of the SCIM target (0: scim2-server's stock HTTP/1.0 server)")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--mapping-users", type=int, default=100_000)
    args = parser.parse_args()
    result = run_mapping(args.mapping_users)
    log(f"mapping: {result['mapping_10expr_users_per_cpu_s']} (10 expressions) and "
        f"{result['mapping_entra_default_users_per_cpu_s']} (Entra default) users per CPU-second")
    result |= run(args)
    for key, value in result.items():
        log(f"{key:>28}: {value}")
    print(json.dumps(result, sort_keys=True))  # the last line: machine-readable


if __name__ == "__main__":
    main()
