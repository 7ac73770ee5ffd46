"""Restarts that must write nothing, and drift that a full scan repairs (or only reports),
with the three workers as real processes on the real broker.

The writer decides from what the target holds (its links restored before any write,
discovery at each full scan, member deltas against the target's members). These tests
prove it where it can go wrong: processes stopped and started in every order while the
broker keeps the topics, and edits made directly in the target between two scans. Every
request the writer sends goes through the fault proxy (a recorder here), so "no write" is
counted at the wire; the target is read directly, not through the proxy.

The restart variants share one pipeline (``synced``): the initial sync of 1,000 users in
50 groups is paid once, and each variant starts from, and leaves, a synced and settled
pipeline. "Settled" is read from the broker (``tests/support/settle.py``): a full scan
that began after the restart has ended, and the mapper and the writer have committed every
offset it produced.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from schemas import ActivityRecord
from services.devstack.broker import Broker
from services.devstack.scim_target import start_scim_target
from tests.conftest import APP, Pipeline, user
from tests.support.faultproxy import FaultProxy
from tests.support.scim_view import all_of
from tests.support.settle import Mark, Settled, WriterLog, group_lag, joined, mark, request_scan, wait_settled
from tests.support.shared_pipeline import shared_pipeline

pytestmark = pytest.mark.e2e

Factory = Callable[..., Pipeline]
WRITES = ("POST", "PUT", "PATCH", "DELETE")
USERS, GROUPS = 1000, 50
PATCH_OP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
GROUP_MAPPING = {"attributes": [{"target": "displayName", "source": "displayName", "matching": 1},
                                {"target": "externalId", "source": "id"}]}
COUNT_MANAGED_EVERY = 5.0
"""The writer's timer that re-runs waits restored from its state (services/writer/main.py):
a restarted writer is watched at least this long, so a late write of it is counted too."""


def _app(proxy: FaultProxy, **settings: Any) -> dict[str, Any]:
    return {**APP, "target": {"base_url": proxy.url, "token": "env:TEST_SCIM_TOKEN"}, **settings}


def _writes(proxy: FaultProxy) -> list[str]:
    return [f"{e.method} {e.path}" for e in proxy.log if e.method in WRITES]


def _members(p: Pipeline) -> dict[str, list[str]]:
    """Group name -> member ids as the target holds them (duplicates kept)."""
    groups = all_of(p.scim.http, "Groups")
    return {g["displayName"]: sorted(m["value"] for m in g.get("members", [])) for g in groups}


# -- restarts with the broker kept -------------------------------------------------------------------------


@dataclass
class Synced:
    p: Pipeline
    proxy: FaultProxy
    members: dict[str, list[str]]
    """Group name -> member target ids after the initial sync."""


@pytest.fixture(scope="module")
def synced(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Synced]:
    users = [user(i) for i in range(USERS)]
    groups = [{"id": f"g{g:02d}", "displayName": f"Group {g:02d}",
               "members": [u["id"] for i, u in enumerate(users) if i % GROUPS == g]} for g in range(GROUPS)]
    with start_scim_target() as target, FaultProxy(target.base_url) as proxy:
        app = _app(proxy, scope="all", mappings={**APP["mappings"], "group": GROUP_MAPPING})  # type: ignore[dict-item]
        folder = tmp_path_factory.mktemp("restarts")
        with shared_pipeline(broker.bootstrap, target, folder, app=app, users=users, groups=groups) as p:
            began = mark(p.bootstrap, p.topics)
            wait_settled(p.bootstrap, p.topics, began, timeout=240, alive=lambda: _alive(p))
            per_group = USERS // GROUPS
            p.wait_for("every group with its members", lambda: sorted(map(len, _members(p).values()))
                       == [per_group] * GROUPS, timeout=120)
            assert p.scim.count() == USERS
            assert p.errors() == []
            yield Synced(p, proxy, _members(p))


def _alive(p: Pipeline) -> None:
    assert not p.sup.dead(), f"workers died: {p.sup.dead()}; logs in {p.dir / 'logs'}"


def _settle(p: Pipeline, since: Mark, *, writer: bool = True, log: WriterLog | None = None) -> Settled:
    return wait_settled(p.bootstrap, p.topics, since, timeout=180, writer=writer, log=log,
                        alive=lambda: _alive(p))


def _writer_log(p: Pipeline) -> WriterLog:
    """The writer's log from now on: what the next writer process writes."""
    return WriterLog.now(p.dir / "logs" / "writer.log")


@dataclass
class Restarted:
    settled: Settled
    writer_started: float
    """``time.monotonic()`` when the last writer process started."""


