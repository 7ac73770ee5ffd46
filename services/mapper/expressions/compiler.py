"""The compiler: expression text -> a checked tree of closures, evaluated per object.

``compile_expression`` parses the text once (``parser``), checks every function name (in
any case: ``join`` is Join), argument count and constant argument (regexes, date formats,
intervals) against the registry (``functions``) and builds a tree of closures;
``Expression.evaluate`` runs them against one object's attributes. Pure code, no I/O.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Final

from services.mapper.expressions.calls import (
    ARG,
    TOP,
    Attrs,
    CallSite,
    Eval,
    FunctionSpec,
    Now,
    attribute_getter,
)
from services.mapper.expressions.functions import REGISTRY, UNSUPPORTED, compare
from services.mapper.expressions.parser import (
    Attr,
    Call,
    Compare,
    Const,
    ExpressionError,
    Node,
    Omitted,
    parse,
)
from services.mapper.expressions.values import (
    EvaluationError,
    InvalidValue,
)

__all__ = ["FUNCTIONS", "Expression", "compile_expression"]

FUNCTIONS: Final = tuple(sorted(REGISTRY, key=str.lower))
"""Every function name the engine knows, as Microsoft spells it."""

# Pasted expressions come in any case (switch, JOIN, formatDateTime). lower(), not
# casefold(): casefold() would also read look-alikes such as "\u017fwitch" as Switch.
_BY_FOLDED_NAME: Final = {name.lower(): spec for name, spec in REGISTRY.items()}
_UNSUPPORTED_FOLDED: Final = {name.lower(): why for name, why in UNSUPPORTED.items()}


class Expression:
    """A compiled expression.

    ``attributes`` is every attribute it reads; ``redacted`` is True when it uses Redact,
    so its value must show as "[Redact]" in activity and error records and in logs.
    ``function`` is the outermost function, as Microsoft spells it however the text
    does (None when the expression is a bare attribute, constant or comparison).
    """

    __slots__ = ("_reads_clock", "_run", "attributes", "function", "redacted", "text")

    def __init__(self, text: str, run: Eval, attributes: frozenset[str], *, redacted: bool,
                 reads_clock: bool, function: str | None = None) -> None:
        self.text = text
        self.attributes = attributes
        self.redacted = redacted
        self.function = function
        self._run = run
        self._reads_clock = reads_clock

    def evaluate(self, attrs: Mapping[str, object], *, now: datetime | None = None) -> object:
        """The value for one object: str, bool, int, list, None, a UTC datetime, or
        IGNORE / UniqueCandidates / RoleAssignments. ``now`` fixes Now() (default: the
        clock). Raises EvaluationError when this object's values don't fit a function."""
        if self._reads_clock:
            now = datetime.now(UTC) if now is None else _as_utc(now)
        return self._run(attrs, now)

    def __repr__(self) -> str:
        return f"Expression({self.text!r})"


def compile_expression(text: str, *, file: str | None = None,
                       line: int | None = None) -> Expression:
    """Parse and check ``text`` once; ``file``/``line`` locate it in the config for errors."""
    compiler = _Compiler()
    try:
        tree = parse(text)
        run = compiler.compile(tree, TOP)
    except ExpressionError as exc:
        raise exc.located(text, file=file, line=line) from None
    function = _lookup(tree).name if isinstance(tree, Call) else None
    return Expression(text, run, frozenset(compiler.attributes), redacted=compiler.redacted,
                      reads_clock=compiler.reads_clock, function=function)


def _as_utc(now: datetime) -> datetime:
    return now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)


class _Compiler:
    """Walks the syntax tree once, checking calls and building closures."""

    def __init__(self) -> None:
        self.attributes: set[str] = set()
        self.redacted = False
        self.reads_clock = False

    def compile(self, node: Node, ctx: str) -> Eval:
        if isinstance(node, Const):
            value = node.value
            return lambda attrs, now: value
        if isinstance(node, Attr):
            return self.attribute(node.name)
        if isinstance(node, Omitted):
            return lambda attrs, now: None
        if isinstance(node, Compare):
            return self.comparison(node)
        return self.call(node, ctx)

    def attribute(self, name: str) -> Eval:
        self.attributes.add(name)
        return attribute_getter(name)

    def comparison(self, node: Compare) -> Eval:
        op, left, right = node.op, self.compile(node.left, ARG), self.compile(node.right, ARG)

        def run(attrs: Attrs, now: Now) -> bool:
            try:
                return compare(op, left(attrs, now), right(attrs, now))
            except InvalidValue as exc:
                raise EvaluationError(f"comparison {op}", str(exc)) from None

        return run

    def call(self, node: Call, ctx: str) -> Eval:
        spec = _lookup(node)
        _check_placement(spec, node, ctx)
        _check_arguments(spec, node)
        node = _in_current_form(spec, node)
        args = tuple(self.compile(arg, spec.child_context(i, ctx))
                     for i, arg in enumerate(node.args))
        self.redacted = self.redacted or spec.redacts
        self.reads_clock = self.reads_clock or spec.reads_clock
        site = CallSite(spec, node, args, self.attribute)
        for check in spec.checks:
            check(site)
        run = spec.build(site)
        return run if spec.guarded else _guarded(spec.name, run)


def _guarded(name: str, run: Eval) -> Eval:
    """Turn a conversion problem inside ``name`` into an EvaluationError naming it."""
    def guarded(attrs: Attrs, now: Now) -> object:
        try:
            return run(attrs, now)
        except InvalidValue as exc:
            raise EvaluationError(name, str(exc)) from None
    return guarded


def _lookup(node: Call) -> FunctionSpec:
    folded = node.name.lower()
    spec = _BY_FOLDED_NAME.get(folded)
    if spec is not None:
        return spec
    if folded in _UNSUPPORTED_FOLDED:
        raise _error(_UNSUPPORTED_FOLDED[folded], node.pos, "a supported function")
    suggestion = _suggest(node.name)
    if suggestion:
        raise _error(f'unknown function "{node.name}" (did you mean "{suggestion}"?)',
                     node.pos, f'"{suggestion}"')
    names = ", ".join(FUNCTIONS)
    raise _error(f'unknown function "{node.name}" (expected one of {names})', node.pos,
                 f"one of {names}")


def _suggest(name: str) -> str | None:
    """The function the author probably meant (a near miss in any case), as Microsoft
    spells it."""
    close = difflib.get_close_matches(name.lower(), list(_BY_FOLDED_NAME), n=1, cutoff=0.6)
    return _BY_FOLDED_NAME[close[0]].name if close else None


def _check_placement(spec: FunctionSpec, node: Call, ctx: str) -> None:
    if spec.placement == "top" and ctx != TOP:
        raise _error(f"{spec.name} must be the whole expression; it can't be nested in "
                     "another function", node.pos, f"{spec.name}(...) as the whole expression")
    if spec.placement == "flow" and ctx == ARG:
        raise _error(f"{spec.name} decides whether the attribute flows at all, so it must wrap "
                     "the whole expression (or an IIF/Switch result), not be an argument",
                     node.pos, f"{spec.name}(...) around the whole expression")


def _check_arguments(spec: FunctionSpec, node: Call) -> None:
    count = len(node.args)
    older = spec.in_older_form(count)
    if not older and not spec.takes(count):
        also = f" (or {len(spec.older)} in the older form {spec.older_signature})" \
            if spec.older else ""
        raise _error(f"{spec.name} takes {_arity(spec)}{also}, got {count}", node.pos,
                     spec.signature)
    for i, arg in enumerate(node.args):
        param = spec.older[i] if older else spec.param(i)
        if not isinstance(arg, Omitted) or param in spec.optional:
            continue
        if older:  # perhaps the current form with an argument missing: name both
            raise _error(f"{spec.name} with {count} arguments is the older form "
                         f"{spec.older_signature}, whose argument {i + 1} ({param}) can't be "
                         f"empty; the current form is {spec.signature}", arg.pos,
                         spec.signature)
        raise _error(f"argument {i + 1} ({param}) of {spec.name} can't be empty", arg.pos,
                     spec.signature)


def _in_current_form(spec: FunctionSpec, node: Call) -> Call:
    """A call in the older signature, rewritten to the current one with the parameters it
    lacks left empty (so they take their documented defaults)."""
    if not spec.in_older_form(len(node.args)):
        return node
    given = dict(zip(spec.older, node.args, strict=True))
    args = tuple(given.get(param, Omitted(node.pos)) for param in spec.params)
    return Call(node.name, args, node.pos)


def _arity(spec: FunctionSpec) -> str:
    low, high = spec.min_args, spec.max_args
    if high is None:
        text = f"at least {low}"
    elif low == high:
        text = "no" if low == 0 else str(low)
    else:
        text = f"{low} to {high}"
    return f"{text} argument{'' if low == high == 1 else 's'}"


def _error(message: str, position: int, expected: str) -> ExpressionError:
    return ExpressionError(message, position=position, expected=expected)
