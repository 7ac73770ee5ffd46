"""What a target says it supports: its ``/ServiceProviderConfig``, ``/ResourceTypes`` and
``/Schemas`` (RFC 7644 §4, RFC 7643 §5-7), read once per app, and the attribute mappings
checked against them.

A mapping to an attribute the target does not declare is reported when the operator runs
``scimflow test-connection APP`` or ``scimflow validate --online``, with the config line,
instead of being discovered by a 400 on every object.

Many targets serve none of these documents (404, 501), or partial ones. Whatever a target
does not declare is *unknown*, never *unsupported*: a feature reads as None, a resource type
whose schema was not read has no attributes to check against, and :func:`check_mappings`
reports nothing it cannot prove. Parsing is pure and forgiving: key names in any case
(RFC 7643 §2.1 makes attribute names case-insensitive), list responses or bare lists, missing
keys (RFC 7643 §7's defaults apply), strings where booleans or numbers belong.

The writer keeps one :class:`Capabilities` per app (:func:`discover`) and compares matching
values with :func:`case_exact`: ``False`` means the target compares case-insensitively.
"""

from __future__ import annotations

import asyncio
import difflib
import functools
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, Final, Literal, Protocol

import msgspec

from services.runtime.config import Application, LoadedConfig, ObjectMapping
from services.runtime.errors import CredentialsError, TargetError, TransientError
from services.scim.paths import CORE_GROUP, CORE_USER, ScimPath, parse_path

__all__ = [
    "Attribute",
    "Capabilities",
    "Problem",
    "ResourceType",
    "attribute",
    "capabilities_from",
    "case_exact",
    "check_mappings",
    "describe",
    "discover",
    "parse_resource_types",
    "parse_schemas",
    "parse_service_provider_config",
]

DOCUMENTS: Final = ("ServiceProviderConfig", "ResourceTypes", "Schemas")
# SCIM 1.1's name; some targets still serve only that one.
_LEGACY_CONFIG: Final = "ServiceProviderConfigs"
_CORE_OF: Final[dict[str, str]] = {"user": CORE_USER, "group": CORE_GROUP}
_NAMES_OF: Final[dict[str, str]] = {"user": "User", "group": "Group"}
_ENDPOINT_OF: Final[dict[str, str]] = {"/users": "user", "/groups": "group"}
_COMPLEX: Final = "complex"

ProblemKind = Literal["unknown-attribute", "unknown-sub-attribute", "undeclared-extension",
                      "read-only", "undeclared-resource-type"]


class Attribute(msgspec.Struct, frozen=True, kw_only=True):
    """One attribute (or sub-attribute) a target declares, with RFC 7643 §7's defaults."""

    path: str
    """As declared: ``userName``, ``name.givenName``, ``<extension URN>:department``."""
    type: str = "string"
    multi_valued: bool = False
    case_exact: bool = False
    mutability: str = "readWrite"
    required: bool = False
    sub_attributes: tuple[str, ...] = ()
    """Names of the declared sub-attributes (each is also an :class:`Attribute` of its own)."""


class ResourceType(msgspec.Struct, frozen=True, kw_only=True):
    """A resource type (``User``, ``Group``) and the attributes its schemas declare."""

    name: str
    endpoint: str | None = None
    schema: str
    """Its core schema URN; mapping paths without a URN live in it."""
    extensions: tuple[str, ...] | None = None
    """Declared schema extensions; None when ``/ResourceTypes`` was not read (unknown)."""
    required_extensions: tuple[str, ...] = ()
    schemas_read: tuple[str, ...] = ()
    """Schema URNs whose attributes ``attributes`` holds; any other schema is unknown."""
    attributes: dict[str, Attribute] = {}
    """By case-folded path (``name.givenname``); extension attributes carry their URN."""


class Capabilities(msgspec.Struct, frozen=True, kw_only=True):
    """What one target declares. None everywhere means "not declared": unknown, not absent."""

    patch: bool | None = None
    bulk: bool | None = None
    bulk_max_operations: int | None = None
    bulk_max_payload_size: int | None = None
    """Bytes."""
    filter: bool | None = None
    filter_max_results: int | None = None
    etag: bool | None = None
    sort: bool | None = None
    change_password: bool | None = None
    resources: dict[str, ResourceType] = {}
    """By object type: ``user``, ``group``."""
    unavailable: dict[str, str] = {}
    """Documents the target does not serve (404, 501, not SCIM JSON), and why: unknown."""
    failed: dict[str, str] = {}
    """Documents that could not be read now (network, 5xx, credentials): ask again later."""
    discovered_at: datetime | None = None

    @property
    def complete(self) -> bool:
        """All three documents were read."""
        return not self.unavailable and not self.failed


