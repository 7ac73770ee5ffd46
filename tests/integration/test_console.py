"""The web console over plain HTTP, on the real admin service and a real broker: no session,
no page; no CSRF token, no action; source data is rendered as text; an attribute mapping
edited through the forms becomes the app's next config version, diff shown first."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest

from schemas import ActivityRecord, DirectoryChange, ErrorRecord
from schemas.codecs import encode
from schemas.messages import ModifiedProperty, Step
from services.devstack.broker import Broker
from services.devstack.scim_target import start_scim_target
from services.runtime.kafka import plain_producer
from tests.conftest import APP
from tests.support.admin import AdminStack, admin_stack, audit_records

pytestmark = pytest.mark.integration

EVIL = "<script>alert(1)</script>"
PAGES = ["/console", "/console/", "/console/apps/app", "/console/apps/app/sync",
         "/console/apps/app/provision", "/console/apps/app/mappings", "/console/apps/app/mappings/user/0",
         "/console/apps/app/scoping/user", "/console/activity",
         "/console/errors", "/console/activity/a1", "/console/errors/e1", "/console/apps/ghost"]
FORMS = ["/console/apps/app/test-connection", "/console/apps/app/status", "/console/apps/app/restart",
         "/console/apps/app/allow-deletes", "/console/apps/app/provision", "/console/logout",
         "/console/apps/app/mappings/user/0/preview", "/console/apps/app/mappings/save",
         "/console/apps/app/assignments", "/console/apps/app/assignments/remove",
         "/console/apps/app/object-mappings/user/preview", "/console/apps/app/mappings/test",
         "/console/apps/app/scoping/user/preview"]


@pytest.fixture(scope="module")
def stack(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AdminStack]:
    with start_scim_target() as target, admin_stack(
            broker.bootstrap, tmp_path_factory.mktemp("console"), [APP], AdminStack,
            scim_url=target.base_url, scim_token=target.token) as stack:
        yield stack


def _login(stack: AdminStack) -> httpx.Client:
    """A browser-like client that logged in through the form."""
    browser = httpx.Client(base_url=stack.admin.url, timeout=60)
    form = browser.get("/console/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert csrf is not None
    done = browser.post("/console/login", data={"csrf": csrf[1], "token": stack.admin.token,
                                                "next": "/console/"})
    assert done.status_code == 303 and done.headers["location"] == "/console/"
    cookie = done.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/console" in cookie
    return browser


def _csrf(page: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]{64})"', page)
    assert found is not None, "the page has no form with a CSRF token"
    return found[1]


def test_no_session_no_page_and_no_action(stack: AdminStack) -> None:
    url = stack.admin.url
    for path in PAGES:
        r = httpx.get(url + path, timeout=30)
        assert r.status_code == 303 and r.headers["location"].startswith("/console/login?next="), path
        htmx = httpx.get(url + path, headers={"HX-Request": "true"}, timeout=30)
        assert htmx.status_code == 401 and htmx.headers["HX-Redirect"] == "/console/login", path
    for cookie in ("", "wrong", stack.admin.token + "x"):
        for path in FORMS:
            r = httpx.post(url + path, data={"status": "off", "confirm": "yes", "object_id": "u1"},
                           cookies={"scimflow_console": cookie} if cookie else None, timeout=30)
            assert r.status_code == 401 and 'action="/console/login"' in r.text, path
            assert stack.admin.token not in r.text
    # The console's pages are not an API: a bearer header alone is no session either.
    bearer = httpx.get(url + "/console/", headers={"Authorization": f"Bearer {stack.admin.token}"},
                       timeout=30)
    assert bearer.status_code == 303
    refused = [a for a in audit_records(stack.bootstrap, stack.topics) if a.by == "<unauthenticated>"]
    # Sampled: one record per 10 s window, with the number refused since the last one.
    assert refused and {a.action for a in refused} <= {f"console:{p.rsplit('/', 1)[-1]}" for p in FORMS}
    assert all(a.outcome == "rejected" for a in refused)


def test_login_needs_a_real_token_and_its_own_csrf_token(stack: AdminStack) -> None:
    browser = httpx.Client(base_url=stack.admin.url, timeout=30)
    csrf = re.search(r'name="csrf" value="([^"]+)"', browser.get("/console/login").text)
    assert csrf is not None
    wrong = browser.post("/console/login", data={"csrf": csrf[1], "token": "not-a-token"})
    assert wrong.status_code == 401 and "not one of the admin tokens" in wrong.text
    forged = httpx.post(stack.admin.url + "/console/login", data={"csrf": "x", "token": stack.admin.token},
                        timeout=30)
    assert forged.status_code == 403 and forged.cookies.get("scimflow_console") is None
    away = browser.post("/console/login", data={"csrf": csrf[1], "token": stack.admin.token,
                                                "next": "https://evil.example/"})
    assert away.status_code == 303 and away.headers["location"] == "/console/"
    trail = audit_records(stack.bootstrap, stack.topics)
    assert {(a.by, a.outcome) for a in trail if a.action == "console-login"} >= {
        ("ops", "succeeded"), ("<unauthenticated>", "rejected")}


def test_a_post_without_the_csrf_token_is_refused(stack: AdminStack) -> None:
    browser = _login(stack)
    page = browser.get("/console/apps/app")
    assert page.status_code == 200 and "Test Connection" in page.text
    token = _csrf(page.text)
    for data in ({"status": "off"}, {"status": "off", "csrf": "0" * 64}, {"status": "off", "csrf": ""}):
        r = browser.post("/console/apps/app/status", data=data)
        assert r.status_code == 403 and "CSRF" in r.text
    assert "off" not in [a.detail.get("status") for a in audit_records(stack.bootstrap, stack.topics)
                         if a.action == "stop"]
    done = browser.post("/console/apps/app/status", data={"status": "off", "csrf": token})
    assert done.status_code == 303 and done.headers["location"] == "/console/apps/app?done=off"
    trail = audit_records(stack.bootstrap, stack.topics)
    assert ("ops", "stop", "app", "accepted") in [(a.by, a.action, a.app, a.outcome) for a in trail]
    assert any(a.action == "console:status" and a.outcome == "rejected" and a.by == "ops" for a in trail)
    browser.post("/console/apps/app/status", data={"status": "on", "csrf": token})


def test_source_data_is_rendered_as_text(stack: AdminStack) -> None:
    now = datetime.now(UTC)
    record = ActivityRecord(
        id="a-evil", at=now, app="app", object_type="user", action="update", status="failure",
        source="hr", source_id="u-evil", source_identity=EVIL, reason=f'"quoted" & {EVIL} — ünïcødé',
        error_code="RequestRejected",
        modified_properties=[ModifiedProperty(name="displayName", old_value="O'Brien", new_value=EVIL),
                             ModifiedProperty(name="password", old_value=None, new_value="[redacted]")],
        steps=[Step(name="export", status="failure", detail=f"PATCH {EVIL}")])
    error = ErrorRecord(id="e-evil", at=now, service="writer", error_code="RequestRejected",
                        reason=EVIL, recommended_action="Fix <b>it</b>", app="app", source_id="u-evil",
                        payload=f'{{"displayName": "{EVIL}"}}')
    producer = plain_producer(stack.bootstrap)
    producer.send(stack.topics.activity, key=b"app/u-evil", value=encode(record))
    producer.send(stack.topics.errors, key=b"app/u-evil", value=encode(error))
    producer.flush()
    producer.close()
    browser = _login(stack)
    pages = [browser.get("/console/activity", params={"object": "script"}),
             browser.get("/console/activity/a-evil"),
             browser.get("/console/errors", params={"object": "u-evil"}),
             browser.get("/console/errors/e-evil")]
    for page in pages:
        assert page.status_code == 200, page.text
        assert "<script>alert(1)</script>" not in page.text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
        assert "<b>it</b>" not in page.text
    assert "ünïcødé" in pages[1].text and "&#34;quoted&#34; &amp;" in pages[1].text
    assert "[redacted] (redacted)" in pages[1].text
    assert "Fix &lt;b&gt;it&lt;/b&gt;" in pages[3].text
    assert pages[0].headers["Content-Security-Policy"].startswith("default-src 'self'")


def test_an_attribute_mapping_edit_is_previewed_then_written_as_a_version(stack: AdminStack) -> None:
    browser = _login(stack)
    listing = browser.get("/console/apps/app/mappings")
    assert listing.status_code == 200 and "<code>userName</code>" in listing.text
    # The admin service applied its config file to the topic at start: that is version 1.
    assert "Version 1 of the definition" in listing.text
    form = browser.get("/console/apps/app/mappings/user/5")  # title: constant "Staff"
    assert 'value="Staff"' in form.text and 'value="title"' in form.text
    token = _csrf(form.text)
    fields = {"csrf": token, "type": "constant", "value": "Engineer", "target": "title", "apply": "always"}

    invalid = browser.post("/console/apps/app/mappings/user/5/preview", data={**fields, "matching": "x"})
    assert invalid.status_code == 400 and "nothing was written" in invalid.text
    assert "$.mappings.user.attributes[5].matching" in invalid.text

    preview = browser.post("/console/apps/app/mappings/user/5/preview", data=fields)
    assert preview.status_code == 200, preview.text
    diff = [html.unescape(d) for d in re.findall(r"<li><code>(.*?)</code></li>", preview.text)]
    assert diff == ['~ $.mappings.user.attributes[target=title].value: "Staff" -> "Engineer"'], diff
    proposed = re.search(r'name="definition" value="([^"]*)"', preview.text)
    assert proposed is not None
    assert stack.admin.http.get("/apps/app/config").json()["version"] == 1  # a preview writes nothing

    definition = html.unescape(proposed[1])
    saved = browser.post("/console/apps/app/mappings/save",
                         data={"csrf": token, "version": "1", "definition": definition, "comment": "title"})
    assert saved.status_code == 303 and saved.headers["location"] == "/console/apps/app/mappings?saved=2"
    live = stack.admin.http.get("/apps/app/config").json()
    assert live["version"] == 2 and live["author"] == "ops" and live["comment"] == "title"
    assert live["definition"]["mappings"]["user"]["attributes"][5]["value"] == "Engineer"
    again = browser.post("/console/apps/app/mappings/save",
                         data={"csrf": token, "version": "1", "definition": definition})
    assert again.status_code == 409 and "Nothing was written" in again.text
    assert "Version 2 of the definition" in browser.get("/console/apps/app/mappings").text
    trail = audit_records(stack.bootstrap, stack.topics)
    assert ("ops", "config", "app", "succeeded") in [(a.by, a.action, a.app, a.outcome) for a in trail]


def test_an_assignment_is_added_and_removed_as_config_versions(stack: AdminStack) -> None:
    browser = _login(stack)
    start = stack.admin.http.get("/apps/app/assignments").json()
    version = start["version"]
    pane = browser.get("/console/apps/app")
    assert pane.status_code == 200 and 'id="assigned"' in pane.text
    assert "<code>g-all</code>" in pane.text and f'name="version" value="{version}"' in pane.text
    token = _csrf(pane.text)

    added = browser.post("/console/apps/app/assignments",
                         data={"csrf": token, "version": str(version), "type": "user", "id": "u-42",
                               "comment": "pilot user"})
    assert added.status_code == 303, added.text
    assert added.headers["location"] == f"/console/apps/app?done=assigned&version={version + 1}#assignments"
    live = stack.admin.http.get("/apps/app/config").json()
    assert live["version"] == version + 1 and live["author"] == "ops" and live["comment"] == "pilot user"
    assert live["definition"]["assignments"] == {"groups": ["g-all"], "users": ["u-42"]}
    shown = browser.get(added.headers["location"])
    assert f"version {version + 1} on the config topic" in shown.text and "<code>u-42</code>" in shown.text

    # A form from the page before the change is refused: nothing is written.
    stale = browser.post("/console/apps/app/assignments/remove",
                         data={"csrf": token, "version": str(version), "type": "group", "id": "g-all"})
    assert stale.status_code == 409 and "Nothing was written" in stale.text
    assert stack.admin.http.get("/apps/app/config").json()["version"] == version + 1

    removed = browser.post("/console/apps/app/assignments/remove",
                           data={"csrf": token, "version": str(version + 1), "type": "user", "id": "u-42"})
    assert removed.status_code == 303 and f"version={version + 2}" in removed.headers["location"]
    after = stack.admin.http.get("/apps/app/assignments").json()
    assert after["version"] == version + 2 and after["users"] == [] and after["groups"] == ["g-all"]
    again = browser.post("/console/apps/app/assignments/remove",
                         data={"csrf": token, "version": str(version + 2), "type": "user", "id": "u-42"})
    assert again.status_code == 303 and "done=unchanged" in again.headers["location"]
    assert stack.admin.http.get("/apps/app/config").json()["version"] == version + 2
    bad = browser.post("/console/apps/app/assignments",
                       data={"csrf": token, "version": str(version + 2), "type": "robot", "id": "x"})
    assert bad.status_code == 400

    trail = [(a.by, a.action, a.detail.get("id"), a.outcome)
             for a in audit_records(stack.bootstrap, stack.topics) if a.action in ("assign", "unassign")]
    assert ("ops", "assign", "u-42", "succeeded") in trail
    assert ("ops", "unassign", "u-42", "succeeded") in trail
    assert ("ops", "unassign", "g-all", "rejected") in trail  # the version conflict


def test_object_mapping_switches_are_previewed_then_written_as_a_version(stack: AdminStack) -> None:
    browser = _login(stack)
    version = stack.admin.http.get("/apps/app/config").json()["version"]
    listing = browser.get("/console/apps/app/mappings")
    for box in ("enabled-user", "action-user-create", "action-user-update", "action-user-delete"):
        assert re.search(rf'id="{box}" checked>', listing.text), box
    token = _csrf(listing.text)
    every = {"csrf": token, "enabled": "yes", "action_create": "yes", "action_update": "yes",
             "action_delete": "yes"}

    same = browser.post("/console/apps/app/object-mappings/user/preview", data=every)
    assert same.status_code == 200 and "Nothing changes." in same.text and 'id="save"' not in same.text

    no_delete = {k: v for k, v in every.items() if k != "action_delete"}
    preview = browser.post("/console/apps/app/object-mappings/user/preview", data=no_delete)
    assert preview.status_code == 200, preview.text
    diff = [html.unescape(d) for d in re.findall(r"<li><code>(.*?)</code></li>", preview.text)]
    assert len(diff) == 1 and diff[0].startswith("+ $.mappings.user.actions"), diff
    assert 'id="action-user-delete">' in preview.text  # the form shows what is proposed
    assert stack.admin.http.get("/apps/app/config").json()["version"] == version
    proposed = re.search(r'name="definition" value="([^"]*)"', preview.text)
    assert proposed is not None
    definition = html.unescape(proposed[1])
    saved = browser.post("/console/apps/app/mappings/save",
                         data={"csrf": token, "version": str(version), "definition": definition})
    assert saved.status_code == 303 and saved.headers["location"].endswith(f"?saved={version + 1}")
    live = stack.admin.http.get("/apps/app/config").json()
    assert live["version"] == version + 1 and live["comment"] == "mapping edited in the console"
    assert live["definition"]["mappings"]["user"]["actions"] == ["create", "update"]
    assert "target object actions: create, update" in browser.get("/console/apps/app/mappings").text

    off = browser.post("/console/apps/app/object-mappings/user/preview",
                       data={k: v for k, v in no_delete.items() if k != "enabled"})
    assert [html.unescape(d) for d in re.findall(r"<li><code>(.*?)</code></li>", off.text)] == [
        "+ $.mappings.user.enabled: false"]
    assert 'id="enabled-user">' in off.text
    wrong = browser.post("/console/apps/app/object-mappings/group/preview", data=every)
    assert wrong.status_code == 400 and "no group mapping" in wrong.text


def test_a_previewed_edit_is_tested_on_one_source_object(stack: AdminStack) -> None:
    attributes = {"userPrincipalName": "tess@corp", "id": "u-tess", "displayName": "Tess",
                  "givenName": "T", "surname": "S", "mail": "tess@mail"}
    change = DirectoryChange(source="hr", object_type="user", object_id="u-tess", operation="upsert",
                             attributes=attributes, memberships=["g-all"], change_id="c-tess",
                             observed_at=datetime.now(UTC))
    producer = plain_producer(stack.bootstrap)
    producer.send(stack.topics.changes, key=b"u-tess", value=encode(change)).get(timeout=30)
    producer.close()
    browser = _login(stack)
    version = stack.admin.http.get("/apps/app/config").json()["version"]
    form = browser.get("/console/apps/app/mappings/user/2")  # displayName <- displayName
    token = _csrf(form.text)
    preview = browser.post("/console/apps/app/mappings/user/2/preview",
                           data={"csrf": token, "type": "direct", "source": "mail", "target": "displayName"})
    assert preview.status_code == 200 and 'id="test-object"' in preview.text, preview.text
    proposed = re.search(r'name="definition" value="([^"]*)"', preview.text)
    assert proposed is not None
    definition = html.unescape(proposed[1])

    tested = browser.post("/console/apps/app/mappings/test",
                          data={"csrf": token, "definition": definition, "object_id": "u-tess"},
                          headers={"HX-Request": "true"})
    assert tested.status_code == 200, tested.text
    assert tested.text.startswith('<div id="object-test"')  # the fragment htmx swaps in
    rows = re.findall(r'<tr><th scope="row"><code>(.*?)</code></th><td>(.*?)</td><td>(.*?)</td></tr>',
                      tested.text)
    assert rows == [("displayName", "Tess", "tess@mail")], tested.text
    # The full resource under the previewed version, as the mapper evaluates it.
    shown = re.search(r'<pre id="object-resource">(.*?)</pre>', tested.text, re.S)
    assert shown is not None, tested.text
    assert json.loads(html.unescape(shown[1])) == {
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "tess@corp",
        "externalId": "u-tess", "displayName": "tess@mail", "name": {"givenName": "T", "familyName": "S"},
        "title": stack.admin.http.get("/apps/app/config").json()["definition"]["mappings"]["user"][
            "attributes"][5]["value"], "active": True}
    page = browser.post("/console/apps/app/mappings/test",
                        data={"csrf": token, "definition": definition, "object_id": "u-nobody"})
    assert page.status_code == 200 and "<!doctype html>" in page.text
    assert "No change of this object is on the directory topic" in page.text
    no_csrf = browser.post("/console/apps/app/mappings/test",
                           data={"definition": definition, "object_id": "u-tess"})
    assert no_csrf.status_code == 403
    assert stack.admin.http.get("/apps/app/config").json()["version"] == version  # nothing written


def _shown(value: object) -> str:
    """A value as the diff shows it (compact JSON, keys sorted)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _diff(page: str) -> list[str]:
    return [html.unescape(d) for d in re.findall(r"<li><code>(.*?)</code></li>", page)]


