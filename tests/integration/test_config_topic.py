"""Applications as data on a real broker: ``scimflow apply|get|history|rollback`` (the real CLI)
and ``/apps/{app}/config`` on the real admin service, checked on the topics themselves:
``control.config`` (versions, keys, no secret values) and ``control.audit`` (one record per
change, with author and diff)."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from schemas.codecs import decoder
from schemas.config import ConfigVersion
from services.devstack.broker import Broker
from services.runtime.config_store import ConfigStore, VersionConflictError
from services.runtime.kafka import read_records
from tests.conftest import APP
from tests.support.admin import SOURCE, AdminStack, admin_stack, audit_records, json_lines

pytestmark = pytest.mark.integration

SECRET = f"secret-{uuid.uuid4().hex}"  # the value behind env:TEST_SCIM_TOKEN
class Stack(AdminStack):
    """The admin stack, with this module's reads of its topics."""

    def cli(self, *args: str, check: bool = True) -> Any:
        return self.admin.cli(self.sup, *args, api=False, check=check)

    def records(self) -> list[tuple[str, bytes]]:
        """Every (key, raw value) on control.config, in order."""
        return [(r.key.decode(), r.value) for r in read_records(self.bootstrap, self.topics.config)]

    def versions(self, name: str) -> list[ConfigVersion]:
        dec = decoder("control.config")
        return [v for _, raw in self.records() if (v := dec.decode(raw)).name == name]

    def write_config(self, name: str, *apps: dict[str, Any]) -> Path:
        path = self.dir / name
        path.write_text(yaml.safe_dump({"applications": list(apps), "sources": [SOURCE]}, sort_keys=False))
        return path


def _app(name: str, **changes: Any) -> dict[str, Any]:
    return copy.deepcopy({**APP, "name": name, **changes})


