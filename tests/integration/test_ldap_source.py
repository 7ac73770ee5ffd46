"""LdapSource against a real OpenLDAP slapd (syncprov overlay), started by tests.support.slapd.

Every test gets its own slapd (it starts in about 0.2 s), so each one sees exactly the
entries it made. The watcher runs as an asyncio task, as the ingest worker runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from services.ingest.objects import SourceObject
from services.ingest.sources.base import Operation
from services.ingest.sources.ldap import (
    LdapSource,
    LdapSourceError,
    LdapUnavailableError,
)
from services.runtime.config import LdapSource as LdapSourceConfig
from tests.support.fixtures import server_fixture
from tests.support.slapd import Slapd, slapd_missing, start_slapd

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

EVENT_DEADLINE = 2.0  # seconds from the LDAP write to the event


slapd = server_fixture(start_slapd, missing=slapd_missing, doc="A fresh slapd per test.")
slapd_refint = server_fixture(functools.partial(start_slapd, refint=True), missing=slapd_missing,
                              doc="A slapd with the refint overlay, as most production directories run.")


def source_for(slapd: Slapd, *, password: str | None = None, cookie: bytes | None = None,
               **overrides: object) -> LdapSource:
    """An LdapSource on the test slapd; ``password`` is the resolved one it binds with (the
    config only holds its reference)."""
    values: dict[str, object] = {"name": "corp-ldap", "url": slapd.url, "base_dn": slapd.base_dn,
                                 "bind_dn": slapd.bind_dn, "password": "env:LDAP_PASSWORD",
                                 "reconnect_initial": 0.1, "reconnect_max": 1.0}
    settings = LdapSourceConfig(**{**values, **overrides})  # type: ignore[arg-type]
    return LdapSource(settings, slapd.password if password is None else password, cookie=cookie)


@dataclass
class Recorder:
    """What a watcher emitted, with when it arrived."""

    events: list[tuple[Operation, SourceObject, float]] = field(default_factory=list)
    cookies: list[bytes] = field(default_factory=list)

    async def on_change(self, op: Operation, obj: SourceObject) -> None:
        self.events.append((op, obj, time.monotonic()))

    async def on_cookie(self, cookie: bytes) -> None:
        self.cookies.append(cookie)

    def since(self, mark: int) -> list[tuple[Operation, SourceObject]]:
        return [(op, obj) for op, obj, _ in self.events[mark:]]

    async def until(self, what: str, check: Callable[[], bool], within: float = EVENT_DEADLINE) -> float:
        """Wait until ``check()``; returns how long it took."""
        start = time.monotonic()
        while not check():
            if time.monotonic() - start > within:
                raise AssertionError(f"not within {within}s: {what}; got {self.summary()}")
            await asyncio.sleep(0.005)
        return time.monotonic() - start

    async def change(self, what: str, write: Callable[[], object], count: int,
                     within: float = EVENT_DEADLINE) -> tuple[list[tuple[Operation, SourceObject]], float]:
        """Make an LDAP write; wait for ``count`` changes and the cookie after them.

        Returns the changes and the latency from the end of the write to the last change.
        """
        mark, cookies = len(self.events), len(self.cookies)
        write()
        written = time.monotonic()
        await self.until(what, lambda: len(self.events) >= mark + count and len(self.cookies) > cookies,
                         within)
        await asyncio.sleep(0.05)  # nothing more may follow
        assert len(self.events) == mark + count, f"{what}: more than {count} changes: {self.summary(mark)}"
        return self.since(mark), self.events[-1][2] - written

    def summary(self, mark: int = 0) -> list[tuple[str, str, str]]:
        return [(op, obj.object_type, str(obj.attributes.get("dn", obj.object_id)))
                for op, obj in self.since(mark)]


@contextlib.asynccontextmanager
async def watching(source: LdapSource, recorder: Recorder) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``source.watch`` as a task; cancel it and close the source on exit."""
    task = asyncio.create_task(source.watch(recorder.on_change, recorder.on_cookie))
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        source.close()


async def synced(recorder: Recorder) -> None:
    """Wait for the refresh phase to end (the first cookie)."""
    await recorder.until("the refresh phase ends", lambda: bool(recorder.cookies), within=10.0)


