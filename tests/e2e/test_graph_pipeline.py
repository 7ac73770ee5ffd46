"""The whole pipeline from Microsoft Graph: a local Graph speaking the delta protocol
(tests/support/graph_server.py) -> ingest -> mapper -> writer -> real scim2-server, the three
workers as real processes on a real broker."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.devstack.broker import Broker
from services.devstack.scim_target import ScimTarget
from tests.conftest import Pipeline
from tests.support.fixtures import server_fixture
from tests.support.graph_server import FakeGraph, start_graph_server
from tests.support.source_pipeline import (
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

USERS, GROUPS = 1000, 50  # every user in one group; every group assigned (and provisioned)
PER = USERS // GROUPS
CHANGE_WITHIN = 20.0
LOAD_WITHIN = 240.0


graph = server_fixture(functools.partial(start_graph_server, page_size=100, member_chunk=15),
                       doc="A local Graph per test, in pages of 100 objects and member items of 15.")


@pytest.fixture
def graph_pipeline(broker: Broker, scim_target: ScimTarget, graph: FakeGraph,
                   tmp_path: Path) -> Iterator[tuple[Pipeline, list[str], list[str]]]:
    users = [graph.add_user(userPrincipalName=_name(i), givenName=f"Given{i}",
                            surname=f"Sur{i}", displayName=f"User {i}", accountEnabled=True)
             for i in range(USERS)]
    groups = [graph.add_group(users[g * PER:(g + 1) * PER], displayName=f"Team {g}") for g in range(GROUPS)]
    source = {"name": "entra", "type": "graph", "tenant_id": graph.tenant_id, "client_id": graph.client_id,
              "client_secret": "env:TEST_GRAPH_SECRET", "graph_url": graph.url, "token_url": graph.token_url,
              "poll_interval": 0.5, "page_size": 100, "full_scan_interval": 600}
    p = start_pipeline(broker, scim_target, tmp_path, [source], user_app(groups, group_name="displayName"),
                       {"TEST_GRAPH_SECRET": graph.client_secret})
    try:
        yield p, users, groups
    finally:
        p.sup.kill_all()


def _name(i: int) -> str:
    return f"user{i:03d}@contoso.com"


def _loaded_groups() -> dict[str, set[str]]:
    """The groups as loaded: displayName -> members' userNames."""
    return loaded_groups(lambda g: f"Team {g}", _name, users=USERS, groups=GROUPS)


def _polls(graph: FakeGraph) -> tuple[int, int]:
    """How many delta polls from a deltaLink the users and the groups have had."""
    return (sum("$deltatoken" in r for r in graph.delta_requests("users")),
            sum("$deltatoken" in r for r in graph.delta_requests("groups")))


def test_graph_users_land_change_and_resume_from_the_delta_links(
        graph_pipeline: tuple[Pipeline, list[str], list[str]], graph: FakeGraph) -> None:
    p, users, groups = graph_pipeline
    # Initial load: every user, every group, and each group's members, in the target.
    wait_for_directory(p, {_name(i) for i in range(USERS)}, _loaded_groups(), timeout=LOAD_WITHIN)
    first = target_user(p, _name(0))
    assert first["externalId"] == users[0] and first["name"] == {"givenName": "Given0", "familyName": "Sur0"}

    # Add (into an assigned group), modify, rename, disable, leave every assigned group, delete.
    new = graph.add_user(userPrincipalName="new@contoso.com", givenName="New", surname="Comer",
                         displayName="New Comer", accountEnabled=True)
    graph.add_member(groups[0], new)
    p.wait_for("the added user", lambda: find_user(p, "new@contoso.com") is not None, timeout=CHANGE_WITHIN)
    p.wait_for("the added user a member of its group in the target",
               lambda: is_member(p, "new@contoso.com", "Team 0"), timeout=CHANGE_WITHIN)
    graph.update_user(users[1], givenName="Changed")
    p.wait_for("the modified givenName", lambda: target_user(p, _name(1))["name"]["givenName"] == "Changed",
               timeout=CHANGE_WITHIN)
    graph.update_user(users[2], userPrincipalName="renamed@contoso.com")
    p.wait_for("the renamed userName", lambda: find_user(p, "renamed@contoso.com") is not None,
               timeout=CHANGE_WITHIN)
    assert find_user(p, _name(2)) is None
    assert target_user(p, "renamed@contoso.com")["externalId"] == users[2]  # the same account, renamed
    graph.update_user(users[3], accountEnabled=False)
    p.wait_for("the disabled user", lambda: target_user(p, _name(3))["active"] is False,
               timeout=CHANGE_WITHIN)
    graph.remove_member(groups[0], users[4])  # its only group: out of scope -> disabled
    p.wait_for("the unassigned user disabled", lambda: target_user(p, _name(4))["active"] is False,
               timeout=CHANGE_WITHIN)
    p.wait_for("the unassigned user no longer a member of its group in the target",
               lambda: not is_member(p, _name(4), "Team 0"), timeout=CHANGE_WITHIN)
    graph.add_member(groups[1], users[8])  # a second group
    p.wait_for("the user a member of its second group in the target",
               lambda: is_member(p, _name(8), "Team 1"), timeout=CHANGE_WITHIN)
    graph.delete_user(users[5], permanent=True)
    p.wait_for("the deleted user gone", lambda: find_user(p, _name(5)) is None, timeout=CHANGE_WITHIN)
    assert target_user(p, _name(6))["active"] is True

    # Kill the ingest; change one user while it is down; start it again.
    # Two more polling rounds from deltaLinks: the last changes' deltaLinks are stored (the
    # first enumeration is many pages, so count the deltaLink polls alone).
    polls = _polls(graph)
    p.wait_for("the last round's deltaLinks stored",
               lambda: all(now >= then + 2 for now, then in zip(_polls(graph), polls, strict=True)))
    resumed = resume_ingest(p, lambda: graph.update_user(users[7], givenName="WhileDown"),
                            "the change made while ingest was down",
                            lambda: target_user(p, _name(7))["name"]["givenName"] == "WhileDown")
    # Resumed from the stored deltaLinks, not re-read: the only change event is that user.
    assert {c.object_id for c in resumed} == {users[7]}
    # Every other group is as loaded, and the changed ones as changed.
    expected = _loaded_groups()
    expected["Team 0"] = (expected["Team 0"] - {_name(2), _name(4), _name(5)}) | {"new@contoso.com",
                                                                                     "renamed@contoso.com"}
    expected["Team 1"] |= {_name(8)}
    assert target_groups(p) == expected
    assert p.errors() == []