class Problem(msgspec.Struct, frozen=True, kw_only=True):
    """One attribute mapping the target's declared schema cannot take."""

    app: str
    object_type: str
    target: str
    """The mapping's target path, as written in the config."""
    kind: ProblemKind
    message: str
    config_path: str
    """JSON path of the mapping's ``target`` in the config (``$.applications[0]...``)."""
    file: str | None = None
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.file or '<config>'}:{self.line}" if self.line else (self.file or "<config>")
        return f"{where}: {self.app}: {self.object_type} mapping {self.target!r}: {self.message}"


class _Documents(Protocol):
    """What :func:`discover` needs of a client: ``ScimClient.get_document``."""

    async def get_document(self, path: str) -> dict[str, Any]: ...


# -- discovery -----------------------------------------------------------------------------


async def discover(client: _Documents) -> Capabilities:
    """Read the three discovery documents (concurrently) and parse them. Never raises a
    TargetError: a document not served is recorded in ``unavailable``, one that could not
    be read now (network, 5xx, 401/403) in ``failed``."""
    config, types, schemas = await asyncio.gather(
        _fetch_config(client), _fetch(client, "ResourceTypes"), _fetch(client, "Schemas"))
    unavailable: dict[str, str] = {}
    failed: dict[str, str] = {}
    docs: list[Any] = []
    for name, (doc, exc) in zip(DOCUMENTS, (config, types, schemas), strict=True):
        docs.append(doc)
        if exc is not None:
            transient = isinstance(exc, TransientError | CredentialsError)
            (failed if transient else unavailable)[name] = str(exc)
    return capabilities_from(*docs, unavailable=unavailable, failed=failed,
                             discovered_at=datetime.now(UTC))


async def _fetch(client: _Documents, path: str) -> tuple[dict[str, Any] | None, TargetError | None]:
    try:
        return await client.get_document(path), None
    except TargetError as exc:
        return None, exc


async def _fetch_config(client: _Documents) -> tuple[dict[str, Any] | None, TargetError | None]:
    doc, exc = await _fetch(client, "ServiceProviderConfig")
    if exc is not None and exc.status == 404:
        legacy, legacy_exc = await _fetch(client, _LEGACY_CONFIG)
        if legacy_exc is None:
            return legacy, None
    return doc, exc


# -- parsing (pure) ------------------------------------------------------------------------


def capabilities_from(service_provider_config: Any = None, resource_types: Any = None,
                      schemas: Any = None, *, unavailable: Mapping[str, str] | None = None,
                      failed: Mapping[str, str] | None = None,
                      discovered_at: datetime | None = None) -> Capabilities:
    """Capabilities from the three documents as decoded JSON; None for one not read."""
    features = parse_service_provider_config(service_provider_config)
    declared = parse_resource_types(resource_types) if resource_types is not None else None
    if declared is not None and "user" not in declared:
        # A provisioning target without users is not credible: an empty or unrecognised
        # answer tells nothing, and must not make every mapping "undeclared".
        declared = None
    attributes = parse_schemas(schemas)
    resources = {kind: _resource(kind, declared, attributes)
                 for kind in _CORE_OF if declared is None or kind in declared}
    return Capabilities(**features, resources=resources, unavailable=dict(unavailable or {}),
                        failed=dict(failed or {}), discovered_at=discovered_at)


def parse_service_provider_config(doc: Any) -> dict[str, Any]:
    """The features of a ServiceProviderConfig (RFC 7643 §5), as keyword arguments of
    :class:`Capabilities`; a feature the document does not state is None."""
    doc = doc if isinstance(doc, Mapping) else {}
    bulk, filter_ = _get(doc, "bulk"), _get(doc, "filter")
    bulk_supported = _supported(bulk)
    return {
        "patch": _supported(_get(doc, "patch")),
        "bulk": bulk_supported,
        # A target that does not do bulk often says maxOperations 0: not a limit to apply.
        "bulk_max_operations": _positive(_get(bulk, "maxOperations")) if bulk_supported else None,
        "bulk_max_payload_size": _positive(_get(bulk, "maxPayloadSize")) if bulk_supported else None,
        "filter": _supported(filter_),
        "filter_max_results": _positive(_get(filter_, "maxResults")),
        "etag": _supported(_get(doc, "etag")),
        "sort": _supported(_get(doc, "sort")),
        "change_password": _supported(_get(doc, "changePassword")),
    }