def by_dn(changes: list[tuple[Operation, SourceObject]]) -> dict[tuple[str, str], SourceObject]:
    return {(op, str(obj.attributes.get("dn", obj.object_id))): obj for op, obj in changes}


# -- scan ----------------------------------------------------------------------------------------


async def test_scan_returns_users_and_groups_keyed_by_entry_uuid(slapd: Slapd) -> None:
    ada = slapd.add_user("ada", givenName="Ada", mail=["ada@example.com", "a.l@example.com"])
    bob = slapd.add_user("bob", title="Engineer")
    cy = slapd.add_user("cy")
    eng = slapd.add_group("eng", [ada, bob], description="Engineering")
    ops = slapd.add_group("ops", [bob], unique=True)
    slapd.add(f"cn=printer,{slapd.base_dn}", ["device"], cn="printer")  # selected by neither filter
    uuid = {dn: slapd.entry_uuid(dn) for dn in (ada, bob, cy, eng, ops)}

    snapshot = await source_for(slapd).scan()

    assert sorted(snapshot) == sorted([("user", uuid[ada]), ("user", uuid[bob]), ("user", uuid[cy]),
                                       ("group", uuid[eng]), ("group", uuid[ops])])
    user = snapshot[("user", uuid[ada])]
    assert user.attributes == {"dn": ada, "uid": "ada", "cn": "Ada", "sn": "Ada", "givenName": "Ada",
                               "mail": ["ada@example.com", "a.l@example.com"]}
    assert user.memberships == (uuid[eng],)
    assert snapshot[("user", uuid[bob])].memberships == tuple(sorted([uuid[eng], uuid[ops]]))
    assert snapshot[("user", uuid[cy])].memberships == ()
    group = snapshot[("group", uuid[eng])]
    assert group.members == tuple(sorted([uuid[ada], uuid[bob]]))
    assert group.attributes == {"dn": eng, "cn": "eng", "description": "Engineering"}
    assert snapshot[("group", uuid[ops])].members == (uuid[bob],)  # groupOfUniqueNames


async def test_fetch_reads_one_entry_by_entry_uuid_now(slapd: Slapd) -> None:
    """Provision on demand: one entry, read now, with its memberships (before and while watching)."""
    ada = slapd.add_user("ada", givenName="Ada")
    eng = slapd.add_group("eng", [ada])
    printer = slapd.add(f"cn=printer,{slapd.base_dn}", ["device"], cn="printer")
    source, recorder = source_for(slapd), Recorder()
    cold = await source.fetch(slapd.entry_uuid(ada))  # nothing indexed yet: a full read answers
    assert cold is not None and cold.memberships == (slapd.entry_uuid(eng),)
    async with watching(source, recorder):
        await synced(recorder)
        slapd.modify(ada, givenName="Fresh")
        found = await source.fetch(slapd.entry_uuid(ada).upper())
        group = await source.fetch(slapd.entry_uuid(eng))
        assert await source.fetch(slapd.entry_uuid(printer)) is None  # not selected by the filters
        assert await source.fetch("00000000-0000-0000-0000-000000000000") is None
    assert found is not None and found.attributes["givenName"] == "Fresh"
    assert found.memberships == (slapd.entry_uuid(eng),)
    assert group is not None and group.object_type == "group" and group.members == (slapd.entry_uuid(ada),)


async def test_user_filter_and_attribute_list_are_honoured(slapd: Slapd) -> None:
    slapd.add_user("ada", employeeType="staff")
    contractor = slapd.add_user("cy", employeeType="contractor")
    staff: dict[str, Any] = {"user_filter": "(&(objectClass=inetOrgPerson)(employeeType=staff))",
                             "attributes": ["uid", "employeeType"]}
    snapshot = await source_for(slapd, **staff).scan()
    users = [obj for obj in snapshot.values() if obj.object_type == "user"]
    assert [u.attributes for u in users] == [{"dn": f"uid=ada,{slapd.people_dn}", "uid": "ada",
                                             "employeeType": "staff"}]
    assert ("user", slapd.entry_uuid(contractor)) not in snapshot

    # Entering the filter is an upsert; leaving it is a delete (the object left the source).
    source, recorder = source_for(slapd, **staff), Recorder()
    async with watching(source, recorder):
        await synced(recorder)
        [(op, obj)], _ = await recorder.change("cy becomes staff",
                                               lambda: slapd.modify(contractor, employeeType="staff"), 1)
        assert (op, obj.object_id) == ("upsert", slapd.entry_uuid(contractor))
        [(op, obj)], _ = await recorder.change("cy leaves",
                                               lambda: slapd.modify(contractor, employeeType="former"), 1)
        assert (op, obj.object_type, obj.object_id) == ("delete", "user", slapd.entry_uuid(contractor))


