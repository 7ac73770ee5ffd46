"""SCIM attribute paths: parsing, POST bodies, reading back, PATCH operations (no I/O)."""

from __future__ import annotations

from typing import Any

import pytest
from scim2_models import Context, EnterpriseUser, Group, PatchOp, User

from services.scim.paths import (
    CORE_GROUP,
    CORE_USER,
    ENTERPRISE_USER,
    PATCH_OP,
    ScimPath,
    ValueFilter,
    apply_changes,
    build_resource,
    chunked,
    equality_filter,
    member_operations,
    parse_path,
    patch_operations,
    read_path,
    validate_path,
)

WORK_EMAIL = 'emails[type eq "work"].value'
MOBILE = 'phoneNumbers[type eq "mobile"].value'
WORK_CITY = 'addresses[type eq "work"].locality'
DEPARTMENT = f"{ENTERPRISE_USER}:department"
MANAGER = f"{ENTERPRISE_USER}:manager"


# -- parsing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("userName", ScimPath(None, "userName")),
        ("name.givenName", ScimPath(None, "name", None, "givenName")),
        (WORK_EMAIL, ScimPath(None, "emails", ValueFilter("type", "work"), "value")),
        ('emails[primary eq true].value', ScimPath(None, "emails", ValueFilter("primary", True), "value")),
        ('addresses[type EQ "work"]', ScimPath(None, "addresses", ValueFilter("type", "work"))),
        (DEPARTMENT, ScimPath(ENTERPRISE_USER, "department")),
        (f"{MANAGER}.value", ScimPath(ENTERPRISE_USER, "manager", None, "value")),
        (f"{CORE_USER}:userName", ScimPath(None, "userName")),
        ('urn:example:ext:2.0:User:tags[type eq "a:b"].value',
         ScimPath("urn:example:ext:2.0:User", "tags", ValueFilter("type", "a:b"), "value")),
        ('emails[type eq "w\\"x"].value', ScimPath(None, "emails", ValueFilter("type", 'w"x'), "value")),
    ],
)
def test_parse_path(text: str, expected: ScimPath) -> None:
    assert parse_path(text) == expected


@pytest.mark.parametrize("text", ["userName", WORK_EMAIL, DEPARTMENT, 'emails[primary eq true].value'])
def test_a_parsed_path_prints_back_as_written(text: str) -> None:
    assert str(parse_path(text)) == text


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "it is empty"),
        ("   ", "it is empty"),
        ('emails[type co "work"].value', "the filter uses 'co'"),
        ('emails[type eq work].value', 'attribute eq "value"'),
        ('emails[type eq "work" and value eq "x"].value', 'attribute eq "value"'),
        ('emails[type eq "work".value', "unbalanced"),
        ("name.givenName.first", "one level of sub-attribute"),
        ("1userName", "start with a letter"),
        ("user name", "start with a letter"),
        (f"{ENTERPRISE_USER}:", "followed by ':' and an attribute name"),
        ("urn:", "followed by ':' and an attribute name"),
    ],
)
def test_validate_path_says_what_is_wrong(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match="invalid SCIM attribute path") as info:
        validate_path(text)
    assert reason in str(info.value)
    assert repr(text) in str(info.value)


def test_validate_path_accepts_every_documented_form() -> None:
    for text in ["userName", "active", "displayName", "name.givenName", WORK_EMAIL, MOBILE,
                 WORK_CITY, DEPARTMENT, MANAGER]:
        validate_path(text)  # raises on failure


# -- build_resource ------------------------------------------------------------------------


def test_build_resource_makes_a_scim_user() -> None:
    body = build_resource({
        "userName": "ada@example.com",
        "active": True,
        "name.givenName": "Ada",
        "name.familyName": "Lovelace",
        WORK_EMAIL: "ada@example.com",
        MOBILE: "+44 20 7946 0000",
        WORK_CITY: "London",
        DEPARTMENT: "Engineering",
        "displayName": None,
    })
    assert body == {
        "schemas": [CORE_USER, ENTERPRISE_USER],
        "userName": "ada@example.com",
        "active": True,
        "name": {"givenName": "Ada", "familyName": "Lovelace"},
        "emails": [{"type": "work", "value": "ada@example.com", "primary": True}],
        "phoneNumbers": [{"type": "mobile", "value": "+44 20 7946 0000", "primary": True}],
        "addresses": [{"type": "work", "locality": "London", "primary": True}],
        ENTERPRISE_USER: {"department": "Engineering"},
    }


