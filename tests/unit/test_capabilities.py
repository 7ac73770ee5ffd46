"""Parsing a target's discovery documents and checking mappings against them — pure, with
documents shaped like real ones: RFC 7643's own examples (§8.5, §8.6, §8.7.1), a minimal
Entra-style target, a target that serves no /Schemas. ``discover`` meets answers scim2-server
won't give (404, 400, 501, 503, 401) through httpx.MockTransport; the real server is in
tests/integration/test_capabilities.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.runtime.config import LoadedConfig, load_config
from services.scim.capabilities import (
    Capabilities,
    capabilities_from,
    case_exact,
    check_mappings,
    describe,
    discover,
    parse_resource_types,
    parse_schemas,
    parse_service_provider_config,
)
from services.scim.client import Backoff, ScimClient
from services.scim.paths import CORE_GROUP, CORE_USER, ENTERPRISE_USER

BASE = "https://app.example.com/scim/v2"
TOKEN = "s3cr3t-T0ken-value"

# RFC 7643 §8.5, as printed (authenticationSchemes and meta shortened).
RFC_SERVICE_PROVIDER_CONFIG: dict[str, Any] = {
    "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"],
    "documentationUri": "http://example.com/help/scim.html",
    "patch": {"supported": True},
    "bulk": {"supported": True, "maxOperations": 1000, "maxPayloadSize": 1048576},
    "filter": {"supported": True, "maxResults": 200},
    "changePassword": {"supported": True},
    "sort": {"supported": True},
    "etag": {"supported": True},
    "authenticationSchemes": [{"name": "OAuth Bearer Token", "type": "oauthbearertoken",
                               "specUri": "http://www.rfc-editor.org/info/rfc6750", "primary": True}],
    "meta": {"location": "https://example.com/v2/ServiceProviderConfig",
             "resourceType": "ServiceProviderConfig", "version": 'W/"3694e05e9dff594"'},
}

# What apps built against Entra's provisioning often serve: no bulk (with zero limits),
# keys in other cases, booleans as strings, no etag/sort/changePassword at all.
ENTRA_STYLE_CONFIG: dict[str, Any] = {
    "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"],
    "Patch": {"Supported": "true"},
    "bulk": {"supported": False, "maxOperations": 0, "maxPayloadSize": 0},
    "filter": {"supported": True, "MaxResults": "100"},
}

# RFC 7643 §8.6: a bare JSON array, the enterprise extension required.
RFC_RESOURCE_TYPES: list[dict[str, Any]] = [
    {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:ResourceType"], "id": "User", "name": "User",
     "endpoint": "/Users", "description": "User Account", "schema": CORE_USER,
     "schemaExtensions": [{"schema": ENTERPRISE_USER, "required": True}]},
    {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:ResourceType"], "id": "Group", "name": "Group",
     "endpoint": "/Groups", "description": "Group", "schema": CORE_GROUP},
]


def attr(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": "string", "multiValued": False, "required": False,
            "caseExact": False, "mutability": "readWrite", "returned": "default",
            "uniqueness": "none", **extra}


# An excerpt of RFC 7643 §8.7.1, in a ListResponse as RFC 7644 §4 serves it.
RFC_SCHEMAS: dict[str, Any] = {
    "schemas": ["urn:ietf:params:scim:api:messages:2.0:ListResponse"], "totalResults": 3,
    "Resources": [
        {"id": CORE_USER, "name": "User", "attributes": [
            attr("userName", required=True, uniqueness="server"),
            attr("name", type="complex", subAttributes=[attr("givenName"), attr("familyName")]),
            attr("displayName"), attr("title"), attr("active", type="boolean"),
            attr("password", caseExact=True, mutability="writeOnly", returned="never"),
            attr("emails", type="complex", multiValued=True, subAttributes=[
                attr("value"), attr("type"), attr("primary", type="boolean")]),
            attr("groups", type="complex", multiValued=True, mutability="readOnly", subAttributes=[
                attr("value", caseExact=True, mutability="readOnly"),
                attr("display", mutability="readOnly")]),
        ]},
        {"id": CORE_GROUP, "name": "Group", "attributes": [
            attr("displayName", required=True),
            attr("members", type="complex", multiValued=True, subAttributes=[
                attr("value", caseExact=True, mutability="immutable")]),
        ]},
        {"id": ENTERPRISE_USER, "name": "EnterpriseUser", "attributes": [
            attr("employeeNumber"), attr("department"),
            attr("manager", type="complex", subAttributes=[
                attr("value", caseExact=True), attr("displayName", mutability="readOnly")]),
        ]},
    ],
}


def rfc_target() -> Capabilities:
    return capabilities_from(RFC_SERVICE_PROVIDER_CONFIG, RFC_RESOURCE_TYPES, RFC_SCHEMAS)


# -- ServiceProviderConfig -----------------------------------------------------------------


def test_rfc_service_provider_config_states_every_feature() -> None:
    caps = rfc_target()
    assert (caps.patch, caps.bulk, caps.filter, caps.etag, caps.sort, caps.change_password) == (
        True, True, True, True, True, True)
    assert (caps.bulk_max_operations, caps.bulk_max_payload_size) == (1000, 1048576)
    assert caps.filter_max_results == 200
    assert caps.complete


def test_entra_style_config_reads_despite_case_strings_and_missing_features() -> None:
    features = parse_service_provider_config(ENTRA_STYLE_CONFIG)
    assert features["patch"] is True
    assert features["bulk"] is False
    # zero limits of an unsupported bulk are not limits
    assert features["bulk_max_operations"] is None and features["bulk_max_payload_size"] is None
    assert features["filter"] is True and features["filter_max_results"] == 100
    # not stated: unknown, not "unsupported"
    assert features["etag"] is None and features["sort"] is None and features["change_password"] is None


@pytest.mark.parametrize("doc", [None, [], "text", {}, {"patch": "yes"}, {"bulk": {"supported": True,
                                                                                   "maxOperations": -3}}])
def test_odd_service_provider_configs_leave_features_unknown(doc: Any) -> None:
    features = parse_service_provider_config(doc)
    assert features["patch"] is None
    assert features["bulk_max_operations"] is None


# -- ResourceTypes and Schemas ---------------------------------------------------------------


def test_rfc_resource_types_as_a_bare_list() -> None:
    types = parse_resource_types(RFC_RESOURCE_TYPES)
    assert set(types) == {"user", "group"}
    assert types["user"].schema == CORE_USER and types["user"].endpoint == "/Users"
    assert types["user"].extensions == (ENTERPRISE_USER,)
    assert types["user"].required_extensions == (ENTERPRISE_USER,)
    assert types["group"].extensions == ()


def test_resource_types_in_a_list_response_with_odd_key_case_and_other_types() -> None:
    doc = {"totalResults": 2, "resources": [
        {"NAME": "user", "Endpoint": "Users", "SCHEMA": CORE_USER},
        {"name": "Device", "endpoint": "/Devices", "schema": "urn:example:Device"},
    ]}
    types = parse_resource_types(doc)
    assert set(types) == {"user"}
    assert types["user"].extensions == ()


def test_schemas_declare_attributes_with_their_sub_attributes_case_and_mutability() -> None:
    schemas = parse_schemas(RFC_SCHEMAS)
    user = schemas[CORE_USER]
    assert user["name.givenname"].path == "name.givenName"
    assert user["emails"].multi_valued and user["emails"].sub_attributes == ("value", "type", "primary")
    assert user["groups"].mutability == "readOnly"
    assert user["password"].case_exact and user["password"].mutability == "writeOnly"
    assert set(schemas) == {CORE_USER, CORE_GROUP, ENTERPRISE_USER}


def test_schema_keys_in_any_case_and_rfc_defaults_for_what_is_left_out() -> None:
    doc = [{"ID": "urn:example:Widget", "Attributes": [
        {"Name": "serial", "CaseExact": "true", "Mutability": "IMMUTABLE"},
        {"name": "parts", "SubAttributes": [{"name": "code"}]},
        {"type": "string"},  # no name: skipped
    ]}, {"id": "urn:example:Empty", "attributes": []}]
    schemas = parse_schemas(doc)
    widget = schemas["urn:example:Widget"]
    assert widget["serial"].case_exact and widget["serial"].mutability == "immutable"
    assert widget["parts"].type == "complex" and widget["parts.code"].type == "string"
    assert not widget["parts.code"].case_exact and widget["parts.code"].mutability == "readWrite"
    assert "urn:example:Empty" not in schemas  # declares nothing, so it tells nothing


def test_resources_join_types_with_their_schemas_and_the_common_attributes() -> None:
    user = rfc_target().resources["user"]
    assert user.schemas_read == (CORE_USER, ENTERPRISE_USER)
    assert f"{ENTERPRISE_USER}:manager.value".casefold() in user.attributes
    assert user.attributes["externalid"].mutability == "readWrite"  # RFC 7643 §3.1
    assert user.attributes["id"].mutability == "readOnly"


# -- case_exact -------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "expected"), [
    ("userName", False),
    ("USERNAME", False),
    ('emails[type eq "work"].value', False),
    ("externalId", True),
    (f"{ENTERPRISE_USER}:manager", True),  # written as {"value": id}: manager.value
    (f"{ENTERPRISE_USER}:department", False),
    ("nickName", None),  # not declared
    ("not a path", None),
])
def test_case_exact_per_target_path(path: str, expected: bool | None) -> None:
    assert case_exact(rfc_target(), "user", path) is expected


def test_case_exact_is_unknown_for_a_target_without_schemas() -> None:
    caps = capabilities_from(RFC_SERVICE_PROVIDER_CONFIG, RFC_RESOURCE_TYPES, None,
                             unavailable={"Schemas": "GET /Schemas -> 404 Not Found"})
    assert case_exact(caps, "user", "userName") is None
    assert case_exact(caps, "group", "displayName") is None


# -- check_mappings ---------------------------------------------------------------------------

CONFIG = """\
sources:
  - {name: hr, type: file, path: dir.yaml}
