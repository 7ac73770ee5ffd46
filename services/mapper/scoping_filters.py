"""Entra ID attribute-based scoping filters: which source objects an application provisions.

Pure code, no I/O. The model is Microsoft's: a scoping filter is a list of clauses that must
*all* hold (AND); an object is in scope when *any* filter holds (OR); no filters at all means
every object is in scope. Each clause is ``attribute OPERATOR value`` with Entra's operator
names (``EQUALS``, ``NOT REGEX MATCH``, ``Greater_Than``, ``&``, ...).

Filters are compiled once, when the configuration is loaded: operators are resolved,
regular expressions compiled and integers parsed, and anything wrong raises
:class:`ScopingError` naming the filter, the clause and what was expected. Evaluation is then
a few plain function calls per clause and never fails: a value a clause cannot use (text
where an integer is needed, say) makes that clause false.

The value rules (every one is documented, with Microsoft's words, in ``docs/scoping.md``):

- null, a missing attribute, ``""`` and a multi-valued attribute with no non-empty values
  are *empty*; every operator is false on an empty attribute except ``IS NULL``;
- text comparisons are case-sensitive; ``REGEX MATCH`` searches (unanchored);
- a multi-valued attribute holds when *every* non-empty value holds (Graph's "All");
- ``Greater_Than`` & co. and ``&``/``!&`` compare integers; ``&`` holds when every bit of
  the clause's value is set in the attribute, ``!&`` when not.
"""

from __future__ import annotations

import difflib
import json
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from services.runtime.errors import ScimflowError

__all__ = [
    "OPERATORS",
    "Clause",
    "CompiledFilters",
    "ScopeResult",
    "ScopingError",
    "compile_filters",
]

Values = tuple[object, ...]
"""An attribute's non-empty values: ``()`` when it is empty, one element when single-valued."""
Test = Callable[[Values], bool]
"""A compiled clause's check of one attribute's values."""


class ScopingError(ScimflowError, ValueError):
    """A scoping filter is invalid; raised when filters are compiled (at start-up).

    ``filter_index`` and ``clause_index`` are 1-based, as in the message; either is None
    when the problem is not about one filter or clause.
    """

    def __init__(self, message: str, *, filter_index: int | None = None,
                 clause_index: int | None = None) -> None:
        self.filter_index = filter_index
        self.clause_index = clause_index
        self.reason = message
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class Clause:
    """One condition: ``attribute operator value`` (``value`` is None for unary operators)."""

    attribute: str
    operator: str
    value: str | None = None


@dataclass(frozen=True, slots=True)
class ScopeResult:
    """Whether an object is in scope, and the human reason (shown in the activity log)."""

    in_scope: bool
    reason: str


# ------------------------------------------------------------------------- value rules

_MISSING: Final = object()
_INTEGER: Final = re.compile(r"[+-]?[0-9]+")
_BOOLEAN_TEXT: Final[Mapping[str, bool]] = {"true": True, "false": False}
_SHOWN_CHARS: Final = 80


def _values(raw: object) -> Values:
    """The non-empty values of an attribute value (None, "" and [] are empty)."""
    if type(raw) is str:
        return (raw,) if raw else ()
    if raw is None or raw is _MISSING:
        return ()
    if isinstance(raw, list | tuple):
        return tuple(v for v in raw if v is not None and v != "")
    return (raw,)


def _text(value: object) -> str:
    """A value as text: booleans print as .NET does (``True``/``False``)."""
    if type(value) is str:
        return value
    if isinstance(value, bool):
        return "True" if value else "False"
    return str(value)


def _integer(value: object) -> int | None:
    """An int, or text that is one (``"42"``, ``" -7 "``); anything else is None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and _INTEGER.fullmatch(text := value.strip()):
        return int(text)
    return None


def _boolean(value: object) -> bool | None:
    """A bool, or ``"true"``/``"false"`` in any case; anything else (1, "yes") is None."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return _BOOLEAN_TEXT.get(value.strip().lower())
    return None


def _every(holds: Callable[[object], bool]) -> Test:
    """A clause over a (possibly multi-valued) attribute: non-empty, and every value holds."""
    def test(values: Values) -> bool:
        return bool(values) and all(map(holds, values))
    return test


# ------------------------------------------------------------- operands, at load time

class _ClauseError(Exception):
    """The clause's value does not suit its operator (wrapped into ScopingError)."""


def _no_value(name: str, value: str | None) -> None:
    if value not in (None, ""):
        raise _ClauseError(f"{name} takes no value, got {_quote(value)}")


def _text_value(name: str, value: str | None) -> str:
    if value is None:
        raise _ClauseError(f"{name} needs a value")
    if not isinstance(value, str):
        raise _ClauseError(f"{name} needs a text value, got {type(value).__name__}")
    if not value:
        raise _ClauseError(f"{name} needs a non-empty value (an empty attribute is tested with IS NULL)")
    return value


def _regex_value(name: str, value: str | None) -> re.Pattern[str]:
    text = _text_value(name, value)
    try:
        return re.compile(text)
    except re.error as exc:
        raise _ClauseError(f"invalid regular expression {_quote(text)}: {exc}") from None


