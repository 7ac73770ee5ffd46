"""Benchmark: latency from a change in an LDAP directory to the SCIM write at the target.

    python bench/ldap_latency.py [--users 100] [--changes 200]

A real slapd (syncprov, started like the tests start it), a real broker, a fresh scim2-server
and the three workers as processes; the LDAP source follows slapd's syncrepl feed. After the
initial sync, ``--changes`` single-attribute edits (``givenName``), one at a time: the
latency of each is from the moment slapd acknowledged the modify to the writer's activity
record of the update at the target (its ``at``). Prints p50/p99, and the last line is one
JSON object with every figure. Goal: p50 <= 0.5 s, p99 <= 2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support.slapd, from anywhere

from pipeline import Activity

from schemas import ActivityRecord
from services.devstack.broker import start_broker
from services.devstack.scim_target import ScimTarget, start_scim_target
from services.devstack.supervisor import Supervisor
from services.runtime.kafka import create_topics
from services.runtime.settings import load_settings
from services.runtime.topics import Topics
from tests.support.slapd import Slapd, start_slapd


def log(msg: str) -> None:
    print(f"[ldap-latency] {msg}", file=sys.stderr, flush=True)


def wait(what: str, check: Any, timeout: float, sup: Supervisor) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if sup.dead():
            raise SystemExit(f"workers died: {sup.dead()}; logs in {sup.log_dir}")
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}; logs in {sup.log_dir}")
        time.sleep(0.01)


def _config(slapd: Slapd, target: ScimTarget, group_id: str) -> dict[str, Any]:
    source = {"name": "corp-ldap", "type": "ldap", "url": slapd.url, "base_dn": slapd.base_dn,
              "bind_dn": slapd.bind_dn, "password": "env:BENCH_LDAP_PASSWORD", "full_scan_interval": 3600}
    app = {"name": "app", "target": {"base_url": target.base_url, "token": "env:BENCH_SCIM_TOKEN"},
           "assignments": {"groups": [group_id]},
           "mappings": {"user": {"attributes": [
               {"target": "userName", "source": "mail", "matching": 1},
               {"target": "externalId", "source": "uid"},
               {"target": "displayName", "source": "cn"},
               {"target": "name.givenName", "source": "givenName"},
               {"target": "name.familyName", "source": "sn"}]}}}
    return {"sources": [source], "applications": [app]}


def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = load_settings(partitions=args.partitions)
    with start_broker(settings, log=log) as broker, start_slapd() as slapd, start_scim_target() as target, \
            tempfile.TemporaryDirectory(prefix="scimflow-ldap-bench-") as tmp:
        dns = [slapd.add_user(f"user{i:04d}", givenName=f"Given{i}") for i in range(args.users)]
        group = slapd.add_group("staff", dns)
        work = Path(tmp)
        (work / "scimflow.yaml").write_text(yaml.safe_dump(_config(slapd, target, slapd.entry_uuid(group))))
        prefix = f"b{uuid.uuid4().hex[:8]}."
        topics = Topics(prefix, args.partitions)
        create_topics(broker.bootstrap, topics.specs())
        env = {"SCIMFLOW_KAFKA_BOOTSTRAP": broker.bootstrap, "SCIMFLOW_TOPIC_PREFIX": prefix,
               "SCIMFLOW_PARTITIONS": str(args.partitions), "SCIMFLOW_DATA_DIR": str(work / "data"),
               "SCIMFLOW_LOG_FORMAT": "json",
               "SCIMFLOW_LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "warning"),
               "BENCH_LDAP_PASSWORD": slapd.password, "BENCH_SCIM_TOKEN": target.token}
        sup = Supervisor(config=work / "scimflow.yaml", env=env, log_dir=work / "logs")
        activity = Activity(broker.bootstrap, topics.activity)
        try:
            sup.start()
            began = time.monotonic()
            wait("the initial sync", lambda: sum(r.action in ("create", "adopt") for r in activity.records)
                 >= args.users, 300, sup)
            log(f"initial sync of {args.users} users in {time.monotonic() - began:.1f}s")
            return {"ldap_users": args.users, **latency(slapd, dns, activity, args.changes, sup)}
        finally:
            activity.close()
            sup.stop()


def latency(slapd: Slapd, dns: list[str], activity: Activity, changes: int,
            sup: Supervisor) -> dict[str, Any]:
    log(f"latency: {changes} single-attribute edits in slapd, one at a time")
    samples = []
    for k in range(changes):
        dn = dns[(k * 7919) % len(dns)]
        before = len(activity.records)
        slapd.modify(dn, givenName=f"Edited{k}")
        t0 = datetime.now(UTC)  # slapd has acknowledged the modify

        def written(before: int = before, k: int = k) -> bool:
            return any(_is_edit(r, k) for r in activity.records[before:])

        wait(f"edit {k} at the target", written, 60, sup)
        done = next(r for r in activity.records[before:] if _is_edit(r, k))
        samples.append((done.at - t0).total_seconds() * 1000)
    samples.sort()
    return {"ldap_latency_p50_ms": round(statistics.median(samples), 1),
            "ldap_latency_p99_ms": round(samples[min(len(samples) - 1, int(len(samples) * 0.99))], 1),
            "ldap_latency_max_ms": round(samples[-1], 1), "ldap_latency_samples": len(samples)}


def _is_edit(record: ActivityRecord, k: int) -> bool:
    return record.action == "update" and any(m.new_value == f"Edited{k}" for m in record.modified_properties)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--changes", type=int, default=200)
    parser.add_argument("--partitions", type=int, default=6)
    args = parser.parse_args()
    result = run(args)
    for key, value in result.items():
        log(f"{key:>24}: {value}")
    print(json.dumps(result, sort_keys=True))  # the last line: machine-readable


if __name__ == "__main__":
    main()