async def test_credentials_errors_never_show_the_password(slapd: Slapd) -> None:
    wrong = "not-the-Password-123"
    source = source_for(slapd, password=wrong)
    assert wrong not in repr(source.settings) and wrong not in repr(source)
    with pytest.raises(LdapSourceError) as scan_error:
        await source.scan()
    assert "Invalid credentials" in str(scan_error.value)
    with pytest.raises(LdapSourceError) as watch_error:
        await asyncio.wait_for(source.watch(Recorder().on_change, Recorder().on_cookie), timeout=5)
    assert not isinstance(watch_error.value, LdapUnavailableError)  # not retried: fix the config
    for error in (scan_error.value, watch_error.value):
        assert wrong not in str(error)
        assert wrong not in repr(error.__cause__) and error.__cause__ is None


@pytest.mark.parametrize(("overrides", "reason"), [
    ({"base_dn": "ou=nowhere,dc=example,dc=com"}, "No such object"),
    ({"user_filter": "(objectClass=inetOrgPerson"}, "Bad search filter"),
])
async def test_config_errors_stop_the_watcher_instead_of_retrying(slapd: Slapd, overrides: dict[str, Any],
                                                                  reason: str) -> None:
    source = source_for(slapd, **overrides)
    with pytest.raises(LdapSourceError, match=reason) as error:
        await asyncio.wait_for(source.watch(Recorder().on_change, Recorder().on_cookie), timeout=5)
    assert not isinstance(error.value, LdapUnavailableError)
    assert source.stats.sessions == 1
    source.close()


async def test_unreachable_directory_is_a_transient_error(slapd: Slapd) -> None:
    slapd.stop()
    with pytest.raises(LdapUnavailableError, match="Can't contact LDAP server"):
        await source_for(slapd, timeout=2.0).scan()


# -- watch ---------------------------------------------------------------------------------------


async def test_watch_emits_add_modify_rename_delete_within_two_seconds(slapd: Slapd) -> None:
    existing = slapd.add_user("ada")
    source, recorder = source_for(slapd), Recorder()
    async with watching(source, recorder):
        await synced(recorder)
        # Without a cookie the refresh phase is a full sync: every existing object once.
        assert recorder.summary() == [("upsert", "user", existing)]
        latencies = []

        [(op, added)], latency = await recorder.change("add", lambda: slapd.add_user("bob", title="Eng"), 1)
        latencies.append(latency)
        bob = f"uid=bob,{slapd.people_dn}"
        assert (op, added.object_type, added.object_id) == ("upsert", "user", slapd.entry_uuid(bob))
        assert added.attributes["title"] == "Eng"

        [(op, modified)], latency = await recorder.change(
            "modify", lambda: slapd.modify(bob, title="Staff Engineer", displayName="Bob B"), 1)
        latencies.append(latency)
        assert (op, modified.object_id) == ("upsert", added.object_id)
        assert modified.attributes["title"] == "Staff Engineer"
        assert modified.attributes["displayName"] == "Bob B"

        [(op, renamed)], latency = await recorder.change("rename", lambda: slapd.rename(bob, "uid=robert"), 1)
        latencies.append(latency)
        assert (op, renamed.object_id) == ("upsert", added.object_id)  # the id survives the rename
        assert (renamed.attributes["dn"], renamed.attributes["uid"]) == (f"uid=robert,{slapd.people_dn}",
                                                                         "robert")

        [(op, deleted)], latency = await recorder.change(
            "delete", lambda: slapd.delete(f"uid=robert,{slapd.people_dn}"), 1)
        latencies.append(latency)
        assert (op, deleted.object_type, deleted.object_id) == ("delete", "user", added.object_id)

        # A write that changes nothing we read (an attribute outside the list) emits nothing.
        mark = len(recorder.events)
        slapd.modify(existing, street="1 Main St")
        await asyncio.sleep(0.3)
        assert recorder.since(mark) == []
    print(f"\nLDAP write -> event latency: max {max(latencies) * 1000:.1f} ms "
          f"(add, modify, rename, delete: {', '.join(f'{x * 1000:.1f}' for x in latencies)} ms)")
    assert max(latencies) < EVENT_DEADLINE