def _writer_alone_sigterm(p: Pipeline) -> Restarted:
    """The writer stops cleanly; a full scan runs meanwhile; its commands wait for the writer."""
    since = mark(p.bootstrap, p.topics)
    p.sup.stop_one("writer")
    request_scan(p.bootstrap, p.topics, "app")
    _settle(p, since, writer=False)
    log, started = _writer_log(p), time.monotonic()
    p.sup.start_one("writer")
    return Restarted(_settle(p, since, log=log), started)


def _writer_alone_sigkill(p: Pipeline) -> Restarted:
    """The writer is killed (SIGKILL) while a full scan's commands reach it, then started again."""
    since, log = mark(p.bootstrap, p.topics), _writer_log(p)  # the scan's end: either process
    request_scan(p.bootstrap, p.topics, "app")
    p.wait_for("the scan's commands to reach the writer",
               lambda: group_lag(p.bootstrap, p.topics, "writer") > 0, timeout=60)
    p.sup.kill("writer")
    started = time.monotonic()
    p.sup.start_one("writer")
    return Restarted(_settle(p, since, log=log), started)


def _writer_first(p: Pipeline) -> Restarted:
    """All three stop; the writer starts first and has joined its group before the others start."""
    since = mark(p.bootstrap, p.topics)
    p.sup.stop()
    log, started = _writer_log(p), time.monotonic()
    p.sup.start(["writer"])
    p.wait_for("the writer to join its consumer group",
               lambda: joined(p.bootstrap, p.topics, "writer"), timeout=60)
    p.sup.start(["mapper", "ingest"])
    return Restarted(_settle(p, since, log=log), started)


def _writer_last(p: Pipeline) -> Restarted:
    """All three stop; ingest and mapper start and finish a full scan; then the writer starts."""
    since = mark(p.bootstrap, p.topics)
    p.sup.stop()
    p.sup.start(["ingest", "mapper"])
    _settle(p, since, writer=False)
    assert group_lag(p.bootstrap, p.topics, "writer") > 0, "the scan's commands must wait for the writer"
    log, started = _writer_log(p), time.monotonic()
    p.sup.start(["writer"])
    return Restarted(_settle(p, since, log=log), started)


RESTARTS = {
    "writer-alone-sigterm": _writer_alone_sigterm,
    "writer-alone-sigkill-mid-scan": _writer_alone_sigkill,
    "all-three-writer-first": _writer_first,
    "all-three-writer-last": _writer_last,
}


@pytest.mark.parametrize("variant", list(RESTARTS))
def test_a_restart_with_the_broker_kept_writes_nothing(synced: Synced, variant: str) -> None:
    p, proxy = synced.p, synced.proxy
    proxy.clear_log()
    errors_before = len(p.errors())
    restarted = RESTARTS[variant](p)
    # A write the restarted writer makes late (a wait restored from its state) counts too.
    time.sleep(max(1.0, COUNT_MANAGED_EVERY + 1 - (time.monotonic() - restarted.writer_started)))
    assert _writes(proxy) == [], f"{variant}: writes reached the target; logs in {p.dir / 'logs'}"
    assert proxy.requests("GET"), f"{variant}: the writer never read the target: the scan proved nothing"
    assert _members(p) == synced.members
    assert p.scim.count() == USERS
    assert p.errors()[errors_before:] == []
    if restarted.settled.stalled:
        pytest.xfail(f"{variant}: {STALLED}: {restarted.settled.stalled}; logs in {p.dir / 'logs'}")


STALLED = (
    "known writer bug, intermittent (about 1 run in 3 where a writer starts with commands waiting): the "
    "restarted writer never handles one or two of the first offsets of a commands partition (the scan's "
    "start frames right after the first one it acknowledges), handles everything after them, and so "
    "can never commit that partition past them; every partition's scan then ends 'not used to find "
    "deletions: this writer did not see the scan from its start'. Nothing is written either way"
)


# -- drift through the pipeline -----------------------------------------------------------------------------


SCAN_EVERY = 2.0
"""Seconds between the file source's full scans in the drift tests (600 by default)."""


