"""AdDirectory (DirSync) against a real Samba Active Directory DC (tests/support/samba.py).

Skipped with the reason when Samba is not installed (apt-get install samba). The domain
is provisioned once per machine (about 30 s, cached); the module starts one copy (a few
seconds) on its own loopback address, and each test names its own objects.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from services.ingest.sources.ad import AdDirectory, AdSourceError
from services.runtime.config import ActiveDirectorySource
from tests.support.fixtures import server_fixture
from tests.support.recorder import SourceRecorder
from tests.support.samba import Samba, samba_missing, start_samba

pytestmark = pytest.mark.integration


samba = server_fixture(start_samba, scope="module", missing=samba_missing,
                       doc="One domain controller for the module (a start takes seconds); each test "
                           "names its own objects.")


def directory_for(samba: Samba, *, password: str | None = None) -> AdDirectory:
    """An AdDirectory on the test DC; ``password`` is the resolved one it binds with (the
    config only holds its reference)."""
    settings = ActiveDirectorySource(name="corp-ad", url=samba.url, base_dn=samba.base_dn,
                                     bind_dn=samba.bind_dn, password="env:AD_PASSWORD", poll_interval=0.2)
    return AdDirectory(settings, samba.password if password is None else password)


def test_dirsync_reports_the_domain_then_each_kind_of_change(samba: Samba) -> None:
    tag = uuid.uuid4().hex[:6]
    ada, bob, cy = (samba.add_user(f"{n}{tag}", givenName=n.title()) for n in ("ada", "bob", "cy"))
    staff = samba.add_group(f"staff{tag}", [ada, bob])
    ids = {dn: samba.guid(dn) for dn in (ada, bob, cy, staff)}
    ours = set(ids.values())
    recorder = SourceRecorder()

    async def round_after(change: object) -> set[tuple[str, str, str]]:
        mark = len(recorder.changes)
        await source.sync(recorder.on_change, recorder.on_position)
        return recorder.summary(mark, ours)

    async def scenario() -> None:
        await source.start(None)
        initial = await round_after(None)
        assert initial == {("upsert", "user", ids[ada]), ("upsert", "user", ids[bob]),
                           ("upsert", "user", ids[cy]), ("upsert", "group", ids[staff])}
        assert recorder.last(ids[ada]).memberships == (ids[staff],)
        assert recorder.last(ids[staff]).members == tuple(sorted([ids[ada], ids[bob]]))
        assert recorder.last(ids[ada]).attributes["accountEnabled"] is True
        assert recorder.last(ids[ada]).attributes["givenName"] == "Ada"

        samba.modify(ada, givenName="Ada2")
        assert await round_after(None) == {("upsert", "user", ids[ada])}
        assert recorder.last(ids[ada]).attributes["givenName"] == "Ada2"
        assert recorder.last(ids[ada]).memberships == (ids[staff],)  # kept across a partial change

        samba.set_enabled(cy, False)
        assert await round_after(None) == {("upsert", "user", ids[cy])}
        assert recorder.last(ids[cy]).attributes["accountEnabled"] is False

        robert = samba.rename(bob, f"robert{tag}")
        assert await round_after(None) == {("upsert", "user", ids[bob])}
        assert recorder.last(ids[bob]).attributes["dn"].startswith(f"CN=robert{tag},")
        assert recorder.last(ids[bob]).memberships == (ids[staff],)

        samba.add_member(staff, cy)
        assert await round_after(None) == {("upsert", "group", ids[staff]), ("upsert", "user", ids[cy])}
        assert recorder.last(ids[cy]).memberships == (ids[staff],)
        samba.remove_member(staff, ada)
        assert await round_after(None) == {("upsert", "group", ids[staff]), ("upsert", "user", ids[ada])}
        assert recorder.last(ids[ada]).memberships == ()

        samba.delete(robert)
        deleted = await round_after(None)
        assert ("delete", "user", ids[bob]) in deleted
        assert ("upsert", "group", ids[staff]) in deleted
        assert recorder.last(ids[staff]).members == (ids[cy],)
        assert len(set(recorder.positions)) == len(recorder.positions)  # a new cookie each round
        await source.close()

    source = directory_for(samba)
    asyncio.run(scenario())


def test_resuming_from_the_cookie_reports_exactly_what_changed(samba: Samba) -> None:
    tag = uuid.uuid4().hex[:6]
    ada, bob = samba.add_user(f"ada{tag}"), samba.add_user(f"bob{tag}")
    staff = samba.add_group(f"staff{tag}", [ada])
    first, second = SourceRecorder(), SourceRecorder()

    async def scenario() -> None:
        before = directory_for(samba)
        await before.start(None)
        await before.sync(first.on_change, first.on_position)
        samba.modify(bob, givenName="WhileDown")
        samba.add_member(staff, bob)
        after = directory_for(samba)
        await after.start(first.positions[-1])
        await after.sync(second.on_change, second.on_position)

    asyncio.run(scenario())
    # Only what changed: bob and the group. A group changed while ingest was down is sent with
    # each current member (ada too): DirSync sends the whole member list and the new process
    # cannot know which members are new. Nobody else is sent.
    assert second.summary() == {("upsert", "user", samba.guid(bob)), ("upsert", "group", samba.guid(staff)),
                                ("upsert", "user", samba.guid(ada))}
    assert second.last(samba.guid(bob)).attributes["givenName"] == "WhileDown"
    assert second.last(samba.guid(bob)).memberships == (samba.guid(staff),)


def test_wrong_password_is_an_error_without_the_password(samba: Samba) -> None:
    async def scenario() -> None:
        source = directory_for(samba, password="Not-The-Passw0rd")
        await source.start(None)
        await source.sync(SourceRecorder().on_change, SourceRecorder().on_position)

    with pytest.raises(AdSourceError) as failure:
        asyncio.run(scenario())
    assert "Invalid credentials" in str(failure.value) and "Not-The-Passw0rd" not in str(failure.value)
