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
from services.runtime.errors import ConfigError

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


def test_groups_are_not_planned_for_an_app_without_a_group_mapping(apps: dict[str, CompiledApp]) -> None:
    group = DirectoryChange(source="hr", object_type="group", object_id="g-eng", operation="upsert",
                            change_id="c", observed_at=datetime.now(UTC))
    assert plan(apps["app1"], group) is None


FILTERED = CONFIG.replace("""          - {target: nickName, source: nick, default: none-given}
""", """          - {target: nickName, source: nick, default: none-given}
        scoping_filters:
          - name: staff in sales
            clauses:
              - {attribute: department, operator: EQUALS, value: Sales}
              - {attribute: employeeId, operator: Greater_Than, value: 1000}
          - clauses:
              - {attribute: upn, operator: ENDS_WITH, value: "@partner.example"}
""")


def filtered_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str = FILTERED) -> CompiledApp:
    monkeypatch.setenv("T", "x")
    (tmp_path / "c.yaml").write_text(text)
    return compile_apps(load_config(tmp_path / "c.yaml"))[0]


def test_scoping_filters_narrow_assignment_and_explain(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    app = filtered_app(tmp_path, monkeypatch)
    inside = plan(app, change(groups=["g-eng"], department="Sales", employeeId="1001"))
    assert inside is not None and inside.operation == "upsert"
    assert "member of assigned group g-eng" in inside.reason
    assert "staff in sales" in inside.reason and "matched" in inside.reason
    partner = plan(app, change("p1", groups=["g-eng"], upn="p1@partner.example"))
    assert partner is not None and partner.operation == "upsert"
    out = plan(app, change(groups=["g-eng"], department="Sales", employeeId="999"))
    assert out is not None and out.operation == "deprovision"
    assert out.reason.startswith("scoping filters: no filter matched")
    assert "employeeId Greater_Than" in out.reason
    unassigned = plan(app, change(groups=["g-other"], department="Sales", employeeId="5000"))
    assert unassigned is not None and unassigned.operation == "deprovision"
    assert "not assigned" in unassigned.reason


def test_bad_scoping_filter_is_a_config_error_with_its_line(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from services.runtime.errors import ConfigError

    bad = FILTERED.replace("operator: Greater_Than, value: 1000", "operator: BIGGER_THAN, value: 1000")
    with pytest.raises(ConfigError) as info:
        filtered_app(tmp_path, monkeypatch, bad)
    assert "BIGGER_THAN" in str(info.value)
    assert info.value.line == bad.splitlines().index(
        "              - {attribute: employeeId, operator: BIGGER_THAN, value: 1000}") + 1
    regex = FILTERED.replace("operator: ENDS_WITH, value: \"@partner.example\"",
                             "operator: REGEX MATCH, value: \"([a-z\"")
    with pytest.raises(ConfigError, match=r"regex|regular expression"):
        filtered_app(tmp_path, monkeypatch, regex)


@pytest.mark.parametrize("name", ["SelectUniqueValue", "selectUniqueValue", "SELECTUNIQUEVALUE"])
def test_a_selectuniquevalue_attribute_cannot_be_matched_on_in_any_spelling(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv("T", "x")
    expression = f'{name}(Join("@", [givenName], "example.com"), [upn])'
    plain = "- {target: userName, source: upn, matching: 1}\n          - {target: name.givenName"
    unique = (f"- {{target: userName, type: expression, expression: '{expression}', matching: 1}}\n"
              "          - {target: name.givenName")
    (tmp_path / "c.yaml").write_text(CONFIG.replace(plain, unique, 1))
    with pytest.raises(ConfigError, match="comes from SelectUniqueValue, so it cannot find an"):
        compile_apps(load_config(tmp_path / "c.yaml"))


@pytest.mark.parametrize("upn", ["", "   ", "\t", None])
def test_an_empty_or_blank_matching_value_is_an_error_not_an_account(
        apps: dict[str, CompiledApp], upn: str | None) -> None:
    from services.mapper.main import _mapping_failed
    from services.mapper.planner import MatchingValueMissingError

    blank = change("u9", groups=["g-eng"], upn=upn)
    with pytest.raises(MatchingValueMissingError) as info:
        plan(apps["app1"], blank)
    assert "every matching attribute is empty or blank (userName)" in str(info.value)
    record = _mapping_failed("app1", blank, info.value)
    assert (record.error_code, record.source_id, record.app) == ("MatchingValueMissing", "u9", "app1")
    # Deprovisioning needs no matching value: the writer knows the account by its link.
    gone = plan(apps["app1"], change("u9", upn=upn))
    assert gone is not None and gone.operation == "deprovision"
