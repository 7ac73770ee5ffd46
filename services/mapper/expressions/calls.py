"""How a function call compiles: the pieces every function in the registry is made of.

A call compiles to one closure ``Eval(attrs, now) -> value``. A FunctionSpec holds a
function's documented parameters (names from Microsoft's reference, which may be left
empty, how many), where it may appear, load-time checks of constant arguments, and a
builder that turns the CallSite (the syntax node plus the compiled arguments) into the
closure. ``eager(impl)`` is the common builder: evaluate every argument, call ``impl``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Final, TypeVar

from services.mapper.expressions.parser import Call, Const, ExpressionError, Omitted
from services.mapper.expressions.values import EvaluationError, InvalidValue, to_str

__all__ = [
    "ARG",
    "OUTPUT",
    "TOP",
    "VARIABLE",
    "Attrs",
    "Builder",
    "CallSite",
    "Check",
    "ChildContext",
    "Eval",
    "FunctionSpec",
    "Now",
    "at_least",
    "attribute_getter",
    "branches",
    "define",
    "eager",
    "forward",
    "null",
    "one_of",
    "prepared",
]

T = TypeVar("T")

# Where a call sits: the whole expression, a value that flows out unchanged (IIF and Switch
# results, Redact's argument), or an argument some function computes with.
TOP: Final = "top"
OUTPUT: Final = "output"
ARG: Final = "arg"


Attrs = Mapping[str, object]
Now = datetime | None
Eval = Callable[[Attrs, Now], object]
"""A compiled node: (the object's attributes, the evaluation's fixed "now") -> value."""
VARIABLE: Final = object()  # CallSite.constant: "not known until evaluation"
_MISSING: Final = object()


def null(attrs: Attrs, now: Now) -> None:
    """What an omitted argument evaluates to."""
    return


def attribute_getter(name: str) -> Eval:
    """Read ``[name]``: exact name first, then ignoring case (directories differ);
    an absent attribute and an empty multi-valued one are None."""
    folded = name.casefold()

    def get(attrs: Attrs, now: Now) -> object:
        value = attrs.get(name, _MISSING)
        if type(value) is str:
            return value
        if value is _MISSING:
            value = next((v for k, v in attrs.items() if k.casefold() == folded), None)
        if isinstance(value, list | tuple):
            return list(value) or None
        return value

    return get


# ------------------------------------------------------------------------ specifications

@dataclass(frozen=True, slots=True)
class CallSite:
    """One call being compiled: its spec, syntax node and compiled arguments."""

    spec: FunctionSpec
    node: Call
    args: tuple[Eval, ...]
    attribute: Callable[[str], Eval]  # registers the name in Expression.attributes

    def constant(self, i: int) -> object:
        """Argument ``i``'s value if it is a constant (None if omitted), else VARIABLE."""
        if i >= len(self.node.args) or isinstance(self.node.args[i], Omitted):
            return None
        arg = self.node.args[i]
        return arg.value if isinstance(arg, Const) else VARIABLE

    def present(self, i: int) -> bool:
        return i < len(self.node.args) and not isinstance(self.node.args[i], Omitted)

    def arg(self, i: int) -> Eval:
        return self.args[i] if i < len(self.args) else null

    def error(self, reason: str, expected: str, i: int | None = None) -> ExpressionError:
        pos = self.node.args[i].pos if i is not None and i < len(self.node.args) \
            else self.node.pos
        return ExpressionError(f"{self.spec.name}: {reason} (expected {expected})",
                               position=pos, expected=expected)


Builder = Callable[[CallSite], Eval]
ChildContext = Callable[[int, str], str]


def as_argument(i: int, ctx: str) -> str:
    return ARG


def forward(i: int, ctx: str) -> str:
    return ctx


def branches(is_result: Callable[[int], bool]) -> ChildContext:
    """IIF/Switch: result arguments flow out unchanged when the call itself does."""
    def child(i: int, ctx: str) -> str:
        return OUTPUT if ctx != ARG and is_result(i) else ARG
    return child


Check = Callable[[CallSite], None]


@dataclass(frozen=True, slots=True)
class FunctionSpec:
    """A function's documented signature and how to build its closure."""

    name: str
    params: tuple[str, ...]
    build: Builder
    min_args: int
    max_args: int | None
    optional: frozenset[str] = frozenset()
    repeat: tuple[str, ...] = ()
    checks: tuple[Check, ...] = ()  # load-time checks of constant arguments
    placement: str = "any"  # "any" | "flow" (top or a passed-through value) | "top"
    child_context: ChildContext = as_argument
    redacts: bool = False
    reads_clock: bool = False
    guarded: bool = False  # the built closure already names this function in its errors
    # An older signature Microsoft's guides still show (FormatDateTime without
    # dateTimeStyles): a call with exactly this many arguments names them so.
    older: tuple[str, ...] = ()

    def param(self, i: int) -> str:
        if i < len(self.params):
            return self.params[i]
        return self.repeat[(i - len(self.params)) % len(self.repeat)] if self.repeat else "?"

    def takes(self, count: int) -> bool:
        """Whether the current signature takes ``count`` arguments."""
        return self.min_args <= count and (self.max_args is None or count <= self.max_args)

    def in_older_form(self, count: int) -> bool:
        """Whether a call with ``count`` arguments is written in the older signature."""
        return bool(self.older) and count == len(self.older)

    @property
    def signature(self) -> str:
        names = list(self.params) + ([*self.repeat, "..."] if self.repeat else [])
        return f"{self.name}({', '.join(names)})"

    @property
    def older_signature(self) -> str:
        return f"{self.name}({', '.join(self.older)})"


