"""SCIM attribute paths, as attribute mappings name their targets — pure functions, no I/O.

A mapping's target is a path into a SCIM resource (a subset of RFC 7644 §3.5.2 ``PATH``)::

    userName  active  displayName  name.givenName
    emails[type eq "work"].value   phoneNumbers[type eq "mobile"].value
    addresses[type eq "work"].locality
    urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department
    urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager   (the manager's id)

From ``{path: value}`` this module builds the body of a create (:func:`build_resource`),
reads a value back from what a target returned (:func:`read_path`), and turns changed
values into PATCH operations (:func:`patch_operations`). Filters inside ``[...]`` are
limited to one ``eq`` comparison: that is what identifies one value of a multi-valued
attribute, and what Entra's mappings use.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

__all__ = [
    "CORE_GROUP",
    "CORE_USER",
    "ENTERPRISE_USER",
    "PATCH_OP",
    "Dialect",
    "ScimPath",
    "ValueFilter",
    "apply_changes",
    "build_resource",
    "chunked",
    "equality_filter",
    "member_operations",
    "parse_path",
    "patch_operations",
    "read_path",
    "validate_path",
]

CORE_USER = "urn:ietf:params:scim:schemas:core:2.0:User"
CORE_GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
ENTERPRISE_USER = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
PATCH_OP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"

Dialect = Literal["rfc7644", "entra"]
_C = TypeVar("_C", dict[str, Any], list[Any])
_T = TypeVar("_T")
_READ_ONLY = ("meta",)  # server-managed: never sent back in a PUT

_CORE_PREFIX = "urn:ietf:params:scim:schemas:core:2.0:"
_CORE_SCHEMAS = {"User": CORE_USER, "Group": CORE_GROUP}
# RFC 7644 ATTRNAME, plus "$ref" which RFC 7643 uses as a sub-attribute name.
_NAME = r"(?:\$ref|[A-Za-z][A-Za-z0-9_-]*)"
_PATH = re.compile(
    rf"""
    (?P<attribute>{_NAME})
    (?:\[\s*(?P<filter_attribute>{_NAME})\s+(?i:eq)\s+
        (?P<filter_value>"(?:[^"\\]|\\.)*"|(?i:true|false))\s*\])?
    (?:\.(?P<sub_attribute>{_NAME}))?
    """,
    re.VERBOSE,
)
_FILTER_OPERATOR = re.compile(r"\[\s*\S+\s+(\S+)")
_URN = re.compile(r"urn:[A-Za-z0-9][A-Za-z0-9-]{0,31}:\S+", re.IGNORECASE)
_EXPECTED = ('expected e.g. userName, name.givenName, emails[type eq "work"].value or '
             f"{ENTERPRISE_USER}:department")

# Complex attributes that a mapping sets with a bare id; on the wire they are {"value": id}.
_REFERENCES = {(ENTERPRISE_USER.lower(), "manager")}

_OP_NAMES: dict[str, tuple[str, str, str]] = {
    "rfc7644": ("add", "replace", "remove"),
    # What Entra's provisioning service sends, for targets built and tested against it.
    "entra": ("Add", "Replace", "Remove"),
}


@dataclass(frozen=True, slots=True)
class ValueFilter:
    """``[attribute eq value]``: selects the values of a multi-valued attribute."""

    attribute: str
    value: str | bool

    def matches(self, element: object) -> bool:
        if not isinstance(element, Mapping):
            return False
        found = _get(element, self.attribute)
        # The string sub-attributes filters use (type, an email's value) are caseExact=false
        # in RFC 7643's User schema, and targets answer "Work" as readily as "work".
        if isinstance(found, str) and isinstance(self.value, str):
            return found.casefold() == self.value.casefold()
        return bool(found == self.value and type(found) is type(self.value))

    def __str__(self) -> str:
        literal = json.dumps(self.value, ensure_ascii=False)
        return f"{self.attribute} eq {literal}"


@dataclass(frozen=True, slots=True)
class ScimPath:
    """A parsed path. ``schema`` is an extension URN, or None for the core schema."""

    schema: str | None
    attribute: str
    filter: ValueFilter | None = None
    sub_attribute: str | None = None

    @property
    def is_reference(self) -> bool:
        """A bare-id complex attribute, such as the enterprise ``manager``."""
        return (self.sub_attribute is None and self.filter is None
                and ((self.schema or "").lower(), self.attribute.lower()) in _REFERENCES)

    @property
    def element(self) -> ScimPath:
        """The path of the whole multi-valued element this path points into."""
        return ScimPath(self.schema, self.attribute, self.filter)

    @property
    def attribute_path(self) -> str:
        """The attribute alone, with its schema URN when it lives in an extension."""
        return f"{self.schema}:{self.attribute}" if self.schema else self.attribute

    def __str__(self) -> str:
        text = self.attribute_path
        if self.filter is not None:
            text += f"[{self.filter}]"
        if self.sub_attribute is not None:
            text += f".{self.sub_attribute}"
        return text


def parse_path(path: str) -> ScimPath:
    """Parse a mapping target path; raise ValueError saying what is wrong with it."""
    if not isinstance(path, str) or not path.strip():
        raise ValueError(f"invalid SCIM attribute path {path!r}: it is empty; {_EXPECTED}")
    schema, rest = _split_schema(path)
    match = _PATH.fullmatch(rest)
    if match is None:
        raise ValueError(f"invalid SCIM attribute path {path!r}: {_diagnose(rest)}; {_EXPECTED}")
    return ScimPath(schema, match["attribute"], _filter_of(match), match["sub_attribute"])


def validate_path(path: str) -> None:
    """Raise ValueError with a clear message if ``path`` is not a usable target path."""
    parse_path(path)


def equality_filter(path: str, value: str) -> str:
    """The SCIM filter matching resources whose ``path`` equals ``value``.

    ``emails[type eq "work"].value`` becomes ``emails[type eq "work" and value eq "..."]``
    (a filter cannot end in ``].sub``). The value is a JSON string, so quotes and
    backslashes are escaped as RFC 7644 §3.4.2.2 requires.
    """
    parsed = parse_path(path)
    literal = json.dumps(value, ensure_ascii=False)
    if parsed.is_reference:
        return f"{parsed}.value eq {literal}"  # a complex attribute compares by its id
    if parsed.filter is None:
        return f"{parsed} eq {literal}"
    inner = f"{parsed.filter} and {parsed.sub_attribute or 'value'} eq {literal}"
    return f"{parsed.attribute_path}[{inner}]"


def build_resource(values: Mapping[str, object], *, schemas_for: str = "User") -> dict[str, Any]:
    """A SCIM resource body for POST from ``{target path: value}``; None values are left out.

    ``schemas`` lists the core schema of ``schemas_for`` ("User" or "Group") and every
    extension a path uses. A filtered path creates the matching element, e.g.
    ``emails[type eq "work"].value`` -> ``{"type": "work", "value": ..., "primary": true}``;
    the first element of each multi-valued attribute is the primary one.
    """
    if schemas_for not in _CORE_SCHEMAS:
        raise ValueError(f"schemas_for must be one of {sorted(_CORE_SCHEMAS)}, not {schemas_for!r}")
    body: dict[str, Any] = {"schemas": [_CORE_SCHEMAS[schemas_for]]}
    for text, value in values.items():
        path = parse_path(text)
        if value is None:
            continue  # "no value" on create means "do not send the attribute"
        if path.schema is not None and path.schema not in body["schemas"]:
            body["schemas"].append(path.schema)
        _put(_container(body, path, text), path, value, text)
    return body


def read_path(resource: Mapping[str, Any], path: str) -> object | None:
    """The value at ``path`` in a resource a target returned, or None when absent.

    Attribute names match case-insensitively (RFC 7643 §2.1). A bare-id reference such as
    the enterprise ``manager`` reads back as its id, so it compares equal to the mapped value.
    """
    parsed = parse_path(path)
    container = resource if parsed.schema is None else _get(resource, parsed.schema)
    if not isinstance(container, Mapping):
        return None
    value = _get(container, parsed.attribute)
    if parsed.filter is not None:
        value = _first_match(value, parsed.filter)
    if parsed.sub_attribute is not None:
        value = _get(value, parsed.sub_attribute) if isinstance(value, Mapping) else None
    elif parsed.is_reference and isinstance(value, Mapping):
        value = _get(value, "value")
    result: object | None = value
    return result


def patch_operations(changes: Mapping[str, object | None], *, dialect: str = "rfc7644",
                     current: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """PATCH operations for ``{target path: new value}``: ``replace``, or ``remove`` for None.

    ``current`` is the resource as the target last returned it. When given:

    - a filtered path whose element does not exist yet is *added* instead of replaced:
      RFC 7644 §3.5.2.3 makes a ``replace`` that matches no element fail with 400
      ``noTarget``. ``rfc7644`` adds the whole element to the attribute (one ``add`` per
      element, however many of its sub-attributes changed); ``entra`` sends ``Add`` on the
      filtered path, as Entra does.
    - a ``remove`` of something already absent is left out (some targets answer 400).

    A ``remove`` of ``X[filter].value`` removes the whole element: an email without its
    address is meaningless. The result may be empty; do not send an empty PATCH.
    """
    names = _op_names(dialect)
    operations: list[dict[str, Any]] = []
    new_elements: dict[str, dict[str, Any]] = {}
    for text, value in changes.items():
        path = parse_path(text)
        if value is None:
            operations.extend(_remove(path, names, current))
        elif current is not None and path.filter is not None and _element_missing(current, path):
            operations.extend(_add_element(path, value, dialect, current, new_elements))
        else:
            operations.append({"op": names[1], "path": str(path), "value": _wire(path, value)})
    return operations


def apply_changes(resource: Mapping[str, Any], changes: Mapping[str, object | None]) -> dict[str, Any]:
    """The full resource for a PUT: ``resource`` (as the target returned it) with ``changes``
    applied (None removes), without the server-managed ``meta``.

    A PUT replaces the whole resource (RFC 7644 §3.5.1), so everything the target holds that
    scimflow does not map is sent back unchanged rather than lost.
    """
    body = {k: copy.deepcopy(v) for k, v in resource.items() if k.lower() not in _READ_ONLY}
    schemas = body.setdefault("schemas", [])
    for text, value in changes.items():
        path = parse_path(text)
        if value is None:
            _delete(body, path)
            continue
        if path.schema is not None and path.schema not in schemas:
            schemas.append(path.schema)
        _put(_container(body, path, text), path, value, text)
    return body


def member_operations(add: Sequence[str], remove: Sequence[str], *, dialect: str = "rfc7644",
                      max_values: int = 100) -> list[list[dict[str, Any]]]:
    """The PATCH requests (each a list of operations) that add and remove group members.

    Only the deltas are sent, never the whole member list, with at most ``max_values``
    member ids per request. ``rfc7644`` adds with one ``add`` of many values and removes
    with one ``remove`` per member, selected by ``members[value eq "id"]`` (RFC 7644
    §3.5.2.2: a remove carries no value); ``entra`` sends what Entra's client sends:
    ``Add``/``Remove`` with the members as the value.
    """
    add_ids, remove_ids = list(dict.fromkeys(add)), list(dict.fromkeys(remove))
    both = set(add_ids) & set(remove_ids)
    if both:
        raise ValueError(f"{len(both)} member id(s) are both added and removed, e.g. {min(both)!r}")
    if max_values < 1:
        raise ValueError(f"max_values must be at least 1, not {max_values}")
    names = _op_names(dialect)
    requests = [[{"op": names[0], "path": "members", "value": _members(chunk)}]
                for chunk in chunked(add_ids, max_values)]
    for chunk in chunked(remove_ids, max_values):
        if dialect == "entra":
            requests.append([{"op": names[2], "path": "members", "value": _members(chunk)}])
        else:
            requests.append([{"op": names[2], "path": f"members[value eq {json.dumps(m)}]"}
                             for m in chunk])
    return requests


def chunked(items: Sequence[_T], size: int) -> list[list[_T]]:
    """``items`` in consecutive lists of at most ``size``."""
    if size < 1:
        raise ValueError(f"size must be at least 1, not {size}")
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


# -- parsing -------------------------------------------------------------------------------


def _split_schema(path: str) -> tuple[str | None, str]:
    """Split ``urn:...:User:attr`` into (extension URN or None for core, ``attr...``)."""
    if not path.lower().startswith("urn:"):
        return None, path
    head, bracket, tail = path.partition("[")  # a filter value may itself hold colons
    schema, colon, attribute = head.rpartition(":")
    if not colon or not attribute or _URN.fullmatch(schema) is None:
        raise ValueError(f"invalid SCIM attribute path {path!r}: a schema URN must be followed "
                         f"by ':' and an attribute name; {_EXPECTED}")
    rest = attribute + bracket + tail
    if schema.lower().startswith(_CORE_PREFIX):
        return None, rest  # `urn:...:core:2.0:User:userName` is plain `userName`
    return schema, rest


def _filter_of(match: re.Match[str]) -> ValueFilter | None:
    if match["filter_attribute"] is None:
        return None
    literal = match["filter_value"]
    value: str | bool = (json.loads(literal) if literal.startswith('"')
                         else literal.lower() == "true")
    return ValueFilter(match["filter_attribute"], value)


def _diagnose(rest: str) -> str:
    """Say why a path (without its schema URN) did not parse."""
    if rest.count("[") != rest.count("]"):
        return "unbalanced '[' ']'"
    operator = _FILTER_OPERATOR.search(rest)
    if "[" in rest and operator is not None and operator[1].lower() != "eq":
        return (f"the filter uses {operator[1]!r}; only one `attribute eq \"value\"` "
                "comparison is supported inside [...]")
    if "[" in rest:
        return 'the filter must be one comparison: attribute eq "value" (or true/false)'
    if rest.count(".") > 1:
        return "only one level of sub-attribute is allowed (attribute.subAttribute)"
    return "attribute names start with a letter and hold only letters, digits, '_' and '-'"


# -- building ------------------------------------------------------------------------------


def _container(body: dict[str, Any], path: ScimPath, text: str) -> dict[str, Any]:
    if path.schema is None:
        return body
    return _child(body, path.schema, dict, text)


def _child(parent: dict[str, Any], name: str, kind: type[_C], text: str) -> _C:
    """``parent[name]``, created empty if absent; it must be of ``kind``."""
    existing = parent.setdefault(name, kind())
    if isinstance(existing, kind):
        return existing
    # e.g. both `name` and `name.givenName` mapped: the two values cannot be merged.
    raise ValueError(f"{text!r} conflicts with another mapped value for {name!r}")


def _put(container: dict[str, Any], path: ScimPath, value: object, text: str) -> None:
    if path.filter is not None:
        _put_in_element(container, path, value, text)
    elif path.sub_attribute is not None:
        _child(container, path.attribute, dict, text)[path.sub_attribute] = value
    else:
        container[path.attribute] = _wire(path, value)


def _put_in_element(container: dict[str, Any], path: ScimPath, value: object, text: str) -> None:
    assert path.filter is not None  # callers only pass filtered paths
    elements = _child(container, path.attribute, list, text)
    element = _first_match(elements, path.filter)
    if element is None:
        element = {path.filter.attribute: path.filter.value}
        elements.append(element)
    if path.sub_attribute is not None:
        element[path.sub_attribute] = value
    elif isinstance(value, Mapping):
        element.update(value)
    else:
        raise ValueError(f"{text!r} names a whole element; its value must be an object")
    _mark_primary(elements)


def _mark_primary(elements: list[dict[str, Any]]) -> None:
    """Make the first element primary unless one already is (RFC 7643: at most one)."""
    if elements and not any(_get(e, "primary") is True for e in elements):
        elements[0]["primary"] = True


def _members(ids: Sequence[str]) -> list[dict[str, str]]:
    return [{"value": member} for member in ids]


def _delete(body: dict[str, Any], path: ScimPath) -> None:
    """Remove what ``path`` names from a full resource (for a PUT); absent is fine."""
    container = body if path.schema is None else _get(body, path.schema)
    if not isinstance(container, dict):
        return
    key = _key(container, path.attribute)
    if key is None:
        return
    if path.filter is not None:
        elements = container[key]
        if not isinstance(elements, list):
            return
        if path.sub_attribute in (None, "value"):  # an email without its address is meaningless
            container[key] = [e for e in elements if not path.filter.matches(e)]
        else:
            for element in elements:
                if path.filter.matches(element):
                    element.pop(_key(element, path.sub_attribute) or path.sub_attribute, None)
    elif path.sub_attribute is not None:
        parent = container[key]
        if isinstance(parent, dict):
            parent.pop(_key(parent, path.sub_attribute) or path.sub_attribute, None)
    else:
        del container[key]


def _key(mapping: Mapping[str, Any], name: str) -> str | None:
    """The key ``mapping`` uses for attribute ``name`` (case-insensitive), if present."""
    if name in mapping:
        return name
    folded = name.casefold()
    return next((k for k in mapping if isinstance(k, str) and k.casefold() == folded), None)


def _wire(path: ScimPath, value: object) -> object:
    """The JSON value to send for ``path``: a bare id becomes ``{"value": id}``."""
    if path.is_reference and not isinstance(value, Mapping):
        return {"value": value}
    return value


# -- reading -------------------------------------------------------------------------------


def _get(mapping: Mapping[str, Any], name: str) -> Any:
    """``mapping[name]`` with SCIM's case-insensitive attribute names."""
    if name in mapping:
        return mapping[name]
    folded = name.casefold()
    for key, value in mapping.items():
        if isinstance(key, str) and key.casefold() == folded:
            return value
    return None