def parse_resource_types(doc: Any) -> dict[str, ResourceType]:
    """The User and Group resource types of a ``/ResourceTypes`` answer (RFC 7643 §6), by
    object type; other resource types are left out. Attributes are not filled in here."""
    found: dict[str, ResourceType] = {}
    for item in _items(doc):
        kind = _kind_of(item)
        if kind is None or kind in found:
            continue
        extensions = [e for e in _list(_get(item, "schemaExtensions")) if _text(_get(e, "schema"))]
        found[kind] = ResourceType(
            name=_text(_get(item, "name")) or _NAMES_OF[kind],
            endpoint=_text(_get(item, "endpoint")),
            schema=_text(_get(item, "schema")) or _CORE_OF[kind],
            extensions=tuple(str(_get(e, "schema")) for e in extensions),
            required_extensions=tuple(str(_get(e, "schema")) for e in extensions
                                      if _bool(_get(e, "required"))),
        )
    return found


def parse_schemas(doc: Any) -> dict[str, dict[str, Attribute]]:
    """The attributes each schema of a ``/Schemas`` answer declares (RFC 7643 §7), by schema
    URN, each keyed by its case-folded path within the schema (``name``, ``name.givenname``).
    A schema without attributes is left out: it tells nothing."""
    found: dict[str, dict[str, Attribute]] = {}
    for item in _items(doc):
        urn = _text(_get(item, "id"))
        attributes = dict(_flatten(_list(_get(item, "attributes")), prefix=""))
        if urn and attributes and not _contains(found, urn):
            found[urn] = attributes
    return found


def _resource(kind: str, declared: dict[str, ResourceType] | None,
              schemas: dict[str, dict[str, Attribute]]) -> ResourceType:
    """The resource type of ``kind`` with the attributes of every schema of it that was read.
    Without ``/ResourceTypes``, the RFC's core schema is assumed, and the schemas named
    ``...:User`` (``...:Group``) are taken as its extensions, without claiming that they
    are all it has (``extensions`` stays unknown)."""
    base = (declared or {}).get(kind) or ResourceType(name=_NAMES_OF[kind], schema=_CORE_OF[kind])
    by_folded = {urn.casefold(): urn for urn in schemas}
    if base.extensions is not None:
        extensions = [by_folded[e.casefold()] for e in base.extensions if e.casefold() in by_folded]
    else:
        extensions = [urn for urn in schemas if urn.casefold() != base.schema.casefold()
                      and urn.casefold().endswith(f":{base.name.casefold()}")]
    attributes: dict[str, Attribute] = {}
    read: list[str] = []
    core = by_folded.get(base.schema.casefold())
    if core is not None:
        read.append(base.schema)
        attributes.update(_with_common_attributes(schemas[core]))
    for urn in extensions:
        read.append(urn)
        attributes.update(_prefixed(urn, schemas[urn]))
    return msgspec.structs.replace(base, schemas_read=tuple(read), attributes=attributes)


def _flatten(items: Iterable[Any], prefix: str) -> Iterator[tuple[str, Attribute]]:
    for item in items:
        name = _text(_get(item, "name"))
        if not name:
            continue
        path = f"{prefix}{name}"
        subs = [s for s in _list(_get(item, "subAttributes")) if _text(_get(s, "name"))]
        yield path.casefold(), _attribute(item, path, tuple(str(_get(s, "name")) for s in subs))
        if not prefix:  # RFC 7643 allows one level of sub-attributes
            yield from _flatten(subs, prefix=f"{path}.")


def _attribute(item: Any, path: str, subs: tuple[str, ...]) -> Attribute:
    return Attribute(
        path=path,
        type=_text(_get(item, "type")) or (_COMPLEX if subs else "string"),
        multi_valued=_bool(_get(item, "multiValued")) or False,
        case_exact=_bool(_get(item, "caseExact")) or False,
        mutability=_mutability(_get(item, "mutability")),
        required=_bool(_get(item, "required")) or False,
        sub_attributes=subs,
    )


# RFC 7643 §3.1: common attributes that schemas do not list but every resource has.
_COMMON: Final[dict[str, Attribute]] = {
    "id": Attribute(path="id", case_exact=True, mutability="readOnly"),
    "externalid": Attribute(path="externalId", case_exact=True),
    "meta": Attribute(path="meta", type=_COMPLEX, mutability="readOnly"),
}


