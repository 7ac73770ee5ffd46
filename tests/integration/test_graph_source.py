"""GraphDirectory against a local Graph that speaks the documented delta protocol over real HTTP
(tests/support/graph_server.py): pages, deltaLinks, $select, @removed, members@delta, 429, 410."""

from __future__ import annotations

import asyncio
import functools
import json
import time
from typing import Any

import pytest

from services.ingest.objects import SourceObject
from services.ingest.sources.graph import GraphDirectory, GraphSourceError
from services.runtime.config import GraphSource
from tests.support.fixtures import server_fixture
from tests.support.graph_server import FakeGraph, start_graph_server
from tests.support.recorder import SourceRecorder

pytestmark = pytest.mark.integration


graph = server_fixture(functools.partial(start_graph_server, page_size=7, member_chunk=4),
                       doc="A local Graph per test, in pages of 7 objects and member items of 4.")


def directory_for(graph: FakeGraph, *, client_secret: str | None = None, **overrides: Any) -> GraphDirectory:
    """A GraphDirectory on the fake Graph; ``client_secret`` is the resolved secret it sends
    (the config only holds its reference)."""
    values: dict[str, Any] = {"name": "entra", "tenant_id": graph.tenant_id, "client_id": graph.client_id,
                              "client_secret": "env:GRAPH_CLIENT_SECRET", "graph_url": graph.url,
                              "token_url": graph.token_url, "poll_interval": 0.1,
                              "user_attributes": ["userPrincipalName", "givenName", "accountEnabled"]}
    settings = GraphSource(**{**values, **overrides})
    return GraphDirectory(settings, graph.client_secret if client_secret is None else client_secret)


def _user(graph: FakeGraph, i: int, **extra: Any) -> str:
    return graph.add_user(userPrincipalName=f"user{i}@contoso.com", givenName=f"Given{i}", surname=f"S{i}",
                          accountEnabled=True, **extra)


def test_initial_round_pages_select_and_memberships(graph: FakeGraph) -> None:
    users = [_user(graph, i) for i in range(20)]
    group = graph.add_group(users[:10], displayName="Staff", description="all staff")
    recorder = SourceRecorder()

    async def scenario() -> GraphDirectory:
        source = directory_for(graph)
        await source.start(None)
        await source.sync(recorder.on_change, recorder.on_position)
        await source.close()
        return source

    asyncio.run(scenario())
    assert recorder.summary() == {("upsert", "user", u) for u in users} | {("upsert", "group", group)}
    first = recorder.last(users[0])
    # $select honoured: only the selected properties (and the id) come back, not `surname`.
    assert first.attributes == {"id": users[0], "userPrincipalName": "user0@contoso.com",
                                "givenName": "Given0", "accountEnabled": True}
    assert first.memberships == (group,) and recorder.last(users[15]).memberships == ()
    # 20 users in pages of 7: three pages; 10 members in items of 4: one group over three items.
    assert len(graph.delta_requests("users")) == 3
    assert recorder.last(group).members == tuple(sorted(users[:10]))
    assert recorder.last(group).attributes["description"] == "all staff"
    [position] = recorder.positions
    assert set(json.loads(position)) == {"user", "group"}


