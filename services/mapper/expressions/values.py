"""Values an expression computes with, and the type rules that convert between them.

Directory values arrive as ``str``, ``bool``, ``int``, ``list`` (multi-valued) or ``None``
(absent). Inside an expression a value can also be a ``float`` (a literal such as
``42568.75``) or a ``datetime`` (from CDate, DateAdd, DateFromNum, Now). The rules:

- a missing attribute, and a multi-valued attribute with no values, are ``None`` (null);
- where one value is needed, a one-element list is that element; a longer list is an error;
- as text: booleans are ``"True"``/``"False"`` (as .NET prints them), whole numbers print
  without a decimal point, dates print as ``M/d/yyyy h:mm:ss tt`` in UTC (Entra's format);
- as a boolean: ``True``/``False`` (any case), numbers (non-zero is true), null and ``""``
  (false); any other text is an error.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Final

from services.runtime.errors import ScimflowError

__all__ = [
    "IGNORE",
    "EvaluationError",
    "InvalidValue",
    "RoleAssignments",
    "UniqueCandidates",
    "format_general",
    "format_number",
    "is_true",
    "single",
    "to_bool",
    "to_int",
    "to_number",
    "to_str",
]


class EvaluationError(ScimflowError):
    """An expression could not be evaluated for one object (e.g. ``CDate("garbage")``).

    ``function`` is the function that failed and ``reason`` says why; the object goes to
    the error topic and the others carry on.
    """

    def __init__(self, function: str, reason: str) -> None:
        self.function = function
        self.reason = reason
        super().__init__(f"{function}: {reason}")


class InvalidValue(Exception):  # noqa: N818 - internal signal, never escapes the engine
    """Raised by conversions; the calling function turns it into an EvaluationError."""


class _Ignore:
    __slots__ = ()

    def __repr__(self) -> str:
        return "IGNORE"


IGNORE: Final[object] = _Ignore()
"""IgnoreFlowIfNullOrEmpty decided that the attribute must not flow to the target."""


class UniqueCandidates(tuple[str, ...]):
    """SelectUniqueValue's result: candidate values in order; the writer takes the first
    one that is not already used in the target."""

    __slots__ = ()


class RoleAssignments(tuple[dict[str, object], ...]):
    """App roles as SCIM ``roles`` values, from (Assertive)AppRoleAssignmentsComplex.

    ``assertive`` is True for AssertiveAppRoleAssignmentsComplex: the writer replaces the
    target's roles with exactly these; otherwise it only adds them.
    """

    assertive: bool

    def __new__(cls, roles: Iterable[dict[str, object]], *, assertive: bool) -> RoleAssignments:
        self = super().__new__(cls, roles)
        self.assertive = assertive
        return self

    def __repr__(self) -> str:
        return f"RoleAssignments({list(self)!r}, assertive={self.assertive})"


def single(value: object) -> object:
    """The one value a function needs: a one-element list is its element."""
    if type(value) is list or type(value) is tuple:
        if not value:
            return None
        if len(value) == 1:
            return value[0]
        raise InvalidValue(f"expects a single value, got {len(value)} values "
                           "(use Item or Join to pick or combine them)")
    return value


def format_general(value: datetime) -> str:
    """A date as Entra prints it: ``M/d/yyyy h:mm:ss tt``, in UTC."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    hour = value.hour % 12 or 12
    half = "AM" if value.hour < 12 else "PM"
    return (f"{value.month}/{value.day}/{value.year:04d} "
            f"{hour}:{value.minute:02d}:{value.second:02d} {half}")


def format_number(value: float) -> str:
    """A number as .NET prints it: ``5`` not ``5.0``."""
    if value.is_integer():
        return str(int(value))
    return repr(value)


def to_str(value: object) -> str | None:
    """Text for a value; None stays None."""
    if type(value) is str:
        return value
    value = single(value)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return format_number(value)
    if isinstance(value, datetime):
        return format_general(value)
    raise InvalidValue(f"can't use a {type(value).__name__} value as text")


def to_number(value: object) -> int | float | None:
    """A number from an int, a float or numeric text; None stays None."""
    value = single(value)
    if value is None or (isinstance(value, int | float) and not isinstance(value, bool)):
        return value
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            pass
        try:
            return float(text)
        except ValueError:
            raise InvalidValue(f"expects a number, got {value!r}") from None
    raise InvalidValue(f"expects a number, got {_describe(value)}")


def to_int(value: object) -> int | None:
    """A whole number (``"7"``, ``7``, ``7.0``); None stays None."""
    number = to_number(value)
    if isinstance(number, float):
        if not number.is_integer():
            raise InvalidValue(f"expects a whole number, got {format_number(number)}")
        return int(number)
    return number


def to_bool(value: object) -> bool:
    """A condition's truth: booleans, ``"True"``/``"False"``, numbers; null and "" are false."""
    value = single(value)
    if value is None or value == "":
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in _BOOL_TEXT:
            return _BOOL_TEXT[lowered]
        try:
            return float(lowered) != 0
        except ValueError:
            pass
    raise InvalidValue(f"expects True or False, got {_describe(value)}")


def is_true(value: object) -> bool:
    """Not's reading of a value: only a true boolean, "True" or a non-zero number is true."""
    try:
        return to_bool(value)
    except InvalidValue:
        return False


_BOOL_TEXT: Final[Mapping[str, bool]] = {"true": True, "false": False}


def _describe(value: object) -> str:
    if isinstance(value, str):
        return repr(value)
    return f"a {type(value).__name__} value"
