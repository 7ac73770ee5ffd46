"""Groups in the mapper: group commands, references split from attributes, and nested-group
assignment through the group graph (depth, cycles, a group leaving the chain)."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import CycleMarker, DirectoryChange
from schemas.codecs import encode
from services.mapper.group_feed import apply_value
from services.mapper.groups import GroupGraph, nesting_reason
from services.mapper.main import compile_apps
from services.mapper.planner import CompiledApp, plan
from services.runtime.config import load_config
from services.runtime.errors import ConfigError

MANAGER = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager"

CONFIG = f"""\
sources:
  - {{name: hr, type: file, path: dir.yaml}}
applications:
  - name: nested
    target: {{base_url: "http://127.0.0.1:9/v2", token: "env:T"}}
    assignments: {{users: [u-direct], groups: [eng, ops], expand_nested_groups: true}}
    mappings:
      user:
        attributes:
          - {{target: userName, source: upn, matching: 1}}
          - {{target: "{MANAGER}", source: manager, reference: user}}
      group:
        scoping_filters:
          - name: live groups
            clauses:
              - {{attribute: displayName, operator: NOT REGEX MATCH, value: "^Archived"}}
        attributes:
          - {{target: displayName, source: displayName, matching: 1}}
          - {{target: externalId, source: id}}
  - name: flat
    target: {{base_url: "http://127.0.0.1:9/v2", token: "env:T"}}
    assignments: {{groups: [eng]}}
    mappings:
      user:
        attributes:
          - {{target: userName, source: upn, matching: 1}}
  - name: everything
    target: {{base_url: "http://127.0.0.1:9/v2", token: "env:T"}}
    scope: all
    mappings:
      user:
        attributes:
          - {{target: userName, source: upn, matching: 1}}
      group:
        attributes:
          - {{target: displayName, source: displayName, matching: 1}}
