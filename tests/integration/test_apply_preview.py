"""``scimflow apply -f FILE --preview`` (the real CLI) on a real broker: the source objects
are the latest change of each object on ``directory.changes``, the mapper's planner runs
under the live version and the file's version, and nothing is written anywhere."""

from __future__ import annotations

import copy
import os
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from schemas import DirectoryChange, ManagedObject
from schemas.codecs import encode
from services.cli import cli
from services.devstack.broker import Broker
from services.runtime.kafka import create_topics, plain_producer, read_records
from services.runtime.topics import Topics
from tests.conftest import APP, PARTITIONS
from tests.support.admin import json_lines

pytestmark = pytest.mark.integration

SOURCE = {"name": "hr", "type": "file", "path": "directory.yaml"}


@dataclass
class Stack:
    topics: Topics
    bootstrap: str
    dir: Path
    env: dict[str, str]

    def cli(self, *args: str, check: bool = True) -> Any:
        result = CliRunner().invoke(cli, list(args), env=self.env)
        if check:
            assert result.exit_code == 0, f"{args}: {result.stdout}\n{result.stderr}"
        return result

    def file(self, name: str, *apps: dict[str, Any]) -> str:
        path = self.dir / name
        path.write_text(yaml.safe_dump({"applications": list(apps), "sources": [SOURCE]}, sort_keys=False))
        return str(path)

    def counts(self) -> tuple[int, int]:
        """Records on control.config and control.audit: a preview must add to neither."""
        return (len(read_records(self.bootstrap, self.topics.config)),
                len(read_records(self.bootstrap, self.topics.audit)))


def _change(object_type: str, object_id: str, **fields: Any) -> DirectoryChange:
    return DirectoryChange(source="hr", object_type=object_type, object_id=object_id,  # type: ignore[arg-type]
                           operation="upsert", change_id=uuid.uuid4().hex,
                           observed_at=datetime.now(UTC), **fields)


def _user(object_id: str, display: str, **extra: Any) -> DirectoryChange:
    attributes = {"userPrincipalName": f"{object_id}@corp", "id": object_id, "displayName": display,
                  "givenName": "G", "surname": "S", "mail": f"{object_id}@mail", **extra}
    return _change("user", object_id, attributes=attributes, memberships=["g-all"])


