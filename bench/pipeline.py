"""Benchmark: initial sync of N users through the whole pipeline vs a plain httpx loop.

    python bench/pipeline.py [--users 10000] [--changes 200] [--concurrency 16] [--target-threads 8]

One run, same machine, same kind of target (a fresh scim2-server each time, served with
``--target-threads`` worker threads and HTTP/1.1 keep-alive):

1. baseline: a plain asyncio + httpx loop does what the writer does for a new user
   (lookup by userName, then POST) at the same concurrency, straight to the target; twice:
   with httpx's own transport (httpcore), and with the writer's HTTP stack (httpx over
   aiohttp's transport), so the second ratio compares the pipeline with the same client;
2. scimflow: the file source holds N users; ingest -> mapper -> writer provision them;
   throughput is N over the time from the first change ingest saw to the last write;
3. latency: 200 single-user edits of the file, one at a time; from the file write to the
   activity record of the SCIM write (p50/p99);
4. peak RSS of each worker process, sampled every 0.2 s;
5. faulted: ``--fault-users`` users again, through a fault-injecting proxy that answers
   ``--fault-share`` (10 %) of the requests with 429 + ``Retry-After: 1``; the target must
   end with exactly those users (``--only-faulted``: this phase alone, with the same sync
   through the proxy without faults as its reference, ``ratio_faulted_to_unfaulted``);
6. reconcile (bench/reconcile.py): ``--reconcile-users`` users in ``--reconcile-groups``
   groups through the same proxy as a pure recorder: target requests per user of the
   initial sync, and the requests and writes of a full scan that finds nothing changed and
   of a restart of the three workers. Both must write nothing: the bench exits 1 otherwise.
   Where the writer has ``target.bulk``, that phase runs with it off, and the initial sync
   runs once more with it on (``requests_per_user_initial_bulk``).
7. writer path (bench/writer_path.py, no server): how far one update travels through the
   writer's code from ``Writer.handle`` to the ScimClient call, for a change event and for a
   full scan: stops, files, returns to a file already visited (``writer_path_*``).

The last line printed is one JSON object with every figure. ``ratio_initial_sync_to_naive_loop``
(also ``ratio_scimflow_to_baseline``) is the initial sync's users/s over the naive direct
loop's (lookup + POST per user); the goal is 1.5 or more.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec
import psutil
import yaml
from httpx_aiohttp import AiohttpTransport
from kafka import KafkaConsumer, TopicPartition
from mapping import run_mapping
from reconcile import run_reconcile
from writer_path import run_writer_path

from schemas import ActivityRecord, DirectoryChange
from services.devstack.broker import start_broker
from services.devstack.scim_target import ScimTarget, start_scim_target
from services.devstack.supervisor import Supervisor
from services.runtime.kafka import consume, create_topics
from services.runtime.settings import load_settings
from services.runtime.topics import Topics
from tests.support.faultproxy import FaultProxy

SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"


def users(n: int) -> list[dict[str, Any]]:
    return [{"id": f"u{i:06d}", "userPrincipalName": f"user{i}@example.com", "givenName": f"G{i}",
             "surname": f"S{i}", "displayName": f"User {i}", "accountEnabled": True} for i in range(n)]


def log(msg: str) -> None:
    sys.stderr.write(f"[bench] {msg}\n")
    sys.stderr.flush()


async def baseline(target: ScimTarget, people: list[dict[str, Any]], concurrency: int, *,
                   aiohttp: bool = False) -> float:
    """Users/s of a plain asyncio httpx loop doing lookup + POST per user; over aiohttp's
    transport (the writer's) when ``aiohttp``, else over httpx's own."""
    limits = httpx.Limits(max_connections=concurrency)
    transport = AiohttpTransport(limits=limits) if aiohttp else None
    async with httpx.AsyncClient(base_url=target.base_url, limits=limits, timeout=30, transport=transport,
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


def wait_for_records(bootstrap: str, topic: str, n: int, timeout: float, sup: Supervisor) -> None:
    """Wait until ``topic`` holds ``n`` records, asking only for its end offsets: following
    it during the sync would cost the machine CPU that the pipeline is measured on."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or {0})]
        wait(f"{n} records on {topic}",
             lambda: sum(consumer.end_offsets(partitions).values()) >= n, timeout, sup)
    finally:
        consumer.close()


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


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """User + system CPU seconds each process (and its children, for the broker's JVM
    wrapper) has used so far."""
    used: dict[str, float] = {}
    for name, pid in pids.items():
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        used[name] = times.user + times.system + times.children_user + times.children_system
    return used


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
    with start_scim_target(threads=args.target_threads) as target:
        log(f"baseline: the same loop over aiohttp's transport (the writer's), {args.users} users")
        pids = {"target": target.pid, "loop": os.getpid()}
        before = cpu_seconds(pids)
        result["baseline_aiohttp_users_per_s"] = round(
            asyncio.run(baseline(target, people, args.concurrency, aiohttp=True)), 1)
        result["baseline_aiohttp_cpu_s_per_1000_users"] = {
            name: round((used - before[name]) * 1000 / len(people), 2)
            for name, used in cpu_seconds(pids).items()}
    settings = load_settings(partitions=args.partitions)
    with start_broker(settings) as broker:
        result["broker"] = broker.kind
        with start_scim_target(threads=args.target_threads) as target:
            others = {"target": target.pid, **({"broker": broker.pid} if broker.pid else {})}
            result.update(run_pipeline(broker.bootstrap, target.base_url, target.token, people, args,
                                    measure_latency=True, others=others))
        result["ratio_scimflow_to_baseline"] = round(
            result["scimflow_users_per_s"] / result["baseline_users_per_s"], 3)
        # The same figure under a name that says what it compares (goal: 1.5 or more).
        result["ratio_initial_sync_to_naive_loop"] = result["ratio_scimflow_to_baseline"]
        result["ratio_scimflow_to_baseline_aiohttp"] = round(
            result["scimflow_users_per_s"] / result["baseline_aiohttp_users_per_s"], 3)
        with start_scim_target(threads=args.target_threads) as target:
            log("scimflow again with target.bulk: off (one request per create)")
            single = run_pipeline(broker.bootstrap, target.base_url, target.token, people, args,
                               measure_latency=False, bulk="off")
        result["scimflow_users_per_s_no_bulk"] = single["scimflow_users_per_s"]
        result["ratio_initial_sync_to_naive_loop_no_bulk"] = round(
            single["scimflow_users_per_s"] / result["baseline_users_per_s"], 3)
        if args.fault_users:
            result.update(_faulted(broker.bootstrap, users(args.fault_users), args))
            result["ratio_faulted_to_baseline"] = round(
                result["faulted_users_per_s"] / result["baseline_users_per_s"], 3)
        if args.reconcile_users:
            result.update(run_reconcile(broker.bootstrap, args))
    return result


def unexpected_writes(result: dict[str, Any]) -> str | None:
    """What is wrong when a full scan that found nothing changed, or a restart, wrote."""
    wrote = {k: result.get(k, 0) for k in ("writes_unchanged_full_scan", "writes_restart")}
    if not any(wrote.values()):
        return None
    return (f"writes that should not be: {wrote}; the requests and log lines are above "
            f"and in reconcile_unexpected_writes / reconcile_log_lines")


def run_faulted_only(args: argparse.Namespace) -> dict[str, Any]:
    """``--only-faulted``: the faulted phase, and the same sync through the same proxy with no
    fault as its reference (``ratio_faulted_to_unfaulted``: the goal is 0.5 or more)."""
    people = users(args.fault_users)
    with start_broker(load_settings(partitions=args.partitions)) as broker:
        clean = _faulted(broker.bootstrap, people, args, share=0.0)
        result = _faulted(broker.bootstrap, people, args, share=args.fault_share)
    result["unfaulted_users_per_s"] = clean["faulted_users_per_s"]
    result["ratio_faulted_to_unfaulted"] = round(
        result["faulted_users_per_s"] / clean["faulted_users_per_s"], 3)
    return result


def _faulted(bootstrap: str, people: list[dict[str, Any]], args: argparse.Namespace, *,
             share: float | None = None) -> dict[str, Any]:
    """The same initial sync through the fault proxy answering 10 % of requests with 429."""
    share = args.fault_share if share is None else share
    with start_scim_target(threads=args.target_threads) as target, FaultProxy(target.base_url) as proxy:
        proxy.fail(429, retry_after="1", probability=share)
        log(f"faulted: {len(people)} users, {share:.0%} of requests answered 429 (Retry-After: 1)")
        # One request per create, so 10 % of them meet the 429 rule (a bulk would carry them all).
        sync = run_pipeline(bootstrap, proxy.url, target.token, people, args, measure_latency=False,
                         bulk="off")
        throttled = sum(1 for entry in proxy.log if entry.status == 429)
        landed = count_users(target)
    if landed != len(people):
        raise SystemExit(f"faulted run: the target holds {landed} users, expected {len(people)}")
    return {"faulted_users": len(people), "faulted_users_per_s": sync["scimflow_users_per_s"],
            "faulted_sync_s": sync["initial_sync_s"], "faulted_429s": throttled}


def count_users(target: ScimTarget) -> int:
    r = httpx.get(f"{target.base_url}/Users", params={"count": 1},
                  headers={"Authorization": f"Bearer {target.token}"})
    r.raise_for_status()
    total: int = r.json()["totalResults"]
    return total


def run_pipeline(bootstrap: str, base_url: str, token: str, people: list[dict[str, Any]],
              args: argparse.Namespace, *, measure_latency: bool,
              others: dict[str, int] | None = None, bulk: str = "auto",
              start: Callable[[Supervisor, Topics], None] | None = None,
              probe: Callable[[Supervisor], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Initial sync of ``people`` through ingest -> mapper -> writer into ``base_url``;
    ``others`` are more processes (broker, target) whose CPU the sync costs. ``start``
    starts the workers (default: one of each; bench/replicas.py starts replicas), ``probe``
    adds figures read from the workers after the sync, while they still run."""
    result: dict[str, Any] = {}
    work = Path(tempfile.mkdtemp(prefix="scimflow-bench-"))
    topics = Topics(f"bench{uuid.uuid4().hex[:6]}.", args.partitions)
    create_topics(bootstrap, topics.specs())
    # JSON, not YAML: parsing a 10,000-user YAML file takes ~0.3 s even with libyaml,
    # which would measure the file format rather than the pipeline.
    directory = work / "directory.json"
    write_directory(directory, people)
    config = {
        "sources": [{"name": "hr", "type": "file", "path": str(directory), "poll_interval": 0.05}],
        "applications": [{
            "name": "bench", "target": {"base_url": base_url, "token": "env:BENCH_TOKEN", "bulk": bulk,
                                        "max_connections": args.concurrency,
                                        "rate_limit": {"max_concurrency": args.concurrency,
                                                       "max_requests_per_second": 5000}},
            "assignments": {"groups": ["g-all"]},
            "mappings": {"user": {"attributes": [
                {"target": "userName", "source": "userPrincipalName", "matching": 1},
                {"target": "externalId", "source": "id"},
                {"target": "displayName", "source": "displayName"},
                {"target": "name.givenName", "source": "givenName"},
                {"target": "name.familyName", "source": "surname"}]}}}],
    }
    (work / "bench.yaml").write_text(yaml.safe_dump(config))
    env = {"SCIMFLOW_KAFKA_BOOTSTRAP": bootstrap, "SCIMFLOW_TOPIC_PREFIX": topics.prefix,
           "SCIMFLOW_PARTITIONS": str(args.partitions), "SCIMFLOW_DATA_DIR": str(work / "data"),
           "SCIMFLOW_LOG_FORMAT": "json",
           "SCIMFLOW_LOG_LEVEL": "warning", "BENCH_TOKEN": token}
    sup = Supervisor(config=work / "bench.yaml", env=env, log_dir=work / "logs")
    activity: Activity | None = None
    rss = RssSampler(sup)
    try:
        log(f"scimflow: initial sync of {len(people)} users (logs in {work / 'logs'})")
        outside = {**(others or {}), "bench": os.getpid()}
        cpu_before = cpu_seconds(outside)
        (start or _start_all)(sup, topics)

        wait_for_records(bootstrap, topics.activity, len(people), args.timeout, sup)
        # Workers from their start (start-up included), the others from the sync's start.
        cpu = cpu_seconds({**{name: proc.pid for name, proc in sup.procs.items()}, **outside})
        result["cpu_s_per_1000_users"] = {
            name: round((used - cpu_before.get(name, 0.0)) * 1000 / len(people), 2)
            for name, used in sorted(cpu.items())}
        activity = Activity(bootstrap, topics.activity)
        records = activity.records

        def synced() -> bool:
            return sum(1 for r in records if r.status == "success") >= len(people)

        wait("initial sync", synced, args.timeout, sup)
        first_seen = _first_change(bootstrap, topics.changes)
        last_write = max(r.at for r in activity.records)
        elapsed = (last_write - first_seen).total_seconds()
        result["scimflow_users_per_s"] = round(len(people) / elapsed, 1)
        result["initial_sync_s"] = round(elapsed, 2)
        if measure_latency:
            result.update(latency(directory, people, activity, args.changes, sup))
        if probe is not None:
            result.update(probe(sup))
    finally:
        peak = rss.close()
        if measure_latency:
            result["peak_rss_mb"] = peak
        if activity is not None:
            activity.close()
        sup.stop()
    return result


def _start_all(sup: Supervisor, _topics: Topics) -> None:
    sup.start()


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
    parser.add_argument("--fault-users", type=int, default=500,
                        help="users of the run through the fault proxy (0: skip it)")
    parser.add_argument("--fault-share", type=float, default=0.10,
                        help="share of requests the fault proxy answers with 429")
    parser.add_argument("--target-threads", type=int, default=8,
                        help="worker threads of the SCIM target (0: scim2-server's stock HTTP/1.0 server)")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--mapping-users", type=int, default=100_000)
    parser.add_argument("--reconcile-users", type=int, default=1000,
                        help="users of the recorded reconcile phase (0: skip it)")
    parser.add_argument("--reconcile-groups", type=int, default=20,
                        help="groups of the reconcile phase; each user is a member of one")
    parser.add_argument("--reconcile-scan-interval", type=float, default=5.0,
                        help="full_scan_interval of the reconcile phase's file source (s)")
    parser.add_argument("--only-faulted", action="store_true",
                        help="run only the faulted phase and its unfaulted reference")
    args = parser.parse_args()
    if args.only_faulted:
        print(json.dumps(run_faulted_only(args), sort_keys=True))
        return
    result = run_mapping(args.mapping_users)
    log(f"mapping: {result['mapping_10expr_users_per_cpu_s']} (10 expressions) and "
        f"{result['mapping_entra_default_users_per_cpu_s']} (Entra default) users per CPU-second")
    result |= run_writer_path()
    log(f"writer path: {result['writer_path_change_stops']} stops in {result['writer_path_change_files']} "
        f"files (change), {result['writer_path_scan_stops']} in {result['writer_path_scan_files']} (scan)")
    result |= run(args)
    for key, value in result.items():
        log(f"{key:>28}: {value}")
    print(json.dumps(result, sort_keys=True))  # the last line: machine-readable
    problem = unexpected_writes(result)
    if problem is not None:
        raise SystemExit(problem)


if __name__ == "__main__":
    main()
