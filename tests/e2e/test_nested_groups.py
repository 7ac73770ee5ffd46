"""Nested groups end to end: members of groups nested at any depth in an assigned group reach
the real scim2-server, through a real broker and real workers; the others do not, and a
group leaving the chain takes its members out at their next change.

The start-up gate (no user planned before the graph has caught up) is pinned where timing
can be controlled: tests/unit/test_groups.py and tests/integration/test_mapper_groups.py."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from schemas import DirectoryChange, ProvisioningCommand
from services.runtime.kafka import consume
from tests.conftest import APP, Pipeline, read_all, user

pytestmark = pytest.mark.e2e

Factory = Callable[..., Pipeline]

NESTED_APP: dict[str, Any] = {**APP, "assignments": {"groups": ["eng"], "expand_nested_groups": True}}

# eng > backend > api (and api > eng: a cycle); sales is not assigned.
USERS = [user(0), user(1), user(2), user(3)]
GROUPS = [
    {"id": "eng", "displayName": "Engineering", "members": ["u00000", "backend"]},
    {"id": "backend", "displayName": "Backend", "members": ["u00001", "api"]},
    {"id": "api", "displayName": "API", "members": ["u00002", "eng"]},
    {"id": "sales", "displayName": "Sales", "members": ["u00003"]},
]


def test_members_of_nested_groups_are_provisioned_and_others_are_not(pipeline_factory: Factory) -> None:
    p = pipeline_factory(USERS, app=NESTED_APP, groups=GROUPS, start=False)
    # The directory is on the topic before the mapper starts, as after a mapper outage.
    p.sup.start(["ingest"])
    p.wait_for("8 changes on the topic",
               lambda: sum(1 for m in consume(p.bootstrap, p.topics.changes, idle_timeout=0.5)
                           if b'"directory.change.v1"' in m.value) >= 8, timeout=30)
    p.sup.start(["mapper", "writer"])
    p.wait_for("3 users in the target", lambda: p.scim.count() >= 3, timeout=60)
    commands = [c for c in read_all(p.bootstrap, p.topics.commands, ProvisioningCommand)
                if c.object_type == "user"]
    by_user = {c.source_id: c for c in commands}
    assert {(c.source_id, c.operation) for c in commands} == {
        ("u00000", "upsert"), ("u00001", "upsert"), ("u00002", "upsert"), ("u00003", "deprovision")}
    assert by_user["u00002"].reason == (
        "user is a member of group api, nested in backend, nested in assigned group eng")
    assert by_user["u00003"].reason == "user is not assigned (directly, through a group or a nested group)"
    p.wait_for("3 create records", lambda: sum(a.action == "create" for a in p.activity()) == 3)
    assert set(p.scim.by_username()) == {"user0@example.com", "user1@example.com", "user2@example.com"}
    created = {a.source_id: a for a in p.activity() if a.action == "create"}
    assert "nested in assigned group eng" in (created["u00002"].reason or "")
    assert p.errors() == []


def test_a_user_whose_nested_group_leaves_the_chain_is_disabled(pipeline_factory: Factory) -> None:
    p = pipeline_factory(USERS, app=NESTED_APP, groups=GROUPS)
    p.wait_for("3 users in the target", lambda: p.scim.count() >= 3, timeout=60)
    # api leaves backend; then u00002 changes (its next change re-evaluates its scope). Two
    # steps: every mapper replica learns the nesting from its own follower of the changes
    # topic, so a user change that races the group change may still see the old chain (it
    # is then corrected at the user's next change or the next full scan, as documented).
    groups = [GROUPS[0], {**GROUPS[1], "members": ["u00001"]}, GROUPS[2], GROUPS[3]]
    p.write_directory(USERS, groups)
    p.wait_for("the new nesting on the topic", lambda: any(
        c.object_id == "backend" and c.members == ["u00001"]
        for c in read_all(p.bootstrap, p.topics.changes, DirectoryChange)), timeout=30)
    time.sleep(1.5)  # the mapper's group follower polls every 0.5 s
    users = [*USERS[:2], {**USERS[2], "givenName": "Moved"}, USERS[3]]
    p.write_directory(users, groups)
    p.wait_for("user2 disabled", lambda: p.scim.by_username()["user2@example.com"]["active"] is False,
               timeout=30)
    target = p.scim.by_username()
    assert target["user1@example.com"]["active"] is True
    disabled = [a for a in p.activity() if a.action == "disable"]
    assert [a.source_id for a in disabled] == ["u00002"]
    assert "not assigned" in (disabled[0].reason or "")
