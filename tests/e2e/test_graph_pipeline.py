"""The whole pipeline from Microsoft Graph: a local Graph speaking the delta protocol
(tests/support/graph_server.py) -> ingest -> mapper -> writer -> real scim2-server, the three
workers as real processes on a real broker."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.runtime.broker import Broker
from services.runtime.scim_target import ScimTarget
from tests.conftest import Pipeline
from tests.support.graph_server import FakeGraph, start_graph_server
from tests.support.source_pipeline import change_events, start_pipeline, user_app

pytestmark = pytest.mark.e2e

USERS, GROUPS = 100, 5
CHANGE_WITHIN = 20.0


@pytest.fixture
def graph() -> Iterator[FakeGraph]:
    with start_graph_server(page_size=100, member_chunk=15) as server:
        yield server


@pytest.fixture
def graph_pipeline(broker: Broker, scim_target: ScimTarget, graph: FakeGraph,
                   tmp_path: Path) -> Iterator[tuple[Pipeline, list[str], list[str]]]:
    users = [graph.add_user(userPrincipalName=f"user{i:03d}@contoso.com", givenName=f"Given{i}",
                            surname=f"Sur{i}", displayName=f"User {i}", accountEnabled=True)
             for i in range(USERS)]
    per = USERS // GROUPS
    groups = [graph.add_group(users[g * per:(g + 1) * per], displayName=f"Team {g}") for g in range(GROUPS)]
    source = {"name": "entra", "type": "graph", "tenant_id": graph.tenant_id, "client_id": graph.client_id,
              "client_secret": "env:TEST_GRAPH_SECRET", "graph_url": graph.url, "token_url": graph.token_url,
              "poll_interval": 0.5, "page_size": 100, "full_scan_interval": 600}
    p = start_pipeline(broker, scim_target, tmp_path, [source], user_app(groups),
                       {"TEST_GRAPH_SECRET": graph.client_secret})
    try:
        yield p, users, groups
    finally:
        p.sup.kill_all()


def _user(p: Pipeline, name: str) -> dict[str, object]:
    return p.scim.by_username()[name]


def test_graph_users_land_change_and_resume_from_the_delta_links(
        graph_pipeline: tuple[Pipeline, list[str], list[str]], graph: FakeGraph) -> None:
    p, users, groups = graph_pipeline
    p.wait_for(f"{USERS} users in the target", lambda: p.scim.count() >= USERS, timeout=120)
    assert set(p.scim.by_username()) == {f"user{i:03d}@contoso.com" for i in range(USERS)}
    first = _user(p, "user000@contoso.com")
    assert first["externalId"] == users[0] and first["name"] == {"givenName": "Given0", "familyName": "Sur0"}

    # Add (into an assigned group), modify, rename, disable, leave every assigned group, delete.
    new = graph.add_user(userPrincipalName="new@contoso.com", givenName="New", surname="Comer",
                         displayName="New Comer", accountEnabled=True)
    graph.add_member(groups[0], new)
    p.wait_for("the added user", lambda: "new@contoso.com" in p.scim.by_username(), timeout=CHANGE_WITHIN)
    graph.update_user(users[1], givenName="Changed")
    p.wait_for("the modified givenName",
               lambda: _user(p, "user001@contoso.com")["name"]["givenName"] == "Changed",  # type: ignore[index]
               timeout=CHANGE_WITHIN)
    graph.update_user(users[2], userPrincipalName="renamed@contoso.com")
    p.wait_for("the renamed userName", lambda: "renamed@contoso.com" in p.scim.by_username(),
               timeout=CHANGE_WITHIN)
    assert "user002@contoso.com" not in p.scim.by_username()
    assert _user(p, "renamed@contoso.com")["externalId"] == users[2]  # the same account, renamed
    graph.update_user(users[3], accountEnabled=False)
    p.wait_for("the disabled user", lambda: _user(p, "user003@contoso.com")["active"] is False,
               timeout=CHANGE_WITHIN)
    graph.remove_member(groups[0], users[4])  # its only group: out of scope -> disabled
    p.wait_for("the unassigned user disabled", lambda: _user(p, "user004@contoso.com")["active"] is False,
               timeout=CHANGE_WITHIN)
    graph.delete_user(users[5], permanent=True)
    p.wait_for("the deleted user gone", lambda: "user005@contoso.com" not in p.scim.by_username(),
               timeout=CHANGE_WITHIN)
    assert _user(p, "user006@contoso.com")["active"] is True

    # Kill the ingest; change one user while it is down; start it again.
    p.wait_for("the last round's deltaLinks stored", lambda: len(graph.delta_requests("users")) >= 2)
    before = {c.change_id for c in change_events(p)}
    p.sup.procs["ingest"].send_signal(signal.SIGKILL)
    p.sup.procs.pop("ingest").wait(10)
    graph.update_user(users[7], givenName="WhileDown")
    p.sup.start_one("ingest")
    p.wait_for("the change made while ingest was down",
               lambda: _user(p, "user007@contoso.com")["name"]["givenName"] == "WhileDown",  # type: ignore[index]
               timeout=60)
    resumed = [c for c in change_events(p) if c.change_id not in before]
    # Resumed from the stored deltaLinks, not re-read: the only change event is that user.
    assert {c.object_id for c in resumed} == {users[7]}
    assert p.errors() == []