def test_build_resource_passes_scim2_models_validation() -> None:
    body = build_resource({
        "userName": "ada@example.com", "active": False, "name.givenName": "Ada",
        WORK_EMAIL: "ada@example.com", 'emails[type eq "home"].value': "ada@home.example",
        WORK_CITY: "London", 'addresses[type eq "work"].country': "GB", DEPARTMENT: "R&D",
    })
    user = User[EnterpriseUser].model_validate(body, scim_ctx=Context.RESOURCE_CREATION_REQUEST)
    assert user.user_name == "ada@example.com"
    assert user.emails is not None
    assert [(e.type, e.value, e.primary) for e in user.emails] == [
        ("work", "ada@example.com", True), ("home", "ada@home.example", None)]
    assert user.addresses is not None
    assert (user.addresses[0].locality, user.addresses[0].country) == ("London", "GB")
    assert user[EnterpriseUser].department == "R&D"


def test_build_resource_without_extension_lists_only_the_core_schema() -> None:
    body = build_resource({"userName": "x"})
    assert body["schemas"] == [CORE_USER]
    User.model_validate(body, scim_ctx=Context.RESOURCE_CREATION_REQUEST)


def test_build_resource_for_a_group() -> None:
    assert build_resource({"displayName": "Staff"}, schemas_for="Group") == {
        "schemas": [CORE_GROUP], "displayName": "Staff"}


def test_manager_is_sent_as_a_reference_and_read_back_as_its_id() -> None:
    # scim2-models marks manager.$ref required, RFC 7643's schema (and scim2-server) do not:
    # we only know the manager's id, which is what Entra sends too.
    body = build_resource({"userName": "x", MANAGER: "26118915-6090-4610-87e4-49d8ca9f808d"})
    assert body[ENTERPRISE_USER] == {"manager": {"value": "26118915-6090-4610-87e4-49d8ca9f808d"}}
    assert read_path(body, MANAGER) == "26118915-6090-4610-87e4-49d8ca9f808d"


def test_build_resource_keeps_one_primary_per_attribute() -> None:
    body = build_resource({WORK_EMAIL: "w@x", 'emails[type eq "home"].value': "h@x", "userName": "u"})
    assert [e.get("primary") for e in body["emails"]] == [True, None]


def test_build_resource_merges_sub_attributes_of_one_element() -> None:
    body = build_resource({WORK_CITY: "Paris", 'addresses[type eq "work"].postalCode': "75001"})
    assert body["addresses"] == [{"type": "work", "locality": "Paris", "postalCode": "75001",
                                  "primary": True}]


def test_build_resource_refuses_conflicting_paths() -> None:
    with pytest.raises(ValueError, match="conflicts"):
        build_resource({"name": "Ada", "name.givenName": "Ada"})


def test_build_resource_refuses_unknown_resource_types() -> None:
    with pytest.raises(ValueError, match="schemas_for"):
        build_resource({"userName": "x"}, schemas_for="Device")


# -- read_path -----------------------------------------------------------------------------

RETURNED: dict[str, Any] = {
    "schemas": [CORE_USER, ENTERPRISE_USER],
    "id": "2819c223",
    "userName": "ada@example.com",
    "active": False,
    "name": {"givenName": "Ada"},
    "emails": [{"value": "ada@home.example", "type": "home"},
               {"value": "ada@example.com", "type": "Work", "primary": True}],
    ENTERPRISE_USER: {"department": "Engineering", "manager": {"value": "m-1", "displayName": "B"}},
}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("userName", "ada@example.com"),
        ("username", "ada@example.com"),  # attribute names are case-insensitive
        ("active", False),
        ("name.givenName", "Ada"),
        ("name.familyName", None),
        ("displayName", None),
        (WORK_EMAIL, "ada@example.com"),  # "Work" matches "work": type is not caseExact
        ('emails[type eq "home"].value', "ada@home.example"),
        ('emails[primary eq true].value', "ada@example.com"),
        ('emails[type eq "other"].value', None),
        (MOBILE, None),
        (DEPARTMENT, "Engineering"),
        (MANAGER, "m-1"),
        (f"{MANAGER}.displayName", "B"),
        ("urn:example:other:2.0:User:x", None),
    ],
)
def test_read_path(path: str, expected: object) -> None:
    assert read_path(RETURNED, path) == expected


