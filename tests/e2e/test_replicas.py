"""Two mappers and two writers in one consumer group, on the real broker and a real target.

The commands topic has several partitions (``tests/conftest.py``: 3), so each writer
replica owns some of them: its share of the objects, their managed state (the table's
changelog partition moves with its commands partition) and what it escrows or holds. These
tests prove that sharing the work never writes an object twice or loses one:

- a sync lands exactly once with both writers doing part of it;
- ``kill -9`` of one writer mid-sync: the other takes its partitions after the session
  timeout, restores their state from the changelog and replays what was not committed,
  writing nothing twice (lookup-before-create, state compare);
- scale 1 -> 2 -> 1 writers during a sync: two rebalances, nothing lost or doubled.

Every request the writers send goes through the fault proxy (a recorder here), so "created
once" is counted at the wire as well as in the activity topic. 2,000 users keep each test
about a minute on two cores (the issue's 5,000 is for a bench, not written yet).

Found and fixed (both once ended with 70-90 users created twice, with the proxy slowing
creates by 10 ms): the replica losing partitions kept running the jobs it had queued for
them while the new owner replayed the same commands (now dropped at the revoke, target
calls in flight awaited first), and the new owner decided "create" from the listing it took
at the scan's start, which did not hold what the other replica created since (now an object
of a partition gained after the listing is looked up by filter). A POST of the killed writer cut
off on its way has no answer: the wire count leaves it out (the target's count has the say).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.conftest import APP, Pipeline, user
from tests.support.faultproxy import FaultProxy, LogEntry
from tests.support.replicas import outcomes, wait_members
from tests.support.settle import Mark, wait_settled

pytestmark = pytest.mark.e2e

Factory = Callable[..., Pipeline]
USERS = 2000


def _pipeline(factory: Factory, proxy: FaultProxy, users: int = USERS, **target: Any) -> Pipeline:
    app = {**APP, "target": {"base_url": proxy.url, "token": "env:TEST_SCIM_TOKEN", **target}}
    return factory([user(i) for i in range(users)], app=app, start=False)


def _start(p: Pipeline, *, writers: int) -> Mark:
    """Mappers and writers first, each group stable with all its members (so the sync is
    shared from its first command), then ingest; the mark is before its first change."""
    p.sup.start(("mapper", "writer"))
    p.sup.start_replica("mapper", 2)
    if writers == 2:
        p.sup.start_replica("writer", 2)
    wait_members(p.bootstrap, p.topics.app_id("mapper"), 2)
    wait_members(p.bootstrap, p.topics.app_id("writer"), writers)
    since = Mark(datetime.now(UTC), dict.fromkeys(range(p.topics.partitions), 0))
    p.sup.start(("ingest",))
    return since


def _created(p: Pipeline) -> Counter[str]:
    """Per source id: how many successful creates the activity topic records."""
    return Counter(a.source_id for a in p.activity() if a.action == "create" and a.status == "success")


def _assert_exact(p: Pipeline, proxy: FaultProxy, since: Mark, users: int = USERS, *,
                  killed: bool = False) -> None:
    """The target holds each user exactly once, created once, and nothing failed."""
    p.wait_for(f"{users} users in the target", lambda: p.scim.count() >= users, timeout=90)
    settled = wait_settled(p.bootstrap, p.topics, since, timeout=60)
    _keep_log(p, proxy)
    assert settled.stalled is None, settled.stalled
    names = [u["userName"] for u in p.scim.users()]
    assert len(names) == users and len(set(names)) == users
    sent = _creates_sent(proxy)
    assert len(set(sent)) == len(sent)  # no user created twice at the wire
    # A killed (or stopped) writer's creates that landed unanswered are in the target only.
    assert len(sent) == users or (killed and len(sent) < users)
    created = _created(p)
    assert max(created.values()) == 1
    assert p.errors() == []


def _keep_log(p: Pipeline, proxy: FaultProxy) -> None:
    """The proxy's request log next to the writers' logs (logs/proxy.jsonl): which request
    created what, to tell after a failure where a second create came from."""
    with (p.dir / "logs" / "proxy.jsonl").open("w", encoding="utf-8") as out:
        for entry in proxy.log:
            out.write(json.dumps({"at": entry.at, "method": entry.method, "path": entry.path,
                                  "status": entry.status, "fault": entry.fault,
                                  "users": _names(entry)}) + "\n")


def _names(entry: LogEntry) -> list[str | None]:
    """The userNames a request creates: one POST /Users, or a Bulk request's user POSTs."""
    if entry.method != "POST":
        return []
    body = entry.json() or {}
    if entry.path.endswith("/Users"):
        return [body.get("userName")]
    if entry.path.endswith("/Bulk"):
        return [op.get("data", {}).get("userName") for op in body.get("Operations", [])
                if op.get("method") == "POST" and op.get("path") == "/Users"]
    return []


