"""The whole pipeline from an LDAP source: real slapd (syncprov) -> ingest -> mapper -> writer
-> real scim2-server, the three workers as real processes on a real broker.

Changes travel over syncrepl as the directory makes them; the ingest stores its cookie in
``source.positions`` and, restarted, resumes from it instead of re-reading the directory.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from schemas.codecs import decoder
from schemas.messages import SourcePosition
from services.devstack.broker import Broker
from services.devstack.scim_target import ScimTarget
from services.ingest.positions import Positions
from services.ingest.worker import LdapIngest, Publisher
from services.runtime.config import LdapSource as LdapSourceConfig
from services.runtime.kafka import consume
from tests.conftest import Pipeline
from tests.support.fixtures import server_fixture
from tests.support.slapd import Slapd, slapd_missing, start_slapd
from tests.support.source_pipeline import (
    change_events,
    find_user,
    is_member,
    loaded_groups,
    resume_ingest,
    start_pipeline,
    target_groups,
    target_user,
    user_app,
    wait_for_directory,
)

pytestmark = pytest.mark.e2e

SOURCE = "corp-ldap"
USERS, GROUPS = 1000, 50  # every user in one group, every group assigned; one more user in none
PER = USERS // GROUPS
CHANGE_WITHIN = 15.0  # seconds from an LDAP write to the target
LOAD_WITHIN = 240.0


slapd = server_fixture(start_slapd, missing=slapd_missing, doc="A fresh slapd per test.")


def _app(group_ids: list[str]) -> dict[str, Any]:
    """The LDAP attributes mapped; no attribute says an account is disabled."""
    return user_app(group_ids, user_name="mail", external="uid", display="cn", family="sn", disabled=None,
                    group_name="cn")


@pytest.fixture
def ldap_pipeline(broker: Broker, scim_target: ScimTarget, slapd: Slapd,
                  tmp_path: Path) -> Iterator[Callable[[list[str]], Pipeline]]:
    """Starts the pipeline with ``slapd`` as its one source, ``group_ids`` assigned to the app."""
    started: list[Pipeline] = []

    def make(group_ids: list[str]) -> Pipeline:
        source = {"name": SOURCE, "type": "ldap", "url": slapd.url, "base_dn": slapd.base_dn,
                  "bind_dn": slapd.bind_dn, "password": "env:TEST_LDAP_PASSWORD", "full_scan_interval": 600,
                  "reconnect_initial": 0.1, "reconnect_max": 2}
        p = start_pipeline(broker, scim_target, tmp_path, [source], _app(group_ids),
                           {"TEST_LDAP_PASSWORD": slapd.password})
        started.append(p)
        return p

    yield make
    for p in started:
        p.sup.kill_all()


def _positions(p: Pipeline) -> list[SourcePosition]:
    dec = decoder("source.positions")
    return [dec.decode(m.value) for m in consume(p.bootstrap, p.topics.source_positions, idle_timeout=0.5)]


def _mail(i: int) -> str:
    return f"user{i:04d}@example.com"


def _loaded_groups() -> dict[str, set[str]]:
    """The groups as loaded: displayName -> members' userNames."""
    return loaded_groups(lambda g: f"team{g:02d}", _mail, users=USERS, groups=GROUPS)


def test_ldap_users_are_provisioned_changed_deleted_and_resumed_from_the_cookie(
        ldap_pipeline: Callable[[list[str]], Pipeline], slapd: Slapd) -> None:
    # One connection for the whole directory: a thousand users and fifty groups in seconds.
    dns = slapd.add_entries([slapd.user_entry(f"user{i:04d}", givenName=f"Given{i}") for i in range(USERS)])
    slapd.add_user("outsider", givenName="Out")
    groups = slapd.add_entries([slapd.group_entry(f"team{g:02d}", dns[g * PER:(g + 1) * PER])
                                for g in range(GROUPS)])
    uuid_of = dict(zip(dns[:3], slapd.entry_uuids(dns[:3]), strict=True))
    p = ldap_pipeline(slapd.entry_uuids(groups))

    # Initial cycle: every assigned group with its members, those members, and nobody else.
    wait_for_directory(p, {_mail(i) for i in range(USERS)}, _loaded_groups(), timeout=LOAD_WITHIN)
    user0 = target_user(p, _mail(0))
    assert user0["externalId"] == "user0000" and user0["name"]["givenName"] == "Given0"
    assert user0["displayName"] == "User0000" and user0["name"]["familyName"] == "User0000"

    # A change in the directory reaches the target within seconds.
    slapd.modify(dns[0], givenName="Renamed")
    p.wait_for("the new givenName in the target",
               lambda: target_user(p, _mail(0))["name"]["givenName"] == "Renamed", timeout=CHANGE_WITHIN)

    # So does a deletion.
    slapd.delete(dns[1])
    p.wait_for("user0001 deleted in the target", lambda: find_user(p, _mail(1)) is None,
               timeout=CHANGE_WITHIN)
    assert p.scim.count() == USERS - 1

    # Leaving the assigned group takes the user out of scope: disabled in the target, and no
    # longer a member of the target's group.
    slapd.remove_member(groups[0], dns[3])
    p.wait_for("user0003 disabled in the target", lambda: target_user(p, _mail(3))["active"] is False,
               timeout=CHANGE_WITHIN)
    p.wait_for("user0003 gone from team00 in the target", lambda: not is_member(p, _mail(3), "team00"),
               timeout=CHANGE_WITHIN)

    # A new user joining a group, and a user joining a second group: members in the target.
    newcomer = slapd.add_user("newcomer", givenName="New")
    slapd.add_member(groups[1], newcomer)
    slapd.add_member(groups[2], dns[4])
    p.wait_for("the newcomer a member of team01 in the target",
               lambda: is_member(p, "newcomer@example.com", "team01"), timeout=CHANGE_WITHIN)
    p.wait_for("user0004 a member of team02 in the target", lambda: is_member(p, _mail(4), "team02"),
               timeout=CHANGE_WITHIN)

    # A cookie covering every change so far is stored before ingest stops.
    changes = change_events(p)
    deleted = next(c for c in changes if c.operation == "delete")
    assert deleted.object_id == uuid_of[dns[1]]
    last = max(c.observed_at for c in changes)
    p.wait_for("a cookie stored after the last change", lambda: any(pos.at > last for pos in _positions(p)))
    stored = _positions(p)
    assert {pos.source for pos in stored} == {SOURCE}
    assert all(base64.b64decode(pos.position) for pos in stored)

    # A change made while ingest is down arrives once it is back, through the stored cookie.
    resumed = resume_ingest(p, lambda: slapd.modify(dns[2], givenName="WhileDown"),
                            "the change made while ingest was down",
                            lambda: target_user(p, _mail(2))["name"]["givenName"] == "WhileDown",
                            kill=False, timeout=90.0)
    # Resumed, not re-read: the only change event is the one change (re-reading would send
    # every user and group again).
    assert {c.object_id for c in resumed} == {uuid_of[dns[2]]}, [c.attributes.get("dn") for c in resumed]
    assert len(resumed) == 1
    assert p.errors() == []
    assert find_user(p, "outsider@example.com") is None
    # Every group as loaded, but for the membership changes.
    expected = _loaded_groups()
    expected["team00"] -= {_mail(1), _mail(3)}
    expected["team01"] |= {"newcomer@example.com"}
    expected["team02"] |= {_mail(4)}
    assert target_groups(p) == expected