def _with_common_attributes(core: dict[str, Attribute]) -> dict[str, Attribute]:
    return {**_COMMON, **core}


def _prefixed(urn: str, attributes: dict[str, Attribute]) -> dict[str, Attribute]:
    return {f"{urn}:{key}".casefold(): msgspec.structs.replace(a, path=f"{urn}:{a.path}")
            for key, a in attributes.items()}


def _kind_of(item: Any) -> str | None:
    """``user`` or ``group`` for the standard resource types (by name, schema or endpoint)."""
    name = (_text(_get(item, "name")) or _text(_get(item, "id")) or "").casefold()
    schema = (_text(_get(item, "schema")) or "").casefold()
    endpoint = (_text(_get(item, "endpoint")) or "").casefold().rstrip("/")
    for kind, core in _CORE_OF.items():
        if name == kind or schema == core.casefold():
            return kind
    return _ENDPOINT_OF.get(endpoint if endpoint.startswith("/") else f"/{endpoint}")


# -- reading forgiving JSON ----------------------------------------------------------------


def _get(mapping: Any, name: str) -> Any:
    """``mapping[name]``, matching the key case-insensitively; None if absent or not a mapping."""
    if not isinstance(mapping, Mapping):
        return None
    if name in mapping:
        return mapping[name]
    folded = name.casefold()
    return next((v for k, v in mapping.items() if isinstance(k, str) and k.casefold() == folded), None)


def _items(doc: Any) -> list[Mapping[str, Any]]:
    """The resources of a ListResponse, a bare list, or a single resource."""
    if isinstance(doc, Mapping):
        listed = _get(doc, "Resources")
        doc = listed if isinstance(listed, list) else [doc]
    return [item for item in _list(doc) if isinstance(item, Mapping)]


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _text(value: Any) -> str | None:
    return (value.strip() or None) if isinstance(value, str) else None


def _bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return None


def _supported(feature: Any) -> bool | None:
    return _bool(_get(feature, "supported"))


def _positive(value: Any) -> int | None:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


_MUTABILITY: Final = {m.casefold(): m for m in ("readOnly", "readWrite", "immutable", "writeOnly")}


def _mutability(value: Any) -> str:
    return _MUTABILITY.get((_text(value) or "").casefold(), "readWrite")


# -- using them ----------------------------------------------------------------------------


def attribute(capabilities: Capabilities, object_type: str, path: str) -> Attribute | None:
    """The declared attribute a mapping target path writes (the sub-attribute when the path
    names one; a bare-id reference such as ``manager`` is its ``value``), or None when the
    target does not declare it or its schema is unknown."""
    resource = capabilities.resources.get(object_type)
    keys = _keys(path)
    if resource is None or keys is None:
        return None
    leaf, fallback = keys
    found = resource.attributes.get(leaf)
    return found if found is not None or fallback is None else resource.attributes.get(fallback)


def case_exact(capabilities: Capabilities, object_type: str, path: str) -> bool | None:
    """Whether the target compares values at ``path`` case-sensitively (RFC 7643 caseExact):
    False -> compare case-insensitively; None -> not declared, keep comparing exactly."""
    found = attribute(capabilities, object_type, path)
    return found.case_exact if found is not None else None


@functools.lru_cache(maxsize=1024)
def _keys(path: str) -> tuple[str, str | None] | None:
    """(key of what ``path`` writes, key to fall back on) in ``ResourceType.attributes``.
    Cached: the writer asks once per compared value."""
    try:
        parsed = parse_path(path)
    except ValueError:
        return None
    attribute_key = parsed.attribute_path.casefold()
    if parsed.sub_attribute is not None:
        return f"{attribute_key}.{parsed.sub_attribute.casefold()}", None
    if parsed.is_reference:  # written as {"value": id}; a target may not list `value`
        return f"{attribute_key}.value", attribute_key
    return attribute_key, None


# -- checking the mappings -----------------------------------------------------------------


def check_mappings(app: Application, capabilities: Capabilities,
                   loaded: LoadedConfig | None = None) -> list[Problem]:
    """Every enabled attribute mapping of ``app`` whose target the target's declared schema
    cannot take. Only what the target declared is checked: a resource type, schema or
    extension list it did not serve is unknown, and nothing is reported against it.
    ``loaded`` (the config ``app`` came from) gives each problem its file and line."""
    base = _app_path(app, loaded)
    problems: list[Problem] = []
    for kind, mapping in (("user", app.mappings.user), ("group", app.mappings.group)):
        if mapping is None or not mapping.enabled:
            continue
        here = f"{base}.mappings.{kind}"
        problems += _check_object(app, kind, mapping, capabilities, here, loaded)
    return problems