def _drifting(pipeline_factory: Factory, proxy: FaultProxy, drift: str) -> tuple[Pipeline, dict[str, Any]]:
    """Six users synced, full scans every SCAN_EVERY seconds; then, directly in the target:
    user1 renamed, user2 disabled, user3 deleted, and an account scimflow does not manage.
    Returns the pipeline and what the test checks against: the target ids before the edits
    (``ids``), the stranger as created (``stranger``) and when the edits began (``edited``);
    the proxy's log starts with the edits."""
    p = pipeline_factory([user(i) for i in range(6)], app=_app(proxy, drift=drift), start=False)
    _scan_every(p.sup.config, SCAN_EVERY)
    p.sup.start()
    p.wait_for("6 creates", lambda: sum(a.action == "create" for a in p.activity()) == 6)
    ids = {u["userName"]: u["id"] for u in p.scim.users()}
    edited = datetime.now(UTC)
    proxy.clear_log()
    stranger = p.scim.create({"userName": "admin@example.com", "displayName": "Admin", "active": True})
    _patch(p, ids["user1@example.com"], {"op": "replace", "path": "displayName", "value": "Edited there"})
    _patch(p, ids["user2@example.com"], {"op": "replace", "path": "active", "value": False})
    p.scim.http.delete(f"/Users/{ids['user3@example.com']}").raise_for_status()
    return p, {"ids": ids, "stranger": stranger, "edited": edited}


def _scan_every(config: Path, seconds: float) -> None:
    data = yaml.safe_load(config.read_text())
    data["sources"][0]["full_scan_interval"] = seconds
    config.write_text(yaml.safe_dump(data, sort_keys=False))


def _patch(p: Pipeline, target_id: str, *operations: dict[str, Any]) -> None:
    """A change made directly in the target, as an admin of the app would."""
    p.scim.http.patch(f"/Users/{target_id}", json={"schemas": [PATCH_OP], "Operations": list(operations)}
                      ).raise_for_status()


def _repairs(p: Pipeline, since: datetime, status: str) -> dict[str, ActivityRecord]:
    """The latest ``repair`` record with ``status`` per source id, since ``since``."""
    return {a.source_id: a for a in p.activity()
            if a.action == "repair" and a.status == status and a.at >= since}


def _props(record: ActivityRecord) -> dict[str, tuple[Any, Any]]:
    return {m.name: (m.old_value, m.new_value) for m in record.modified_properties}


def _untouched(p: Pipeline, proxy: FaultProxy, stranger: dict[str, Any]) -> None:
    assert [f"{e.method} {e.path}" for e in proxy.log if stranger["id"] in e.path] == []
    assert p.scim.http.get(f"/Users/{stranger['id']}").json() == stranger


def test_a_full_scan_repairs_drift_made_in_the_target(pipeline_factory: Factory, proxy: FaultProxy) -> None:
    p, before = _drifting(pipeline_factory, proxy, "repair")
    ids, edited = before["ids"], before["edited"]

    def repaired() -> bool:
        users = p.scim.by_username()
        return (users["user1@example.com"]["displayName"] == "User 1" and users["user2@example.com"]["active"]
                and "user3@example.com" in users)

    p.wait_for("the three repaired in the target", repaired, timeout=60)
    p.wait_for("three repair records", lambda: len(_repairs(p, edited, "success")) == 3)
    repairs = _repairs(p, edited, "success")
    assert set(repairs) == {"u00001", "u00002", "u00003"}
    assert _props(repairs["u00001"]) == {"displayName": ("Edited there", "User 1")}
    assert _props(repairs["u00002"]) == {"active": (False, True)}
    recreated = p.scim.by_username()["user3@example.com"]
    assert recreated["id"] != ids["user3@example.com"] and repairs["u00003"].target_id == recreated["id"]
    assert "deleted directly in the target" in (repairs["u00003"].reason or "")
    assert _props(repairs["u00003"])["userName"][1] == "user3@example.com"
    _untouched(p, proxy, before["stranger"])
    assert p.scim.count() == 7
    assert p.errors() == []
    # Repaired once: the next full scan finds nothing to write.
    since = mark(p.bootstrap, p.topics)
    proxy.clear_log()
    _settle(p, since)
    assert _writes(proxy) == []


def test_drift_report_only_reports_and_leaves_the_target_as_it_is(pipeline_factory: Factory,
                                                                   proxy: FaultProxy) -> None:
    p, before = _drifting(pipeline_factory, proxy, "report")
    ids, edited = before["ids"], before["edited"]
    p.wait_for("three reports", lambda: len(_repairs(p, edited, "skipped")) == 3, timeout=60)
    reports = _repairs(p, edited, "skipped")
    assert set(reports) == {"u00001", "u00002", "u00003"}
    assert all("reported only (drift: report)" in (a.reason or "") for a in reports.values())
    assert _props(reports["u00001"]) == {"displayName": ("Edited there", "User 1")}
    assert reports["u00003"].target_id == ids["user3@example.com"]
    assert _writes(proxy) == []
    users = p.scim.by_username()
    assert users["user1@example.com"]["displayName"] == "Edited there"
    assert users["user2@example.com"]["active"] is False
    assert "user3@example.com" not in users
    _untouched(p, proxy, before["stranger"])
    assert p.errors() == []
    assert _props(reports["u00002"]) == {"active": (False, True)}
