"""Benchmark: initial sync of N users with one writer, then with two in one consumer group.

    python bench/replicas.py [--users 5000] [--mappers 1] [--delay-ms 0] [--delayed-bulk off]
                             [--partitions 6]

Issue 18: what a second writer replica buys. Each run is bench/pipeline.py's initial sync
(its ``run_pipeline``: the demo-like directory file -> ingest -> mapper -> writer -> a fresh
scim2-server, fresh topics and data dirs), the same in every way but the number of writers:

1. ``one``: one writer; ``two``: two writers in the same consumer group, each owning half of
   the commands topic's partitions. The mappers (``--mappers``, default 1) are the same in
   both runs, so the writer count is the only thing that changes. Every worker group is
   stable with all its members before ingest starts, so the sync is shared from its first
   command. ``cpu_ms_per_user`` counts each worker from its start; the mappers' and
   writers' CPU up to that stable point (imports, joining) is ``startup_cpu_s``, and
   ``cpu_ms_per_user_without_startup`` leaves it out (ingest's start-up stays in: it starts
   with the sync).
2. The target has spare capacity: scim2-server with 8 threads and no rate limit of its own;
   the writer's own limit (bench/pipeline.py: 5,000 requests/s per app) is not reached.
3. Figures per run: users/s (first change ingest saw -> last write), CPU ms per user of
   each process (ingest, mapper(s), each writer, broker, target, and ``bench``: this
   process, which also runs the delaying proxy of step 4), the split of the work between
   the writers (their ``scimflow_provisioning_outcomes_total`` counters, scraped from their
   ``/metrics`` after the sync) and exactness: the target holds each userName exactly once,
   the writers' create + adopt successes add up to N, no failure outcome, no error record.
   ``ratio_two_to_one`` is two writers' users/s over one's (the median over ``--rounds``
   pairs). A writer's ``cpu_ms_per_user`` is its CPU over all N users (not only those it
   wrote), so the writers' figures add up to the service's cost: ``writers_cpu_ms_per_user``.
4. ``--delay-ms D`` (> 0): the same pair again through a proxy (tests/support/faultproxy.py)
   that holds every request D ms before forwarding it: a target far away or slow per
   request but with capacity to spare. There one writer's in-flight limit
   (``max_concurrency``, 16) rather than CPU can cap its throughput, which a second writer
   (16 more in flight) can lift. The delayed pair runs with ``target.bulk`` off by default
   (``--delayed-bulk``: one request per user, as on a target without /Bulk): with bulk, a
   request carries many users and 16 in flight cover even a 50 ms target (measured: one
   writer 549 users/s, two ÷ one 1.06, both CPU-bound).

What the ratio can and cannot show on this machine: it has 2 cores, shared by every
process of the pipeline (broker JVM, target, ingest, mapper, writers, this script) and by
whatever else runs (note ``uptime``), so a second writer adds a process, not a core.
``cores_busy`` (the processes' CPU ms per user summed, times users/s) tells which case a run
is in, on an otherwise idle machine (under other load a sync starved of CPU also keeps
few cores busy). Well under 2: the sync waited (on the target, on Kafka round trips, on one writer's
in-flight limit) and a second writer overlaps that waiting: the ratio shows what a replica
buys. Near 2: the sync is CPU-bound; the ratio then shows only the cost of one more process
(1 or a little less) and nothing about a deployment where each writer has its own core.
Whatever the writers, this machine cannot pass about 2,000 / (CPU ms per user, all
processes) users/s; other load takes from that and makes the ratio vary between runs. The
delayed pair makes the waiting deliberate, so its ratio is about concurrency, not cores;
with ``target.bulk`` (many users per request) a small delay limits one writer little.

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
from collections.abc import Iterator
from typing import Any

import httpx
from pipeline import count_users, cpu_seconds, log, run_pipeline, users
from prometheus_client.parser import text_string_to_metric_families

from services.devstack.broker import start_broker
from services.devstack.processes import free_ports
from services.devstack.scim_target import ScimTarget, start_scim_target
from services.devstack.supervisor import Supervisor
from services.runtime.kafka import consume
from services.runtime.settings import load_settings
from services.runtime.topics import Topics
from tests.support.faultproxy import FaultProxy
from tests.support.replicas import wait_members
from tests.support.scim_view import all_of

WRITTEN = ("create/success", "adopt/success")
"""Outcomes (action/status) that put a user in the target (adopt: it was there, now managed)."""


def replica_names(service: str, count: int) -> list[str]:
    """The supervisor's names for ``count`` instances: ``writer``, ``writer-2``, ..."""
    return [service if i == 1 else f"{service}-{i}" for i in range(1, count + 1)]