def test_each_kind_of_change_is_reported_from_the_delta_link(graph: FakeGraph) -> None:
    ada, bob, cy = (_user(graph, i) for i in range(3))
    staff = graph.add_group([ada, bob], displayName="Staff")
    recorder = SourceRecorder()

    async def round_after(change: Any) -> set[tuple[str, str, str]]:
        change()
        mark = len(recorder.changes)
        await source.sync(recorder.on_change, recorder.on_position)
        return recorder.summary(mark)

    async def scenario() -> None:
        await source.start(None)
        await source.sync(recorder.on_change, recorder.on_position)
        added: list[str] = []
        assert await round_after(lambda: added.append(_user(graph, 9))) == {("upsert", "user", added[0])}
        assert await round_after(lambda: graph.update_user(ada, givenName="Ada")) == {("upsert", "user", ada)}
        assert recorder.last(ada).attributes["givenName"] == "Ada"
        assert recorder.last(ada).memberships == (staff,)  # still known after a property change
        rename = await round_after(lambda: graph.update_user(bob, userPrincipalName="robert@contoso.com"))
        assert rename == {("upsert", "user", bob)}
        assert recorder.last(bob).attributes["userPrincipalName"] == "robert@contoso.com"
        disabled = await round_after(lambda: graph.update_user(cy, accountEnabled=False))
        assert disabled == {("upsert", "user", cy)}
        assert recorder.last(cy).attributes["accountEnabled"] is False
        joined = await round_after(lambda: graph.add_member(staff, cy))
        assert joined == {("upsert", "group", staff), ("upsert", "user", cy)}
        assert recorder.last(cy).memberships == (staff,)
        assert recorder.last(staff).members == tuple(sorted([ada, bob, cy]))
        left = await round_after(lambda: graph.remove_member(staff, ada))
        assert left == {("upsert", "group", staff), ("upsert", "user", ada)}
        assert recorder.last(ada).memberships == ()
        deleted = await round_after(lambda: graph.delete_user(bob))
        assert deleted == {("delete", "user", bob), ("upsert", "group", staff)}
        assert recorder.last(staff).members == (cy,)
        gone = await round_after(lambda: graph.delete_group(staff))
        assert gone == {("delete", "group", staff), ("upsert", "user", cy)}
        assert recorder.last(cy).memberships == ()
        assert await round_after(lambda: None) == set()  # nothing changed: nothing reported
        await source.close()

    source = directory_for(graph)
    asyncio.run(scenario())


def test_a_group_listing_a_user_not_read_yet_is_reported_again_with_the_user(graph: FakeGraph) -> None:
    # A round reads /users/delta, then /groups/delta: a user created between the two reads
    # is first seen as a member of a group, and as a user only in the next round.
    staff = graph.add_group([_user(graph, 0)], displayName="Staff")
    recorder = SourceRecorder()
    late = "late-user-id"

    async def scenario() -> None:
        source = directory_for(graph)
        await source.start(None)
        await source.sync(recorder.on_change, recorder.on_position)
        graph.add_member(staff, late)  # the group lists it; /users/delta does not have it yet
        mark = len(recorder.changes)
        await source.sync(recorder.on_change, recorder.on_position)
        assert recorder.summary(mark) == {("upsert", "group", staff)}
        assert late not in recorder.last(staff).members
        graph.add_user(id=late, userPrincipalName="late@contoso.com", accountEnabled=True)
        mark = len(recorder.changes)
        await source.sync(recorder.on_change, recorder.on_position)
        # The user, and the group again: now with the user among its members.
        assert recorder.summary(mark) == {("upsert", "user", late), ("upsert", "group", staff)}
        assert late in recorder.last(staff).members
        assert recorder.last(late).memberships == (staff,)
        await source.close()

    asyncio.run(scenario())


def test_resuming_from_the_stored_delta_links_reports_exactly_what_changed(graph: FakeGraph) -> None:
    users = [_user(graph, i) for i in range(10)]
    staff = graph.add_group(users[:5], displayName="Staff")
    first, second = SourceRecorder(), SourceRecorder()

    async def scenario() -> None:
        before = directory_for(graph)
        await before.start(None)
        await before.sync(first.on_change, first.on_position)
        await before.close()
        # While no ingest runs: one property change, one membership change, one deletion.
        graph.update_user(users[7], givenName="Changed")
        graph.add_member(staff, users[8])
        graph.delete_user(users[9], permanent=True)
        after = directory_for(graph)
        await after.start(first.positions[-1])
        await after.sync(second.on_change, second.on_position)
        await after.close()

    asyncio.run(scenario())
    assert second.summary() == {("upsert", "user", users[7]), ("upsert", "group", staff),
                                ("upsert", "user", users[8]), ("delete", "user", users[9])}
    assert second.last(users[8]).memberships == (staff,)
    assert second.last(staff).members == tuple(sorted([*users[:5], users[8]]))


def test_429_waits_for_retry_after_and_then_succeeds(graph: FakeGraph) -> None:
    users = [_user(graph, i) for i in range(3)]
    recorder = SourceRecorder()
    graph.throttle(2, retry_after=1)

    async def scenario() -> float:
        source = directory_for(graph)
        await source.start(None)
        began = time.monotonic()
        await source.sync(recorder.on_change, recorder.on_position)
        await source.close()
        return time.monotonic() - began

    took = asyncio.run(scenario())
    assert len(graph.throttled) == 2
    assert graph.throttled[1] - graph.throttled[0] >= 0.95  # Retry-After: 1 was honoured
    assert took >= 1.9
    assert recorder.summary() == {("upsert", "user", u) for u in users}


