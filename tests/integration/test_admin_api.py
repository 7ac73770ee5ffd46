"""The admin API as a real service (``scimflow admin``) on a real broker, against a real
scim2-server: auth, every route, what lands on the control and audit topics."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from schemas import ActivityRecord, DirectoryChange, ErrorRecord
from schemas.codecs import decoder, encode
from schemas.control import AppStatus, ProvisionRequest, Restart
from services.devstack.broker import Broker
from services.devstack.scim_target import start_scim_target
from services.runtime.kafka import plain_producer, read_latest
from tests.conftest import APP
from tests.support.admin import AdminStack, admin_stack, audit_records

pytestmark = pytest.mark.integration

ROUTES = [("GET", "/apps"), ("GET", "/apps/app"), ("POST", "/apps/app/start"), ("POST", "/apps/app/stop"),
          ("POST", "/apps/app/restart"), ("POST", "/apps/app/provision"),
          ("POST", "/apps/app/test-connection"), ("POST", "/apps/app/allow-deletes"),
          ("GET", "/activity"), ("GET", "/errors")]


@pytest.fixture(scope="module")
def stack(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AdminStack]:
    folder = tmp_path_factory.mktemp("admin")
    with start_scim_target() as target:
        (folder / "wrong-token").write_text("not-the-token")
        broken = {**APP, "name": "broken", "target": {"base_url": target.base_url,
                                                      "token": f"file:{folder / 'wrong-token'}"}}
        with admin_stack(broker.bootstrap, folder, [APP, broken], AdminStack, scim_url=target.base_url,
                         scim_token=target.token) as stack:
            yield stack


def test_every_route_needs_a_valid_token(stack: AdminStack) -> None:
    url = stack.admin.url
    for method, path in ROUTES:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Bearer"},
                        {"Authorization": f"Basic {stack.admin.token}"}):
            r = httpx.request(method, url + path, headers=headers, timeout=10)
            assert r.status_code == 401, (method, path, headers, r.text)
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
            assert stack.admin.token not in r.text
    assert httpx.get(f"{url}/healthz", timeout=10).json() == {"ok": True}
    assert "python_info" in httpx.get(f"{url}/metrics", timeout=10).text
    refused = [a for a in audit_records(stack.bootstrap, stack.topics) if a.by == "<unauthenticated>"]
    # Sampled, one record per 10 s window with the count since the last one.
    assert 1 <= len(refused) <= 3, [a.action for a in refused]
    assert all(a.outcome == "rejected" and a.remote == "127.0.0.1" for a in refused)
    assert refused[0].detail["refused_since_last_record"] == 1
    assert {a.action for a in refused} <= {r.rsplit("/", 1)[-1] for _, r in ROUTES}


def test_status_lists_the_configured_apps(stack: AdminStack) -> None:
    apps = stack.admin.http.get("/apps").json()
    assert [a["app"] for a in apps] == ["app", "broken"]
    assert apps[0]["managed_users"] == 0 and apps[0]["mode"] == "automatic"
    one = stack.admin.http.get("/apps/app").json()
    assert one["app"] == "app" and one["status"] in ("on", "off")
    missing = stack.admin.http.get("/apps/nope")
    assert missing.status_code == 404 and "no application named 'nope'" in missing.json()["error"]


def test_control_actions_reach_the_control_topic_and_the_audit_trail(stack: AdminStack) -> None:
    http = stack.admin.http
    assert http.post("/apps/app/stop").json()["outcome"] == "accepted"
    assert http.get("/apps/app").json()["status"] == "off"
    assert http.get("/apps/broken").json()["status"] == "on"
    assert http.post("/apps/app/start").status_code == 200
    restart = http.post("/apps/app/restart", json={"reset_links": True}).json()
    assert restart["reset_links"] is True
    assert http.post("/apps/app/allow-deletes").status_code == 200
    assert http.post("/apps/app/restart", json={"reset_links": "yes"}).status_code == 400
    assert http.post("/apps/ghost/stop").status_code == 404

    control = {k.decode(): decoder("control").decode(v)
               for k, v in read_latest(stack.bootstrap, stack.topics.control).items()}
    status = control["app/status"]
    assert isinstance(status, AppStatus) and status.status == "on" and status.by == "ops"
    again = control["app/restart"]
    assert isinstance(again, Restart) and again.reset_links and again.request_id == restart["request_id"]
    assert "ghost/status" not in control
    trail = [a for a in audit_records(stack.bootstrap, stack.topics) if a.by == "ops"]
    actions = [(a.action, a.app, a.outcome) for a in trail]
    for expected in [("stop", "app", "accepted"), ("start", "app", "accepted"),
                     ("restart", "app", "accepted"), ("allow-deletes", "app", "accepted"),
                     ("stop", "ghost", "rejected")]:
        assert expected in actions
    assert all(a.remote == "127.0.0.1" for a in trail)
    assert next(a for a in trail if a.action == "restart").detail["reset_links"] is True


def test_test_connection_reports_success_and_the_exact_failure(stack: AdminStack) -> None:
    ok = stack.admin.http.post("/apps/app/test-connection").json()
    assert ok["ok"] is True and ok["attribute"] == "userName"
    bad = stack.admin.http.post("/apps/broken/test-connection").json()
    assert bad["ok"] is False
    assert "test connection failed" in bad["message"] and "401" in bad["message"]
    assert "not-the-token" not in bad["message"]
    trail = audit_records(stack.bootstrap, stack.topics)
    outcomes = {(a.app, a.outcome) for a in trail if a.action == "test-connection"}
    assert outcomes >= {("app", "succeeded"), ("broken", "failed")}


def test_provision_without_an_answer_is_a_clear_timeout(stack: AdminStack) -> None:
    http = stack.admin.http
    assert http.post("/apps/app/provision", json={"type": "user"}).status_code == 400
    assert http.post("/apps/app/provision", content=b"{not json").status_code == 400
    r = http.post("/apps/app/provision", json={"id": "u00042", "timeout": 1})
    assert r.status_code == 504
    body = r.json()
    assert "no outcome within 1 s: waiting for ingest" in body["error"]
    assert body["trace"]["outcome"] == "timeout" and body["trace"]["steps"][0]["name"] == "import"
    request = decoder("control").decode(read_latest(stack.bootstrap, stack.topics.control)[b"app/provision"])
    assert isinstance(request, ProvisionRequest)
    assert (request.object_id, request.object_type, request.by) == ("u00042", "user", "ops")
    assert request.request_id == body["trace"]["request_id"]


def test_recent_activity_and_errors_are_filtered(stack: AdminStack) -> None:
    now = datetime.now(UTC)
    producer = plain_producer(stack.bootstrap)
    for i, (app, status) in enumerate([("app", "success"), ("app", "failure"), ("broken", "failure"),
                                       ("app", "failure")]):
        record = ActivityRecord(id=f"a{i}", at=now + timedelta(milliseconds=i), app=app,
                                object_type="user", action="create",
                                status=status, source="hr", source_id=f"u{i}")  # type: ignore[arg-type]
        producer.send(stack.topics.activity, key=f"{app}/u{i}".encode(), value=encode(record))
    error = ErrorRecord(id="e1", at=now, service="writer", error_code="RequestRejected", reason="bad",
                        recommended_action="fix it", app="broken")
    producer.send(stack.topics.errors, key=b"broken/u9", value=encode(error))
    producer.flush()
    producer.close()
    http = stack.admin.http
    failures = http.get("/activity", params={"app": "app", "status": "failure"}).json()
    assert [r["id"] for r in failures] == ["a1", "a3"]
    assert [r["id"] for r in http.get("/activity", params={"limit": "2"}).json()] == ["a2", "a3"]
    assert [r["id"] for r in http.get("/errors", params={"app": "broken"}).json()] == ["e1"]
    assert http.get("/errors", params={"app": "app"}).json() == []
    assert http.get("/activity", params={"limit": "x"}).status_code == 400


def test_the_token_never_reaches_the_log(stack: AdminStack) -> None:
    stack.admin.http.get("/apps")
    log = (stack.dir / "logs" / "admin.log").read_text()
    assert "admin API listening" in log and '"by": "ops"' in log
    assert stack.admin.token not in log
    assert "not-the-token" not in log


def test_evaluate_maps_one_source_object_to_the_resource_that_would_be_sent(stack: AdminStack) -> None:
    attributes = {"userPrincipalName": "eve@corp", "id": "u-eve", "displayName": 'Ève "E" <O\'Neil>',
                  "givenName": "Ève", "surname": "O'Neil"}
    change = DirectoryChange(source="hr", object_type="user", object_id="u-eve", operation="upsert",
                             attributes=attributes, memberships=["g-all"], change_id="c-eve",
                             observed_at=datetime.now(UTC))
    producer = plain_producer(stack.bootstrap)
    producer.send(stack.topics.changes, key=b"u-eve", value=encode(change)).get(timeout=30)
    producer.close()
    http = stack.admin.http

    live = http.post("/apps/app/config/evaluate", json={"id": "u-eve"})
    assert live.status_code == 200, live.text
    found = live.json()
    assert (found["operation"], found["object_type"], found["found"]) == ("upsert", "user", True)
    assert found["resource"] == {
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "eve@corp",
        "externalId": "u-eve", "displayName": 'Ève "E" <O\'Neil>',
        "name": {"givenName": "Ève", "familyName": "O'Neil"}, "title": "Staff", "active": True}
    assert found["matching"] == [{"attribute": "userName", "value": "eve@corp", "precedence": 1}]

    edited = copy.deepcopy(http.get("/apps/app/config").json()["definition"])
    edited["mappings"]["user"]["attributes"][5] = {"target": "title", "type": "expression",
                                                   "expression": 'Join(" ", [givenName], [surname])'}
    proposed = http.post("/apps/app/config/evaluate", json={"id": "u-eve", "definition": edited}).json()
    assert proposed["resource"]["title"] == "Ève O'Neil"
    edited["mappings"]["user"]["scoping_filters"] = [
        {"clauses": [{"attribute": "department", "operator": "EQUALS", "value": "Sales"}]}]
    out = http.post("/apps/app/config/evaluate", json={"id": "u-eve", "definition": edited}).json()
    assert out["operation"] == "deprovision" and "resource" not in out
    assert "department EQUALS" in out["reason"]

    assert http.post("/apps/app/config/evaluate", json={"id": "u-nobody"}).json() == {
        "object_id": "u-nobody", "found": False}
    assert http.post("/apps/app/config/evaluate", json={}).status_code == 400
    edited["mappings"]["user"]["scoping_filters"][0]["clauses"][0]["operator"] = "EQUALZ"
    bad = http.post("/apps/app/config/evaluate", json={"id": "u-eve", "definition": edited})
    assert bad.status_code == 400 and "scoping_filters" in bad.text
    assert http.post("/apps/ghost/config/evaluate", json={"id": "u-eve"}).status_code == 404