# -- the ingest loop alone, against the same real slapd, with a recording publisher -----------


class _Recorder(Positions):
    """Records what the ingest publishes and stores, in order; holds no position to start from."""

    def __init__(self) -> None:
        super().__init__("unused:9092", "unused", self._send)
        self.log: list[tuple[str, Any]] = []
        self.publisher = Publisher(self._record("change"), self._record("marker"), self._record("error"),
                                   self._flush)

    def _record(self, kind: str) -> Callable[[Any], Awaitable[None]]:
        async def record(message: Any) -> None:
            self.log.append((kind, message))
        return record

    async def _flush(self) -> None:
        self.log.append(("flush", None))

    async def _send(self, key: bytes, value: bytes) -> None:
        self.log.append(("position", decoder("source.positions").decode(value)))

    async def load(self, source: str) -> bytes | None:
        return None

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.log]

    def of(self, kind: str) -> list[Any]:
        return [message for k, message in self.log if k == kind]


def _ingest(slapd: Slapd, recorder: _Recorder) -> LdapIngest:
    config = LdapSourceConfig(name=SOURCE, url=slapd.url, base_dn=slapd.base_dn, bind_dn=slapd.bind_dn,
                              password="env:UNUSED", reconnect_initial=0.1, reconnect_max=0.5)
    return LdapIngest(config, slapd.password, recorder.publisher, recorder)


async def _until(what: str, check: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"not within {within}s: {what}"
        await asyncio.sleep(0.01)


def test_cookie_is_stored_after_the_changes_it_covers_are_flushed(slapd: Slapd) -> None:
    ada = slapd.add_user("ada", givenName="Ada")
    recorder = _Recorder()

    async def scenario() -> None:
        ingest = _ingest(slapd, recorder)
        task = asyncio.create_task(ingest.run())
        try:
            await _until("the first cookie", lambda: bool(recorder.of("position")))
            # The start-up full scan runs beside the feed; let it finish so that what follows
            # the mark is the feed's change alone.
            await _until("the first scan", lambda: any(m.phase == "end" for m in recorder.of("marker")))
            mark = len(recorder.log)
            slapd.modify(ada, givenName="Ada2")
            await _until("the change's cookie", lambda: "position" in recorder.kinds()[mark:])
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        after = recorder.log[mark:]
        kinds = [kind for kind, _ in after]
        stored = kinds.index("position")
        assert kinds[stored - 2:stored + 1] == ["change", "flush", "position"]
        change = next(m for k, m in after if k == "change")
        assert change.cycle_id is None and change.attributes["givenName"] == "Ada2"
        position = next(m for k, m in after if k == "position")
        assert position.source == SOURCE and base64.b64decode(position.position)

    asyncio.run(scenario())


def test_failed_scan_ends_incomplete_and_is_reported_without_the_password(slapd: Slapd) -> None:
    slapd.add_user("ada")
    recorder = _Recorder()

    async def scenario() -> None:
        ingest = _ingest(slapd, recorder)
        await ingest.start()
        assert await ingest.full_scan() is not None
        slapd.stop()
        assert await ingest.full_scan() is None

    asyncio.run(scenario())
    good_start, good_end, bad_start, bad_end = recorder.of("marker")
    assert (good_start.phase, good_start.total, good_end.phase, good_end.total, good_end.complete) == (
        "start", None, "end", 1, True)
    assert [c.cycle_id for c in recorder.of("change")] == [good_start.cycle_id]
    assert bad_start.cycle_id == bad_end.cycle_id != good_start.cycle_id
    assert (bad_end.phase, bad_end.complete) == ("end", False)
    [error] = recorder.of("error")
    assert error.error_code == "LdapUnavailable" and error.service == "ingest"
    assert SOURCE in error.reason and slapd.password not in error.reason