def test_410_sync_reset_reads_everything_again_and_deletes_what_vanished(graph: FakeGraph) -> None:
    ada, bob = _user(graph, 1), _user(graph, 2)
    recorder = SourceRecorder()

    async def scenario() -> None:
        source = directory_for(graph)
        await source.start(None)
        await source.sync(recorder.on_change, recorder.on_position)
        graph.expire_delta_tokens()
        # Gone while the token expired: Graph will not tell us about it in a delta any more.
        with graph.lock:
            del graph.users[bob]
        mark = len(recorder.changes)
        await source.sync(recorder.on_change, recorder.on_position)
        assert recorder.summary(mark) == {("upsert", "user", ada), ("delete", "user", bob)}
        assert len(recorder.positions) == 2  # new deltaLinks after the reset
        await source.close()

    asyncio.run(scenario())


def test_a_revoked_token_is_replaced_and_a_wrong_secret_is_reported_without_it(graph: FakeGraph) -> None:
    ada = _user(graph, 1)
    recorder = SourceRecorder()

    async def scenario() -> None:
        source = directory_for(graph)
        await source.start(None)
        await source.sync(recorder.on_change, recorder.on_position)
        graph.revoke_tokens()
        graph.update_user(ada, givenName="New")
        await source.sync(recorder.on_change, recorder.on_position)
        await source.close()
        wrong = directory_for(graph, client_secret="not-the-secret-xyz")
        await wrong.start(None)
        with pytest.raises(GraphSourceError) as failure:
            await wrong.sync(recorder.on_change, recorder.on_position)
        await wrong.close()
        assert "invalid_client" in str(failure.value)
        assert "not-the-secret-xyz" not in str(failure.value)
        assert graph.client_secret not in str(failure.value)

    asyncio.run(scenario())
    assert recorder.last(ada).attributes["givenName"] == "New"


def test_fetch_reads_one_object_now(graph: FakeGraph) -> None:
    ada = _user(graph, 1)
    staff = graph.add_group([ada], displayName="Staff")

    async def scenario() -> tuple[SourceObject | None, SourceObject | None, SourceObject | None]:
        source = directory_for(graph)
        await source.start(None)
        recorder = SourceRecorder()
        await source.sync(recorder.on_change, recorder.on_position)
        graph.update_user(ada, givenName="Fresh")  # not yet seen by a round: fetch reads it now
        found = await source.fetch(ada, "user")
        group = await source.fetch(staff, "group")
        missing = await source.fetch("00000000-0000-0000-0000-000000000000", "user")
        await source.close()
        return found, group, missing

    found, group, missing = asyncio.run(scenario())
    assert found is not None and found.attributes["givenName"] == "Fresh" and found.memberships == (staff,)
    assert group is not None and group.members == (ada,) and group.attributes["displayName"] == "Staff"
    assert missing is None


def test_initial_load_of_1000_users_and_50_groups_over_many_pages() -> None:
    with start_graph_server(page_size=100, member_chunk=20) as graph:
        users = [graph.add_user(userPrincipalName=f"u{i}@contoso.com", givenName=f"G{i}",
                                accountEnabled=True) for i in range(1000)]
        groups = [graph.add_group(users[g * 20:(g + 1) * 20 + 5], displayName=f"Team {g}")
                  for g in range(50)]
        recorder = SourceRecorder()

        async def scenario() -> None:
            source = directory_for(graph, page_size=100)
            await source.start(None)
            await source.sync(recorder.on_change, recorder.on_position)
            await source.close()

        began = time.monotonic()
        asyncio.run(scenario())
        took = time.monotonic() - began
        requests = len(graph.delta_requests("users")) + len(graph.delta_requests("groups"))
    expected = {("upsert", "user", u) for u in users} | {("upsert", "group", g) for g in groups}
    assert recorder.summary() == expected
    # 25 members per group in items of 20: every group spans two items, over 100-object pages.
    assert requests == 10 + 1
    assert set(recorder.last(users[21]).memberships) == {groups[0], groups[1]}  # in two teams' ranges
    assert len(recorder.last(groups[7]).members) == 25
    assert took < 20, took
