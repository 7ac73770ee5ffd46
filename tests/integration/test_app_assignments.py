"""Entra's "Users and groups" as data, and the admin API validating as ``validate`` does, on
a real broker with the real admin service (``scimflow admin``) and the real CLI: each
assignment edit is a new version of the app on ``control.config``, audited on
``control.audit``, with the same ``If-Match``/409 rules as ``PUT /apps/{app}/config``."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from schemas.codecs import decoder
from schemas.config import ConfigVersion
from services.admin.client import ApiClient, ApiError
from services.admin.control import NoSuchAppError
from services.devstack.broker import Broker
from services.runtime.config_store import ConfigStore, DefinitionError
from services.runtime.kafka import read_records
from tests.conftest import APP
from tests.support.admin import AdminStack, admin_stack, audit_records, json_lines

pytestmark = pytest.mark.integration

class Stack(AdminStack):
    """The admin stack, with this module's reads of its topics."""

    def cli(self, *args: str, api: bool, check: bool = True) -> Any:
        return self.admin.cli(self.sup, *args, api=api, check=check)

    def versions(self, name: str) -> list[ConfigVersion]:
        dec = decoder("control.config")
        found = (dec.decode(r.value) for r in read_records(self.bootstrap, self.topics.config))
        return [v for v in found if v.name == name]

    def create(self, name: str) -> None:
        r = self.admin.http.put(f"/apps/{name}/config", headers={"If-None-Match": "*"},
                                json={"definition": _app(name)})
        assert r.status_code == 201, r.text


def _app(name: str) -> dict[str, Any]:
    return copy.deepcopy({**APP, "name": name})