def _integer_value(name: str, value: str | None) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    number = _integer(_text_value(name, value))
    if number is None:
        raise _ClauseError(f"{name} needs an integer value, got {_quote(value)}")
    return number


# --------------------------------------------------------------------- the operators

@dataclass(frozen=True, slots=True)
class _Operator:
    name: str                                    # Microsoft's spelling, shown in reasons
    build: Callable[[str, str | None], Test]     # (name, clause value) -> test; may raise _ClauseError
    show_value: Callable[[str | None], str]      # the clause's value as shown in reasons
    expects: str | None = None                   # what each value must be, when it's not any text
    accepts: Callable[[object], bool] | None = None


def _unary(test: Test) -> Callable[[str, str | None], Test]:
    def build(name: str, value: str | None) -> Test:
        _no_value(name, value)
        return test
    return build


def _text_op(holds: Callable[[str, str], bool]) -> Callable[[str, str | None], Test]:
    def build(name: str, value: str | None) -> Test:
        operand = _text_value(name, value)
        return _every(lambda v: holds(_text(v), operand))
    return build


def _regex_op(*, matches: bool) -> Callable[[str, str | None], Test]:
    def build(name: str, value: str | None) -> Test:
        search = _regex_value(name, value).search
        return _every(lambda v: (search(_text(v)) is not None) is matches)
    return build


def _integer_op(holds: Callable[[int, int], bool]) -> Callable[[str, str | None], Test]:
    def build(name: str, value: str | None) -> Test:
        operand = _integer_value(name, value)

        def one(v: object) -> bool:
            number = _integer(v)
            return number is not None and holds(number, operand)
        return _every(one)
    return build


def _boolean_is(expected: bool) -> Test:
    return _every(lambda v: _boolean(v) is expected)


def _has_bits(number: int, mask: int) -> bool:
    return number & mask == mask


def _lacks_bits(number: int, mask: int) -> bool:
    return number & mask != mask


def _shown_text(value: str | None) -> str:
    return f' "{value}"'


def _shown_integer(value: str | None) -> str:
    number = value if isinstance(value, int) else _integer(value)
    return f" {number}"


def _shown_nothing(value: str | None) -> str:
    return ""


def _is_integer(value: object) -> bool:
    return _integer(value) is not None


def _is_boolean(value: object) -> bool:
    return _boolean(value) is not None


def _text_operator(name: str, holds: Callable[[str, str], bool]) -> _Operator:
    return _Operator(name, _text_op(holds), _shown_text)


def _integer_operator(name: str, holds: Callable[[int, int], bool]) -> _Operator:
    return _Operator(name, _integer_op(holds), _shown_integer, "an integer", _is_integer)


def _boolean_operator(name: str, expected: bool) -> _Operator:
    return _Operator(name, _unary(_boolean_is(expected)), _shown_nothing, "a boolean", _is_boolean)


_ALL_OPERATORS: Final = (
    _text_operator("EQUALS", operator.eq),
    _text_operator("NOT EQUALS", operator.ne),
    _boolean_operator("IS TRUE", expected=True),
    _boolean_operator("IS FALSE", expected=False),
    _Operator("IS NULL", _unary(operator.not_), _shown_nothing),
    _Operator("IS NOT NULL", _unary(bool), _shown_nothing),
    _Operator("REGEX MATCH", _regex_op(matches=True), _shown_text),
    _Operator("NOT REGEX MATCH", _regex_op(matches=False), _shown_text),
    _integer_operator("Greater_Than", operator.gt),
    _integer_operator("Greater_Than_OR_EQUALS", operator.ge),
    _integer_operator("Less_Than", operator.lt),
    _integer_operator("Less_Than_OR_EQUALS", operator.le),
    _text_operator("Includes", operator.contains),
    _text_operator("ENDS_WITH", str.endswith),
    _integer_operator("&", _has_bits),
    _integer_operator("!&", _lacks_bits),
)

OPERATORS: Final[tuple[str, ...]] = tuple(op.name for op in _ALL_OPERATORS)
"""Every operator name, spelt as Microsoft writes it."""


def _operator_key(name: str) -> str:
    """Case and separators don't matter: ``not_equals``, ``Not Equals`` -> ``NOT_EQUALS``."""
    return "_".join(re.split(r"[\s_]+", name.strip().upper()))


_REGISTRY: Final[Mapping[str, _Operator]] = {_operator_key(op.name): op for op in _ALL_OPERATORS}


def _resolve(name: str) -> _Operator:
    found = _REGISTRY.get(_operator_key(name)) if isinstance(name, str) else None
    if found is not None:
        return found
    close = difflib.get_close_matches(_operator_key(str(name)), _REGISTRY, n=1)
    hint = f' (did you mean "{_REGISTRY[close[0]].name}"?)' if close else ""
    raise _ClauseError(f"unknown operator {_quote(name)}{hint}; expected one of: {', '.join(OPERATORS)}")


# ------------------------------------------------------------------ compiled filters