def test_scoping_filters_are_validated_previewed_then_written_as_a_version(stack: AdminStack) -> None:
    browser = _login(stack)
    version = stack.admin.http.get("/apps/app/config").json()["version"]
    form = browser.get("/console/apps/app/scoping/user")
    assert form.status_code == 200 and 'id="f0-c0-attribute"' in form.text
    assert 'id="f0-remove"' not in form.text  # no filter yet: only the blank new one
    token = _csrf(form.text)
    wanted = {"csrf": token, "f0-name": "sales or <EU>", "f0-c0-attribute": "department",
              "f0-c0-operator": "EQUALS", "f0-c0-value": "Sales", "f0-c1-attribute": "employeeId",
              "f0-c1-operator": "Greater_Than", "f0-c1-value": "1000"}

    for typed, path, says in ((("f0-c0-operator", "EQUALZ"), "clauses[0]", 'did you mean "EQUALS"'),
                              (("f0-c1-value", "lots"), "clauses[1]", "needs an integer value")):
        bad = browser.post("/console/apps/app/scoping/user/preview", data={**wanted, typed[0]: typed[1]})
        assert bad.status_code == 400 and "nothing was written" in bad.text, bad.text
        problems = html.unescape(re.findall(r'<div class="alert bad"[^>]*>(.*?)</div>', bad.text, re.S)[0])
        assert f"$.mappings.user.scoping_filters[0].{path}" in problems and says in problems, problems
        assert typed[1] in bad.text  # the form keeps what was typed
    assert stack.admin.http.get("/apps/app/config").json()["version"] == version

    preview = browser.post("/console/apps/app/scoping/user/preview", data=wanted)
    assert preview.status_code == 200, preview.text
    added = {"name": "sales or <EU>", "clauses": [
        {"attribute": "department", "operator": "EQUALS", "value": "Sales"},
        {"attribute": "employeeId", "operator": "Greater_Than", "value": "1000"}]}
    assert _diff(preview.text) == ["+ $.mappings.user.scoping_filters: " + _shown([added])], preview.text
    assert "<EU>" not in preview.text  # source text is escaped
    proposed = re.search(r'name="definition" value="([^"]*)"', preview.text)
    assert proposed is not None
    assert stack.admin.http.get("/apps/app/config").json()["version"] == version  # a preview writes nothing
    saved = browser.post("/console/apps/app/mappings/save",
                         data={"csrf": token, "version": str(version), "comment": "sales only",
                               "definition": html.unescape(proposed[1])})
    assert saved.status_code == 303 and saved.headers["location"].endswith(f"?saved={version + 1}")
    live = stack.admin.http.get("/apps/app/config").json()
    assert live["version"] == version + 1 and live["comment"] == "sales only" and live["author"] == "ops"
    assert live["definition"]["mappings"]["user"]["scoping_filters"] == [added]
    listing = browser.get("/console/apps/app/mappings").text
    assert "sales or &lt;EU&gt;: department EQUALS Sales and employeeId Greater_Than 1000" in listing

    # Edit one clause and remove the other; then remove the filter: each a version of its own.
    again = browser.get("/console/apps/app/scoping/user").text
    assert 'value="sales or &lt;EU&gt;"' in again and 'id="f0-c1-remove"' in again
    edit = {"csrf": token, "f0-name": "sales or <EU>", "f0-c0-attribute": "department",
            "f0-c0-operator": "EQUALS", "f0-c0-value": "Marketing", "f0-c1-attribute": "employeeId",
            "f0-c1-operator": "Greater_Than", "f0-c1-value": "1000", "f0-c1-remove": "yes"}
    changed = browser.post("/console/apps/app/scoping/user/preview", data=edit)
    assert _diff(changed.text) == [
        '~ $.mappings.user.scoping_filters[name=sales or <EU>].clauses[0].value: "Sales" -> "Marketing"',
        '- $.mappings.user.scoping_filters[name=sales or <EU>].clauses[1]: '
        + _shown(added["clauses"][1])], changed.text
    removed = browser.post("/console/apps/app/scoping/user/preview", data={**edit, "f0-remove": "yes"})
    assert _diff(removed.text) == ["- $.mappings.user.scoping_filters: " + _shown([added])]
    assert browser.post("/console/apps/app/scoping/robot/preview", data=edit).status_code == 400