class Replicas:
    """Starts ``mappers`` mappers and ``writers`` writers (each writer with a ``/metrics``
    port), waits for both groups to be stable with every member, then starts ingest; after
    the sync, reads each writer's outcome counters. Remembers the run's topics."""

    def __init__(self, bootstrap: str, mappers: int, writers: int) -> None:
        self.bootstrap = bootstrap
        self.counts = {"mapper": mappers, "writer": writers}
        self.topics: Topics | None = None
        self.startup: dict[str, float] = {}

    def start(self, sup: Supervisor, topics: Topics) -> None:
        self.topics = topics
        writers = replica_names("writer", self.counts["writer"])
        sup.metrics_ports.update(zip(writers, free_ports(len(writers)), strict=True))
        for service, count in self.counts.items():
            sup.start_one(service)
            for replica in range(2, count + 1):
                sup.start_replica(service, replica)
        for service, count in self.counts.items():
            wait_members(self.bootstrap, topics.app_id(service), count, timeout=120)
        # What the mappers and writers used to start and join their groups, before any work.
        self.startup = cpu_seconds({name: proc.pid for name, proc in sup.procs.items()})
        sup.start(("ingest",))

    def probe(self, sup: Supervisor) -> dict[str, Any]:
        outcomes = {name: writer_outcomes(port) for name, port in sup.metrics_ports.items()}
        return {"writer_outcomes": outcomes, "startup_cpu_s": self.startup}