@dataclass(frozen=True, slots=True)
class _CompiledClause:
    attribute: str
    folded: str
    test: Test
    op: _Operator
    shown: str                                   # 'department EQUALS "Sales"'

    def holds(self, attrs: Mapping[str, object]) -> bool:
        return self.test(_values(self._raw(attrs)))

    def explain(self, attrs: Mapping[str, object]) -> str:
        """Why the clause is false for ``attrs``: the clause and the value it saw."""
        return f"{self.shown}: {_observed(self._raw(attrs), self.op)}"

    def _raw(self, attrs: Mapping[str, object]) -> object:
        """Exact name first, then ignoring case (as the expression engine reads attributes)."""
        raw = attrs.get(self.attribute, _MISSING)
        if raw is _MISSING:
            folded = self.folded
            raw = next((v for k, v in attrs.items() if k.casefold() == folded), _MISSING)
        return raw


@dataclass(frozen=True, slots=True)
class _CompiledFilter:
    label: str                                   # 'filter 2' or 'filter 2 (Sales team)'
    clauses: tuple[_CompiledClause, ...]
    matched: ScopeResult                         # precomputed: the result when it holds

    def failure(self, attrs: Mapping[str, object]) -> str | None:
        """None when every clause holds; otherwise the first failing clause, explained."""
        for index, clause in enumerate(self.clauses, 1):
            if not clause.holds(attrs):
                return f"{self.label} failed at clause {index} ({clause.explain(attrs)})"
        return None


_EVERYTHING: Final = ScopeResult(True, "no scoping filters: every object is in scope")


class CompiledFilters:
    """Scoping filters ready to evaluate: filters OR together, clauses AND within a filter."""

    __slots__ = ("_filters",)

    def __init__(self, filters: tuple[_CompiledFilter, ...]) -> None:
        self._filters = filters

    def __len__(self) -> int:
        return len(self._filters)

    def evaluate(self, attrs: Mapping[str, object]) -> ScopeResult:
        """Whether the object with ``attrs`` is in scope, naming the deciding filter/clause."""
        if not self._filters:
            return _EVERYTHING
        failures = []
        for compiled in self._filters:
            failed = compiled.failure(attrs)
            if failed is None:
                return compiled.matched
            failures.append(failed)
        return ScopeResult(False, "no filter matched: " + "; ".join(failures))


def compile_filters(filters: Sequence[Sequence[Clause]], *,
                    names: Sequence[str] | None = None) -> CompiledFilters:
    """Compile scoping filters once; raises :class:`ScopingError` on the first bad clause.

    ``names`` (one per filter; ``""`` for none) label the filters in reasons.
    """
    if names is not None and len(names) != len(filters):
        raise ScopingError(f"expected one name per scoping filter ({len(filters)}), got {len(names)}")
    return CompiledFilters(tuple(
        _compile_filter(index, clauses, names[index - 1] if names else "")
        for index, clauses in enumerate(filters, 1)
    ))


def _compile_filter(index: int, clauses: Sequence[Clause], name: str) -> _CompiledFilter:
    label = f"filter {index} ({name})" if name else f"filter {index}"
    if not clauses:
        raise ScopingError(f"scoping filter {index} has no clauses; expected at least one",
                           filter_index=index)
    compiled = tuple(_compile_clause(index, position, clause)
                     for position, clause in enumerate(clauses, 1))
    summary = " AND ".join(clause.shown for clause in compiled)
    return _CompiledFilter(label, compiled, ScopeResult(True, f"{label} matched: {summary}"))


def _compile_clause(filter_index: int, clause_index: int, clause: Clause) -> _CompiledClause:
    try:
        _check_attribute(clause.attribute)
        op = _resolve(clause.operator)
        test = op.build(op.name, clause.value)
    except _ClauseError as exc:
        where = f"scoping filter {filter_index}, clause {clause_index}"
        subject = f"{clause.attribute} {clause.operator}".strip()
        raise ScopingError(f"{where} ({subject}): {exc}", filter_index=filter_index,
                           clause_index=clause_index) from None
    shown = f"{clause.attribute} {op.name}{op.show_value(clause.value)}"
    return _CompiledClause(clause.attribute, clause.attribute.casefold(), test, op, shown)


def _check_attribute(name: str) -> None:
    if not isinstance(name, str) or not name.strip():
        raise _ClauseError(f"expected an attribute name, got {_quote(name)}")


# --------------------------------------------------------------------------- reasons

def _quote(value: object) -> str:
    """A value as JSON (strings quoted, None as null), cut short for log lines."""
    shown = json.dumps(value, ensure_ascii=False, default=str)
    return shown if len(shown) <= _SHOWN_CHARS else shown[:_SHOWN_CHARS - 1] + "…"


def _observed(raw: object, op: _Operator) -> str:
    """What a failing clause saw: 'attribute is missing', 'value is "" (empty)', ..."""
    if raw is _MISSING:
        return "attribute is missing"
    values = _values(raw)
    shown = f"value is {_quote(raw)}"
    if not values:
        return shown if raw is None else f"{shown} (empty)"
    if op.accepts is not None and not all(map(op.accepts, values)):
        return f"{shown} (not {op.expects})"
    return shown
