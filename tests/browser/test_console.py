"""The web console in headless Chromium against a running stack: the three workers, the admin
service, a real broker and a real scim2-server target. What an administrator does, in order:
log in, find the app, test the connection (and see the exact failure once the target's token
changed), turn provisioning off and on, provision one user on demand and read its steps, and
find a failed object in the error report and open its record; add a scoping filter (version
2 holds it, the users outside it are disabled) and read the full resource one user would
get in the Test panel."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait

from services.devstack.scim_target import ScimTarget, start_scim_target
from tests.conftest import APP, Pipeline, user
from tests.support.admin import start_admin

pytestmark = pytest.mark.e2e

Factory = Callable[..., Pipeline]
EVIL = "<script>alert(1)</script>"
DOCS = Path(__file__).resolve().parents[2] / "docs"


def _wait(browser: webdriver.Chrome, what: str, check: Callable[[webdriver.Chrome], object],
          timeout: float = 60) -> None:
    # htmx swaps parts of the page while a check reads them: a stale element is "not yet".
    wait = WebDriverWait(browser, timeout, poll_frequency=0.2,
                         ignored_exceptions=(StaleElementReferenceException,))
    wait.until(check, message=f"waiting for {what}")


def _text(browser: webdriver.Chrome, css: str) -> str:
    # htmx may swap the element between finding it and reading it: read the new one then.
    for _ in range(10):
        found = browser.find_elements(By.CSS_SELECTOR, css)
        try:
            return found[0].text if found else ""
        except StaleElementReferenceException:
            time.sleep(0.1)
    return ""


def _shot(browser: webdriver.Chrome, folder: Path, name: str) -> None:
    """A screenshot under the test's folder (and in docs/ with SCIMFLOW_SCREENSHOTS=docs)."""
    browser.save_screenshot(str(folder / name))
    if os.environ.get("SCIMFLOW_SCREENSHOTS") == "docs":
        browser.save_screenshot(str(DOCS / name))


def _button(browser: webdriver.Chrome, css: str) -> WebElement:
    return browser.find_element(By.CSS_SELECTOR, css)