def writer_outcomes(port: int) -> dict[str, int]:
    """``action/status`` -> count of the writer's ``scimflow_provisioning_outcomes_total``."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    seen: dict[str, int] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "scimflow_provisioning_outcomes":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                key = f"{sample.labels['action']}/{sample.labels['status']}"
                seen[key] = seen.get(key, 0) + int(sample.value)
    return seen


def user_names(target: ScimTarget) -> list[str]:
    """Every userName the target holds, paged (scim2-server gives at most 1,000 a page)."""
    with httpx.Client(base_url=target.base_url, timeout=120,
                      headers={"Authorization": f"Bearer {target.token}"}) as http:
        return [u["userName"] for u in all_of(http, "Users")]


def error_records(bootstrap: str, topic: str) -> int:
    """How many records the errors topic holds (read to its end after the sync)."""
    return sum(1 for _ in consume(bootstrap, topic, idle_timeout=1.0))


@contextlib.contextmanager
def target_url(target: ScimTarget, delay_ms: float) -> Iterator[str]:
    """The URL the writers use: the target itself, or a proxy holding each request."""
    if not delay_ms:
        yield target.base_url
        return
    with FaultProxy(target.base_url) as proxy:
        proxy.delay(delay_ms / 1000)
        yield proxy.url


def one_run(bootstrap: str, broker_pid: int | None, writers: int, args: argparse.Namespace, *,
            delay_ms: float, bulk: str = "auto") -> dict[str, Any]:
    """One initial sync with ``writers`` writers; its figures and the exactness checks."""
    people = users(args.users)
    replicas = Replicas(bootstrap, args.mappers, writers)
    with start_scim_target(threads=args.target_threads) as target, target_url(target, delay_ms) as url:
        others = {"target": target.pid, **({"broker": broker_pid} if broker_pid else {})}
        log(f"{writers} writer(s), {args.mappers} mapper(s), {args.users} users, delay {delay_ms:g} ms, "
            f"bulk {bulk}")
        sync = run_pipeline(bootstrap, url, target.token, people, args, measure_latency=False, bulk=bulk,
                         others=others, start=replicas.start, probe=replicas.probe)
        names = user_names(target)
        total = count_users(target)
    assert replicas.topics is not None
    return summarize(sync, names, total, len(people),
                     error_records(bootstrap, replicas.topics.errors))


def summarize(sync: dict[str, Any], names: list[str], total: int, n: int, errors: int) -> dict[str, Any]:
    outcomes: dict[str, dict[str, int]] = sync["writer_outcomes"]
    written = {name: sum(counts.get(k, 0) for k in WRITTEN)
               for name, counts in outcomes.items()}
    failures = sum(c for counts in outcomes.values() for k, c in counts.items() if k.endswith("/failure"))
    startup: dict[str, float] = sync["startup_cpu_s"]
    cpu: dict[str, float] = sync["cpu_s_per_1000_users"]
    sync_cpu = {name: round(ms - startup.get(name, 0.0) * 1000 / n, 2) for name, ms in cpu.items()}
    exact = total == n and len(names) == n and len(set(names)) == n and sum(written.values()) == n
    return {"users_per_s": sync["scimflow_users_per_s"], "sync_s": sync["initial_sync_s"],
            # CPU seconds per 1,000 users is the same number as CPU ms per user.
            "cpu_ms_per_user": cpu,
            "cpu_ms_per_user_without_startup": sync_cpu,
            # Cores the whole machine's share of this sync kept busy: 2 would be CPU-bound here.
            "writers_cpu_ms_per_user": round(sum(ms for name, ms in sync_cpu.items()
                                                 if name.startswith("writer")), 2),
            "cores_busy": round(sum(sync_cpu.values()) * sync["scimflow_users_per_s"] / 1000, 2),
            "startup_cpu_s": {name: round(s, 2) for name, s in startup.items()},
            "writer_users": written, "writer_outcomes": outcomes,
            "target_users": total, "distinct_user_names": len(set(names)),
            "failure_outcomes": failures, "error_records": errors,
            "exact": exact and failures == 0 and errors == 0}


def pair(bootstrap: str, broker_pid: int | None, args: argparse.Namespace, *,
         delay_ms: float, bulk: str = "auto") -> dict[str, Any]:
    """One writer, then two, ``--rounds`` times: the last round's figures in full, each
    round's users/s and ratio, and the median ratio (other load on the machine moves a
    single round's ratio a lot: alternating the runs spreads it over both)."""
    rounds: list[dict[str, Any]] = []
    for _ in range(args.rounds):
        one = one_run(bootstrap, broker_pid, 1, args, delay_ms=delay_ms, bulk=bulk)
        two = one_run(bootstrap, broker_pid, 2, args, delay_ms=delay_ms, bulk=bulk)
        rounds.append({"one": one, "two": two})
    ratios = [r["two"]["users_per_s"] / r["one"]["users_per_s"] for r in rounds]
    return {"one_writer": rounds[-1]["one"], "two_writers": rounds[-1]["two"],
            "users_per_s_rounds": [[r["one"]["users_per_s"], r["two"]["users_per_s"]] for r in rounds],
            "ratio_rounds": [round(x, 3) for x in ratios],
            "ratio_two_to_one": round(statistics.median(ratios), 3),
            "exact": all(r[k]["exact"] for r in rounds for k in ("one", "two"))}


def run(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"users": args.users, "mappers": args.mappers, "partitions": args.partitions,
                              "concurrency": args.concurrency, "target_threads": args.target_threads,
                              "cores": _cores()}
    with start_broker(load_settings(partitions=args.partitions)) as broker:
        result["broker"] = broker.kind
        result["spare"] = pair(broker.bootstrap, broker.pid, args, delay_ms=0)
        if args.delay_ms:
            result["delay_ms"], result["delayed_bulk"] = args.delay_ms, args.delayed_bulk
            result["delayed"] = pair(broker.bootstrap, broker.pid, args, delay_ms=args.delay_ms,
                                     bulk=args.delayed_bulk)
    result["exact"] = result["spare"]["exact"] and result.get("delayed", {}).get("exact", True)
    return result


def _cores() -> int:
    return len(os.sched_getaffinity(0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--mappers", type=int, default=1, help="mappers in both runs")
    parser.add_argument("--delay-ms", type=float, default=0,
                        help="also run the pair through a proxy holding each request this long (0: skip)")
    parser.add_argument("--delayed-bulk", choices=["auto", "off"], default="off",
                        help="target.bulk of the delayed pair (off: one request per user)")
    parser.add_argument("--rounds", type=int, default=1, help="one-then-two pairs to run (median ratio)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--target-threads", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()
    result = run(args)
    for key, value in result.items():
        log(f"{key:>16}: {value}")
    print(json.dumps(result, sort_keys=True))  # the last line: machine-readable
    if not result["exact"]:
        raise SystemExit("a run did not end exact: see exact / error_records / writer_outcomes above")


if __name__ == "__main__":
    main()