def test_read_path_tolerates_malformed_resources() -> None:
    assert read_path({"emails": "not-a-list"}, WORK_EMAIL) is None
    assert read_path({"name": "flat"}, "name.givenName") is None
    assert read_path({ENTERPRISE_USER: "flat"}, DEPARTMENT) is None


# -- patch_operations ----------------------------------------------------------------------


def test_patch_operations_replaces_each_changed_path_and_removes_nulls() -> None:
    ops = patch_operations({"name.givenName": "Augusta", WORK_EMAIL: "ada@new.example",
                            "active": False, DEPARTMENT: "Research", "title": None})
    assert ops == [
        {"op": "replace", "path": "name.givenName", "value": "Augusta"},
        {"op": "replace", "path": WORK_EMAIL, "value": "ada@new.example"},
        {"op": "replace", "path": "active", "value": False},
        {"op": "replace", "path": DEPARTMENT, "value": "Research"},
        {"op": "remove", "path": "title"},
    ]


def test_patch_operations_are_a_valid_scim_patchop() -> None:
    ops = patch_operations({WORK_EMAIL: "a@x", "active": False, DEPARTMENT: None, MOBILE: "1"},
                           current=RETURNED)
    patch = {"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": ops}
    parsed = PatchOp[User[EnterpriseUser]].model_validate(patch, scim_ctx=Context.RESOURCE_PATCH_REQUEST)
    assert len(parsed.operations or []) == 4


def test_manager_is_patched_as_a_reference() -> None:
    assert patch_operations({MANAGER: "m-2"}) == [
        {"op": "replace", "path": MANAGER, "value": {"value": "m-2"}}]


def test_removing_an_email_removes_the_whole_element() -> None:
    assert patch_operations({WORK_EMAIL: None, WORK_CITY: None}) == [
        {"op": "remove", "path": 'emails[type eq "work"]'},
        {"op": "remove", "path": WORK_CITY},  # other sub-attributes of an address stay
    ]


def test_with_current_a_missing_element_is_added_whole() -> None:
    ops = patch_operations({MOBILE: "+1 555", 'addresses[type eq "home"].locality': "Lyon",
                            'addresses[type eq "home"].country': "FR",
                            'emails[type eq "other"].value': "o@x"}, current=RETURNED)
    assert ops == [
        {"op": "add", "path": "phoneNumbers",
         "value": [{"type": "mobile", "value": "+1 555", "primary": True}]},
        {"op": "add", "path": "addresses",
         "value": [{"type": "home", "locality": "Lyon", "country": "FR", "primary": True}]},
        # emails already has a primary one: the new element must not claim it too
        {"op": "add", "path": "emails", "value": [{"type": "other", "value": "o@x"}]},
    ]


def test_with_current_an_existing_element_is_replaced_in_place() -> None:
    assert patch_operations({WORK_EMAIL: "new@example.com"}, current=RETURNED) == [
        {"op": "replace", "path": WORK_EMAIL, "value": "new@example.com"}]


def test_with_current_removing_what_is_absent_sends_nothing() -> None:
    assert patch_operations({MOBILE: None, "title": None}, current=RETURNED) == []
    assert patch_operations({"name.givenName": None}, current=RETURNED) == [
        {"op": "remove", "path": "name.givenName"}]


def test_entra_dialect_uses_entra_op_names_and_filtered_add() -> None:
    ops = patch_operations({"active": False, MOBILE: "+1", "name.givenName": None},
                           dialect="entra", current=RETURNED)
    assert ops == [
        {"op": "Replace", "path": "active", "value": False},
        {"op": "Add", "path": MOBILE, "value": "+1"},
        {"op": "Remove", "path": "name.givenName"},
    ]


def test_patch_operations_refuses_unknown_dialects_and_bad_paths() -> None:
    with pytest.raises(ValueError, match="unknown PATCH dialect 'okta'"):
        patch_operations({"active": False}, dialect="okta")
    with pytest.raises(ValueError, match="invalid SCIM attribute path"):
        patch_operations({"emails[type ne 'x']": "a"})


