"""The preview engine (``apply --preview``): the mapper's real planner run under two versions
of an app, compared per object. Pure: compiled apps and directory changes in, differences out."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from functools import partial
from typing import Any

import pytest

from schemas import DirectoryChange, ManagedObject
from services.cli.config_tools import load_checked
from services.cli.preview import ObjectPreview, preview_app
from services.mapper.main import compile_apps
from services.mapper.planner import CompiledApp
from services.runtime.config_store import load_app
from tests.conftest import APP


@pytest.fixture(autouse=True)
def _target_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_SCIM_URL", "http://127.0.0.1:9/v2")


def _compiled(definition: dict[str, Any]) -> CompiledApp:
    [compiled] = compile_apps(load_app(definition, partial(load_checked, resolve_secrets=False)))
    return compiled


def _user(object_id: str, **attrs: Any) -> DirectoryChange:
    base = {"userPrincipalName": f"{object_id}@corp", "id": object_id, "displayName": object_id.upper(),
            "givenName": "G", "surname": "S", "mail": f"{object_id}@mail", "department": "Sales"}
    return DirectoryChange(source="hr", object_type="user", object_id=object_id, operation="upsert",
                           attributes={**base, **attrs}, memberships=["g-all"], change_id="c",
                           observed_at=datetime.now(UTC))


def _group(object_id: str, members: list[str]) -> DirectoryChange:
    return DirectoryChange(source="hr", object_type="group", object_id=object_id, operation="upsert",
                           attributes={"displayName": object_id}, members=members, change_id="c",
                           observed_at=datetime.now(UTC))


def _objects(*changes: DirectoryChange) -> dict[tuple[str, str], DirectoryChange]:
    return {(c.object_type, c.object_id): c for c in changes}


OBJECTS = _objects(_user("u1"), _user("u2"), _user("u3", department="IT"),
                   _group("g-all", ["u1", "u2", "u3"]))


def _edited(**changes: Any) -> dict[str, Any]:
    app: dict[str, Any] = copy.deepcopy(APP)
    for index, mapping in changes.items():
        app["mappings"]["user"]["attributes"][int(index.removeprefix("a"))] = mapping
    return app


def test_a_changed_mapping_shows_exactly_that_attribute_old_to_new_for_every_user() -> None:
    new = _edited(a2={"target": "displayName", "source": "mail"})
    result = preview_app(_compiled(new), _compiled(APP), OBJECTS, compared_with="live version 1")
    assert (result.objects, result.changed, result.compared_with) == (3, 3, "live version 1")
    assert [(s.object_id, s.operation) for s in result.samples] == [
        ("u1", ("upsert", "upsert")), ("u2", ("upsert", "upsert")), ("u3", ("upsert", "upsert"))]
    [change] = result.samples[0].changes
    assert (change.path, change.old, change.new, change.when) == ("displayName", "U1", "u1@mail", "always")


def test_sample_limits_what_is_shown_not_what_is_counted() -> None:
    new = _edited(a2={"target": "displayName", "source": "mail"})
    result = preview_app(_compiled(new), _compiled(APP), OBJECTS, sample=1)
    assert (result.changed, [s.object_id for s in result.samples]) == (3, ["u1"])


def test_the_same_mappings_change_nothing() -> None:
    result = preview_app(_compiled(APP), _compiled(APP), OBJECTS)
    assert (result.objects, result.changed, result.samples) == (3, 0, [])


def test_given_ids_are_shown_changed_or_not_and_a_missing_one_says_so() -> None:
    new: dict[str, Any] = copy.deepcopy(APP)
    new["mappings"]["user"]["scoping_filters"] = [
        {"clauses": [{"attribute": "department", "operator": "EQUALS", "value": "Sales"}]}]
    result = preview_app(_compiled(new), _compiled(APP), OBJECTS, ids=["u3", "u1", "ghost"])
    u3, u1, ghost = result.samples
    assert u3.operation == ("upsert", "deprovision") and u3.changed
    assert u3.reason[1] is not None and u3.reason[1].startswith("scoping filters")
    assert not u1.changed and u1.changes == []
    assert ghost == ObjectPreview("?", "ghost", found=False)


def test_added_and_removed_attributes_and_create_only_values() -> None:
    new = _edited(a5={"target": "title", "source": "department", "apply": "on_create"})
    new["mappings"]["user"]["attributes"].append({"target": "emails[type eq \"work\"].value",
                                                  "source": "mail"})
    [u1, *_] = preview_app(_compiled(new), _compiled(APP), OBJECTS).samples
    shown = {(c.path, c.when): (c.had, c.has, c.old, c.new) for c in u1.changes}
    assert shown == {
        ("title", "always"): (True, False, "Staff", None),
        ("title", "on_create"): (False, True, None, "Sales"),
        ('emails[type eq "work"].value', "always"): (False, True, None, "u1@mail"),
    }


def test_a_redacted_value_never_shows() -> None:
    new = _edited(a5={"target": "title", "type": "expression", "expression": "Redact([mail])"})
    [u1, *_] = preview_app(_compiled(new), _compiled(APP), OBJECTS).samples
    [title] = u1.changes
    assert (title.old, title.new) == ("Staff", "[Redact]")
    assert "u1@mail" not in repr(u1)


def test_a_new_app_is_compared_with_nothing_and_a_failing_expression_is_reported() -> None:
    result = preview_app(_compiled(APP), None, OBJECTS)
    assert result.compared_with == "nothing (a new app)" and result.changed == 3
    assert result.samples[0].operation == (None, "upsert")
    assert {c.path for c in result.samples[0].changes} >= {"userName", "displayName", "title"}

    failing = _edited(a5={"target": "title", "type": "expression", "expression": "DateAdd(\"d\", 1, [mail])"})
    broken = preview_app(_compiled(failing), _compiled(APP), OBJECTS, sample=1).samples[0]
    assert broken.error is not None and broken.error.startswith("mapping failed:")


def test_what_the_writer_last_wrote_is_attached_to_each_changed_attribute() -> None:
    now = datetime.now(UTC)
    state = ManagedObject(app="app", object_type="user", source_id="u2", target_id="t-2",
                          attributes={"displayName": "u2@mail"}, origin="adopted",
                          created_at=now, updated_at=now)
    new = _edited(a2={"target": "displayName", "source": "mail"})
    result = preview_app(_compiled(new), _compiled(APP), OBJECTS, managed={"u2": state})
    u1, u2, _ = result.samples
    assert (u2.target_id, u2.changes[0].written, u2.changes[0].known) == ("t-2", "u2@mail", True)
    assert (u1.target_id, u1.changes[0].known) == (None, False)
    assert result.managed == 1