async def test_group_membership_changes_upsert_the_group_and_the_affected_users(slapd: Slapd) -> None:
    ada, bob, cy = (slapd.add_user(uid) for uid in ("ada", "bob", "cy"))
    eng = slapd.add_group("eng", [ada, bob])
    uuid = {dn: slapd.entry_uuid(dn) for dn in (ada, bob, cy, eng)}
    source, recorder = source_for(slapd), Recorder()
    async with watching(source, recorder):
        await synced(recorder)

        changes, _ = await recorder.change("cy joins eng", lambda: slapd.add_member(eng, cy), 2)
        seen = by_dn(changes)
        assert set(seen) == {("upsert", eng), ("upsert", cy)}  # ada and bob did not change
        assert seen["upsert", eng].members == tuple(sorted(uuid[d] for d in (ada, bob, cy)))
        assert seen["upsert", cy].memberships == (uuid[eng],)

        changes, _ = await recorder.change("ada leaves eng", lambda: slapd.remove_member(eng, ada), 2)
        seen = by_dn(changes)
        assert set(seen) == {("upsert", eng), ("upsert", ada)}
        assert seen["upsert", ada].memberships == ()

        ops = slapd.add_group("ops", [])  # no user members yet
        await recorder.until("ops arrives", lambda: ("upsert", ops) in by_dn(recorder.since(0)))
        changes, _ = await recorder.change("eng is deleted", lambda: slapd.delete(eng), 3)
        seen = by_dn(changes)
        assert set(seen) == {("delete", eng), ("upsert", bob), ("upsert", cy)}
        assert seen["delete", eng].object_type == "group"
        assert seen["upsert", bob].memberships == seen["upsert", cy].memberships == ()


async def test_renaming_a_member_under_refint_keeps_its_memberships(slapd_refint: Slapd) -> None:
    """refint rewrites the group's member DN without a new entryCSN, so syncprov never sends
    that group change: the rename alone must not make the user look as if it left the group."""
    slapd = slapd_refint
    ada, bob = slapd.add_user("ada"), slapd.add_user("bob")
    eng = slapd.add_group("eng", [ada, bob])
    eng_id, bob_id = slapd.entry_uuid(eng), slapd.entry_uuid(bob)
    source, recorder = source_for(slapd), Recorder()
    async with watching(source, recorder):
        await synced(recorder)
        [(op, renamed)], _ = await recorder.change("bob is renamed",
                                                   lambda: slapd.rename(bob, "uid=robert"), 1)
        assert (op, renamed.object_id, renamed.memberships) == ("upsert", bob_id, (eng_id,))
        await asyncio.sleep(0.5)  # refint's rewrite happened meanwhile, and was not sent
        assert len(recorder.events) == 4

        robert = f"uid=robert,{slapd.people_dn}"
        changes, _ = await recorder.change("robert leaves eng", lambda: slapd.remove_member(eng, robert), 2)
        assert {(op, obj.object_id): obj.memberships or obj.members for op, obj in changes} == {
            ("upsert", eng_id): (slapd.entry_uuid(ada),), ("upsert", bob_id): ()}

        changes, _ = await recorder.change("ada is deleted", lambda: slapd.delete(ada), 2)
        assert {(op, obj.object_type) for op, obj in changes} == {("delete", "user"), ("upsert", "group")}
        assert by_dn(changes)["upsert", eng].members == ()

    # What the watcher reported is what a full read finds.
    snapshot = await source_for(slapd).scan()
    assert snapshot[("user", bob_id)].memberships == ()
    assert snapshot[("group", eng_id)].members == ()