"""


def compile_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> dict[str, CompiledApp]:
    monkeypatch.setenv("T", "x")
    (tmp_path / "c.yaml").write_text(text)
    return {c.app.name: c for c in compile_apps(load_config(tmp_path / "c.yaml"))}


@pytest.fixture
def apps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, CompiledApp]:
    return compile_text(tmp_path, monkeypatch, CONFIG)


def user(object_id: str = "u1", groups: tuple[str, ...] = (), op: Any = "upsert",
         **attrs: Any) -> DirectoryChange:
    return DirectoryChange(source="hr", object_type="user", object_id=object_id, operation=op,
                           attributes={"upn": f"{object_id}@x.com", **attrs}, memberships=list(groups),
                           change_id="c", observed_at=datetime.now(UTC))


def group(object_id: str, members: tuple[str, ...] = (), op: Any = "upsert",
          **attrs: Any) -> DirectoryChange:
    return DirectoryChange(source="hr", object_type="group", object_id=object_id, operation=op,
                           attributes={"id": object_id, "displayName": object_id.title(), **attrs},
                           members=list(members), change_id="c", observed_at=datetime.now(UTC))


def graph_of(*groups: DirectoryChange) -> GroupGraph:
    graph = GroupGraph()
    for g in groups:
        graph.apply(g)
    return graph


# ------------------------------------------------------------------------ group commands

def test_assigned_group_is_mapped_with_its_direct_members(apps: dict[str, CompiledApp]) -> None:
    cmd = plan(apps["nested"], group("eng", ("u1", "backend", "u2")))
    assert cmd is not None and cmd.operation == "upsert" and cmd.object_type == "group"
    assert cmd.attributes == {"displayName": "Eng", "externalId": "eng"}
    assert [(m.target, m.value) for m in cmd.matching] == [("displayName", "Eng")]
    assert cmd.members == ["u1", "backend", "u2"]
    assert cmd.reason.startswith("group eng is assigned; filter 1 (live groups) matched")
    assert cmd.display_name == "Eng"


def test_unassigned_group_is_deprovisioned_and_deleted_group_deleted(apps: dict[str, CompiledApp]) -> None:
    out = plan(apps["nested"], group("backend", ("u1",)))
    assert out is not None and out.operation == "deprovision"
    assert out.reason == "group backend is not assigned"
    assert out.members == [] and out.attributes == {}
    deleted = plan(apps["nested"], group("eng", op="delete"))
    assert deleted is not None and deleted.operation == "delete"
    assert deleted.reason == "deleted in source"


def test_group_scoping_filter_names_the_filter_and_clause(apps: dict[str, CompiledApp]) -> None:
    cmd = plan(apps["nested"], group("ops", ("u1",), displayName="Archived ops"))
    assert cmd is not None and cmd.operation == "deprovision"
    assert cmd.reason == ('scoping filters: no filter matched: filter 1 (live groups) failed at '
                          'clause 1 (displayName NOT REGEX MATCH "^Archived": value is "Archived ops")')


def test_scope_all_takes_every_group_and_apps_without_group_mapping_none(
        apps: dict[str, CompiledApp]) -> None:
    cmd = plan(apps["everything"], group("anything", ("u9",)))
    assert cmd is not None and cmd.operation == "upsert"
    assert cmd.reason == "scope is all users and groups" and cmd.members == ["u9"]
    assert plan(apps["flat"], group("eng", ("u1",))) is None


def test_disabled_group_mapping_plans_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = CONFIG.replace("      group:\n        scoping_filters:", "      group:\n        enabled: false\n"
                          "        scoping_filters:")
    apps = compile_text(tmp_path, monkeypatch, text)
    assert plan(apps["nested"], group("eng", ("u1",))) is None


def test_group_mapping_errors_point_into_the_group_mapping(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    bad = CONFIG.replace('value: "^Archived"', 'value: "(["')
    with pytest.raises(ConfigError) as info:
        compile_text(tmp_path, monkeypatch, bad)
    assert "$.applications[0].mappings.group.scoping_filters[0].clauses[0]" in str(info.value)
    assert info.value.line == bad.splitlines().index(
        '              - {attribute: displayName, operator: NOT REGEX MATCH, value: "(["}') + 1
    expression = CONFIG.replace("{target: externalId, source: id}",
                                '{target: externalId, type: expression, expression: "Join(,"}')
    with pytest.raises(ConfigError, match=r"mappings\.group\.attributes\[1\]\.expression"):
        compile_text(tmp_path, monkeypatch, expression)


# --------------------------------------------------------------------------- references

def test_reference_goes_to_references_not_attributes(apps: dict[str, CompiledApp]) -> None:
    cmd = plan(apps["nested"], user("u-direct", manager="u17"))
    assert cmd is not None and cmd.operation == "upsert"
    assert cmd.references == {MANAGER: "u17"}
    assert cmd.attributes == {"userName": "u-direct@x.com"}


@pytest.mark.parametrize("no_manager", [None, ""])
def test_no_manager_clears_the_attribute(apps: dict[str, CompiledApp], no_manager: str | None) -> None:
    cmd = plan(apps["nested"], user("u-direct", manager=no_manager))
    assert cmd is not None
    assert cmd.references == {}
    assert cmd.attributes == {"userName": "u-direct@x.com", MANAGER: None}


def test_reference_from_an_expression_and_a_list_value_fails_clearly(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = CONFIG.replace("source: manager, reference: user",
                          'type: expression, expression: "[manager]", reference: user')
    app = compile_text(tmp_path, monkeypatch, text)["nested"]
    cmd = plan(app, user("u-direct", manager="u5"))
    assert cmd is not None and cmd.references == {MANAGER: "u5"}
    with pytest.raises(TypeError, match="must be one source id, got list"):
        plan(app, user("u-direct", manager=["u5", "u6"]))


@pytest.mark.parametrize(("extra", "key"), [("apply: on_create", "apply"), ("default: u1", "default"),
                                            ("matching: 2", "matching")])
def test_reference_with_apply_default_or_matching_is_a_config_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra: str, key: str) -> None:
    text = CONFIG.replace("source: manager, reference: user", f"source: manager, reference: user, {extra}")
    with pytest.raises(ConfigError) as info:
        compile_text(tmp_path, monkeypatch, text)
    assert f"`{key}` cannot be set on a reference mapping" in str(info.value)
    assert f"$.applications[0].mappings.user.attributes[1].{key}" in str(info.value)


# ------------------------------------------------------------------------ nested groups

CHAIN = (group("eng", ("backend", "u-eng")), group("backend", ("api",)), group("api", ("u-api",)))


def test_member_three_levels_down_is_in_scope_with_the_path(apps: dict[str, CompiledApp]) -> None:
    cmd = plan(apps["nested"], user("u-api", ("api",)), graph_of(*CHAIN))
    assert cmd is not None and cmd.operation == "upsert"
    assert cmd.reason == "user is a member of group api, nested in backend, nested in assigned group eng"
    two = plan(apps["nested"], user("u-b", ("backend",)), graph_of(*CHAIN))
    assert two is not None
    assert two.reason == "user is a member of group backend, nested in assigned group eng"


def test_without_expansion_or_graph_only_direct_groups_count(apps: dict[str, CompiledApp]) -> None:
    flat = plan(apps["flat"], user("u-api", ("api",)), graph_of(*CHAIN))
    assert flat is not None and flat.operation == "deprovision"
    assert flat.reason == "user is not assigned (directly or through a group)"
    no_graph = plan(apps["nested"], user("u-api", ("api",)))
    assert no_graph is not None and no_graph.operation == "deprovision"


def test_a_cycle_ends_and_decides(apps: dict[str, CompiledApp]) -> None:
    loop = (group("a", ("b", "u1")), group("b", ("c",)), group("c", ("a",)))
    out = plan(apps["nested"], user("u1", ("a",)), graph_of(*loop))
    assert out is not None and out.operation == "deprovision"
    assert out.reason == "user is not assigned (directly, through a group or a nested group)"
    into_eng = graph_of(*loop, group("ops", ("b",)))
    inside = plan(apps["nested"], user("u1", ("a",)), into_eng)
    assert inside is not None and inside.operation == "upsert"
    assert inside.reason == ("user is a member of group a, nested in c, nested in b, "
                             "nested in assigned group ops")


def test_a_group_removed_from_the_chain_takes_its_members_out(apps: dict[str, CompiledApp]) -> None:
    graph = graph_of(*CHAIN)
    graph.apply(group("backend", ()))  # api leaves backend
    out = plan(apps["nested"], user("u-api", ("api",)), graph)
    assert out is not None and out.operation == "deprovision"
    graph.apply(group("backend", ("api",)))
    graph.apply(group("backend", op="delete"))
    gone = plan(apps["nested"], user("u-api", ("api",)), graph)
    assert gone is not None and gone.operation == "deprovision"


def test_shortest_path_wins_and_ties_go_to_the_smallest_id() -> None:
    graph = graph_of(group("eng", ("x", "y")), group("x", ("leaf",)), group("y", ("leaf",)),
                     group("ops", ("deep",)), group("deep", ("x",)))
    assert graph.path_to(["leaf"], {"eng", "ops"}) == ["leaf", "x", "eng"]
    assert graph.path_to(["leaf"], {"ops"}) == ["leaf", "x", "deep", "ops"]
    assert graph.path_to(["eng"], {"eng"}) == ["eng"]
    assert graph.path_to([], {"eng"}) is None
    assert nesting_reason(["leaf", "x", "eng"]) == (
        "user is a member of group leaf, nested in x, nested in assigned group eng")


def test_graph_forgets_old_edges() -> None:
    graph = graph_of(group("eng", ("a", "b")))
    assert graph.parents("a") == {"eng"} and graph.members("eng") == {"a", "b"}
    graph.apply(group("eng", ("b", "c")))
    assert graph.parents("a") == frozenset() and graph.parents("c") == {"eng"}
    graph.apply(group("eng", op="delete"))
    assert len(graph) == 0 and graph.parents("b") == frozenset()
    graph.apply(user("u1", ("eng",)))  # users do not change the graph
    assert len(graph) == 0


def test_feed_values_apply_groups_and_skip_everything_else() -> None:
    graph = GroupGraph()
    apply_value(graph, encode(group("eng", ("backend",))))
    apply_value(graph, encode(user("u1", ("eng",))))
    apply_value(graph, encode(CycleMarker(source="hr", cycle_id="c1", phase="start",
                                          at=datetime.now(UTC))))
    apply_value(graph, b"not json {")
    apply_value(graph, msgspec.json.encode({"type": "directory.change.v1", "object_type": "group"}))
    assert graph.members("eng") == {"backend"} and len(graph) == 1
    apply_value(graph, encode(group("eng", op="delete")))
    assert len(graph) == 0


def test_users_wait_for_the_graph_to_catch_up_and_groups_do_not() -> None:
    from services.mapper.group_feed import GroupFeed
    from services.mapper.main import graph_for

    async def scenario() -> None:
        feed = GroupFeed("127.0.0.1:9", "never-read")  # not run: the test plays its part
        assert await graph_for(feed, group("eng")) is feed.graph  # groups never wait
        waiting = asyncio.create_task(graph_for(feed, user("u1", ("api",))))
        await asyncio.sleep(0.05)
        assert not waiting.done(), "a user was planned before the graph caught up"
        caught_up = graph_of(*CHAIN)
        feed.graph = caught_up
        feed.ready.set()
        assert await asyncio.wait_for(waiting, 1) is caught_up
        assert await graph_for(None, user("u1")) is None

    asyncio.run(scenario())


@settings(max_examples=300, deadline=None)
@given(edges=st.lists(st.tuples(st.integers(0, 12), st.integers(0, 12)), max_size=40),
       direct=st.sets(st.integers(0, 12), max_size=3), assigned=st.sets(st.integers(0, 12), max_size=3))
def test_path_is_a_real_shortest_chain_on_any_graph(edges: list[tuple[int, int]], direct: set[int],
                                                   assigned: set[int]) -> None:
    """On random graphs (self-loops and cycles included): a path exists exactly when an
    assigned group is reachable upwards, and the one returned is real and shortest."""
    graph = GroupGraph()
    members: dict[str, set[str]] = {}
    for parent, child in edges:
        members.setdefault(f"g{parent}", set()).add(f"g{child}")
    for g, m in members.items():
        graph.set_members(g, frozenset(m))
    starts, targets = {f"g{d}" for d in direct}, {f"g{a}" for a in assigned}
    distance = _distances_up(members, starts)
    reachable = [distance[t] for t in targets if t in distance]
    path = graph.path_to(starts, targets)
    if not reachable:
        assert path is None
        return
    assert path is not None
    assert path[0] in starts and path[-1] in targets
    assert all(child in members.get(parent, set()) for child, parent in itertools.pairwise(path))
    assert len(path) - 1 == min(reachable)


def _distances_up(members: dict[str, set[str]], starts: set[str]) -> dict[str, int]:
    """Hops from the start groups up to every ancestor: a plain fixed-point, no BFS."""
    distance = dict.fromkeys(starts, 0)
    changed = True
    while changed:
        changed = False
        for parent, children in members.items():
            best = min((distance[c] + 1 for c in children if c in distance), default=None)
            if best is not None and best < distance.get(parent, best + 1):
                distance[parent] = best
                changed = True
    return distance
