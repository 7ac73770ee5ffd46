"""The whole pipeline: file source -> ingest -> mapper -> writer -> real scim2-server.

Every test runs the three workers as real processes on a real broker, with topics of its
own, and checks the outcome in the target and on the activity/error topics.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest

from services.runtime.kafka import plain_producer
from tests.conftest import APP, Pipeline, user

pytestmark = pytest.mark.e2e

Factory = Callable[..., Pipeline]


def test_initial_sync_of_200_users_lands_exactly_200_mapped_users(pipeline_factory: Factory) -> None:
    users = [user(i) for i in range(200)]
    p = pipeline_factory(users)
    p.wait_for("200 users in the target", lambda: p.scim.count() >= 200)
    target = p.scim.by_username()
    assert len(p.scim.users()) == 200
    assert set(target) == {u["userPrincipalName"] for u in users}
    u7 = target["user7@example.com"]
    assert u7["externalId"] == "u00007"
    assert u7["name"]["givenName"] == "Given7" and u7["name"]["familyName"] == "Sur7"
    assert u7["title"] == "Staff" and u7["displayName"] == "User 7" and u7["active"] is True
    p.wait_for("200 create records", lambda: len([a for a in p.activity() if a.action == "create"]) == 200)
    creates = [a for a in p.activity() if a.action == "create"]
    assert all(a.status == "success" and a.target_id for a in creates)
    assert {s.name for s in creates[0].steps} >= {"import", "scope", "match", "action", "export"}
    assert p.errors() == []


def test_one_changed_attribute_is_one_patch_of_that_attribute(pipeline_factory: Factory) -> None:
    users = [user(i) for i in range(20)]
    p = pipeline_factory(users)
    p.wait_for("initial sync", lambda: len(p.scim.users()) == 20)
    p.wait_for("20 creates", lambda: sum(a.action == "create" for a in p.activity()) == 20)
    users[3] = {**users[3], "givenName": "Renamed"}
    p.write_directory(users)
    p.wait_for("the rename in the target",
               lambda: p.scim.by_username()["user3@example.com"]["name"]["givenName"] == "Renamed")
    p.wait_for("the update record", lambda: any(a.action == "update" for a in p.activity()))
    updates = [a for a in p.activity() if a.action == "update"]
    assert len(updates) == 1
    assert updates[0].source_id == "u00003"
    assert [(m.name, m.old_value, m.new_value) for m in updates[0].modified_properties] == [
        ("name.givenName", "Given3", "Renamed")]
    assert p.scim.by_username()["user3@example.com"]["name"]["familyName"] == "Sur3"


def test_unassigned_user_is_disabled_and_deleted_user_is_deleted(pipeline_factory: Factory) -> None:
    users = [user(i) for i in range(10)]
    p = pipeline_factory(users)
    p.wait_for("initial sync", lambda: len(p.scim.users()) == 10)
    members = [u["id"] for u in users if u["id"] != "u00002"]
    p.write_directory(users, [{"id": "g-all", "displayName": "All", "members": members}])
    p.wait_for("user2 disabled", lambda: p.scim.by_username()["user2@example.com"]["active"] is False)
    disabled = [a for a in p.activity() if a.action == "disable"]
    assert [a.source_id for a in disabled] == ["u00002"]
    assert "not assigned" in (disabled[0].reason or "")

    remaining = [u for u in users if u["id"] != "u00005"]
    p.write_directory(remaining, [{"id": "g-all", "displayName": "All",
                                   "members": [m for m in members if m != "u00005"]}])
    p.wait_for("user5 deleted", lambda: "user5@example.com" not in p.scim.by_username())
    assert len(p.scim.users()) == 9  # the disabled one stays, soft-deleted
    assert [a.source_id for a in p.activity() if a.action == "delete"] == ["u00005"]


def test_existing_account_is_adopted_and_unmanaged_one_is_left_alone(pipeline_factory: Factory) -> None:
    users = [user(i) for i in range(5)]
    p = pipeline_factory(users, start=False)
    existing = p.scim.create({"userName": "user1@example.com", "title": "Old title", "active": True})
    stranger = p.scim.create({"userName": "stranger@example.com", "title": "Keep me", "active": True})
    p.sup.start()
    p.wait_for("5 outcomes", lambda: len(p.activity()) >= 5)
    target = p.scim.by_username()
    assert len(target) == 6  # 4 created + 1 adopted + the stranger
    assert target["user1@example.com"]["id"] == existing["id"]
    assert target["user1@example.com"]["title"] == "Staff"
    assert target["stranger@example.com"] == p.scim.http.get(f"/Users/{stranger['id']}").json()
    assert target["stranger@example.com"]["title"] == "Keep me"
    adopted = [a for a in p.activity() if a.action == "adopt"]
    assert [a.target_id for a in adopted] == [existing["id"]]
    # Deprovisioning everyone still leaves the stranger alone.
    p.write_directory(users, [{"id": "g-all", "displayName": "All", "members": []}])
    p.wait_for("5 disabled", lambda: sum(not u["active"] for u in p.scim.users()) == 5)
    assert p.scim.by_username()["stranger@example.com"]["active"] is True


def test_kill_9_writer_mid_sync_ends_with_exactly_2000_users(pipeline_factory: Factory) -> None:
    users = [user(i) for i in range(2000)]
    p = pipeline_factory(users)
    p.wait_for("sync under way", lambda: p.scim.count() >= 200, timeout=120)
    p.sup.kill("writer")
    midway = p.scim.count()
    assert midway < 2000, "the sync finished before the kill; the test proves nothing"
    p.sup.start_one("writer")
    try:
        p.wait_for("2000 users", lambda: p.scim.count() >= 2000, timeout=150)
    except AssertionError:
        have = {u["userName"] for u in p.scim.users()}
        missing = [u["id"] for u in users if u["userPrincipalName"] not in have]
        seen = [(a.source_id, a.action, a.status, a.reason) for a in p.activity() if a.source_id in missing]
        raise AssertionError(f"missing {missing}; their activity: {seen}; errors: {p.errors()}") from None
    names = Counter(u["userName"] for u in p.scim.users())
    assert len(names) == 2000
    assert max(names.values()) == 1, "duplicates in the target"
    assert set(names) == {u["userPrincipalName"] for u in users}


def test_malformed_change_goes_to_error_topic_and_pipeline_goes_on(pipeline_factory: Factory) -> None:
    p = pipeline_factory([user(1)])
    p.wait_for("first user", lambda: len(p.scim.users()) == 1)
    producer = plain_producer(p.bootstrap)
    producer.send(p.topics.changes, key=b"bad", value=b'{"type":"directory.change.v1","object_id":')
    producer.send(p.topics.changes, key=b"bad2", value=b'{"type":"nonsense.v0"}')
    producer.flush()
    producer.close()
    p.write_directory([user(1), user(2)])
    p.wait_for("second user after the bad messages", lambda: len(p.scim.users()) == 2)
    p.wait_for("two error records", lambda: len(p.errors()) >= 2)
    errors = sorted(p.errors(), key=lambda e: e.origin.offset if e.origin else -1)
    assert {e.error_code for e in errors} == {"MalformedMessage"}
    assert {e.service for e in errors} == {"mapper"}
    assert all(e.origin is not None and e.origin.topic == p.topics.changes for e in errors)
    assert any("nonsense.v0" in (e.payload or "") for e in errors)
    assert all(e.reason for e in errors)


def test_expression_mappings_land_as_evaluated(pipeline_factory: Factory) -> None:
    from services.mapper.expressions import compile_expression

    expressions = {
        "displayName": 'Join(" ", [givenName], [surname])',
        "nickName": 'ToLower(NormalizeDiacritics(StripSpaces(Join(".", [givenName], [surname]))))',
        "title": 'Switch([department], "Staff", "Engineering", "Engineer", "Sales", "Seller")',
        "userType": 'IgnoreFlowIfNullOrEmpty([employeeType])',
        "locale": 'Redact(Left([countryCode], 2))',
    }
    app = {**APP, "mappings": {"user": {"attributes": [
        {"target": "userName", "source": "userPrincipalName", "matching": 1},
        *({"target": t, "type": "expression", "expression": e} for t, e in expressions.items()),
        {"target": "externalId", "type": "expression",
         "expression": 'SelectUniqueValue(Join("-", "ext", [id]), Join("-", "ext2", [id]))'},
    ]}}}
    people = [user(1, givenName="José", surname="Da Silva", department="Engineering",
                   employeeType="Contractor", countryCode="PTG"),
              user(2, givenName="Zoë", surname="Ng", department="Sales", countryCode="NZL"),
              user(3, givenName="Ann", surname="Lee", department="Legal", countryCode="US")]
    p = pipeline_factory(people, app=app, start=False)
    # ext-u00002 is taken in the target, so SelectUniqueValue must pick ext2-u00002.
    p.scim.create({"userName": "someone.else@example.com", "externalId": "ext-u00002"})
    p.sup.start()
    p.wait_for("3 users", lambda: p.scim.count() == 4)
    target = p.scim.by_username()
    for person in people:
        got = target[person["userPrincipalName"]]
        for attr, text in expressions.items():
            expected = compile_expression(text).evaluate(person)
            if attr == "userType" and not person.get("employeeType"):
                assert attr not in got  # IgnoreFlowIfNullOrEmpty: the attribute did not flow
            else:
                assert got[attr] == expected, (attr, got.get(attr), expected)
    assert target["user1@example.com"]["nickName"] == "jose.dasilva"
    assert target["user1@example.com"]["title"] == "Engineer"
    assert target["user3@example.com"]["title"] == "Staff"
    assert target["user1@example.com"]["externalId"] == "ext-u00001"
    assert target["user2@example.com"]["externalId"] == "ext2-u00002"
    p.wait_for("3 creates", lambda: sum(a.action == "create" for a in p.activity()) == 3)
    for record in (a for a in p.activity() if a.action == "create"):
        locale = [m for m in record.modified_properties if m.name == "locale"]
        assert [m.new_value for m in locale] == ["[Redact]"], "Redact() values must not reach the log"


def _frames(p: Pipeline, cycle_id: str, *, complete: bool) -> None:
    """Write a scan's frames by hand, as an ingest that died mid-scan (or not) would."""
    from datetime import UTC, datetime

    from schemas import CycleMarker
    from schemas.codecs import encode

    producer = plain_producer(p.bootstrap)
    for phase in ("start", "end"):
        frame = CycleMarker(source="hr", cycle_id=cycle_id, phase=phase, total=0,
                            complete=complete, at=datetime.now(UTC))
        for partition in range(p.topics.partitions):
            producer.send(p.topics.changes, key=cycle_id.encode(), value=encode(frame),
                          partition=partition)
    producer.flush()
    producer.close()