def _check_object(app: Application, kind: str, mapping: ObjectMapping, capabilities: Capabilities,
                  here: str, loaded: LoadedConfig | None) -> list[Problem]:
    def problem(kind_: ProblemKind, message: str, target: str, path: str) -> Problem:
        file, line = _where(loaded, path)
        return Problem(app=app.name, object_type=kind, target=target, kind=kind_, message=message,
                       config_path=path, file=file, line=line)

    resource = capabilities.resources.get(kind)
    if resource is None:
        if "ResourceTypes" in capabilities.unavailable or "ResourceTypes" in capabilities.failed:
            return []
        return [problem("undeclared-resource-type",
                        f"the target's /ResourceTypes declares no {_NAMES_OF[kind]} resource type",
                        "", here)]
    found: list[Problem] = []
    for j, mapped in enumerate(mapping.attributes):
        path = f"{here}.attributes[{j}].target"
        try:
            parsed = parse_path(mapped.target)
        except ValueError:
            continue  # `validate` reports malformed paths itself
        verdict = _check_path(resource, parsed)
        if verdict is not None:
            found.append(problem(verdict[0], verdict[1], mapped.target, path))
    return found


def _check_path(resource: ResourceType, path: ScimPath) -> tuple[ProblemKind, str] | None:
    if path.schema is not None and not _declares_extension(resource, path.schema):
        declared = ", ".join(resource.extensions or ()) or "none"
        return ("undeclared-extension", f"the target's {resource.name} resource type does not declare "
                f"the schema extension {path.schema} (it declares: {declared})")
    schema = path.schema or resource.schema
    if not _contains(resource.schemas_read, schema):
        return None  # that schema was not read: unknown, not wrong
    declared_attribute = resource.attributes.get(path.attribute_path.casefold())
    if declared_attribute is None:
        return ("unknown-attribute", f"the target's schema {schema} declares no attribute "
                f"{path.attribute!r}{_suggest(resource, path)}")
    return (_check_sub_attributes(declared_attribute, path)
            or _check_writable(resource, declared_attribute, path))


def _declares_extension(resource: ResourceType, urn: str) -> bool:
    """True unless /ResourceTypes was read and lists other extensions only."""
    return resource.extensions is None or _contains(resource.extensions, urn)


def _contains(names: Iterable[str], name: str) -> bool:
    folded = name.casefold()
    return any(n.casefold() == folded for n in names)


def _check_sub_attributes(declared: Attribute, path: ScimPath) -> tuple[ProblemKind, str] | None:
    """The filter's attribute (``type`` in ``emails[type eq "work"]``) and the sub-attribute
    must be sub-attributes of a complex attribute; unknown when none are declared."""
    for sub in (path.filter.attribute if path.filter else None, path.sub_attribute):
        if sub is None:
            continue
        if declared.type != _COMPLEX and not declared.sub_attributes:
            return ("unknown-sub-attribute", f"{declared.path} is a {declared.type} attribute, "
                    f"not complex: it has no sub-attribute {sub!r}")
        if declared.sub_attributes and not _contains(declared.sub_attributes, sub):
            return ("unknown-sub-attribute", f"{declared.path} declares no sub-attribute {sub!r} "
                    f"(it has: {', '.join(declared.sub_attributes)})")
    return None


def _check_writable(resource: ResourceType, declared: Attribute,
                    path: ScimPath) -> tuple[ProblemKind, str] | None:
    leaf = (resource.attributes.get(f"{path.attribute_path}.{path.sub_attribute}".casefold())
            if path.sub_attribute else None)
    for written in (declared, leaf):
        if written is not None and written.mutability == "readOnly":
            return ("read-only", f"{written.path} is readOnly in the target's schema: the target "
                    "ignores or rejects what scimflow writes to it")
    return None