@pytest.fixture(scope="module")
def stack(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with admin_stack(broker.bootstrap, tmp_path_factory.mktemp("assign"), [APP], Stack,
                     scim_url="http://127.0.0.1:9/v2", scim_token="unused") as stack:
        yield stack


# -- validation: the API checks what `validate` checks ---------------------------------------

def test_a_bad_expression_is_400_with_its_path_and_the_expected_form(stack: Stack) -> None:
    bad = _app("bad-expr")
    bad["mappings"]["user"]["attributes"][2] = {"target": "displayName", "type": "expression",
                                                "expression": 'Join(" ", [givenName]'}
    r = stack.admin.http.put("/apps/bad-expr/config", json={"definition": bad})
    assert r.status_code == 400, r.text
    [problem] = r.json()["problems"]
    assert problem["path"] == "$.mappings.user.attributes[2].expression"
    assert 'expected "," or ")"' in problem["message"]
    assert stack.versions("bad-expr") == []


def test_an_unknown_function_and_a_bad_scoping_filter_are_refused_too(stack: Stack) -> None:
    unknown = _app("bad-fn")
    unknown["mappings"]["user"]["attributes"][2] = {"target": "displayName", "type": "expression",
                                                    "expression": "NoSuchFn([givenName])"}
    r = stack.admin.http.put("/apps/bad-fn/config", json={"definition": unknown})
    assert r.status_code == 400
    assert r.json()["problems"][0]["path"] == "$.mappings.user.attributes[2].expression"
    assert "expected one of" in r.json()["problems"][0]["message"]

    regex = _app("bad-filter")
    regex["mappings"]["user"]["scoping_filters"] = [
        {"clauses": [{"attribute": "department", "operator": "REGEX MATCH", "value": "(["}]}]
    r = stack.admin.http.put("/apps/bad-filter/config", json={"definition": regex})
    assert r.status_code == 400
    assert r.json()["problems"][0]["path"] == "$.mappings.user.scoping_filters[0].clauses[0]"
    assert "invalid regular expression" in r.json()["problems"][0]["message"]
    assert stack.versions("bad-fn") == stack.versions("bad-filter") == []


def test_a_bad_target_path_is_refused(stack: Stack) -> None:
    bad = _app("bad-path")
    bad["mappings"]["user"]["attributes"][2]["target"] = "name..givenName"
    r = stack.admin.http.put("/apps/bad-path/config", json={"definition": bad})
    assert r.status_code == 400
    assert r.json()["problems"][0]["path"] == "$.mappings.user.attributes[2].target"


# -- assignments over the API ----------------------------------------------------------------

def test_add_and_remove_one_entry_each_a_new_version_audited_with_its_diff(stack: Stack) -> None:
    http = stack.admin.http
    stack.create("as-a")
    got = http.get("/apps/as-a/assignments")
    assert got.status_code == 200 and got.headers["ETag"] == '"1"'
    assert {k: got.json()[k] for k in ("users", "groups", "version")} == {
        "users": [], "groups": ["g-all"], "version": 1}

    added = http.post("/apps/as-a/assignments", headers={"If-Match": '"1"'},
                      json={"type": "user", "id": "u-7", "comment": "new hire"})
    assert added.status_code == 201, added.text
    assert added.headers["ETag"] == '"2"' and added.json()["users"] == ["u-7"]
    assert added.json()["diff"] == ['+ $.assignments.users: ["u-7"]']
    removed = http.delete("/apps/as-a/assignments/group/g-all", params={"comment": "too broad"})
    assert removed.status_code == 200 and removed.json()["version"] == 3
    assert removed.json()["groups"] == []

    versions = stack.versions("as-a")
    assert [(v.version, v.author, v.comment) for v in versions] == [
        (1, "ops", ""), (2, "ops", "new hire"), (3, "ops", "too broad")]
    assert versions[-1].definition is not None
    assert versions[-1].definition["assignments"] == {"users": ["u-7"], "groups": []}
    assert versions[-1].definition["mappings"] == _app("as-a")["mappings"]  # nothing else moved
    trail = [(a.action, a.by, a.outcome, a.detail["type"], a.detail["id"], a.detail["version"],
              a.detail["diff"]) for a in audit_records(stack.bootstrap, stack.topics) if a.app == "as-a"
             and a.action in ("assign", "unassign")]
    assert trail == [("assign", "ops", "succeeded", "user", "u-7", 2, ['+ $.assignments.users: ["u-7"]']),
                     ("unassign", "ops", "succeeded", "group", "g-all", 3,
                      ['- $.assignments.groups[0]: "g-all"'])]


def test_an_entry_already_so_is_a_no_op_that_writes_and_audits_nothing(stack: Stack) -> None:
    http = stack.admin.http
    stack.create("as-noop")
    again = http.post("/apps/as-noop/assignments", json={"type": "group", "id": "g-all"})
    assert again.status_code == 200 and again.json()["changed"] is False
    assert again.json()["version"] == 1 and again.headers["ETag"] == '"1"'
    missing = http.delete("/apps/as-noop/assignments/user/nobody")
    assert missing.status_code == 200 and missing.json()["changed"] is False
    assert [v.version for v in stack.versions("as-noop")] == [1]
    assert [a for a in audit_records(stack.bootstrap, stack.topics)
            if a.app == "as-noop" and a.action in ("assign", "unassign")] == []


def test_a_stale_if_match_is_409_and_nothing_is_lost(stack: Stack) -> None:
    http = stack.admin.http
    stack.create("as-race")
    first = http.post("/apps/as-race/assignments", headers={"If-Match": '"1"'},
                      json={"type": "user", "id": "alice"})
    assert first.status_code == 201
    stale = http.post("/apps/as-race/assignments", headers={"If-Match": '"1"'},
                      json={"type": "user", "id": "bob"})
    assert stale.status_code == 409 and stale.json()["current_version"] == 2
    assert stale.headers["ETag"] == '"2"'
    stale_delete = http.delete("/apps/as-race/assignments/user/alice", headers={"If-Match": '"1"'})
    assert stale_delete.status_code == 409
    assert http.get("/apps/as-race/assignments").json()["users"] == ["alice"]
    rejected = [a for a in audit_records(stack.bootstrap, stack.topics)
                if a.app == "as-race" and a.outcome == "rejected"]
    assert [(a.action, a.detail["error"]) for a in rejected] == [
        ("assign", "version conflict"), ("unassign", "version conflict")]


def test_bad_requests_unknown_apps_and_missing_tokens(stack: Stack) -> None:
    http = stack.admin.http
    stack.create("as-bad")
    for body in ({"type": "device", "id": "x"}, {"type": "user"}, {"type": "user", "id": ""},
                 {"type": "user", "id": 7}):
        assert http.post("/apps/as-bad/assignments", json=body).status_code == 400, body
    assert http.delete("/apps/as-bad/assignments/device/x").status_code == 400
    assert http.get("/apps/nobody/assignments").status_code == 404
    assert http.post("/apps/nobody/assignments", json={"type": "user", "id": "x"}).status_code == 404
    r = httpx.post(f"{stack.admin.url}/apps/as-bad/assignments", json={"type": "user", "id": "x"},
                   headers={"Authorization": "Bearer wrong"}, timeout=10)
    assert r.status_code == 401
    assert [v.version for v in stack.versions("as-bad")] == [1]
    # Refusals are audited by sample (one per 10 s window); "as-bad" is no app of the config
    # file, so the record does not name it as an app: the path is in the detail.
    refused = [a for a in audit_records(stack.bootstrap, stack.topics)
               if a.by == "<unauthenticated>" and a.detail.get("path") == "/apps/as-bad/assignments"]
    assert [(a.action, a.app, a.outcome) for a in refused] in ([], [("assignments", None, "rejected")])


def test_an_id_with_slashes_round_trips_through_the_path(stack: Stack) -> None:
    """A DN is a fine source id; the client quotes it into one path segment."""
    stack.create("as-dn")
    dn = "cn=Ops/Team,ou=groups"
    stack.cli("assign", "as-dn", "--group", dn, api=True)
    assert dn in stack.admin.http.get("/apps/as-dn/assignments").json()["groups"]
    stack.cli("unassign", "as-dn", "--group", dn, api=True)
    assert dn not in stack.admin.http.get("/apps/as-dn/assignments").json()["groups"]


# -- the CLI, through the API and directly on Kafka ------------------------------------------

@pytest.mark.parametrize("api", [True, False], ids=["api", "kafka"])
def test_cli_assign_unassign_and_get_assignments(stack: Stack, api: bool) -> None:
    name = f"as-cli-{'api' if api else 'kafka'}"
    stack.create(name)
    shown = stack.cli("assign", name, "--user", "u-1", "-m", "pilot", "--by", "carol", api=api).stdout
    assert f"app {name}: version 1 -> 2" in shown and '+ $.assignments.users: ["u-1"]' in shown
    assert "users: u-1" in shown
    listed = json_lines(stack.cli("get", "assignments", name, "--json", api=api).stdout)
    assert (listed["users"], listed["groups"], listed["version"]) == (["u-1"], ["g-all"], 2)
    assert "unchanged (version 2)" in stack.cli("assign", name, "--user", "u-1", api=api).stdout
    stack.cli("unassign", name, "--group", "g-all", api=api)
    last = stack.versions(name)[-1]
    assert last.version == 3 and last.definition is not None
    assert last.definition["assignments"] == {"groups": [], "users": ["u-1"]}
    assert [v.author for v in stack.versions(name)][1] == ("ops" if api else "carol")

    stale = stack.cli("assign", name, "--user", "u-2", "--if-version", "1", api=api, check=False)
    assert stale.returncode == 2 and "version 3" in stale.stderr
    both = stack.cli("assign", name, "--user", "a", "--group", "b", api=api, check=False)
    assert both.returncode == 2 and "exactly one of --user ID or --group ID" in both.stderr
    assert stack.cli("get", "assignments", "nobody", api=api, check=False).returncode == 2


# -- the HTTP client the CLI uses ------------------------------------------------------------

def test_the_api_client_config_methods_against_the_real_service(stack: Stack) -> None:
    client = ApiClient(stack.admin.url, stack.admin.token)
    try:
        created = client.config_put("cl-app", _app("cl-app"), expected=0, comment="via client")
        assert (created["action"], created["version"]) == ("create", 1)
        assert client.config_get("cl-app")["definition"] == _app("cl-app")
        with pytest.raises(ApiError, match="version 1"):
            client.config_put("cl-app", _app("cl-app") | {"scope": "all"}, expected=0)
        client.config_put("cl-app", _app("cl-app") | {"scope": "all"}, expected=1)
        assert [h["version"] for h in client.config_history("cl-app")] == [1, 2]
        assert client.config_get("cl-app", 1)["definition"] == _app("cl-app")
        bad = _app("cl-app")
        bad["mappings"]["user"]["attributes"][2]["expression"] = "Join("
        bad["mappings"]["user"]["attributes"][2]["type"] = "expression"
        with pytest.raises(DefinitionError) as caught:
            client.config_put("cl-app", bad, expected=None)
        assert [p.path for p in caught.value.problems] == ["$.mappings.user.attributes[2].expression"]
        assert client.config_remove("cl-app", expected=2, comment="done")["version"] == 3
        with pytest.raises(NoSuchAppError):
            client.config_get("cl-app")
    finally:
        client.close()


def test_an_edit_whose_result_does_not_load_here_is_refused_and_audited(stack: Stack) -> None:
    """A live version the admin cannot load (here a ${VAR} its environment lacks, written by
    another tool) is not made worse: the edit is 400 with the problem, nothing written."""
    store = ConfigStore(stack.bootstrap, stack.topics)
    try:
        store.write("app", "as-env", _app("as-env") | {"target": {"base_url": "${NOT_SET_HERE}",
                                                                    "token": "env:TEST_SCIM_TOKEN"}},
                    expected=0, author="elsewhere")
    finally:
        store.close()
    r = stack.admin.http.post("/apps/as-env/assignments", json={"type": "user", "id": "u-1"})
    assert r.status_code == 400 and "NOT_SET_HERE" in r.text
    assert [v.version for v in stack.versions("as-env")] == [1]
    [refused] = [a for a in audit_records(stack.bootstrap, stack.topics) if a.app == "as-env"]
    assert (refused.action, refused.outcome, refused.detail["id"]) == ("assign", "rejected", "u-1")