@pytest.mark.parametrize("store", ["memory", "rocksdb"])
def test_full_scan_missing_3_users_removes_exactly_those_3(pipeline_factory: Factory, store: str) -> None:
    # rocksdb: what Helm and kustomize run; the sweep reads each partition's database alone.
    users = [user(i) for i in range(10)]
    p = pipeline_factory(users, env={"SCIMFLOW_STATE_STORE": store})
    p.wait_for("initial sync", lambda: p.scim.count() == 10)
    p.sup.stop_one("ingest")
    # An interrupted scan that mentioned nobody must remove nobody.
    _frames(p, "interrupted-scan", complete=False)
    log = p.dir / "logs" / "writer.log"
    p.wait_for("the writer to discard the interrupted scan",
               lambda: log.read_text().count("the scan was interrupted") >= p.topics.partitions)
    assert p.scim.count() == 10
    assert all(u["active"] for u in p.scim.users())
    # Three users vanish while ingest is down: no delete events, only the next full scan.
    gone = {"u00002", "u00005", "u00007"}
    p.write_directory([u for u in users if u["id"] not in gone])
    p.sup.start_one("ingest")
    p.wait_for("3 deletions", lambda: p.scim.count() == 7)
    deletes = [a for a in p.activity() if a.action == "delete"]
    assert {a.source_id for a in deletes} == gone
    assert all("absent from the completed full scan" in (a.reason or "") for a in deletes)
    assert all(u["active"] for u in p.scim.users())
    assert set(p.scim.by_username()) == {u["userPrincipalName"] for u in users if u["id"] not in gone}


