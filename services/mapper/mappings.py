"""Attribute mappings (Entra's Direct, Constant, Expression, None), compiled once.

Compiling happens at config load, so an expression error is a start-up error that names
the mapping. Applying a compiled mapping to one object's attributes is pure and fast.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Protocol

from services.mapper.expressions import UniqueCandidates
from services.runtime.config import AttributeMapping, LoadedConfig, ObjectMapping
from services.runtime.errors import ConfigError

__all__ = ["CompiledMapping", "Evaluator", "MappedObject", "compile_object_mapping"]


class Evaluator(Protocol):
    """A compiled expression: the seam to the expression engine."""

    text: str
    redacted: bool

    def evaluate(self, attrs: Mapping[str, object]) -> object: ...


ExpressionCompiler = Callable[[str], Evaluator]


@dataclass(frozen=True, slots=True)
class _Attribute:
    target: str
    value: Callable[[Mapping[str, Any]], Any]
    """Direct/Constant: reads the value; Expression: ``_expression_value`` of it."""
    default: Any
    on_create_only: bool
    matching: int | None
    redacted: bool
    evaluate: Callable[[Mapping[str, Any]], Any] | None = None
    """The bare expression (for the fast path), when this is an Expression mapping."""
    reference: bool = False
    """The value is another object's source id (e.g. ``manager``): it goes to ``references``."""


@dataclass(slots=True)
class MappedObject:
    """What one object should look like in the target."""

    attributes: dict[str, Any] = field(default_factory=dict)
    create_only: dict[str, Any] = field(default_factory=dict)
    matching: list[tuple[int, str, Any]] = field(default_factory=list)
    redacted: list[str] = field(default_factory=list)
    unique: dict[str, list[Any]] = field(default_factory=dict)
    references: dict[str, str] = field(default_factory=dict)
    """Target path -> source id of the object it refers to; the writer writes its target id."""


@dataclass(frozen=True, slots=True)
class CompiledMapping:
    enabled: bool
    actions: frozenset[str]
    attributes: tuple[_Attribute, ...]
    direct: tuple[tuple[str, str], ...] = ()
    """(target, source) of plain Direct mappings: the hot path, no per-value branching."""
    simple: tuple[tuple[str, Callable[[Mapping[str, Any]], Any]], ...] = ()
    """(target, evaluate) of plain Expression mappings (no default, matching or redaction)."""
    ignore: object = None
    """The expression engine's IgnoreFlowIfNullOrEmpty sentinel."""

    @property
    def matching_targets(self) -> list[str]:
        """The target attributes that find existing objects, in precedence order."""
        found = sorted((a.matching, a.target) for a in self.attributes if a.matching is not None)
        return [target for _, target in found]

    def apply(self, attrs: Mapping[str, Any]) -> MappedObject:
        """Map source attributes to target attributes (evaluation errors propagate)."""
        out = MappedObject()
        values = out.attributes
        for target, source in self.direct:
            v = attrs.get(source)
            values[target] = v if type(v) in _WIRE_TYPES else _plain(v)
        for target, evaluate in self.simple:
            v = evaluate(attrs)
            if type(v) in _WIRE_TYPES:
                values[target] = v
            elif isinstance(v, UniqueCandidates):
                out.unique[target] = list(v)  # the writer picks one, once, on create
            elif v is not self.ignore:
                values[target] = _plain(v)
        for a in self.attributes:
            raw = a.value(attrs)
            if a.reference:
                _refer(out, a.target, raw)
                continue
            if isinstance(raw, UniqueCandidates):
                # Chosen by the writer against the target, once, when the object is created.
                out.unique[a.target] = list(raw)
                continue
            value = _plain(raw)
            if value is _DROP:
                continue
            if value is None and a.default is not None:
                out.create_only[a.target] = a.default  # Entra: default applies on create only
                continue
            (out.create_only if a.on_create_only else out.attributes)[a.target] = value
            if a.matching is not None and not _blank(value):
                out.matching.append((a.matching, a.target, value))
            if a.redacted:
                out.redacted.append(a.target)
        out.matching.sort(key=lambda m: m[0])
        return out


_DROP = object()


def _blank(value: Any) -> bool:
    # An account found (or named) by "" or "   " is never the one meant.
    return value is None or (isinstance(value, str) and not value.strip())