@pytest.fixture(scope="module")
def stack(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Stack:
    folder = tmp_path_factory.mktemp("preview")
    prefix = f"t{uuid.uuid4().hex[:8]}."
    topics = Topics(prefix, PARTITIONS)
    create_topics(broker.bootstrap, topics.specs())
    producer = plain_producer(broker.bootstrap)
    changes = [_user("u1", "One"), _user("u2", "Two (old)"), _user("u3", "Three"),
               _change("group", "g-all", attributes={"displayName": "All"}, members=["u1", "u2", "u3"]),
               _user("u2", "Two")]  # u2 changed again: the preview takes its latest change
    for change in changes:
        producer.send(topics.changes, key=change.object_id.encode(), value=encode(change)).get(timeout=30)
    producer.close()
    env = {"SCIMFLOW_KAFKA_BOOTSTRAP": broker.bootstrap, "SCIMFLOW_TOPIC_PREFIX": prefix,
           "SCIMFLOW_PARTITIONS": str(PARTITIONS), "SCIMFLOW_ADMIN_URL": "",
           "TEST_SCIM_URL": "http://127.0.0.1:9/v2", "TEST_SCIM_TOKEN": "unused",
           "PATH": os.environ.get("PATH", "")}
    return Stack(topics, broker.bootstrap, folder, env)


def _mail_as_display_name(name: str) -> dict[str, Any]:
    app: dict[str, Any] = copy.deepcopy({**APP, "name": name})
    app["mappings"]["user"]["attributes"][2] = {"target": "displayName", "source": "mail"}
    return app


def test_preview_shows_each_changed_attribute_old_to_new_and_writes_nothing(stack: Stack) -> None:
    stack.cli("apply", "-f", stack.file("v1.yaml", {**APP, "name": "pv"}), "--by", "alice")
    before = stack.counts()
    shown = stack.cli("apply", "-f", stack.file("v2.yaml", _mail_as_display_name("pv")), "--preview").stdout
    assert "app pv: update, version 1 -> not written (--preview)" in shown
    assert "preview: desired state under the new mappings vs under the live ones" in shown
    assert "app pv (against live version 1): 3 of 3 objects would change (0 managed in the target); " \
           "showing 3" in shown
    assert '~ displayName: "One" -> "u1@mail"' in shown
    assert '~ displayName: "Two" -> "u2@mail"' in shown and "Two (old)" not in shown
    assert stack.counts() == before


def test_ids_and_sample_pick_what_is_shown_as_json(stack: Stack) -> None:
    stack.cli("apply", "-f", stack.file("ids1.yaml", {**APP, "name": "pv-ids"}))
    file = stack.file("ids2.yaml", _mail_as_display_name("pv-ids"))
    result = json_lines(stack.cli("apply", "-f", file, "--preview", "--ids", "u3,ghost", "--json").stdout)
    assert result["dry_run"] is True
    [app] = result["preview"]["apps"]
    u3, ghost = app["samples"]
    assert (u3["object_id"], u3["operation"]) == ("u3", ["upsert", "upsert"])
    assert u3["changes"] == [{"path": "displayName", "old": "Three", "new": "u3@mail", "had": True,
                              "has": True, "when": "always", "written": None, "known": False}]
    assert (ghost["object_id"], ghost["found"]) == ("ghost", False)
    one = json_lines(stack.cli("apply", "-f", file, "--preview", "--sample", "1", "--json").stdout)
    assert [s["object_id"] for s in one["preview"]["apps"][0]["samples"]] == ["u1"]
    assert one["preview"]["apps"][0]["changed"] == 3


def test_a_new_app_is_previewed_against_nothing_and_unchanged_apps_are_skipped(stack: Stack) -> None:
    stack.cli("apply", "-f", stack.file("same.yaml", {**APP, "name": "pv-same"}))
    file = stack.file("new.yaml", {**APP, "name": "pv-same"}, {**APP, "name": "pv-new"})
    result = json_lines(stack.cli("apply", "-f", file, "--preview", "--json").stdout)
    [app] = result["preview"]["apps"]
    assert (app["app"], app["compared_with"], app["changed"]) == ("pv-new", "nothing (a new app)", 3)
    assert app["samples"][0]["operation"] == [None, "upsert"]
    assert stack.cli("get", "app", "pv-new", check=False).exit_code == 2


def test_ids_without_preview_is_refused(stack: Stack) -> None:
    done = stack.cli("apply", "-f", stack.file("x.yaml", {**APP, "name": "pv-x"}), "--ids", "u1", check=False)
    assert done.exit_code == 2 and "--ids and --sample go with --preview" in done.stderr


def test_what_the_writer_last_wrote_is_shown_with_the_target_id(stack: Stack) -> None:
    """The writer's state changelog says what scimflow last wrote: a value the new mapping
    gives already needs no write, and the preview says so."""
    stack.cli("apply", "-f", stack.file("m1.yaml", {**APP, "name": "pv-m"}))
    now = datetime.now(UTC)
    written = {"u1": "u1@mail", "u2": "Two"}  # u1: changed in the target already; u2: as live maps it
    producer = plain_producer(stack.bootstrap)
    for source_id, display in written.items():
        state = ManagedObject(app="pv-m", object_type="user", source_id=source_id, target_id=f"t-{source_id}",
                              attributes={"userName": f"{source_id}@corp", "displayName": display},
                              origin="created", created_at=now, updated_at=now)
        producer.send(stack.topics.writer_state, key=f"pv-m/{source_id}".encode(),
                      value=encode(state)).get(timeout=30)
    producer.close()
    shown = stack.cli("apply", "-f", stack.file("m2.yaml", _mail_as_display_name("pv-m")), "--preview").stdout
    assert "3 of 3 objects would change (2 managed in the target)" in shown
    assert "user u1 (u1@corp, target id t-u1)" in shown
    assert '~ displayName: "One" -> "u1@mail" [last written: "u1@mail" (the same: no write)]' in shown
    assert '~ displayName: "Two" -> "u2@mail" [last written: "Two"]' in shown
    assert '~ displayName: "Three" -> "u3@mail"\n' in shown  # not managed: nothing known