async def test_resume_from_the_last_cookie_delivers_exactly_the_missed_changes(slapd: Slapd) -> None:
    ada, bob, cy, dan = (slapd.add_user(uid) for uid in ("ada", "bob", "cy", "dan"))
    eve, fay = slapd.add_user("eve"), slapd.add_user("fay")  # never touched
    ops = slapd.add_group("ops", [dan])
    slapd.add_group("eng", [eve, fay])  # never touched
    first = Recorder()
    async with watching(source_for(slapd), first):
        await synced(first)
        await first.change("ada's title", lambda: slapd.modify(ada, title="Before"), 1)
    cookie = first.cookies[-1]
    bob_id, cy_id, ops_id = slapd.entry_uuid(bob), slapd.entry_uuid(cy), slapd.entry_uuid(ops)

    # While nothing watches: add, modify, delete, rename, and a membership change.
    gus = slapd.add_user("gus")
    slapd.modify(ada, title="After")
    slapd.delete(bob)
    slapd.rename(cy, "uid=cyrus")
    slapd.add_member(ops, gus)

    source, second = source_for(slapd, cookie=cookie), Recorder()
    async with watching(source, second):
        await synced(second)
        seen = by_dn(second.since(0))
        cyrus = f"uid=cyrus,{slapd.people_dn}"
        assert set(seen) == {("upsert", gus), ("upsert", ada), ("delete", bob_id), ("upsert", cyrus),
                             ("upsert", ops),
                             # The group changed while ingest was down and its earlier member list is
                             # unknown to a new process: each current member is re-sent.
                             ("upsert", dan)}
        assert seen["upsert", ada].attributes["title"] == "After"
        assert seen["delete", bob_id].object_type == "user"
        assert seen["upsert", cyrus].object_id == cy_id
        assert seen["upsert", gus].memberships == (ops_id,)
        assert seen["upsert", ops].members == tuple(sorted([slapd.entry_uuid(dan), slapd.entry_uuid(gus)]))
        # Not a full re-read: the sync refresh sent only the four changed entries (of 9), and
        # the index was filled by one ordinary search, which emits nothing.
        assert (source.stats.refreshed, source.stats.seeded) == (4, 8)
        assert len(second.cookies) == 1 and second.cookies[0] != cookie

        # And it carries on live, with precise membership deltas from now on.
        changes, _ = await second.change("eve joins ops", lambda: slapd.add_member(ops, eve), 2)
        assert set(by_dn(changes)) == {("upsert", ops), ("upsert", eve)}


async def test_a_cookie_the_server_no_longer_knows_means_a_full_resync(slapd: Slapd) -> None:
    ada, bob = slapd.add_user("ada"), slapd.add_user("bob")
    eng = slapd.add_group("eng", [ada])
    stale = b"rid=000,csn=20000101000000.000000Z#000000#000#000000"
    source, recorder = source_for(slapd, cookie=stale), Recorder()
    async with watching(source, recorder):
        await synced(recorder)
        assert sorted(recorder.summary()) == sorted([("upsert", "user", ada), ("upsert", "user", bob),
                                                     ("upsert", "group", eng)])
        assert recorder.cookies[-1] != stale


async def test_watcher_reconnects_after_slapd_restarts(slapd: Slapd) -> None:
    ada = slapd.add_user("ada")
    source, recorder = source_for(slapd), Recorder()
    async with watching(source, recorder) as task:
        await synced(recorder)
        refreshed = source.stats.refreshed

        slapd.restart()
        [(op, obj)], _ = await recorder.change("modify after a restart",
                                               lambda: slapd.modify(ada, title="One"), 1, within=5.0)
        assert (op, obj.attributes["title"]) == ("upsert", "One")

        slapd.stop()  # a longer outage: reconnect attempts back off, then succeed
        await asyncio.sleep(1.5)
        assert not task.done()
        slapd.start()
        [(op, obj)], _ = await recorder.change("modify after an outage",
                                               lambda: slapd.modify(ada, title="Two"), 1, within=5.0)
        assert (op, obj.attributes["title"]) == ("upsert", "Two")

    assert source.stats.sessions >= 3
    # Each reconnect resumed from the cookie: only the changed entry was sent again, at most.
    assert source.stats.refreshed - refreshed <= 2
    assert source.stats.seeded == 0