applications:
  - name: crm
    target: {base_url: "https://crm.example.com/scim/v2", token: "env:CRM_TOKEN"}
    mappings:
      user:
        attributes:
          - {target: userName, source: upn, matching: 1}
          - {target: externalId, source: id}
          - {target: name.givenName, source: givenName}
          - {target: "emails[type eq \\"work\\"].value", source: mail}
          - {target: "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department", source: dept}
          - {target: "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager", source: manager,
             reference: user}
          - {target: givenName, source: givenName}
          - {target: name.nickname, source: nick}
          - {target: title.short, source: title}
          - {target: "emails[kind eq \\"work\\"].value", source: mail2}
          - {target: groups, source: memberOf}
          - {target: "urn:example:acme:2.0:User:costCenter", source: cc}
          - {target: displayNmae, source: cn}
      group:
        attributes:
          - {target: displayName, source: displayName, matching: 1}
          - {target: members.value, source: members}
"""


def load(tmp_path: Path, text: str = CONFIG) -> LoadedConfig:
    path = tmp_path / "scimflow.yaml"
    path.write_text(text)
    return load_config(path, resolve_secrets=False)


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), start=1) if needle in line)


def test_mapping_problems_name_the_kind_the_reason_and_the_config_line(tmp_path: Path) -> None:
    loaded = load(tmp_path)
    problems = check_mappings(loaded.config.applications[0], rfc_target(), loaded)
    by_target = {p.target: p for p in problems}
    assert set(by_target) == {"givenName", "name.nickname", "title.short", 'emails[kind eq "work"].value',
                              "groups", "urn:example:acme:2.0:User:costCenter", "displayNmae"}
    expected_kinds = {
        "givenName": "unknown-attribute", "displayNmae": "unknown-attribute",
        "name.nickname": "unknown-sub-attribute", "title.short": "unknown-sub-attribute",
        'emails[kind eq "work"].value': "unknown-sub-attribute", "groups": "read-only",
        "urn:example:acme:2.0:User:costCenter": "undeclared-extension",
    }
    assert {t: p.kind for t, p in by_target.items()} == expected_kinds
    for target, problem in by_target.items():
        needle = "target: " + (f'"{target}"' if ":" in target or "[" in target else target)
        assert problem.line == line_of(CONFIG, needle.replace('"work"', '\\"work\\"')), target
        assert problem.file == loaded.file
        assert str(problem).startswith(f"{loaded.file}:{problem.line}: crm: user mapping {target!r}: ")
    assert "did you mean 'name.givenName'" in by_target["givenName"].message
    assert "did you mean 'displayName'" in by_target["displayNmae"].message
    assert "it declares: urn:ietf:params:scim:schemas:extension:enterprise:2.0:User" in \
        by_target["urn:example:acme:2.0:User:costCenter"].message
    assert "not complex" in by_target["title.short"].message


def test_a_target_without_schemas_or_resource_types_reports_nothing(tmp_path: Path) -> None:
    loaded = load(tmp_path)
    caps = capabilities_from(unavailable={d: f"GET /{d} -> 404 Not Found"
                                          for d in ("ServiceProviderConfig", "ResourceTypes", "Schemas")})
    assert check_mappings(loaded.config.applications[0], caps, loaded) == []
    lines = describe(caps)
    assert lines[0] == "features         unknown (/ServiceProviderConfig not read)"
    assert lines[1] == (f"User             {CORE_USER}; extensions unknown (/ResourceTypes not read); "
                        "attributes unknown (/Schemas not read)")
    assert "/Schemas not served: GET /Schemas -> 404 Not Found" in lines
    assert "reports no mapping as wrong" in lines[-1]


def test_without_resource_types_extensions_are_unknown_but_declared_attributes_still_count(
        tmp_path: Path) -> None:
    loaded = load(tmp_path)
    caps = capabilities_from(None, None, RFC_SCHEMAS, unavailable={"ResourceTypes": "404",
                                                                   "ServiceProviderConfig": "404"})
    kinds = {p.target: p.kind for p in check_mappings(loaded.config.applications[0], caps, loaded)}
    assert "urn:example:acme:2.0:User:costCenter" not in kinds  # maybe declared: unknown
    assert kinds["givenName"] == "unknown-attribute"  # the core schema was read
    # the enterprise schema was served, so it is taken as the User's extension
    assert case_exact(caps, "user", f"{ENTERPRISE_USER}:department") is False


def test_a_target_without_groups_is_told_once_for_the_group_mapping(tmp_path: Path) -> None:
    loaded = load(tmp_path)
    caps = capabilities_from(RFC_SERVICE_PROVIDER_CONFIG, RFC_RESOURCE_TYPES[:1], RFC_SCHEMAS)
    group = [p for p in check_mappings(loaded.config.applications[0], caps, loaded)
             if p.object_type == "group"]
    assert [p.kind for p in group] == ["undeclared-resource-type"]
    # the mapping's own line: YAML places a block mapping where its first key is
    assert group[0].line == line_of(CONFIG, "group:") + 1
    assert "Group            not declared in /ResourceTypes" in describe(caps)


@pytest.mark.parametrize("types", [[], {"Resources": []}, {"weird": True}, [{"name": "Device"}]])
def test_resource_types_without_a_user_type_tell_nothing(tmp_path: Path, types: Any) -> None:
    loaded = load(tmp_path)
    caps = capabilities_from(RFC_SERVICE_PROVIDER_CONFIG, types, RFC_SCHEMAS)
    assert set(caps.resources) == {"user", "group"} and caps.resources["user"].extensions is None
    kinds = {p.kind for p in check_mappings(loaded.config.applications[0], caps, loaded)}
    assert "undeclared-resource-type" not in kinds and "undeclared-extension" not in kinds


def test_a_declared_extension_missing_from_schemas_is_unknown_not_wrong(tmp_path: Path) -> None:
    loaded = load(tmp_path)
    core_only = {"Resources": RFC_SCHEMAS["Resources"][:1]}
    caps = capabilities_from(RFC_SERVICE_PROVIDER_CONFIG, RFC_RESOURCE_TYPES, core_only)
    assert caps.resources["user"].schemas_read == (CORE_USER,)
    kinds = {p.target: p.kind for p in check_mappings(loaded.config.applications[0], caps, loaded)}
    assert not any(t.startswith(ENTERPRISE_USER) for t in kinds)
    assert kinds["urn:example:acme:2.0:User:costCenter"] == "undeclared-extension"
    assert case_exact(caps, "user", f"{ENTERPRISE_USER}:department") is None


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8)
    | st.sampled_from(["true", "readOnly", "complex", CORE_USER, ENTERPRISE_USER, "User", "/Users"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["Resources", "id", "name", "schema", "schemaExtensions", "attributes",
                         "subAttributes", "caseExact", "mutability", "type", "patch", "bulk",
                         "supported", "maxOperations", "filter", "endpoint"]) | st.text(max_size=5),
        inner, max_size=5),
    max_leaves=30)


@settings(max_examples=60, deadline=None)
@given(JSON, JSON, JSON)
def test_any_json_parses_without_a_crash(config: Any, types: Any, schemas: Any) -> None:
    caps = capabilities_from(config, types, schemas)
    describe(caps)
    for kind in ("user", "group"):
        assert case_exact(caps, kind, "userName") in (True, False, None)
    assert msgspec.convert(msgspec.to_builtins(caps), Capabilities) == caps


def test_disabled_mappings_are_not_checked(tmp_path: Path) -> None:
    text = CONFIG.replace("      group:\n", "      group:\n        enabled: false\n")
    loaded = load(tmp_path, text)
    caps = capabilities_from(RFC_SERVICE_PROVIDER_CONFIG, RFC_RESOURCE_TYPES[:1], RFC_SCHEMAS)
    assert all(p.object_type == "user" for p in check_mappings(loaded.config.applications[0], caps, loaded))


def test_describe_a_fully_declared_target() -> None:
    lines = describe(rfc_target())
    assert "PATCH            supported" in lines
    assert "bulk             supported (at most 1000 operations and 1048576 bytes per request)" in lines
    assert "filter           supported (at most 200 results)" in lines
    assert any(line.startswith(f"User             {CORE_USER}; extensions: {ENTERPRISE_USER};")
               for line in lines)
    assert not any("unknown" in line for line in lines)


def test_capabilities_survive_json_both_ways() -> None:
    caps = rfc_target()
    again = msgspec.convert(msgspec.json.decode(msgspec.json.encode(caps)), Capabilities)
    assert again == caps
    assert case_exact(again, "user", "externalId") is True


# -- discover ---------------------------------------------------------------------------------

def client(answers: dict[str, httpx.Response]) -> tuple[ScimClient, list[str]]:
    asked: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        name = request.url.path.rsplit("/", 1)[-1]
        asked.append(name)
        return answers.get(name, httpx.Response(404, json={"detail": "no such endpoint"}))

    return ScimClient(BASE, TOKEN, transport=httpx.MockTransport(handle), attempts=1,
                      backoff=Backoff(wait_initial=0, wait_max=0, wait_jitter=0)), asked


@pytest.mark.anyio
async def test_discover_reads_all_three_documents() -> None:
    c, _ = client({"ServiceProviderConfig": httpx.Response(200, json=RFC_SERVICE_PROVIDER_CONFIG),
                   "ResourceTypes": httpx.Response(200, json={"Resources": RFC_RESOURCE_TYPES}),
                   "Schemas": httpx.Response(200, json=RFC_SCHEMAS)})
    async with c:
        caps = await discover(c)
    assert caps.complete and caps.discovered_at is not None
    assert caps.bulk_max_operations == 1000
    assert caps.resources["user"].schemas_read == (CORE_USER, ENTERPRISE_USER)


@pytest.mark.anyio
async def test_discover_against_a_target_serving_none_of_them() -> None:
    c, asked = client({})
    async with c:
        caps = await discover(c)
    assert set(caps.unavailable) == {"ServiceProviderConfig", "ResourceTypes", "Schemas"}
    assert "404" in caps.unavailable["Schemas"] and not caps.failed
    assert "ServiceProviderConfigs" in asked  # SCIM 1.1's name is tried too
    assert caps.patch is None and case_exact(caps, "user", "userName") is None


@pytest.mark.anyio
async def test_discover_takes_the_scim_1_1_config_name() -> None:
    c, _ = client({"ServiceProviderConfigs": httpx.Response(200, json=ENTRA_STYLE_CONFIG)})
    async with c:
        caps = await discover(c)
    assert caps.patch is True and "ServiceProviderConfig" not in caps.unavailable


@pytest.mark.anyio
async def test_discover_tells_not_served_from_not_read_now() -> None:
    c, _ = client({"ServiceProviderConfig": httpx.Response(501, json={"detail": "not implemented"}),
                   "ResourceTypes": httpx.Response(503, text="busy"),
                   "Schemas": httpx.Response(400, json={"detail": "unknown resource type Schemas"})})
    async with c:
        caps = await discover(c)
    assert set(caps.unavailable) == {"ServiceProviderConfig", "Schemas"}
    assert "501" in caps.unavailable["ServiceProviderConfig"]
    assert "400" in caps.unavailable["Schemas"]
    assert set(caps.failed) == {"ResourceTypes"} and "503" in caps.failed["ResourceTypes"]
    assert not caps.complete


@pytest.mark.anyio
async def test_discover_with_refused_credentials_is_a_failure_to_retry() -> None:
    c, _ = client({name: httpx.Response(401, json={"detail": "bad token"})
                   for name in ("ServiceProviderConfig", "ResourceTypes", "Schemas")})
    async with c:
        caps = await discover(c)
    assert set(caps.failed) == {"ServiceProviderConfig", "ResourceTypes", "Schemas"}
    assert all("401" in reason and TOKEN not in reason for reason in caps.failed.values())
