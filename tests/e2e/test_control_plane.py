"""The control plane against a running stack: the three workers, the admin service and the
``scimflow`` CLI (through the admin API and directly on Kafka), on a real broker and real
scim2-server targets."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.devstack.scim_target import start_scim_target
from tests.conftest import APP, Pipeline, Scim, user
from tests.support.admin import Admin, audit_records, start_admin

pytestmark = pytest.mark.e2e

Factory = Callable[..., Pipeline]
ROOT = Path(__file__).resolve().parents[2]


def _implemented(package: str, name: str) -> bool:
    """Whether a service handles a control message yet (other engineers are adding them)."""
    return any(name in f.read_text() for f in (ROOT / "services" / package).glob("*.py"))


needs_provision = pytest.mark.skipif(not _implemented("ingest", "ProvisionRequest"),
                                     reason="needs ingest ProvisionRequest")
needs_restart = pytest.mark.skipif(
    not (_implemented("ingest", "Restart") and _implemented("writer", "Restart")),
    reason="needs ingest and writer Restart")


def _quiet_source(p: Pipeline) -> None:
    """Make the file source read only at start (and on request): later edits of the directory
    file are seen only through provision on demand."""
    config = yaml.safe_load(p.sup.config.read_text())
    config["sources"][0] |= {"poll_interval": 3600, "full_scan_interval": 3600}
    p.sup.config.write_text(yaml.safe_dump(config, sort_keys=False))


def _details(admin: Admin) -> dict[str, dict[str, Any]]:
    return {r["app"]: r for r in admin.http.get("/apps").json()}


def test_every_cli_command_against_a_running_stack(pipeline_factory: Factory) -> None:
    p = pipeline_factory([user(i) for i in range(10)])
    admin = start_admin(p.sup, p.dir)
    p.wait_for("initial sync", lambda: p.scim.count() == 10)
    p.wait_for("10 creates", lambda: sum(a.action == "create" for a in p.activity()) == 10)
    config = str(p.sup.config)

    status = json.loads(admin.cli(p.sup, "status", "--json").stdout)
    assert [(r["app"], r["managed_users"], r["status"]) for r in status] == [("app", 10, "on")]
    human = admin.cli(p.sup, "status", "app").stdout
    assert "sync details: app" in human and "10 (0 disabled)" in human

    assert json.loads(admin.cli(p.sup, "stop", "app", "--json").stdout)["outcome"] == "accepted"
    assert json.loads(admin.cli(p.sup, "status", "app", "--json").stdout)[0]["status"] == "off"
    assert "provisioning is on" in admin.cli(p.sup, "start", "app").stdout
    assert "OK" in admin.cli(p.sup, "test-connection", "app").stdout
    assert "allowed the removals held for app" in admin.cli(p.sup, "allow-deletes", "app").stdout
    restart = json.loads(admin.cli(p.sup, "restart", "app", "--reset-links", "--no-watch", "--json").stdout)
    assert restart["reset_links"] is True
    lines = admin.cli(p.sup, "tail", "activity", "--app", "app", "--status", "success", "--no-follow",
                      "--json").stdout.splitlines()
    assert sum(json.loads(line)["action"] == "create" for line in lines) == 10
    assert admin.cli(p.sup, "tail", "errors", "--no-follow").returncode == 0
    refused = admin.cli(p.sup, "status", "--api", admin.url, check=False, api=False)
    assert refused.returncode == 2 and "needs a token" in refused.stderr
    unknown = admin.cli(p.sup, "stop", "ghost", check=False)
    assert unknown.returncode == 2 and "no application named 'ghost'" in unknown.stderr

    # The same commands directly on Kafka (no --api), as `make run` prints them.
    admin.cli(p.sup, "stop", "app", "--by", "alice", "--config", config, api=False, process=True)
    direct = json.loads(admin.cli(p.sup, "status", "app", "--config", config, "--json", api=False).stdout)
    assert (direct[0]["status"], direct[0]["status_by"]) == ("off", "alice")
    admin.cli(p.sup, "start", "app", "--by", "alice", api=False)

    trail = [(a.by, a.action, a.app, a.outcome) for a in audit_records(p.bootstrap, p.topics)]
    for expected in [("ops", "stop", "app", "accepted"), ("ops", "start", "app", "accepted"),
                     ("ops", "test-connection", "app", "succeeded"),
                     ("ops", "allow-deletes", "app", "accepted"),
                     ("ops", "restart", "app", "accepted"), ("ops", "stop", "ghost", "rejected"),
                     ("alice", "stop", "app", "accepted"), ("alice", "start", "app", "accepted")]:
        assert expected in trail
    assert admin.token not in (p.dir / "logs" / "admin.log").read_text()


def test_off_pauses_one_app_while_the_other_runs_and_sync_details_match(
        pipeline_factory: Factory, tmp_path_factory: pytest.TempPathFactory) -> None:
    secrets = tmp_path_factory.mktemp("secrets")
    with start_scim_target() as second:
        (secrets / "token").write_text(second.token)
        other = {**APP, "name": "other", "target": {"base_url": second.base_url,
                                                    "token": f"file:{secrets / 'token'}"}}
        users = [user(i) for i in range(50)]
        p = pipeline_factory(users, more_apps=[other])
        admin = start_admin(p.sup, p.dir)
        scim2 = Scim(second)
        p.wait_for("both apps synced", lambda: p.scim.count() == 50 and scim2.count() == 50)
        p.wait_for("100 creates", lambda: sum(a.action == "create" for a in p.activity()) == 100)

        details = _details(admin)
        for name, target in (("app", p.scim), ("other", scim2)):
            r = details[name]
            assert r["managed_users"] == target.count() == 50
            assert r["managed_groups"] == 0 and r["escrowed"] == 0 and r["disabled_users"] == 0
            assert r["outcomes"]["create/success"] == 50
            assert r["first_cycle_start"] is not None and r["last_cycle_end"] is not None
            assert r["last_cycle_seconds"] >= 0 and r["cycle_running"] is False

        assert admin.http.post("/apps/app/stop").status_code == 200
        p.wait_for("the writer to pause app",
                   lambda: "provisioning paused" in (p.dir / "logs" / "writer.log").read_text())
        assert (_details(admin)["app"]["status"], _details(admin)["other"]["status"]) == ("off", "on")
        before = p.scim.users()
        p.write_directory([{**u, "givenName": f"Changed{i}"} for i, u in enumerate(users)])
        p.wait_for("the other app to apply all 50 changes", lambda: sum(
            u["name"]["givenName"].startswith("Changed") for u in scim2.users()) == 50)
        assert p.scim.users() == before, "an app that is off was written to"

        resumed = datetime.now(UTC)
        assert admin.http.post("/apps/app/start").status_code == 200
        p.wait_for("app to catch up", lambda: sum(
            u["name"]["givenName"].startswith("Changed") for u in p.scim.users()) == 50, timeout=30)
        caught_up = max(a.at for a in p.activity() if a.app == "app" and a.action == "update")
        assert (caught_up - resumed).total_seconds() < 20
        assert p.scim.count() == 50
        assert _details(admin)["app"]["managed_users"] == 50


@needs_provision
def test_provision_on_demand_returns_every_step_and_the_target_shows_the_user(
        pipeline_factory: Factory) -> None:
    users = [user(i) for i in range(3)]
    p = pipeline_factory(users, start=False)
    _quiet_source(p)
    p.sup.start()
    admin = start_admin(p.sup, p.dir)
    p.wait_for("initial sync", lambda: p.scim.count() == 3)
    p.write_directory([*users, user(7)])  # ingest does not look again by itself

    r = admin.http.post("/apps/app/provision", json={"id": "u00007", "type": "user", "timeout": 15})
    assert r.status_code == 200, r.text
    trace = r.json()
    assert (trace["outcome"], trace["action"]) == ("success", "create")
    assert [s["name"] for s in trace["steps"]][:2] == ["import", "scope"]
    assert {"match", "action", "export"} <= {s["name"] for s in trace["steps"]}
    assert trace["source_attributes"]["userPrincipalName"] == "user7@example.com"
    assert p.scim.by_username()["user7@example.com"]["id"] == trace["target_id"]
    assert 0 < trace["elapsed_ms"] < 15_000

    missing = admin.http.post("/apps/app/provision", json={"id": "nobody", "timeout": 15})
    assert missing.status_code == 404 and "ObjectNotFound" in missing.json()["error"]
    # Already in sync: nothing to write, yet the trace completes with its outcome.
    cli = admin.cli(p.sup, "provision", "app", "u00001", "--timeout", "10", "--json", check=False)
    assert cli.returncode == 0, cli.stdout + cli.stderr
    in_sync = json.loads(cli.stdout.splitlines()[0])
    assert (in_sync["action"], in_sync["outcome"]) == ("skip", "skipped")
    assert [s["name"] for s in in_sync["steps"]][:2] == ["import", "scope"]
    assert "already in sync" in in_sync["steps"][-1]["detail"]


@needs_restart
@pytest.mark.parametrize("reset_links", [False, True])
def test_restart_runs_the_initial_cycle_again_without_duplicates(
        pipeline_factory: Factory, reset_links: bool) -> None:
    users = [user(i) for i in range(10)]
    p = pipeline_factory(users)
    admin = start_admin(p.sup, p.dir)
    p.wait_for("initial sync", lambda: p.scim.count() == 10)
    first = _details(admin)["app"]["last_cycle_start"]
    asked = datetime.now(UTC)
    assert admin.http.post("/apps/app/restart", json={"reset_links": reset_links}).status_code == 200
    p.wait_for("a new complete cycle", lambda: (
        (r := _details(admin)["app"])["last_cycle_start"] != first and not r["cycle_running"]
        and r["last_cycle_end"] is not None and r["last_cycle_end"] >= r["last_cycle_start"]), timeout=60)
    if reset_links:
        p.wait_for("10 adoptions", lambda: sum(a.action == "adopt" and a.at > asked
                                               for a in p.activity()) == 10, timeout=60)
    names = Counter(u["userName"] for u in p.scim.users())
    assert len(names) == 10 and max(names.values()) == 1, "duplicates in the target"
    assert _details(admin)["app"]["managed_users"] == 10
    assert not any(a.action == "create" and a.at > asked for a in p.activity())


GROUP_APP: dict[str, Any] = {
    **APP, "assignments": {"groups": ["g-all", "g-late"]},
    "mappings": {**APP["mappings"],  # type: ignore[dict-item]
                 "group": {"attributes": [{"target": "displayName", "source": "displayName", "matching": 1},
                                          {"target": "externalId", "source": "id"}]}},
}


@needs_provision
def test_provision_a_group_brings_five_of_its_members(pipeline_factory: Factory) -> None:
    users = [user(i) for i in range(2)]
    p = pipeline_factory(users, app=GROUP_APP, start=False)
    _quiet_source(p)
    p.sup.start()
    admin = start_admin(p.sup, p.dir)
    p.wait_for("initial sync", lambda: p.scim.count() == 2)
    late = [user(i) for i in range(10, 16)]
    groups = [{"id": "g-all", "displayName": "All", "members": ["u00000", "u00001"]},
              {"id": "g-late", "displayName": "Late", "members": [u["id"] for u in late]}]
    p.write_directory([*users, *late], groups)

    r = admin.http.post("/apps/app/provision", json={"id": "g-late", "type": "group", "timeout": 20})
    assert r.status_code == 200, r.text
    trace = r.json()
    assert trace["object_type"] == "group" and trace["outcome"] == "success", trace
    assert [m["object_id"] for m in trace["members"]] == [u["id"] for u in late[:5]]
    assert all(m["outcome"] == "success" and m["action"] == "create" for m in trace["members"])
    names = set(p.scim.by_username())
    assert {u["userPrincipalName"] for u in late[:5]} <= names
    assert late[5]["userPrincipalName"] not in names  # only five members come along
