"""The console's scoping-filter form, turned into the config's ``scoping_filters`` (pure):
filters and clauses added, edited and removed; blank rows ignored; unchanged values keep
their type, so the diff shows only what the administrator changed."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from services.admin.console.scoping_pages import OPERATORS, scoping_edited
from services.admin.control import BadRequestError
from services.mapper import scoping_filters

DEFINITION: dict[str, Any] = {"mappings": {"user": {"attributes": [], "scoping_filters": [
    {"name": "sales", "clauses": [{"attribute": "department", "operator": "EQUALS", "value": "Sales"},
                                  {"attribute": "level", "operator": "Greater_Than", "value": 5},
                                  {"attribute": "accountEnabled", "operator": "IS TRUE"}]},
]}}}


def _form_of(definition: dict[str, Any]) -> dict[str, str]:
    """The form as the page renders it for ``definition`` (with its blank rows)."""
    form: dict[str, str] = {}
    filters = definition["mappings"]["user"].get("scoping_filters", [])
    for i, f in enumerate(filters):
        form[f"f{i}-name"] = f.get("name", "")
        for j, c in enumerate([*f["clauses"], {}]):
            for key in ("attribute", "operator", "value"):
                value = c.get(key)
                form[f"f{i}-c{j}-{key}"] = "" if value is None else str(value)
    for j in range(2):
        for key in ("attribute", "operator", "value"):
            form[f"f{len(filters)}-c{j}-{key}"] = ""
    return form


def test_the_form_as_rendered_changes_nothing() -> None:
    assert scoping_edited(DEFINITION, "user", _form_of(DEFINITION)) == DEFINITION


def test_a_clause_is_edited_added_and_removed() -> None:
    form = _form_of(DEFINITION) | {"f0-c0-value": "Marketing", "f0-c2-remove": "yes",
                                   "f0-c3-attribute": "country", "f0-c3-operator": "NOT EQUALS",
                                   "f0-c3-value": "FR"}
    [edited] = scoping_edited(DEFINITION, "user", form)["mappings"]["user"]["scoping_filters"]
    assert edited == {"name": "sales", "clauses": [
        {"attribute": "department", "operator": "EQUALS", "value": "Marketing"},
        {"attribute": "level", "operator": "Greater_Than", "value": 5},
        {"attribute": "country", "operator": "NOT EQUALS", "value": "FR"}]}


def test_a_new_filter_is_a_group_of_its_own_and_a_removed_one_goes() -> None:
    form = _form_of(DEFINITION) | {"f1-c0-attribute": "employeeType", "f1-c0-operator": "EQUALS",
                                   "f1-c0-value": "Contractor", "f1-c1-attribute": "mail",
                                   "f1-c1-operator": "IS NOT NULL"}
    filters = scoping_edited(DEFINITION, "user", form)["mappings"]["user"]["scoping_filters"]
    assert filters[1] == {"clauses": [
        {"attribute": "employeeType", "operator": "EQUALS", "value": "Contractor"},
        {"attribute": "mail", "operator": "IS NOT NULL"}]}
    gone = scoping_edited(DEFINITION, "user", _form_of(DEFINITION) | {"f0-remove": "yes"})
    assert "scoping_filters" not in gone["mappings"]["user"]


def test_a_filter_whose_clauses_are_all_removed_is_removed_not_left_empty() -> None:
    form = _form_of(DEFINITION) | {f"f0-c{j}-remove": "yes" for j in range(3)}
    assert "scoping_filters" not in scoping_edited(DEFINITION, "user", form)["mappings"]["user"]


def test_the_definition_given_is_not_changed_and_an_unknown_mapping_is_refused() -> None:
    before = copy.deepcopy(DEFINITION)
    scoping_edited(DEFINITION, "user", {"f0-remove": "yes"})
    assert before == DEFINITION
    with pytest.raises(BadRequestError, match="no group mapping"):
        scoping_edited(DEFINITION, "group", {})


def test_the_menu_offers_exactly_the_mappers_operators() -> None:
    assert OPERATORS == scoping_filters.OPERATORS
