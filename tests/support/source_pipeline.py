"""Run the whole pipeline (three real worker processes) on unique topics with any source config:
what tests/conftest.py's ``pipeline_factory`` does for the file source, for the other sources."""

from __future__ import annotations

import signal
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import msgspec

from schemas import DirectoryChange
from schemas.codecs import decoder
from services.devstack.broker import Broker
from services.devstack.scim_target import ScimTarget
from services.runtime.kafka import consume, plain_producer
from tests.conftest import Pipeline, Scim, launch

__all__ = ["change_events", "find_user", "group_members", "is_member", "loaded_groups", "resume_ingest",
           "send_control", "start_pipeline", "target_groups", "target_user", "user_app", "wait_for_directory"]


def user_app(groups: list[str], *, user_name: str = "userPrincipalName", given: str = "givenName",
             family: str = "surname", display: str = "displayName", disabled: str | None = "accountEnabled",
             external: str = "id", group_name: str | None = None) -> dict[str, Any]:
    """An app with ``groups`` assigned and the usual user mapping, sources' attribute names given.

    ``disabled``: the source's attribute saying whether an account is enabled (None: none).
    ``group_name``: also provision the (assigned) groups, their displayName from this attribute.
    """
    app: dict[str, Any] = {
        "name": "app",
        "target": {"base_url": "${TEST_SCIM_URL}", "token": "env:TEST_SCIM_TOKEN"},
        "assignments": {"groups": groups},
        **({"disabled_attribute": disabled} if disabled is not None else {}),
        "mappings": {"user": {"attributes": [
            {"target": "userName", "source": user_name, "matching": 1},
            {"target": "externalId", "source": external},
            {"target": "displayName", "source": display},
            {"target": "name.givenName", "source": given},
            {"target": "name.familyName", "source": family},
        ]}},
    }
    if group_name is not None:
        app["mappings"]["group"] = {"attributes": [
            {"target": "displayName", "source": group_name, "matching": 1}]}
    return app


def start_pipeline(broker: Broker, scim_target: ScimTarget, tmp_path: Path, sources: list[dict[str, Any]],
                   app: dict[str, Any], env: Mapping[str, str] | None = None, *,
                   start: bool = True) -> Pipeline:
    """Config, topics and the three workers; the caller stops ``pipeline.sup``."""
    topics, sup = launch(broker.bootstrap, scim_target, tmp_path, {"sources": sources, "applications": [app]},
                         env)
    if start:
        sup.start()
    return Pipeline(tmp_path, topics, broker.bootstrap, Scim(scim_target), sup, tmp_path / "unused")


def change_events(p: Pipeline) -> list[DirectoryChange]:
    """The change events on the changes topic (not the full scans' objects, not markers)."""
    dec = decoder("directory.changes")
    messages = (dec.decode(m.value) for m in consume(p.bootstrap, p.topics.changes, idle_timeout=0.5))
    return [m for m in messages if isinstance(m, DirectoryChange) and m.cycle_id is None]


def send_control(p: Pipeline, key: str, message: Any) -> None:
    """Put one control message on the pipeline's control topic, as the admin API does."""
    producer = plain_producer(p.bootstrap)
    try:
        producer.send(p.topics.control, key=key.encode(), value=msgspec.json.encode(message))
        producer.flush()
    finally:
        producer.close()


def find_user(p: Pipeline, user_name: str) -> dict[str, Any] | None:
    """The target's user with this userName (one filtered request, not a listing)."""
    query = {"filter": f'userName eq "{user_name}"'}
    found: list[dict[str, Any]] = p.scim.http.get("/Users", params=query).json().get("Resources", [])
    return found[0] if found else None


def group_members(p: Pipeline, display_name: str) -> set[str]:
    """The target ids of the members of the target's group with this displayName."""
    query = {"filter": f'displayName eq "{display_name}"'}
    found: list[dict[str, Any]] = p.scim.http.get("/Groups", params=query).json().get("Resources", [])
    assert len(found) == 1, f"{len(found)} groups named {display_name} in the target"
    return {m["value"] for m in found[0].get("members") or []}