def test_an_administrator_works_through_the_console(
        pipeline_factory: Factory, browser: webdriver.Chrome, scim_target: ScimTarget,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    shots = tmp_path_factory.mktemp("screenshots")
    bad = user(99, displayName={"not": "a string"})
    users = [user(i) for i in range(5)] + [user(5, displayName=EVIL, surname="O'Brien"), bad]
    p = pipeline_factory(users, start=False)
    # The source reads only at start: a later user arrives through provision on demand alone.
    config = yaml.safe_load(p.sup.config.read_text())
    config["sources"][0] |= {"poll_interval": 3600, "full_scan_interval": 3600}
    p.sup.config.write_text(yaml.safe_dump(config, sort_keys=False))
    p.sup.start()
    admin = start_admin(p.sup, p.dir)
    p.wait_for("6 users in the target", lambda: p.scim.count() == 6)
    p.wait_for("the rejected user's error", lambda: any(e.source_id == bad["id"] for e in p.errors()))
    console = f"{admin.url}/console"

    # Log in: any page asks for the token first, then comes back.
    browser.get(f"{console}/apps/app")
    _wait(browser, "the login form", lambda b: b.find_elements(By.ID, "token"))
    browser.find_element(By.ID, "token").send_keys(admin.token)
    _button(browser, "form[action='/console/login'] button").click()
    _wait(browser, "the app pane", lambda b: b.current_url == f"{console}/apps/app")
    assert "Signed in as ops" in browser.page_source.replace("<strong>", "").replace("</strong>", "")

    # Applications: the app with its status and managed users.
    browser.get(f"{console}/")
    row = browser.find_element(By.CSS_SELECTOR, "#apps tbody tr")
    cells = [c.text for c in row.find_elements(By.TAG_NAME, "td")]
    assert cells[0] == "app" and cells[1] == "automatic" and cells[2].startswith("on")
    assert cells[3] == "6", cells
    _shot(browser, shots, "console-apps.png")
    row.find_element(By.LINK_TEXT, "app").click()

    # The provisioning pane: credentials as a reference, Test Connection OK.
    _wait(browser, "the pane", lambda b: "Provisioning" in b.find_element(By.TAG_NAME, "h1").text)
    assert "env:TEST_SCIM_TOKEN" in browser.page_source and scim_target.token not in browser.page_source
    _button(browser, "#test-connection").click()
    _wait(browser, "the test result", lambda b: "Test connection succeeded" in _text(b, "#test-result"))
    assert "reachable" in _text(browser, "#test-result")
    _shot(browser, shots, "console-app.png")

    # Provisioning Status Off, then On.
    browser.find_element(By.CSS_SELECTOR, "input[name=status][value=off]").click()
    _button(browser, "#save-status").click()
    _wait(browser, "provisioning off", lambda b: "Provisioning turned off" in b.page_source)
    assert _text(browser, "#sync .badge") == "off"
    assert "set by ops" in _text(browser, "#sync")
    browser.find_element(By.CSS_SELECTOR, "input[name=status][value=on]").click()
    _button(browser, "#save-status").click()
    _wait(browser, "provisioning on", lambda b: "Provisioning turned on" in b.page_source)
    assert _text(browser, "#sync .badge") == "on"

    # Provision on demand: one user, and its steps.
    p.write_directory([*users, user(7)])
    browser.get(f"{console}/apps/app/provision")
    browser.find_element(By.ID, "object_id").send_keys("u00007")
    _button(browser, "#provision").click()
    _wait(browser, "the trace", lambda b: b.find_elements(By.ID, "trace"), timeout=90)
    trace = _text(browser, "#trace")
    assert "User u00007: success" in trace and "action create" in trace, trace
    steps = [li.find_element(By.CLASS_NAME, "name").text
             for li in browser.find_elements(By.CSS_SELECTOR, "#trace ol.steps li")]
    assert steps[:2] == ["Import", "Scope"] and "Export" in steps, steps
    assert "user7@example.com" in p.scim.by_username()

    # The activity report; the record of a user named like a script shows the name as text.
    browser.get(f"{console}/activity?app=app")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#records tbody tr")) >= 8
    _shot(browser, shots, "console-activity.png")
    browser.get(f"{console}/activity?app=app&object=u00005")
    browser.find_element(By.CSS_SELECTOR, "#records tbody a").click()
    _wait(browser, "the record", lambda b: b.find_elements(By.ID, "modified"))
    assert EVIL in _text(browser, "#modified"), "the name is shown, as text (and no script ran)"

    # The error report: the rejected user by id, and its record.
    browser.get(f"{console}/errors")
    browser.find_element(By.ID, "f-object").send_keys(bad["id"])
    _button(browser, "#filter").click()
    _wait(browser, "the filtered report", lambda b: "object=u00099" in b.current_url)
    links = browser.find_elements(By.CSS_SELECTOR, "#records tbody a")
    assert links, _text(browser, "main")
    links[0].click()
    _wait(browser, "the record", lambda b: "/console/errors/" in b.current_url)
    record = _text(browser, "main")
    for label in ("Error code", "Reason", "Recommended action"):
        assert label in record, record
    assert bad["id"] in record

    # The target's token changes: Test Connection says exactly what the API says.
    port = scim_target.port
    scim_target.stop()
    with start_scim_target(token="rotated-token", port=port):
        browser.get(f"{console}/apps/app")
        _button(browser, "#test-connection").click()
        _wait(browser, "the failure", lambda b: "Test connection failed" in _text(b, "#test-result"))
        shown = _text(browser, "#test-result .message")
        expected = admin.http.post("/apps/app/test-connection").json()["message"]
        assert shown == expected and "401" in shown, shown


def _log_in(browser: webdriver.Chrome, console: str, token: str) -> None:
    browser.delete_all_cookies()
    browser.get(f"{console}/login")
    browser.find_element(By.ID, "token").send_keys(token)
    _button(browser, "form[action='/console/login'] button").click()
    _wait(browser, "the applications", lambda b: b.current_url == f"{console}/")


def test_held_removals_are_released_with_allow_deletes(
        pipeline_factory: Factory, browser: webdriver.Chrome) -> None:
    users = [user(i) for i in range(6)]
    p = pipeline_factory(users, app={**APP, "deletion_threshold": 2})
    admin = start_admin(p.sup, p.dir)
    p.wait_for("6 users", lambda: p.scim.count() == 6)
    p.write_directory(users, [{"id": "g-all", "displayName": "All", "members": ["u00000", "u00001"]}])
    p.wait_for("4 held removals", lambda: sum(a.action == "stagedDelete" for a in p.activity()) >= 4)
    console = f"{admin.url}/console"
    _log_in(browser, console, admin.token)

    browser.get(f"{console}/apps/app")
    _wait(browser, "the held removals", lambda b: "4 disables or deletes are held" in b.page_source)
    assert "threshold (2)" in _text(browser, "main")
    assert sum(u["active"] for u in p.scim.users()) == 6
    _button(browser, "#allow-deletes").click()
    _wait(browser, "allowed", lambda b: "The held removals are allowed" in b.page_source)
    p.wait_for("4 disabled", lambda: sum(not u["active"] for u in p.scim.users()) == 4)
    assert {u["userName"] for u in p.scim.users() if u["active"]} == {"user0@example.com",
                                                                      "user1@example.com"}


def test_an_attribute_mapping_edit_reaches_every_user_in_the_target(
        pipeline_factory: Factory, browser: webdriver.Chrome) -> None:
    users = [user(i) for i in range(5)]
    p = pipeline_factory(users)
    admin = start_admin(p.sup, p.dir)
    p.wait_for("5 users titled Staff", lambda: [u.get("title") for u in p.scim.users()] == ["Staff"] * 5)
    console = f"{admin.url}/console"
    _log_in(browser, console, admin.token)
    # The workers and the admin service each apply the config file at start: one version.
    p.wait_for("version 1 on the config topic", lambda: admin.http.get("/apps/app/config").status_code == 200)
    assert admin.http.get("/apps/app/config").json()["version"] == 1

    browser.get(f"{console}/apps/app/mappings")
    browser.find_element(By.CSS_SELECTOR, "a[aria-label='Edit the mapping of title']").click()
    _wait(browser, "the edit form", lambda b: b.find_elements(By.ID, "m-value"))
    value = browser.find_element(By.ID, "m-value")
    assert value.get_attribute("value") == "Staff"
    value.clear()
    value.send_keys("Manager")
    _button(browser, "#preview").click()
    _wait(browser, "the diff", lambda b: b.find_elements(By.ID, "diff"))
    assert _text(browser, "#diff ul.diff") == (
        '~ $.mappings.user.attributes[target=title].value: "Staff" -> "Manager"')
    assert admin.http.get("/apps/app/config").json()["version"] == 1  # a preview writes nothing
    browser.find_element(By.ID, "m-comment").send_keys("titles for the pilot")
    _button(browser, "#save").click()
    _wait(browser, "the answer to the save", lambda b: "saved=" in b.current_url or _text(b, ".alert.bad"))
    assert "Saved as version 2" in _text(browser, "main"), _text(browser, "main")

    # Live reload: the workers apply version 2 without a restart and PATCH every user.
    p.wait_for("every user titled Manager in the target",
               lambda: [u.get("title") for u in p.scim.users()] == ["Manager"] * 5, timeout=60)
    updates = [a for a in p.activity() if a.action == "update"]
    assert {a.source_id for a in updates} == {u["id"] for u in users}
    live = admin.http.get("/apps/app/config").json()
    assert live["version"] == 2 and live["author"] == "ops" and live["comment"] == "titles for the pilot"


def test_a_scoping_filter_and_the_test_panels_resource_preview(
        pipeline_factory: Factory, browser: webdriver.Chrome,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    shots = tmp_path_factory.mktemp("screenshots")
    users = [user(i) for i in range(4)] + [user(i, department="Sales") for i in (4, 5)]
    p = pipeline_factory(users)
    admin = start_admin(p.sup, p.dir)
    p.wait_for("6 users in the target", lambda: p.scim.count() == 6)
    p.wait_for("version 1 on the config topic", lambda: admin.http.get("/apps/app/config").status_code == 200)
    console = f"{admin.url}/console"
    _log_in(browser, console, admin.token)

    # Add a scoping filter through the form: the diff first, then version 2 holds it.
    browser.get(f"{console}/apps/app/mappings")
    browser.find_element(By.ID, "scoping-user").click()
    _wait(browser, "the scoping form", lambda b: b.find_elements(By.ID, "f0-c0-attribute"))
    browser.find_element(By.ID, "f0-name").send_keys("sales")
    browser.find_element(By.ID, "f0-c0-attribute").send_keys("department")
    Select(browser.find_element(By.ID, "f0-c0-operator")).select_by_visible_text("EQUALS")
    browser.find_element(By.ID, "f0-c0-value").send_keys("Sales")
    _button(browser, "#preview").click()
    _wait(browser, "the diff", lambda b: b.find_elements(By.ID, "diff") or _text(b, "#problems"))
    assert _text(browser, "#diff ul.diff") == ('+ $.mappings.user.scoping_filters: [{"clauses":[{"attribute":'
                                               '"department","operator":"EQUALS","value":"Sales"}],'
                                               '"name":"sales"}]'), _text(browser, "main")
    assert admin.http.get("/apps/app/config").json()["version"] == 1  # a preview writes nothing
    _shot(browser, shots, "console-scoping.png")
    browser.find_element(By.ID, "m-comment").send_keys("sales only")
    _button(browser, "#save").click()
    _wait(browser, "the answer to the save", lambda b: "saved=" in b.current_url or _text(b, ".alert.bad"))
    assert "Saved as version 2" in _text(browser, "main"), _text(browser, "main")
    assert "sales: department EQUALS Sales" in _text(browser, "#filters-user")
    live = admin.http.get("/apps/app/config").json()
    assert live["version"] == 2 and live["comment"] == "sales only"
    assert live["definition"]["mappings"]["user"]["scoping_filters"] == [
        {"name": "sales", "clauses": [{"attribute": "department", "operator": "EQUALS", "value": "Sales"}]}]
    # The workers apply it live: the users outside the filter are disabled in the target.
    p.wait_for("only the Sales users active", lambda: sorted(
        u["userName"] for u in p.scim.users() if u["active"]) == ["user4@example.com", "user5@example.com"])
    browser.get(f"{console}/apps/app")
    assert "version 2 on the config topic, by ops" in _text(browser, "#config-version")

    # The Test panel: the full resource one object would get under an edited title mapping.
    browser.get(f"{console}/apps/app/mappings")
    browser.find_element(By.CSS_SELECTOR, "a[aria-label='Edit the mapping of title']").click()
    _wait(browser, "the edit form", lambda b: b.find_elements(By.ID, "m-expression"))
    Select(browser.find_element(By.ID, "m-type")).select_by_visible_text("expression")
    browser.find_element(By.ID, "m-value").clear()
    browser.find_element(By.ID, "m-expression").send_keys('Join(" ", [givenName], [department])')
    _button(browser, "#preview").click()
    _wait(browser, "the diff", lambda b: b.find_elements(By.ID, "test-id") or _text(b, "#problems"))
    browser.find_element(By.ID, "test-id").send_keys("u00004")
    _button(browser, "#test-object").click()
    _wait(browser, "the resource", lambda b: b.find_elements(By.ID, "object-resource"), timeout=60)
    resource = json.loads(_text(browser, "#object-resource"))
    assert resource == {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                        "userName": "user4@example.com", "externalId": "u00004", "displayName": "User 4",
                        "name": {"givenName": "Given4", "familyName": "Sur4"}, "title": "Given4 Sales",
                        "active": True}, resource
    _shot(browser, shots, "console-test-resource.png")
    assert admin.http.get("/apps/app/config").json()["version"] == 2  # testing writes nothing
