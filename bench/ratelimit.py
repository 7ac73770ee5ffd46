"""Benchmark: how close the writer's SCIM client gets to a target's rate limit, and what
random 429s cost it.

    python bench/ratelimit.py [--seconds 30] [--limit 50] [--jobs 256]

The load is the writer's for new users (a lookup by userName, then a POST), from ``--jobs``
concurrent jobs (the writer's window, ``SCIMFLOW_WRITER_BATCH``) through one ScimClient with
the default ``target.rate_limit`` (16 in flight, 500 requests/s at most, adaptive), to a real
scim2-server behind the fault proxy (tests/support/faultproxy.py). Three runs, each against
a fresh server for ``--seconds``:

1. limited: the proxy lets ``--limit`` requests/s through (a token bucket holding one
   second's worth) and answers 429 + ``Retry-After`` beyond. Figures over the run after the
   first ``--warmup`` seconds (finding the limit): ``ratelimit_achieved_to_allowed`` (requests
   let through per second ÷ the limit; goal >= 0.9) and ``ratelimit_429_share`` (goal <= 5 %;
   also over the whole run, ``ratelimit_429_share_all``);
2. unfaulted: no faults, users/s;
3. faulted: ``--fault-share`` (10 %) of requests answered 429 + ``Retry-After: 1``, users/s;
   ``ratelimit_faulted_to_unfaulted`` (goal >= 0.5).

The last line printed is one JSON object with every figure (``make bench`` runs this after
bench/pipeline.py).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import stamina.instrumentation

from services.devstack.scim_target import start_scim_target
from services.runtime.config import RateLimit
from services.runtime.errors import TargetError
from services.scim.client import ScimClient
from tests.support.faultproxy import FaultProxy, LogEntry

SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"


def log(msg: str) -> None:
    sys.stderr.write(f"[bench] {msg}\n")
    sys.stderr.flush()


async def load(url: str, token: str, seconds: float, jobs: int) -> tuple[int, int, float]:
    """Jobs provisioning new users for ``seconds``: (users written, users failed, the
    adaptive rate at the end)."""
    names = itertools.count()
    written = failed = 0
    deadline = time.monotonic() + seconds
    async with ScimClient(url, token, attempts=10, rate_limit=RateLimit()) as client:

        async def job() -> None:
            nonlocal written, failed
            while time.monotonic() < deadline:
                name = f"user{next(names)}@example.com"
                try:
                    if not await client.find_users("userName", name):
                        await client.create_user({"schemas": [SCHEMA], "userName": name, "active": True})
                    written += 1
                except TargetError:
                    failed += 1

        await asyncio.gather(*(job() for _ in range(jobs)))
        assert client.limits is not None
        return written, failed, client.limits.requests_per_second


def run_one(args: argparse.Namespace, name: str, fault: Callable[[FaultProxy], Any]) -> dict[str, Any]:
    """One run against a fresh target: users/s and what the proxy saw."""
    with start_scim_target(threads=args.target_threads) as target, FaultProxy(target.base_url) as proxy:
        fault(proxy)
        started = time.monotonic()
        written, failed, rate = asyncio.run(load(proxy.url, target.token, args.seconds, args.jobs))
        elapsed = time.monotonic() - started
        entries = proxy.log
    log(f"{name}: {written} users in {elapsed:.1f} s, {failed} failed, {len(entries)} requests, "
        f"{sum(e.status == 429 for e in entries)} answered 429; adaptive rate at the end {rate:.1f}/s")
    return {"users_per_s": written / elapsed, "failed": failed, "entries": entries, "started": started,
            "elapsed": elapsed, "rate": rate}


def steady(entries: list[LogEntry], since: float, until: float) -> tuple[float, float]:
    """(requests/s the target let through, share of 429s) between ``since`` and ``until``."""
    window = [e for e in entries if since <= e.at < until]
    passed = sum(1 for e in window if e.status != 429)
    return passed / (until - since), sum(1 for e in window if e.status == 429) / max(1, len(window))


def run(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"ratelimit_seconds": args.seconds, "ratelimit_jobs": args.jobs,
                              "ratelimit_limit": args.limit}
    log(f"limited: target lets {args.limit} requests/s through, 429 + Retry-After beyond")
    limited = run_one(args, "limited", lambda proxy: proxy.token_bucket(args.limit))
    entries = limited["entries"]
    since, until = limited["started"] + args.warmup, limited["started"] + limited["elapsed"]
    achieved, share = steady(entries, since, until)
    result["ratelimit_achieved_per_s"] = round(achieved, 1)
    result["ratelimit_achieved_to_allowed"] = round(achieved / args.limit, 3)
    result["ratelimit_429_share"] = round(share, 4)
    result["ratelimit_429_share_all"] = round(
        sum(1 for e in entries if e.status == 429) / max(1, len(entries)), 4)
    result["ratelimit_adaptive_rate_end"] = round(limited["rate"], 1)

    log("unfaulted: no faults")
    clean = run_one(args, "unfaulted", lambda proxy: None)
    log(f"faulted: {args.fault_share:.0%} of requests answered 429 (Retry-After: 1)")
    faulted = run_one(args, "faulted",
                      lambda proxy: proxy.fail(429, retry_after="1", probability=args.fault_share))
    result["ratelimit_unfaulted_users_per_s"] = round(clean["users_per_s"], 1)
    result["ratelimit_faulted_users_per_s"] = round(faulted["users_per_s"], 1)
    result["ratelimit_faulted_to_unfaulted"] = round(faulted["users_per_s"] / clean["users_per_s"], 3)
    result["ratelimit_faulted_429s"] = sum(1 for e in faulted["entries"] if e.status == 429)
    result["ratelimit_failed_users"] = limited["failed"] + clean["failed"] + faulted["failed"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each run")
    parser.add_argument("--warmup", type=float, default=10.0,
                        help="seconds of the limited run left out of its steady figures")
    parser.add_argument("--limit", type=float, default=50.0, help="requests/s the limited target allows")
    parser.add_argument("--jobs", type=int, default=256, help="concurrent jobs (the writer's window)")
    parser.add_argument("--fault-share", type=float, default=0.10)
    parser.add_argument("--target-threads", type=int, default=8)
    stamina.instrumentation.set_on_retry_hooks([])  # it logs every retry: thousands of lines here
    result = run(parser.parse_args())
    print(json.dumps(result, sort_keys=True))  # the last line: machine-readable


if __name__ == "__main__":
    main()
