"""Scope, enabled state and Direct/Constant mappings decide each app's command."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from schemas import DirectoryChange
from services.mapper.main import compile_apps
from services.mapper.planner import CompiledApp, command_key, plan
from services.runtime.config import load_config

CONFIG = """\
sources:
  - {name: hr, type: file, path: dir.yaml}
applications:
  - name: app1
    target: {base_url: "http://127.0.0.1:9/v2", token: "env:T"}
    assignments: {users: [u-direct], groups: [g-eng]}
    mappings:
      user:
        attributes:
          - {target: userName, source: upn, matching: 1}
          - {target: name.givenName, source: givenName}
          - {target: title, type: constant, value: Engineer}
          - {target: preferredLanguage, type: constant, value: en, apply: on_create}
          - {target: nickName, source: nick, default: none-given}
  - name: everyone
    target: {base_url: "http://127.0.0.1:9/v2", token: "env:T"}
    scope: all
    mappings:
      user:
        attributes:
          - {target: userName, source: upn, matching: 1}
"""


@pytest.fixture
def apps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, CompiledApp]:
    monkeypatch.setenv("T", "x")
    (tmp_path / "c.yaml").write_text(CONFIG)
    return {c.app.name: c for c in compile_apps(load_config(tmp_path / "c.yaml"))}


def change(object_id: str = "u1", *, groups: list[str] | None = None, op: Any = "upsert",
           **attrs: Any) -> DirectoryChange:
    base = {"upn": f"{object_id}@x.com", "givenName": "Ada", "accountEnabled": True}
    return DirectoryChange(source="hr", object_type="user", object_id=object_id, operation=op,
                           attributes={**base, **attrs}, memberships=groups or [],
                           change_id="c", observed_at=datetime.now(UTC))


def test_member_of_assigned_group_gets_mapped_upsert(apps: dict[str, CompiledApp]) -> None:
    cmd = plan(apps["app1"], change(groups=["g-eng"]))
    assert cmd is not None and cmd.operation == "upsert"
    assert cmd.reason == "user is a member of assigned group g-eng"
    assert cmd.attributes == {"userName": "u1@x.com", "name.givenName": "Ada", "title": "Engineer"}
    assert cmd.create_only == {"preferredLanguage": "en", "nickName": "none-given"}
    assert [(m.target, m.value) for m in cmd.matching] == [("userName", "u1@x.com")]


def test_default_is_not_used_when_the_source_has_a_value(apps: dict[str, CompiledApp]) -> None:
    cmd = plan(apps["app1"], change("u-direct", nick="Addy"))
    assert cmd is not None
    assert cmd.attributes["nickName"] == "Addy"
    assert "nickName" not in cmd.create_only
    assert cmd.reason == "user is assigned directly"


def test_unassigned_user_is_deprovisioned_with_reason(apps: dict[str, CompiledApp]) -> None:
    cmd = plan(apps["app1"], change(groups=["g-sales"]))
    assert cmd is not None and cmd.operation == "deprovision"
    assert cmd.attributes == {}
    assert "not assigned" in cmd.reason


def test_disabled_user_is_deprovisioned(apps: dict[str, CompiledApp]) -> None:
    cmd = plan(apps["app1"], change(groups=["g-eng"], accountEnabled=False))
    assert cmd is not None and cmd.operation == "deprovision"
    assert cmd.reason.startswith("disabled in source")


def test_delete_and_scope_all(apps: dict[str, CompiledApp]) -> None:
    deleted = plan(apps["app1"], change(op="delete"))
    assert deleted is not None and deleted.operation == "delete"
    everyone = plan(apps["everyone"], change("u9"))
    assert everyone is not None and everyone.operation == "upsert"
    assert command_key(everyone.app, everyone.source_id) == b"everyone/u9"


def test_groups_are_not_provisioned_yet(apps: dict[str, CompiledApp]) -> None:
    group = DirectoryChange(source="hr", object_type="group", object_id="g-eng", operation="upsert",
                            change_id="c", observed_at=datetime.now(UTC))
    assert plan(apps["app1"], group) is None