_WIRE_TYPES = frozenset({str, int, bool, float, type(None)})


def _refer(out: MappedObject, target: str, raw: Any) -> None:
    """A reference's value is one source id; null or empty means "none" (the writer clears it)."""
    if raw is _DROP:
        return
    if raw is None or raw == "":
        out.attributes[target] = None
        return
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        raise TypeError(f"{target!r} is a reference, so its value must be one source id, "
                        f"got {type(raw).__name__}")
    out.references[target] = str(raw)


def compile_object_mapping(loaded: LoadedConfig, mapping: ObjectMapping, path: str,
                           compile_expression: ExpressionCompiler | None = None,
                           ignore: object = None) -> CompiledMapping:
    """Compile one object mapping; ``path`` is its JSON path in the config (for errors)."""
    direct = tuple((a.target, a.source or "") for a in mapping.attributes
                   if a.type == "direct" and _is_plain(a))
    simple: list[tuple[str, Callable[[Mapping[str, Any]], Any]]] = []
    general: list[_Attribute] = []
    for i, a in enumerate(mapping.attributes):
        if a.type == "none" or (a.type == "direct" and _is_plain(a)):
            continue
        _check_reference(loaded, a, f"{path}.attributes[{i}]")
        compiled = _compile_attribute(loaded, a, f"{path}.attributes[{i}]", compile_expression, ignore)
        if compiled.evaluate is not None and _is_plain(a) and not compiled.redacted:
            simple.append((a.target, compiled.evaluate))
        else:
            general.append(compiled)
    return CompiledMapping(mapping.enabled, frozenset(mapping.actions), tuple(general), direct,
                           tuple(simple), ignore)


def _is_plain(a: AttributeMapping) -> bool:
    return a.default is None and a.apply == "always" and a.matching is None and a.reference is None


def _check_reference(loaded: LoadedConfig, a: AttributeMapping, path: str) -> None:
    """A reference is resolved by the writer whenever its object is provisioned, so it is
    always applied, has no default and cannot find an account (no matching)."""
    if a.reference is None:
        return
    for key, bad in (("apply", a.apply != "always"), ("default", a.default is not None),
                     ("matching", a.matching is not None)):
        if bad:
            raise loaded.error(f"{path}.{key}", f"{a.target!r} is a reference (to a {a.reference}); "
                               f"`{key}` cannot be set on a reference mapping")


def _compile_attribute(loaded: LoadedConfig, a: AttributeMapping, path: str,
                       compile_expression: ExpressionCompiler | None,
                       ignore: object) -> _Attribute:
    redacted = False
    value: Callable[[Mapping[str, Any]], Any]
    if a.type == "direct":
        source = a.source or ""  # config validation guarantees a source for direct mappings
        value = lambda attrs: attrs.get(source)  # noqa: E731 - the smallest closure is the point
    elif a.type == "constant":
        constant = a.value
        value = lambda attrs: constant  # noqa: E731
    else:
        if compile_expression is None:
            raise loaded.error(path, "expression mappings need the expression engine")
        try:
            compiled = compile_expression(a.expression or "")
        except ConfigError as exc:
            raise loaded.error(f"{path}.expression", f"mapping {a.target!r}: {exc}") from None
        redacted = compiled.redacted
        if a.matching is not None and getattr(compiled, "function", None) == "SelectUniqueValue":
            raise loaded.error(f"{path}.matching",
                               f"{a.target!r} comes from SelectUniqueValue, so it cannot find an "
                               "existing account; match on another attribute (e.g. externalId)")
        value = _expression_value(compiled, ignore)
        return _Attribute(a.target, value, a.default, a.apply == "on_create", a.matching,
                          redacted, compiled.evaluate, a.reference is not None)
    return _Attribute(a.target, value, a.default, a.apply == "on_create", a.matching, redacted,
                      reference=a.reference is not None)


def _expression_value(compiled: Evaluator, ignore: object) -> Callable[[Mapping[str, Any]], Any]:
    def value(attrs: Mapping[str, Any]) -> Any:
        result = compiled.evaluate(attrs)
        return _DROP if ignore is not None and result is ignore else result

    return value


def _plain(value: Any) -> Any:
    """Values as they travel on the wire: dates as ISO-8601, tuples as lists."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, tuple):
        return list(value)
    return value
