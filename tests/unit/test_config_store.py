"""Applications as data without a broker: the diff between versions, and the validation of
an app definition (every problem with its JSON path; the loader has the last word)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from services.runtime.config_store import (
    Change,
    DefinitionError,
    diff,
    read_file,
    render_diff,
    validate_app,
)
from services.runtime.errors import ConfigError

APP: dict[str, Any] = {
    "name": "crm",
    "target": {"base_url": "https://crm.example.com/scim/v2", "token": "env:CRM_TOKEN"},
    "assignments": {"groups": ["g-all"]},
    "mappings": {"user": {"attributes": [
        {"target": "userName", "source": "userPrincipalName", "matching": 1},
        {"target": "displayName", "source": "displayName"},
        {"target": "title", "type": "constant", "value": "Staff"},
    ]}},
}


def _problems(definition: Any, name: str = "crm") -> list[tuple[str, str]]:
    with pytest.raises(DefinitionError) as caught:
        validate_app(name, definition)
    return [(p.path, p.message) for p in caught.value.problems]


def test_an_unchanged_definition_has_no_diff() -> None:
    assert diff(APP, copy.deepcopy(APP)) == []


def test_mapping_items_are_addressed_by_their_target_so_an_insert_is_one_change() -> None:
    new = copy.deepcopy(APP)
    new["mappings"]["user"]["attributes"].insert(1, {"target": "emails", "source": "mail"})
    new["mappings"]["user"]["attributes"][0]["source"] = "mail"
    assert render_diff(diff(APP, new)) == [
        '+ $.mappings.user.attributes[target=emails]: {"source":"mail","target":"emails"}',
        '~ $.mappings.user.attributes[target=userName].source: "userPrincipalName" -> "mail"',
    ]


def test_diff_is_sorted_by_path_whatever_the_key_order() -> None:
    new = {**copy.deepcopy(APP), "status": "off", "scope": "all"}
    new["target"]["token"] = "env:OTHER"
    reordered = dict(reversed(list(new.items())))
    assert diff(APP, new) == diff(APP, reordered) == [
        Change("add", "$.scope", new="all"), Change("add", "$.status", new="off"),
        Change("change", "$.target.token", "env:CRM_TOKEN", "env:OTHER"),
    ]


def test_removed_keys_list_items_and_reordering_are_reported() -> None:
    new = copy.deepcopy(APP)
    del new["assignments"]
    attrs = new["mappings"]["user"]["attributes"]
    attrs.reverse()
    attrs.pop()  # userName, now last
    lines = render_diff(diff(APP, new))
    assert lines[0] == '- $.assignments: {"groups":["g-all"]}'
    assert '- $.mappings.user.attributes[target=userName]: ' \
           '{"matching":1,"source":"userPrincipalName","target":"userName"}' in lines
    assert lines[-1] == ('~ $.mappings.user.attributes#order: ["userName","displayName","title"] -> '
                         '["title","displayName"]')


def test_plain_lists_are_compared_by_position() -> None:
    assert render_diff(diff({"g": ["a", "b"]}, {"g": ["a", "c", "d"]})) == [
        '~ $.g[1]: "b" -> "c"', '+ $.g[2]: "d"']
    assert diff({"x": 1}, {"x": True}) == [Change("change", "$.x", 1, True)]


def test_a_valid_definition_is_returned_with_its_name() -> None:
    body = {k: v for k, v in APP.items() if k != "name"}
    assert validate_app("crm", body) == APP


def test_every_type_problem_is_listed_with_its_path() -> None:
    bad = copy.deepcopy(APP)
    bad["target"] = {"base_url": 3, "token": "a-raw-token", "colour": "red"}
    bad["mappings"]["user"]["attributes"][1] = {"trget": "x"}
    bad["mappings"]["user"]["attributes"][2]["matching"] = "first"
    bad["scope"] = "everyone"
    problems = _problems(bad)
    assert ("$.target.colour", "unknown field `colour`") in problems
    assert ("$.target.base_url", "Expected `str`, got `int`") in problems
    assert ("$.target.token", "Expected `str` matching regex '^(env|file):\\\\S+$'") in problems
    assert ("$.mappings.user.attributes[1].trget", "unknown field `trget`") in problems
    assert ("$.mappings.user.attributes[1]", "missing required field `target`") in problems
    assert ("$.mappings.user.attributes[2].matching", "Expected `int | null`, got `str`") in problems
    assert ("$.scope", "Invalid enum value 'everyone'") in problems
    assert len(problems) == len(set(problems)) == 7


def test_rules_beyond_types_come_from_the_loader_with_their_path() -> None:
    bad = copy.deepcopy(APP)
    for attr in bad["mappings"]["user"]["attributes"]:
        attr.pop("matching", None)
    assert _problems(bad) == [("$.mappings.user.attributes",
                               "expected at least one attribute with `matching: <precedence>` "
                               "to find existing objects in the target")]
    both = copy.deepcopy(APP)
    both["target"]["oauth2"] = {"token_url": "https://x/token", "client_id": "c", "client_secret": "env:S"}
    assert _problems(both)[0][0] == "$.target"


def test_the_name_must_be_the_one_in_the_request_and_the_body_an_object() -> None:
    assert _problems(APP, name="other") == [
        ("$.name", "expected 'other', the application named in the request")]
    assert _problems(["not", "an", "object"]) == [("$", "expected an object (the application's definition)")]


def test_env_references_are_judged_after_expansion(monkeypatch: pytest.MonkeyPatch) -> None:
    body = {**APP, "target": {**APP["target"], "base_url": "${CRM_URL}"}}
    monkeypatch.setenv("CRM_URL", "https://crm.example.com/scim")
    assert validate_app("crm", body)["target"]["base_url"] == "${CRM_URL}"  # stored unexpanded
    monkeypatch.setenv("CRM_URL", "not a url")
    assert [p for p, _ in _problems(body)] == ["$.target.base_url"]


def test_a_file_keeps_secrets_and_variables_as_written(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRM_URL", "https://crm.example.com/scim")
    monkeypatch.setenv("CRM_TOKEN", "the-real-secret")
    file = tmp_path / "scimflow.yaml"
    file.write_text("applications:\n  - name: crm\n"
                    "    target: {base_url: '${CRM_URL}', token: env:CRM_TOKEN}\n"
                    "    mappings: {user: {attributes: [{target: userName, source: upn, matching: 1}]}}\n"
                    "sources:\n  - {name: hr, type: file, path: d.yaml}\n")
    found = read_file(file)
    assert found.apps["crm"]["target"] == {"base_url": "${CRM_URL}", "token": "env:CRM_TOKEN"}
    assert found.sources == {"hr": {"name": "hr", "type": "file", "path": "d.yaml"}}
    file.write_text(file.read_text().replace("matching: 1", "matching: one"))
    with pytest.raises(ConfigError) as caught:
        read_file(file)
    assert caught.value.line == 4
    assert "applications[0].mappings.user.attributes[0].matching" in caught.value.reason