def define(name: str, params: str, build: Builder, *, optional: str = "", repeat: str = "",
           min_args: int | None = None, checks: tuple[Check, ...] = (),
           placement: str = "any", child: ChildContext = as_argument, redacts: bool = False,
           reads_clock: bool = False, older: str = "") -> FunctionSpec:
    """A FunctionSpec from space-separated parameter names; ``min_args`` defaults to the
    parameters before the first optional one, ``repeat`` names a repeating tail, ``older``
    an older signature (a subset of ``params``, in their order) still accepted."""
    names = tuple(params.split()) if params else ()
    opt = frozenset(optional.split())
    required = next((i for i, p in enumerate(names) if p in opt), len(names))
    spec = FunctionSpec(
        name, names, build, required if min_args is None else min_args,
        None if repeat else len(names), opt, tuple(repeat.split()), checks, placement, child,
        redacts, reads_clock, guarded=isinstance(build, _Eager), older=tuple(older.split()))
    if spec.older and (spec.takes(len(spec.older)) or spec.repeat
                       or [p for p in names if p in spec.older] != list(spec.older)):
        raise ValueError(f"{name}: the older signature must be a shorter, fixed subset of "
                         "the parameters, in order")
    return spec


class _Eager:
    """Builder: evaluate every argument, then call ``impl`` (element-wise over a list
    first argument when ``maps_lists``). Unrolled by arity: this is the hot path."""

    def __init__(self, impl: Callable[..., object], *, maps_lists: bool = False) -> None:
        self.fn = _over_lists(impl) if maps_lists else impl

    def __call__(self, site: CallSite) -> Eval:
        fn, name, args = self.fn, site.spec.name, site.args
        if len(args) == 1:
            (a,) = args

            def run1(attrs: Attrs, now: Now) -> object:
                try:
                    return fn(a(attrs, now))
                except InvalidValue as exc:
                    raise EvaluationError(name, str(exc)) from None
            return run1
        if len(args) == 2:
            a, b = args

            def run2(attrs: Attrs, now: Now) -> object:
                try:
                    return fn(a(attrs, now), b(attrs, now))
                except InvalidValue as exc:
                    raise EvaluationError(name, str(exc)) from None
            return run2
        if len(args) == 3:
            return self._build_3(fn, name, args)
        return self._build_n(fn, name, args)

    @staticmethod
    def _build_3(fn: Callable[..., object], name: str, args: tuple[Eval, ...]) -> Eval:
        a, b, c = args

        def run3(attrs: Attrs, now: Now) -> object:
            try:
                return fn(a(attrs, now), b(attrs, now), c(attrs, now))
            except InvalidValue as exc:
                raise EvaluationError(name, str(exc)) from None
        return run3

    @staticmethod
    def _build_n(fn: Callable[..., object], name: str, args: tuple[Eval, ...]) -> Eval:
        def run(attrs: Attrs, now: Now) -> object:
            try:
                return fn(*[a(attrs, now) for a in args])
            except InvalidValue as exc:
                raise EvaluationError(name, str(exc)) from None
        return run


eager = _Eager


def _over_lists(impl: Callable[..., object]) -> Callable[..., object]:
    def mapped(first: object, *rest: object) -> object:
        if type(first) is list:
            return [impl(item, *rest) for item in first]
        return impl(first, *rest)
    return mapped


def at_least(i: int, minimum: int) -> Check:
    def check(site: CallSite) -> None:
        value = site.constant(i)
        if isinstance(value, int | float) and not isinstance(value, bool) and value < minimum:
            raise site.error(f"{site.spec.param(i)} must be {minimum} or more, got {value}",
                             f"a number >= {minimum}", i)
    return check


def one_of(i: int, allowed: tuple[str, ...] | Callable[[str], bool], what: str) -> Check:
    def check(site: CallSite) -> None:
        value = site.constant(i)
        if value is None or value is VARIABLE:
            return
        text = to_str(value) or ""
        ok = allowed(text) if callable(allowed) else text in allowed
        if not ok:
            raise site.error(f"{site.spec.param(i)} {value!r} is not {what}", what, i)
    return check


def prepared(site: CallSite, i: int,
             prepare: Callable[[str], T]) -> Callable[[Attrs, Now], T | None]:
    """``prepare(argument i)``: done once now for a constant, per evaluation otherwise."""
    value = site.constant(i)
    if value is None:
        return null
    if value is not VARIABLE:
        try:
            ready = prepare(to_str(value) or "")
        except ValueError as exc:
            raise site.error(str(exc), f"a valid {site.spec.param(i)}", i) from None
        return lambda attrs, now: ready
    arg = site.args[i]

    def at_runtime(attrs: Attrs, now: Now) -> T | None:
        text = to_str(arg(attrs, now))
        if text is None:
            return None
        try:
            return prepare(text)
        except ValueError as exc:
            raise InvalidValue(str(exc)) from None

    return at_runtime