def test_the_provisioning_pane_shows_the_live_version_not_the_file(stack: AdminStack) -> None:
    browser = _login(stack)
    live = stack.admin.http.get("/apps/app/config")
    definition = live.json()["definition"] | {"deletion_threshold": 7, "mode": "manual"}
    definition["mappings"]["user"]["actions"] = ["create", "update"]
    put = stack.admin.http.put("/apps/app/config", headers={"If-Match": live.headers["ETag"]},
                               json={"definition": definition, "comment": "pane <check>"})
    assert put.status_code == 200, put.text
    version = put.json()["version"]
    pane = browser.get("/console/apps/app")
    assert pane.status_code == 200
    shown = re.search(r'<p id="config-version">(.*?)</p>', pane.text, re.S)
    assert shown is not None, pane.text
    text = html.unescape(re.sub(r"<[^>]+>", "", shown[1]))
    assert f"version {version} on the config topic, by ops" in text and "(pane <check>)" in text, text
    assert "<strong>Manual</strong>" in pane.text  # the file says automatic
    assert "7 disables and deletes per cycle" in pane.text
    assert "actions create, update." in pane.text
    assert "env:TEST_SCIM_TOKEN" in pane.text  # still a reference, never the value
    back = live.json()["definition"]
    restored = stack.admin.http.put("/apps/app/config", headers={"If-Match": f'"{version}"'},
                                    json={"definition": back, "comment": "back"})
    assert restored.status_code == 200, restored.text
    again = browser.get("/console/apps/app").text
    assert f"version {version + 1}</strong>" in again and "<strong>Automatic</strong>" in again