def _first_match(elements: object, value_filter: ValueFilter) -> Any:
    if not isinstance(elements, list):
        return None
    return next((e for e in elements if value_filter.matches(e)), None)


# -- patching ------------------------------------------------------------------------------


def _op_names(dialect: str) -> tuple[str, str, str]:
    try:
        return _OP_NAMES[dialect]
    except KeyError:
        raise ValueError(f"unknown PATCH dialect {dialect!r}; "
                         f"expected one of {sorted(_OP_NAMES)}") from None


def _element_missing(current: Mapping[str, Any], path: ScimPath) -> bool:
    return read_path(current, str(path.element)) is None


def _remove(path: ScimPath, names: tuple[str, str, str],
            current: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    target = path.element if path.filter is not None and path.sub_attribute == "value" else path
    if current is not None and read_path(current, str(target)) is None:
        return []
    return [{"op": names[2], "path": str(target)}]


def _add_element(path: ScimPath, value: object, dialect: str, current: Mapping[str, Any],
                 new_elements: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Create a missing multi-valued element; returns the new operation, if one is needed."""
    assert path.filter is not None  # callers only pass filtered paths
    add = _op_names(dialect)[0]
    if dialect == "entra":  # Add on the filtered path itself, as Entra sends it
        return [{"op": add, "path": str(path), "value": value}]
    key = str(path.element)
    is_new = key not in new_elements
    element = new_elements.setdefault(key, {path.filter.attribute: path.filter.value})
    if path.sub_attribute is not None:
        element[path.sub_attribute] = value
    elif isinstance(value, Mapping):
        element.update(value)
    else:
        raise ValueError(f"{str(path)!r} names a whole element; its value must be an object")
    if not is_new:
        return []  # merged into the element an earlier operation already carries
    existing = read_path(current, path.attribute_path)
    if not existing and path.filter.attribute.lower() != "primary":
        element["primary"] = True  # the only element: make it the primary one
    return [{"op": add, "path": path.attribute_path, "value": [element]}]