def _suggest(resource: ResourceType, path: ScimPath) -> str:
    """`` (did you mean 'name.givenName'?)`` for a likely intended path, or nothing: a
    sub-attribute of that name, else a close spelling in the same schema."""
    prefix = f"{path.schema}:" if path.schema else ""
    same_schema = [a.path.removeprefix(prefix) for a in resource.attributes.values()
                   if _in_schema(a.path, path.schema)]
    name = path.attribute.casefold()
    nested = [p for p in same_schema if p.casefold().endswith(f".{name}")]
    close = difflib.get_close_matches(path.attribute, [p for p in same_schema if "." not in p],
                                      n=1, cutoff=0.75)
    guess = nested[:1] or close
    return f" (did you mean {prefix + guess[0]!r}?)" if guess else ""


def _in_schema(attribute_path: str, schema: str | None) -> bool:
    if schema is None:
        return not attribute_path.casefold().startswith("urn:")
    return attribute_path.casefold().startswith(f"{schema}:".casefold())


def _app_path(app: Application, loaded: LoadedConfig | None) -> str:
    if loaded is not None:
        for i, candidate in enumerate(loaded.config.applications):
            if candidate.name == app.name:
                return f"$.applications[{i}]"
    return f"$.applications[{app.name}]"


def _where(loaded: LoadedConfig | None, path: str) -> tuple[str | None, int | None]:
    """File and line of the value at ``path``, or of its nearest enclosing value."""
    if loaded is None:
        return None, None
    while path:
        if path in loaded.lines:
            return loaded.file, loaded.lines[path]
        cut = max(path.rfind("."), path.rfind("["))
        path = path[:cut] if cut > 0 else ""
    return loaded.file, None


# -- telling people ------------------------------------------------------------------------


def describe(capabilities: Capabilities) -> list[str]:
    """The capabilities as lines for people; every unknown says why it is unknown."""
    if _unread(capabilities, "ServiceProviderConfig"):
        lines = ["features         unknown (/ServiceProviderConfig not read)"]
    else:
        why = "unknown (not stated in /ServiceProviderConfig)"
        lines = [
            f"PATCH            {_yes_no(capabilities.patch, why)}",
            f"bulk             {_bulk(capabilities, why)}",
            f"filter           {_filter(capabilities, why)}",
            f"ETag             {_yes_no(capabilities.etag, why)}",
            f"sort             {_yes_no(capabilities.sort, why)}",
            f"change password  {_yes_no(capabilities.change_password, why)}",
        ]
    lines += [f"{_NAMES_OF[kind]:<16} {_resource_text(capabilities, kind)}" for kind in _CORE_OF]
    lines += [f"/{name} not served: {reason}" for name, reason in capabilities.unavailable.items()]
    lines += [f"/{name} could not be read now: {reason}" for name, reason in capabilities.failed.items()]
    if not capabilities.complete:
        lines.append("what the target does not declare is unknown: scimflow assumes nothing about it "
                     "and reports no mapping as wrong because of it")
    return lines


def _unread(capabilities: Capabilities, document: str) -> bool:
    return document in capabilities.unavailable or document in capabilities.failed


def _yes_no(value: bool | None, why: str) -> str:
    return why if value is None else ("supported" if value else "not supported")


def _bulk(capabilities: Capabilities, why: str) -> str:
    text = _yes_no(capabilities.bulk, why)
    limits = [f"{capabilities.bulk_max_operations} operations" if capabilities.bulk_max_operations else "",
              f"{capabilities.bulk_max_payload_size} bytes" if capabilities.bulk_max_payload_size else ""]
    shown = " and ".join(x for x in limits if x)
    return f"{text} (at most {shown} per request)" if capabilities.bulk and shown else text


def _filter(capabilities: Capabilities, why: str) -> str:
    text = _yes_no(capabilities.filter, why)
    if capabilities.filter_max_results:
        text += f" (at most {capabilities.filter_max_results} results)"
    return text


def _resource_text(capabilities: Capabilities, kind: str) -> str:
    resource = capabilities.resources.get(kind)
    if resource is None:
        if _unread(capabilities, "ResourceTypes"):
            return "unknown (/ResourceTypes not read)"
        return "not declared in /ResourceTypes"
    if resource.extensions is None:
        extensions = "extensions unknown (/ResourceTypes not read)"
    else:
        extensions = "extensions: " + (", ".join(resource.extensions) or "none")
    if _unread(capabilities, "Schemas"):
        attributes = "attributes unknown (/Schemas not read)"
    elif not resource.schemas_read:
        attributes = "attributes unknown (its schema is not in /Schemas)"
    else:
        attributes = f"{len(resource.attributes)} attributes and sub-attributes declared"
    return f"{resource.schema}; {extensions}; {attributes}"