def test_leaving_scope_by_filter_disables_and_returning_reenables_same_account(
        pipeline_factory: Factory) -> None:
    app = {**APP, "mappings": {"user": {
        **APP["mappings"]["user"],  # type: ignore[index]
        "scoping_filters": [{"name": "engineering", "clauses": [
            {"attribute": "department", "operator": "EQUALS", "value": "Engineering"}]}],
    }}}
    users = [user(i) for i in range(4)] + [user(9, department="Sales")]
    p = pipeline_factory(users, app=app)
    p.wait_for("4 in-scope users", lambda: p.scim.count() == 4)
    assert "user9@example.com" not in p.scim.by_username()  # out of scope: never created
    original = p.scim.by_username()["user1@example.com"]["id"]
    users[1] = {**users[1], "department": "Marketing"}
    p.write_directory(users)
    p.wait_for("user1 disabled", lambda: p.scim.by_username()["user1@example.com"]["active"] is False)
    disabled = next(a for a in p.activity() if a.action == "disable")
    assert "scoping filters: no filter matched" in (disabled.reason or "")
    assert "department EQUALS" in (disabled.reason or "")
    users[1] = {**users[1], "department": "Engineering"}
    p.write_directory(users)
    p.wait_for("user1 re-enabled", lambda: p.scim.by_username()["user1@example.com"]["active"] is True)
    assert p.scim.by_username()["user1@example.com"]["id"] == original
    assert p.scim.count() == 4
    assert not any(a.action == "create" and a.source_id == "u00001" and a.status == "success"
                   and a.at > disabled.at for a in p.activity())