def target_user(p: Pipeline, user_name: str) -> dict[str, Any]:
    """The target's user with this userName; fails the test when there is none."""
    found = find_user(p, user_name)
    assert found is not None, f"{user_name} is not in the target"
    return found


def is_member(p: Pipeline, user_name: str, display_name: str) -> bool:
    """Whether the target's user ``user_name`` is a member of the target's group ``display_name``."""
    user = find_user(p, user_name)
    return user is not None and user["id"] in group_members(p, display_name)


def target_groups(p: Pipeline, users: list[dict[str, Any]] | None = None) -> dict[str, set[str]]:
    """Every group in the target: displayName -> the userNames of its members (``?`` for a
    member id that is no user in the target). ``users``: the target's users, if just listed."""
    names = {u["id"]: u["userName"] for u in (p.scim.users() if users is None else users)}
    groups: list[dict[str, Any]] = []
    while True:
        page = p.scim.http.get("/Groups", params={"startIndex": len(groups) + 1, "count": 500}).json()
        resources = page.get("Resources", [])
        groups.extend(resources)
        if not resources or len(groups) >= page.get("totalResults", 0):
            break
    return {g["displayName"]: {names.get(m["value"], "?") for m in g.get("members") or []} for g in groups}


def loaded_groups(group_name: Callable[[int], str], user_name: Callable[[int], str], *, users: int,
                  groups: int) -> dict[str, set[str]]:
    """The e2e directories' groups as loaded: ``users`` split evenly over ``groups``, in order
    (group ``g`` holds users ``g * per`` to ``(g + 1) * per - 1``); displayName -> userNames."""
    per = users // groups
    return {group_name(g): {user_name(i) for i in range(g * per, (g + 1) * per)} for g in range(groups)}


def resume_ingest(p: Pipeline, change: Callable[[], object], what: str, check: Callable[[], bool], *,
                  kill: bool = True, timeout: float = 60.0) -> list[DirectoryChange]:
    """Stop the ingest (SIGKILL, or ``kill=False``: a clean stop), make ``change`` while it is
    down, start it again and wait until ``check()`` (``what``). Returns the change events it
    sent after the restart: one that resumed from its stored position sends ``change``'s alone."""
    if kill:
        before = {c.change_id for c in change_events(p)}
        p.sup.procs["ingest"].send_signal(signal.SIGKILL)
        p.sup.procs.pop("ingest").wait(10)
    else:
        p.sup.stop_one("ingest")
        before = {c.change_id for c in change_events(p)}
    change()
    p.sup.start_one("ingest")
    p.wait_for(what, check, timeout=timeout)
    return [c for c in change_events(p) if c.change_id not in before]


def wait_for_directory(p: Pipeline, users: set[str], groups: dict[str, set[str]], timeout: float) -> None:
    """Wait until the target holds exactly ``users`` (userNames) and ``groups`` (displayName ->
    member userNames), then assert it: the initial load, outcome-wise."""
    members = sum(len(m) for m in groups.values())

    def loaded() -> bool:
        # Cheap counts first; the full listing only once they add up.
        if p.scim.count() < len(users):
            return False
        page = p.scim.http.get("/Groups", params={"count": 500, "attributes": "members"}).json()
        return sum(len(g.get("members") or []) for g in page.get("Resources", [])) >= members

    p.wait_for(f"{len(users)} users and {len(groups)} groups with {members} members in the target", loaded,
               timeout=timeout)
    listed = p.scim.users()
    assert sorted(u["userName"] for u in listed) == sorted(users)
    found = target_groups(p, listed)
    assert set(found) == set(groups)
    assert p.scim.http.get("/Groups", params={"count": 1}).json()["totalResults"] == len(groups)  # no twins
    wrong = {name: (found[name] - expected, expected - found[name])
             for name, expected in groups.items() if found[name] != expected}
    assert not wrong, f"groups whose members differ (extra, missing): {wrong}"