def _creates_sent(proxy: FaultProxy) -> list[str | None]:
    """The userName of every user create the target answered: alone or in a Bulk request.
    A request of the killed writer cut off on its way (held by the proxy's delay, or being
    forwarded) has no answer: whether it landed is what the target's own count shows."""
    return [name for entry in proxy.requests("POST") if entry.status is not None
            for name in _names(entry)]


def _share(p: Pipeline, name: str) -> int:
    counts = outcomes(p.dir / "logs" / f"{name}.log")
    return counts[("create", "success")] + counts[("adopt", "success")]


def _writer_pids(p: Pipeline) -> dict[str, int]:
    return {name: proc.pid for name, proc in p.sup.procs.items() if name.startswith("writer")}


def test_a_sync_lands_exactly_once_with_the_work_split_across_both_writers(
        pipeline_factory: Factory, proxy: FaultProxy) -> None:
    p = _pipeline(pipeline_factory, proxy)
    since = _start(p, writers=2)
    _assert_exact(p, proxy, since)
    assert sum(_created(p).values()) == USERS  # every user's create is in the activity topic
    first, second = _share(p, "writer"), _share(p, "writer-2")
    assert first + second == USERS
    assert first > 0 and second > 0, (first, second)
    assert len(_writer_pids(p)) == 2 and not p.sup.dead()


def test_kill_9_of_one_writer_mid_sync_the_other_takes_over_and_the_target_ends_exact(
        pipeline_factory: Factory, proxy: FaultProxy) -> None:
    p = _pipeline(pipeline_factory, proxy)
    proxy.delay(0.01, method="POST")  # a sync long enough to kill a writer in the middle
    since = _start(p, writers=2)
    p.wait_for("both writers creating", lambda: _share(p, "writer") > 50 and _share(p, "writer-2") > 50)
    # Users still to create when the kill comes (the target's count runs ahead of the activity
    # topic's shares: on a quiet machine half the users may be in already).
    assert p.scim.count() < USERS * 3 // 4, "the sync was nearly over: nothing to prove"
    p.sup.kill("writer-2")
    del p.sup.procs["writer-2"]
    _assert_exact(p, proxy, since, killed=True)
    # The survivor took the killed writer's partitions: it wrote some of their objects.
    assert _share(p, "writer") + _share(p, "writer-2") >= USERS
    wait_members(p.bootstrap, p.topics.app_id("writer"), 1)  # the killed one leaves at its session timeout


def test_scaling_writers_one_to_two_to_one_during_a_sync_loses_and_doubles_nothing(
        pipeline_factory: Factory, proxy: FaultProxy) -> None:
    # One user per request at 100 requests/s per writer: the sync lasts about 20 s, long
    # enough for a second writer to join and take a share (with /Bulk and no limit, one
    # writer on a quiet machine ends the sync before the rebalance gives the other work).
    p = _pipeline(pipeline_factory, proxy, bulk="off", rate_limit={"max_requests_per_second": 100})
    proxy.delay(0.01, method="POST")
    since = _start(p, writers=1)
    p.wait_for("the sync under way", lambda: _share(p, "writer") > 50)
    p.sup.start_replica("writer", 2)
    p.wait_for("the second writer creating", lambda: _share(p, "writer-2") > 50)
    assert p.scim.count() < USERS, "the sync ended before the scale-up: nothing to prove"
    p.sup.stop_one("writer-2")
    _assert_exact(p, proxy, since, killed=True)  # its stop cuts the Bulk requests in flight
    assert _share(p, "writer-2") > 0