@pytest.fixture(scope="module")
def stack(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with admin_stack(broker.bootstrap, tmp_path_factory.mktemp("config"), [APP], Stack,
                     scim_url="http://127.0.0.1:9/v2", scim_token=SECRET) as stack:
        yield stack


def test_the_config_topic_is_compacted_with_one_partition(stack: Stack) -> None:
    spec = next(s for s in stack.topics.specs() if s.name == stack.topics.config)
    assert spec.name == f"{stack.topics.prefix}control.config" and spec.compacted and spec.partitions == 1


def test_apply_writes_one_version_per_app_and_source_then_nothing_when_unchanged(stack: Stack) -> None:
    file = stack.write_config("apply.yaml", _app("ap-a"), _app("ap-b"))
    before = len(stack.records())
    shown = stack.cli("apply", "-f", str(file), "--by", "alice", "--comment", "first").stdout
    assert "app ap-a: create, version 0 -> version 1" in shown
    assert '  + $.target: {"base_url":"${TEST_SCIM_URL}","token":"env:TEST_SCIM_TOKEN"}' in shown
    written = stack.records()[before:]
    keys = {k.rsplit("/", 1)[0] for k, _ in written}
    assert keys == {"app/ap-a/1", "app/ap-b/1", "source/hr/1"}  # + a write id: one key per version
    a = stack.versions("ap-a")
    assert [(v.version, v.author, v.comment, v.removed) for v in a] == [(1, "alice", "first", False)]
    assert a[0].definition == _app("ap-a")  # as the YAML gives it: ${...} and env: kept

    again = stack.cli("apply", "-f", str(file), "--by", "alice").stdout
    assert "app ap-a: unchanged (version 1)" in again and "app ap-b: unchanged (version 1)" in again
    assert len(stack.records()) == before + len(written)


def test_get_yaml_round_trips_into_apply_and_dry_run_writes_nothing(stack: Stack) -> None:
    stack.cli("apply", "-f", str(stack.write_config("rt.yaml", _app("rt"))), "--by", "alice")
    exported = stack.cli("get", "app", "rt", "-o", "yaml").stdout
    (stack.dir / "exported.yaml").write_text(exported)
    count = len(stack.records())
    assert "unchanged" in stack.cli("apply", "-f", str(stack.dir / "exported.yaml")).stdout
    assert len(stack.records()) == count

    changed = yaml.safe_load(exported)
    changed["applications"][0]["status"] = "off"
    (stack.dir / "changed.yaml").write_text(yaml.safe_dump(changed))
    dry = stack.cli("apply", "-f", str(stack.dir / "changed.yaml"), "--dry-run").stdout
    assert "app rt: update, version 1 -> not written (--dry-run)" in dry and '+ $.status: "off"' in dry
    assert len(stack.records()) == count
    listed = json_lines(stack.cli("get", "apps", "--json").stdout)
    assert {"name": "rt", "version": 1, "author": "alice"}.items() <= next(
        a for a in listed if a["name"] == "rt").items()


def test_an_invalid_file_is_refused_whole_with_file_and_line(stack: Stack) -> None:
    bad = _app("bad-file")
    bad["mappings"]["user"]["attributes"][0]["matching"] = "first"
    file = stack.write_config("bad.yaml", _app("good-next-to-bad"), bad)
    count = len(stack.records())
    done = stack.cli("apply", "-f", str(file), check=False)
    assert done.returncode == 2
    assert f"{file}:" in done.stderr and "applications[1].mappings.user.attributes[0].matching" in done.stderr
    assert len(stack.records()) == count


def test_history_and_rollback(stack: Stack) -> None:
    first = _app("hist")
    stack.cli("apply", "-f", str(stack.write_config("h1.yaml", first)), "--by", "alice", "--comment", "one")
    second = _app("hist")
    second["mappings"]["user"]["attributes"][2]["source"] = "mail"
    stack.cli("apply", "-f", str(stack.write_config("h2.yaml", second)), "--by", "bob", "--comment", "two")
    history = json_lines(stack.cli("history", "hist", "--json").stdout)
    assert [(h["version"], h["author"], h["comment"]) for h in history] == [
        (1, "alice", "one"), (2, "bob", "two")]
    assert history[1]["diff"] == [
        '~ $.mappings.user.attributes[target=displayName].source: "displayName" -> "mail"']

    rolled = json_lines(stack.cli("rollback", "hist", "--to", "1", "--by", "carol", "--json").stdout)
    assert rolled["changes"][0]["version"] == 3
    versions = stack.versions("hist")
    assert versions[2].definition == versions[0].definition == first
    assert (versions[2].rollback_of, versions[2].author) == (1, "carol")
    assert stack.cli("rollback", "hist", "--to", "9", check=False).returncode == 2


def test_api_get_put_with_if_match_and_a_stale_write_is_409(stack: Stack) -> None:
    http = stack.admin.http
    created = http.put("/apps/api-app/config", headers={"If-None-Match": "*"},
                       json={"definition": _app("api-app"), "comment": "via api"})
    assert created.status_code == 201 and created.headers["ETag"] == '"1"'
    got = http.get("/apps/api-app/config")
    assert got.json()["definition"] == _app("api-app") and got.headers["ETag"] == '"1"'

    edited = got.json()["definition"] | {"status": "off"}
    ok = http.put("/apps/api-app/config", headers={"If-Match": '"1"'}, json={"definition": edited})
    assert ok.status_code == 200 and ok.json()["version"] == 2 and ok.json()["diff"] == ['+ $.status: "off"']
    stale = http.put("/apps/api-app/config", headers={"If-Match": '"1"'},
                     json={"definition": edited | {"scope": "all"}})
    assert stale.status_code == 409
    assert stale.json()["current_version"] == 2 and stale.headers["ETag"] == '"2"'
    assert http.get("/apps/api-app/config").json()["definition"] == edited  # nothing lost, nothing added
    assert [v.version for v in stack.versions("api-app")] == [1, 2]

    history = http.get("/apps/api-app/config/history").json()
    assert [(h["version"], h["author"], h["comment"]) for h in history] == [
        (1, "ops", "via api"), (2, "ops", "")]
    assert http.get("/apps/api-app/config", params={"version": "1"}).json()["definition"] == _app("api-app")
    assert http.get("/apps/nobody/config").status_code == 404
    removed = http.delete("/apps/api-app/config", headers={"If-Match": '"2"'})
    assert removed.status_code == 200 and removed.json()["version"] == 3
    assert http.get("/apps/api-app/config").status_code == 404
    assert stack.versions("api-app")[-1].removed


def test_an_invalid_body_is_400_with_every_problem_and_nothing_is_written(stack: Stack) -> None:
    bad = _app("api-bad")
    bad["target"] = {"base_url": 42, "token": "raw-token-value"}
    bad["mappings"]["user"]["attributes"][1]["typo"] = True
    bad["deletion_threshold"] = "many"
    r = stack.admin.http.put("/apps/api-bad/config", json={"definition": bad})
    assert r.status_code == 400
    problems = {p["path"]: p["message"] for p in r.json()["problems"]}
    assert set(problems) == {"$.target.base_url", "$.target.token", "$.mappings.user.attributes[1].typo",
                             "$.deletion_threshold"}
    assert "raw-token-value" not in r.text
    assert stack.versions("api-bad") == []
    assert stack.admin.http.put("/apps/api-bad/config", json={"nothing": 1}).status_code == 400
    rejected = [a for a in audit_records(stack.bootstrap, stack.topics) if a.app == "api-bad"]
    assert [(a.action, a.outcome, a.by) for a in rejected] == [("config", "rejected", "ops")]


def test_every_change_has_one_audit_record_with_author_and_diff(stack: Stack) -> None:
    stack.cli("apply", "-f", str(stack.write_config("au.yaml", _app("audited"))), "--by", "dora")
    stack.cli("apply", "-f", str(stack.write_config("au.yaml", _app("audited", scope="all"))), "--by", "erin")
    stack.cli("apply", "-f", str(stack.write_config("au.yaml", _app("audited", scope="all"))), "--by", "erin")
    trail = [a for a in audit_records(stack.bootstrap, stack.topics)
             if a.app == "audited" and a.outcome == "succeeded"]
    assert [(a.action, a.by, a.detail["version"]) for a in trail] == [
        ("apply", "dora", 1), ("apply", "erin", 2)]
    assert trail[1].detail["diff"] == ['+ $.scope: "all"']
    versions = stack.versions("audited")
    assert len(versions) == len(trail)


def test_no_secret_value_ever_reaches_the_config_topic(stack: Stack) -> None:
    stack.cli("apply", "-f", str(stack.write_config("sec.yaml", _app("sec"))), "--by", "alice")
    stack.admin.http.put("/apps/sec2/config", json={"definition": _app("sec2")})
    raw = b"".join(value for _, value in stack.records())
    assert b"env:TEST_SCIM_TOKEN" in raw and b"${TEST_SCIM_URL}" in raw
    assert SECRET.encode() not in raw and b"127.0.0.1:9" not in raw


def test_two_writers_racing_for_one_version_one_wins_the_other_gets_a_conflict(stack: Stack) -> None:
    """Both read version 1 and write a version 2: the reader rule (first record of a version
    wins) and the read-back give the late writer a conflict, and nothing of the winner is lost."""
    stack.cli("apply", "-f", str(stack.write_config("race.yaml", _app("race"))), "--by", "alice")
    ours, rival = ConfigStore(stack.bootstrap, stack.topics), ConfigStore(stack.bootstrap, stack.topics)
    send = ours._send

    def rival_first(record: ConfigVersion) -> int:  # provoke the race: the rival writes in between
        rival.write("app", "race", _app("race", status="off"), expected=1, author="rival")
        return send(record)

    ours._send = rival_first  # type: ignore[method-assign]
    try:
        with pytest.raises(VersionConflictError) as caught:
            ours.write("app", "race", _app("race", scope="all"), expected=1, author="late")
    finally:
        ours.close()
        rival.close()
    assert caught.value.current == 2
    history = ConfigStore(stack.bootstrap, stack.topics).history("race")
    assert [(v.version, v.author) for v in history] == [(1, "alice"), (2, "rival")]
    assert history[1].definition == _app("race", status="off")
    assert len(stack.versions("race")) == 3  # the loser's record stays in the log, ignored


def test_config_routes_need_the_token_and_a_refused_change_is_audited(stack: Stack) -> None:
    url = stack.admin.url
    for method, path in (("GET", "/apps/app/config"), ("PUT", "/apps/locked/config"),
                         ("DELETE", "/apps/locked/config"), ("GET", "/apps/app/config/history")):
        r = httpx.request(method, url + path, headers={"Authorization": "Bearer wrong"}, timeout=10,
                          json={"definition": _app("locked")} if method == "PUT" else None)
        assert r.status_code == 401, (method, path)
    assert stack.versions("locked") == []
    refused = [a for a in audit_records(stack.bootstrap, stack.topics)
               if a.by == "<unauthenticated>" and a.detail.get("path") == "/apps/locked/config"]
    # Sampled (the second refusal falls in the first one's window); "locked" is no app of
    # the config, so the record does not name it as one.
    assert [(a.action, a.app, a.outcome) for a in refused] == [("config", None, "rejected")]
    assert refused[0].detail["method"] == "PUT"
    bad = stack.admin.http.put("/apps/x/config", headers={"If-Match": "soon"}, json={"definition": {}})
    assert bad.status_code == 400 and "If-Match" in bad.json()["error"]


def test_the_api_previews_a_definition_per_object_and_writes_nothing(stack: Stack) -> None:
    from datetime import UTC, datetime

    from schemas import DirectoryChange
    from schemas.codecs import encode
    from services.runtime.kafka import plain_producer

    attributes = {"userPrincipalName": "prev@corp", "id": "u-prev", "displayName": "Prev",
                  "givenName": "P", "surname": "V", "mail": "prev@mail"}
    user = DirectoryChange(source="hr", object_type="user", object_id="u-prev", operation="upsert",
                           attributes=attributes, memberships=["g-all"], change_id="c1",
                           observed_at=datetime.now(UTC))
    producer = plain_producer(stack.bootstrap)
    producer.send(stack.topics.changes, key=b"u-prev", value=encode(user)).get(timeout=30)
    producer.close()
    proposed = _app("app")
    proposed["mappings"]["user"]["attributes"][2] = {"target": "displayName", "source": "mail"}
    before = (len(stack.records()), len(read_records(stack.bootstrap, stack.topics.audit)))

    answer = stack.admin.http.post("/apps/app/config/preview",
                                   json={"definition": proposed, "ids": ["u-prev"]})
    assert answer.status_code == 200, answer.text
    [app] = answer.json()["apps"]
    [sample] = app["samples"]
    assert sample["object_id"] == "u-prev"
    changes = [(c["path"], c["old"], c["new"]) for c in sample["changes"]]
    assert changes == [("displayName", "Prev", "prev@mail")]
    assert (len(stack.records()), len(read_records(stack.bootstrap, stack.topics.audit))) == before

    broken = copy.deepcopy(proposed)
    broken["mappings"]["user"]["attributes"][2] = {"target": "displayName", "type": "expression",
                                                   "expression": "Join(\",\""}
    refused = stack.admin.http.post("/apps/app/config/preview", json={"definition": broken})
    assert refused.status_code == 400
    assert "$.mappings.user.attributes[2].expression" in refused.text