# -- equality_filter -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("userName", "ada@example.com", 'userName eq "ada@example.com"'),
        ("userName", 'o"hara\\x', 'userName eq "o\\"hara\\\\x"'),
        ("externalId", "é", 'externalId eq "é"'),
        (WORK_EMAIL, "a@x", 'emails[type eq "work" and value eq "a@x"]'),
        (DEPARTMENT, "R&D", f'{DEPARTMENT} eq "R&D"'),
        (MANAGER, "m-1", f'{MANAGER}.value eq "m-1"'),
    ],
)
def test_equality_filter(path: str, value: str, expected: str) -> None:
    assert equality_filter(path, value) == expected


# -- group members -------------------------------------------------------------------------


def test_member_additions_are_chunked_into_one_add_per_request() -> None:
    ids = [f"u{i}" for i in range(250)]
    requests = member_operations(ids, [], max_values=100)
    assert [len(ops) for ops in requests] == [1, 1, 1]
    assert [len(ops[0]["value"]) for ops in requests] == [100, 100, 50]
    assert requests[0][0] == {"op": "add", "path": "members",
                              "value": [{"value": f"u{i}"} for i in range(100)]}
    assert [m["value"] for ops in requests for m in ops[0]["value"]] == ids


def test_rfc7644_removes_each_member_by_a_value_filter() -> None:
    requests = member_operations([], ["a", 'q"uote', "c"], max_values=2)
    assert requests == [
        [{"op": "remove", "path": 'members[value eq "a"]'},
         {"op": "remove", "path": 'members[value eq "q\\"uote"]'}],
        [{"op": "remove", "path": 'members[value eq "c"]'}],
    ]
    for ops in requests:  # each request is a valid PatchOp for scim2-models
        PatchOp[Group].model_validate({"schemas": [PATCH_OP], "Operations": ops},
                                      scim_ctx=Context.RESOURCE_PATCH_REQUEST)


def test_entra_adds_and_removes_with_values_and_capitalised_ops() -> None:
    requests = member_operations(["n1", "n2"], ["o1"], dialect="entra", max_values=100)
    assert requests == [
        [{"op": "Add", "path": "members", "value": [{"value": "n1"}, {"value": "n2"}]}],
        [{"op": "Remove", "path": "members", "value": [{"value": "o1"}]}],
    ]


def test_no_deltas_no_requests_and_duplicates_are_sent_once() -> None:
    assert member_operations([], []) == []
    assert member_operations(["a", "a"], []) == [
        [{"op": "add", "path": "members", "value": [{"value": "a"}]}]]


def test_a_member_both_added_and_removed_is_refused() -> None:
    with pytest.raises(ValueError, match="both added and removed"):
        member_operations(["a", "b"], ["b"])


def test_chunked() -> None:
    assert chunked([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]
    assert chunked([], 3) == []
    with pytest.raises(ValueError, match="at least 1"):
        chunked([1], 0)


# -- full resources for PUT ----------------------------------------------------------------


def test_apply_changes_keeps_unmapped_attributes_and_drops_meta() -> None:
    current: dict[str, Any] = {"schemas": [CORE_USER], "id": "u-1", "userName": "ada", "title": "kept",
               "name": {"givenName": "Ada", "familyName": "Lovelace"},
               "emails": [{"type": "work", "value": "old@example.com", "primary": True},
                          {"type": "home", "value": "home@example.com"}],
               "meta": {"version": 'W/"1"', "resourceType": "User"}}
    body = apply_changes(current, {"name.givenName": "Augusta", WORK_EMAIL: "new@example.com",
                                   DEPARTMENT: "R&D", "nickName": None,
                                   'emails[type eq "home"].value': None})
    assert body == {"schemas": [CORE_USER, ENTERPRISE_USER], "id": "u-1", "userName": "ada",
                    "title": "kept", "name": {"givenName": "Augusta", "familyName": "Lovelace"},
                    "emails": [{"type": "work", "value": "new@example.com", "primary": True}],
                    ENTERPRISE_USER: {"department": "R&D"}}
    assert current["name"]["givenName"] == "Ada"  # the input is not modified
    User[EnterpriseUser].model_validate(body, scim_ctx=Context.RESOURCE_REPLACEMENT_REQUEST)


def test_apply_changes_removes_attributes_and_sub_attributes() -> None:
    current = {"schemas": [CORE_GROUP], "id": "g", "displayName": "G", "externalId": "e",
               "name": {"givenName": "A", "familyName": "B"}}
    assert apply_changes(current, {"externalId": None, "name.familyName": None, "absent": None}) == {
        "schemas": [CORE_GROUP], "id": "g", "displayName": "G", "name": {"givenName": "A"}}
