"""Benchmark: how much poison on the input topics delays the good records behind it.

    python bench/poison.py [--users 500] [--rate 20] [--burst-users 1000] [--poison 1000]

One real broker, one scim2-server, the mapper and writer as real processes (the bench
produces the good changes itself, as ingest would, stamped with the time it produced
them). Four phases on the same pipeline, each with new users:

1. clean, paced: ``--users`` users at ``--rate`` a second (below what the pipeline can
   take, so that a delay is the poison's and not a queue of good records), nothing else;
2. poison, paced: the same, with ``--poison`` poison records on directory.changes (the
   mapper's input) and as many on provisioning.commands (the writer's), spread evenly
   between the good records (tests/support/poison.py: null, empty, truncated JSON, wrong
   types, unknown tags, invalid UTF-8 in a known field, 0.9 MB records);
3. clean, burst: ``--burst-users`` users all at once;
4. poison, burst: as many users and the poison at once, interleaved.

A good record's delay runs from its produce to the writer's activity record of its
create. The paced phases give p50/p99 of that delay (goal with poison: p99 under 0.5 s);
the burst phases give good users per second (users over the time from the first produce
to the last create), with poison and clean, and their ratio. Every poison record must
come out as exactly one MalformedMessage error record and neither worker may log an
agent crash or restart: the bench exits 1 otherwise.

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import yaml
from pipeline import Activity, log, wait

from schemas import DirectoryChange, ErrorRecord
from schemas.codecs import encode
from services.devstack.broker import start_broker
from services.devstack.scim_target import start_scim_target
from services.devstack.supervisor import Supervisor
from services.runtime.kafka import consume, create_topics, plain_producer
from services.runtime.settings import load_settings
from services.runtime.topics import Topics
from tests.support.poison import CHANGE, COMMAND, poison

GOAL_P99_S = 0.5


class Run:
    """The mapper and writer on topics of their own, a producer, and the activity they write."""

    def __init__(self, bootstrap: str, base_url: str, token: str, args: argparse.Namespace) -> None:
        self.bootstrap = bootstrap
        self.work = Path(tempfile.mkdtemp(prefix="scimflow-bench-poison-"))
        self.topics = Topics(f"poison{uuid.uuid4().hex[:6]}.", args.partitions)
        create_topics(bootstrap, self.topics.specs())
        self.sup = Supervisor(config=self._config(base_url, args), log_dir=self.work / "logs",
                              env=_env(bootstrap, self.topics, args.partitions, self.work, token))
        self.producer = plain_producer(bootstrap)
        self.activity = Activity(bootstrap, self.topics.activity)
        self.poison_sent = 0

    def _config(self, base_url: str, args: argparse.Namespace) -> Path:
        (self.work / "directory.json").write_text('{"users": [], "groups": []}')
        config = {
            "sources": [{"name": "hr", "type": "file", "path": str(self.work / "directory.json")}],
            "applications": [{
                "name": "app", "scope": "all",
                "target": {"base_url": base_url, "token": "env:BENCH_TOKEN",
                           "max_connections": args.concurrency,
                           "rate_limit": {"max_concurrency": args.concurrency,
                                          "max_requests_per_second": 5000}},
                "mappings": {"user": {"attributes": [
                    {"target": "userName", "source": "userPrincipalName", "matching": 1},
                    {"target": "externalId", "source": "id"},
                    {"target": "displayName", "source": "displayName"}]}}}],
        }
        path = self.work / "bench.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    def good(self, source_id: str) -> None:
        """One good change, stamped now (its delay starts here)."""
        change = DirectoryChange(
            source="hr", object_type="user", object_id=source_id, operation="upsert",
            attributes={"id": source_id, "userPrincipalName": f"{source_id}@example.com",
                        "displayName": f"User {source_id}"},
            change_id=uuid.uuid4().hex, observed_at=datetime.now(UTC))
        self.producer.send(self.topics.changes, key=source_id.encode(), value=encode(change))

    def bad(self, count: int) -> None:
        """``count`` poison records on each of the mapper's and the writer's input topics."""
        for _ in range(count):
            i = self.poison_sent
            self.producer.send(self.topics.changes, key=f"poison-{i}".encode(), value=poison(CHANGE, i))
            self.producer.send(self.topics.commands, key=f"poison-{i}".encode(), value=poison(COMMAND, i))
            self.poison_sent += 1

    def close(self) -> None:
        self.activity.close()
        self.producer.close()
        self.sup.stop()


def _env(bootstrap: str, topics: Topics, partitions: int, work: Path, token: str) -> dict[str, str]:
    return {"SCIMFLOW_KAFKA_BOOTSTRAP": bootstrap, "SCIMFLOW_TOPIC_PREFIX": topics.prefix,
            "SCIMFLOW_PARTITIONS": str(partitions), "SCIMFLOW_DATA_DIR": str(work / "data"),
            "SCIMFLOW_LOG_FORMAT": "json", "SCIMFLOW_LOG_LEVEL": "warning", "BENCH_TOKEN": token}


def phase(run: Run, name: str, users: int, poison_count: int, rate: float | None,
          timeout: float) -> dict[str, float]:
    """Produce ``users`` good changes (at ``rate`` a second, or at once) with
    ``poison_count`` poison records per topic spread between them; wait for every create."""
    ids = [f"{name}-{i:05d}" for i in range(users)]
    before = len(run.activity.records)
    spread = _spread(poison_count, users)
    log(f"{name}: {users} users, {poison_count} poison records per topic, "
        f"{'at once' if rate is None else f'{rate:g}/s'}")
    start = time.monotonic()
    t0 = datetime.now(UTC)
    for k, source_id in enumerate(ids):
        if rate is not None:
            time.sleep(max(0.0, start + k / rate - time.monotonic()))
        run.good(source_id)
        run.bad(spread[k])
        if rate is not None:
            run.producer.flush()  # paced: each good record leaves now, not with a batch
    run.producer.flush()
    wanted = set(ids)

    def created() -> dict[str, datetime]:
        return {r.source_id: r.at for r in run.activity.records[before:]
                if r.source_id in wanted and r.action == "create" and r.status == "success"}

    wait(f"{name}: {users} creates", lambda: len(created()) == users, timeout, run.sup)
    stamps = _stamps(run, wanted)
    done = created()
    delays = sorted((done[i] - stamps[i]).total_seconds() for i in ids)
    last = max(done.values())
    return {"p50_ms": round(statistics.median(delays) * 1000, 1),
            "p99_ms": round(delays[min(len(delays) - 1, int(len(delays) * 0.99))] * 1000, 1),
            "max_ms": round(delays[-1] * 1000, 1),
            "users_per_s": round(users / (last - t0).total_seconds(), 1)}


def _spread(total: int, over: int) -> list[int]:
    """``total`` split into ``over`` near-equal shares, in order."""
    return [(k + 1) * total // over - k * total // over for k in range(over)]


def _stamps(run: Run, wanted: set[str]) -> dict[str, datetime]:
    """When each good change was produced (its ``observed_at``)."""
    dec = msgspec.json.Decoder(DirectoryChange)
    stamps = {}
    for m in consume(run.bootstrap, run.topics.changes, idle_timeout=0.5):
        if m.key is not None and m.key.decode(errors="replace") in wanted:
            change = dec.decode(m.value)
            stamps[change.object_id] = change.observed_at
    return stamps


def malformed_records(run: Run) -> int:
    dec = msgspec.json.Decoder(ErrorRecord)
    count = 0
    for m in consume(run.bootstrap, run.topics.errors, idle_timeout=1.0):
        if dec.decode(m.value).error_code == "MalformedMessage":
            count += 1
    return count


def restarts(run: Run) -> int:
    """Agent crashes and restarts of crashed services the mapper and writer logged."""
    lines = 0
    for service in ("mapper", "writer"):
        text = (run.work / "logs" / f"{service}.log").read_text(errors="replace")
        lines += text.count("Crashed reason=") + text.count("Restarting dead")
    return lines


def run(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"poison_users_paced": args.users, "poison_users_burst": args.burst_users,
                              "poison_per_topic": args.poison, "poison_rate": args.rate}
    with start_broker(load_settings(partitions=args.partitions)) as broker, \
            start_scim_target(threads=args.target_threads) as target:
        bench = Run(broker.bootstrap, target.base_url, target.token, args)
        try:
            bench.sup.start(("mapper", "writer"))
            log(f"mapper and writer starting (logs in {bench.work / 'logs'})")
            phase(bench, "warmup", 20, 0, None, args.timeout)
            phases = {"clean_paced": (args.users, 0, args.rate),
                      "poison_paced": (args.users, args.poison, args.rate),
                      "clean_burst": (args.burst_users, 0, None),
                      "poison_burst": (args.burst_users, args.poison, None)}
            figures = {name: phase(bench, name, users, n, rate, args.timeout)
                       for name, (users, n, rate) in phases.items()}
            wait("an error record per poison record",
                 lambda: malformed_records(bench) >= 2 * bench.poison_sent, 60, bench.sup)
            result["poison_error_records"] = malformed_records(bench)
            result["poison_records_sent"] = 2 * bench.poison_sent
            result["poison_agent_restarts"] = restarts(bench)
        finally:
            bench.close()
    for name in ("clean_paced", "poison_paced"):
        for key in ("p50_ms", "p99_ms", "max_ms"):
            result[f"poison_{name}_delay_{key}"] = figures[name][key]
    for name in ("clean_burst", "poison_burst"):
        result[f"poison_{name}_users_per_s"] = figures[name]["users_per_s"]
    result["poison_ratio_burst_to_clean"] = round(
        figures["poison_burst"]["users_per_s"] / figures["clean_burst"]["users_per_s"], 3)
    result["poison_p99_goal_met"] = figures["poison_paced"]["p99_ms"] < GOAL_P99_S * 1000
    return result


def problem(result: dict[str, Any]) -> str | None:
    """What is wrong beyond slowness: a poison record without its one error record, a restart."""
    if result["poison_error_records"] != result["poison_records_sent"]:
        return (f"{result['poison_error_records']} MalformedMessage records for "
                f"{result['poison_records_sent']} poison records")
    if result["poison_agent_restarts"]:
        return f"{result['poison_agent_restarts']} agent crash/restart lines in the worker logs"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--users", type=int, default=500, help="good users of each paced phase")
    parser.add_argument("--burst-users", type=int, default=1000, help="good users of each burst phase")
    parser.add_argument("--poison", type=int, default=1000, help="poison records per topic and phase")
    parser.add_argument("--rate", type=float, default=20.0,
                        help="good users a second in the paced phases (below the pipeline's capacity)")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--target-threads", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()
    result = run(args)
    for key, value in result.items():
        log(f"{key:>40}: {value}")
    print(json.dumps(result, sort_keys=True))  # the last line: machine-readable
    trouble = problem(result)
    if trouble is not None:
        sys.exit(trouble)


if __name__ == "__main__":
    main()