def test_threshold_holds_600_removals_until_allowed(pipeline_factory: Factory) -> None:
    import os
    import subprocess
    import sys

    users = [user(i) for i in range(1000)]
    p = pipeline_factory(users, app={**APP, "deletion_threshold": 500})
    p.wait_for("1000 users", lambda: p.scim.count() == 1000, timeout=240)
    stranger = p.scim.create({"userName": "stranger@example.com", "active": True})
    keep = [u["id"] for u in users[600:]]
    p.write_directory(users, [{"id": "g-all", "displayName": "All", "members": keep}])
    p.wait_for("600 stagedDelete records",
               lambda: sum(a.action == "stagedDelete" for a in p.activity()) >= 600, timeout=120)
    staged = [a for a in p.activity() if a.action == "stagedDelete"]
    assert len(staged) == 600
    assert {a.source_id for a in staged} == {u["id"] for u in users[:600]}
    assert all(a.status == "skipped" and "deletion threshold" in (a.reason or "") for a in staged)
    assert sum(u["active"] for u in p.scim.users()) == 1001  # nothing removed
    assert any(e.error_code == "DeletionThresholdExceeded" for e in p.errors())

    env = {**os.environ, **p.sup.env}
    done = subprocess.run([sys.executable, "-m", "services.cli", "allow-deletes", "app", "--by", "test"],
                          env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    p.wait_for("600 disabled", lambda: sum(not u["active"] for u in p.scim.users()) == 600, timeout=120)
    active = {u["userName"] for u in p.scim.users() if u["active"]}
    assert active == {u["userPrincipalName"] for u in users[600:]} | {"stranger@example.com"}
    assert p.scim.http.get(f"/Users/{stranger['id']}").json()["active"] is True
    assert sum(a.action == "disable" and a.status == "success" for a in p.activity()) == 600


def test_delete_action_and_skip_out_of_scope_deletions(pipeline_factory: Factory, tmp_path_factory:
                                                       pytest.TempPathFactory) -> None:
    from services.devstack.scim_target import start_scim_target
    from tests.conftest import Scim

    secrets = tmp_path_factory.mktemp("secrets")
    no_delete = {**APP, "mappings": {"user": {**APP["mappings"]["user"],  # type: ignore[index]
                                              "actions": ["create", "update"]}}}
    with start_scim_target() as second:
        (secrets / "token").write_text(second.token)
        keep_out_of_scope = {**APP, "name": "lenient", "skip_out_of_scope_deletions": True,
                             "target": {"base_url": second.base_url, "token": f"file:{secrets / 'token'}"}}
        users = [user(i) for i in range(5)]
        p = pipeline_factory(users, app=no_delete, more_apps=[keep_out_of_scope])
        lenient = Scim(second)
        p.wait_for("both synced", lambda: p.scim.count() == 5 and lenient.count() == 5)
        remaining = [u for u in users if u["id"] != "u00001"]  # user1 hard-deleted in the source
        members = [u["id"] for u in remaining if u["id"] != "u00002"]  # user2 unassigned
        p.write_directory(remaining, [{"id": "g-all", "displayName": "All", "members": members}])
        p.wait_for("the strict app to disable user1 and user2", lambda: {
            u["userName"] for u in p.scim.users() if not u["active"]} == {
            "user1@example.com", "user2@example.com"})
        p.wait_for("the lenient app to delete user1", lambda: lenient.count() == 4)
        assert p.scim.count() == 5  # Delete action off: disabled, never deleted
        assert lenient.by_username()["user2@example.com"]["active"] is True  # out of scope: kept
        skips = [a for a in p.activity() if a.app == "lenient" and a.source_id == "u00002"
                 and a.action == "skip"]
        assert skips and "skip_out_of_scope_deletions" in (skips[-1].reason or "")
        disabled = {a.source_id: a.reason for a in p.activity() if a.app == "app" and a.action == "disable"}
        assert "Delete action is off" in (disabled["u00001"] or "")
