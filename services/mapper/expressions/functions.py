"""The functions of Entra's expression language: what each takes and what it computes.

``REGISTRY`` maps every documented function name (spelled as Microsoft spells it; the
compiler matches names in any case) to a FunctionSpec (see ``calls``). Most
functions are ``eager(impl)`` over a small pure function below; IIF, Switch and Coalesce
evaluate lazily; constant arguments (date formats, intervals, indexes, cultures) are
checked when the expression is compiled. Replace has its own module.
"""

from __future__ import annotations

import base64
import operator
import re
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from functools import lru_cache
from typing import Any, Final

from services.mapper.expressions.calls import (
    VARIABLE,
    Attrs,
    CallSite,
    Eval,
    FunctionSpec,
    Now,
    at_least,
    branches,
    define,
    eager,
    forward,
    one_of,
    prepared,
)
from services.mapper.expressions.dates import (
    INTERVALS,
    DateFormat,
    add_interval,
    compile_format,
    diff_interval,
    from_filetime,
    parse_styles,
    to_datetime,
    to_filetime,
)
from services.mapper.expressions.replace import build_replace
from services.mapper.expressions.text import (
    check_random_string,
    is_culture,
    normalize_diacritics,
    proper_case,
    random_string,
    to_lower,
    to_upper,
)
from services.mapper.expressions.values import (
    IGNORE,
    InvalidValue,
    RoleAssignments,
    UniqueCandidates,
    is_true,
    single,
    to_bool,
    to_int,
    to_number,
    to_str,
)

__all__ = ["REGISTRY", "UNSUPPORTED", "compare"]

# ------------------------------------------------------------------------- text functions

def _text_or_empty(value: object) -> str:
    return to_str(value) or ""


def _null_or(convert: Callable[[str], object]) -> Callable[[object], object]:
    """Apply ``convert`` to the text; null stays null."""
    def run(value: object) -> object:
        text = to_str(value)
        return None if text is None else convert(text)
    return run


def _append(source: object, suffix: object) -> str:
    return _text_or_empty(source) + _text_or_empty(suffix)


def _join(separator: object, *sources: object) -> str:
    parts: list[str] = []
    for source in sources:
        if type(source) is str:  # the common case, kept fast
            if source:
                parts.append(source)
            continue
        for item in source if isinstance(source, list | tuple) else (source,):
            text = to_str(item)
            if text:  # null and "" add nothing, not an empty slot between separators
                parts.append(text)
    return _text_or_empty(separator).join(parts)


def _left(source: object, count: object) -> str:
    text, n = _text_or_empty(source), _required_int(count, "NumChars")
    return text if n < 0 else text[:n]


def _mid(source: object, start: object, length: object) -> str:
    text = _text_or_empty(source)
    begin, count = _required_int(start, "start"), _required_int(length, "length")
    if begin < 1 or count < 0:
        raise InvalidValue(f"start must be 1 or more and length 0 or more, got {begin}, {count}")
    return text[begin - 1:begin - 1 + count]


def _required_int(value: object, name: str) -> int:
    number = to_int(value)
    if number is None:
        raise InvalidValue(f"{name} is null")
    return number


def _len(source: object) -> int:
    return len(_text_or_empty(source))


def _word(source: object, number: object, delimiters: object) -> str:
    n = to_int(number)
    if n is None or n < 1:
        return ""
    words = [w for w in _splitter(_text_or_empty(delimiters))(_text_or_empty(source)) if w]
    return words[n - 1] if n <= len(words) else ""


@lru_cache(maxsize=64)
def _splitter(delimiters: str) -> Callable[[str], list[str]]:
    if not delimiters:
        return lambda text: [text]
    return re.compile(f"[{re.escape(delimiters)}]").split


def _split(source: object, delimiter: object) -> list[str] | None:
    if source is None:
        return None
    sep = to_str(delimiter)
    if not sep:
        raise InvalidValue("delimiter can't be empty")
    out: list[str] = []
    for item in source if isinstance(source, list) else (source,):
        text = to_str(item) or ""
        out.extend(part.strip() for part in text.split(sep) if part.strip())
    return out


def _pcase(source: object, separators: object = None) -> str | None:
    text = to_str(source)
    return None if text is None else proper_case(text, to_str(separators))


def _case(convert: Callable[[str, str | None], str]) -> Callable[..., object]:
    def run(source: object, culture: object = None) -> str | None:
        text = to_str(source)
        return None if text is None else convert(text, to_str(culture))
    return run


def _instr(haystack: object, needle: object, start: object = None,
           compare_type: object = None) -> int:
    text, sub = _text_or_empty(haystack), _text_or_empty(needle)
    begin = 1 if start is None else _required_int(start, "start")
    if begin < 1:
        raise InvalidValue(f"start must be 1 or more, got {begin}")
    if not text:
        return 0
    if not sub:
        return begin
    if _text_compare(compare_type):
        text, sub = to_lower(text), to_lower(sub)
    return text.find(sub, begin - 1) + 1


_COMPARE_TYPES: Final[Mapping[object, bool]] = {
    "vbBinaryCompare": False, "vbTextCompare": True, "0": False, "1": True,
}


def _text_compare(value: object) -> bool:
    if value is None:
        return False
    try:
        return _COMPARE_TYPES[to_str(value)]
    except KeyError:
        raise InvalidValue(f"compareType must be vbBinaryCompare or vbTextCompare, "
                           f"got {value!r}") from None


def _base64(text: str) -> str:
    return base64.b64encode(text.encode("utf-16-le")).decode("ascii")


def _utf8_hex(text: str) -> str:
    return text.encode("utf-8").hex().upper()


def _random(length: object, numbers: object, special: object, capital: object,
            lower: object, avoid: object = None) -> str:
    minimums = (to_int(numbers) or 0, to_int(special) or 0, to_int(capital) or 0,
                to_int(lower) or 0)
    return random_string(_required_int(length, "Length"), minimums, _text_or_empty(avoid))


def _check_random(site: CallSite) -> None:
    values = [site.constant(i) for i in range(5)]
    ints = [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
    if len(ints) == len(values):
        problem = check_random_string(ints[0], (ints[1], ints[2], ints[3], ints[4]))
        if problem:
            raise site.error(problem, "Length >= the sum of the minimum counts, at most 256")


# ----------------------------------------------------------------- conditions and values

def _is_null_or_empty(value: object) -> bool:
    return value is None or value == "" or (isinstance(value, list) and not value)


def _count(value: object) -> int:
    if value is None:
        return 0
    return len(value) if isinstance(value, list | tuple) else 1


def _item(value: object, index: object) -> object:
    n = to_int(index)
    if value is None or n is None:
        return None
    items = value if isinstance(value, list | tuple) else (value,)
    return items[n - 1] if 1 <= n <= len(items) else None


def _remove_duplicates(value: object) -> list[object] | None:
    if value is None:
        return None
    items = value if isinstance(value, list | tuple) else (value,)
    try:
        return list(dict.fromkeys(items))
    except TypeError:  # e.g. mappings, which have no identity to compare by
        raise InvalidValue("can only remove duplicates from text, number or boolean values") from None


def _bit_and(first: object, second: object) -> int | None:
    a, b = to_int(first), to_int(second)
    return None if a is None or b is None else a & b


_ORDER: Final[Mapping[str, Callable[[Any, Any], bool]]] = {
    "=": operator.eq, "<>": operator.ne, "<": operator.lt, "<=": operator.le,
    ">": operator.gt, ">=": operator.ge,
}


def compare(op: str, left: object, right: object) -> bool:
    """``left op right``: null equals only null and ""; a number or date on either side
    compares as numbers or dates, a boolean as booleans, anything else as exact text."""
    if type(left) is str and type(right) is str:  # the common case, kept fast
        return _ORDER[op](left, right)
    left, right = single(left), single(right)
    if left is None or right is None:
        if op not in ("=", "<>"):
            return False
        same = left in (None, "") and right in (None, "")
        return same if op == "=" else not same
    a, b = _comparable(left, right)
    return _ORDER[op](a, b)


def _comparable(left: object, right: object) -> tuple[object, object]:
    try:
        if isinstance(left, datetime) or isinstance(right, datetime):
            return to_datetime(left), to_datetime(right)
        if isinstance(left, bool) or isinstance(right, bool):
            return to_bool(left), to_bool(right)
        if isinstance(left, int | float) or isinstance(right, int | float):
            return to_number(left), to_number(right)
    except InvalidValue:
        pass  # not both of that kind: compare as text
    return to_str(left), to_str(right)


# ------------------------------------------------------------------------------- roles

_ROLE_TYPE: Final = "WindowsAzureActiveDirectoryRole"


def _roles(value: object) -> list[dict[str, object]]:
    """SCIM role values from appRoleAssignments: role value strings or mappings with
    ``value`` and optionally ``displayName``; duplicates (one role through two groups)
    once."""
    if value is None:
        return []
    roles: dict[str, dict[str, object]] = {}
    for item in value if isinstance(value, list | tuple) else (value,):
        role = _role(item)
        roles.setdefault(str(role["value"]), role)
    return list(roles.values())


def _role(item: object) -> dict[str, object]:
    if isinstance(item, Mapping):
        value, display = item.get("value"), item.get("displayName") or item.get("display")
    else:
        value, display = item, None
    if not isinstance(value, str) or not value:
        raise InvalidValue(f"an app role assignment needs a role value, got {item!r}")
    return {"primary": False, "type": _ROLE_TYPE, "display": str(display or value),
            "value": value}


def _single_role(value: object) -> str | None:
    roles = _roles(value)
    return str(roles[0]["value"]) if roles else None


def _complex_roles(*, assertive: bool) -> Callable[[object], RoleAssignments]:
    def run(value: object) -> RoleAssignments:
        return RoleAssignments(_roles(value), assertive=assertive)
    return run


# ---------------------------------------------------------------------------------- dates

def _interval(value: object) -> str:
    text = to_str(value)
    if text not in INTERVALS:
        raise InvalidValue(f"interval must be one of {', '.join(INTERVALS)}, got {value!r}")
    return text


def _date_add(interval: object, amount: object, when: object) -> datetime | None:
    unit, n, moment = _interval(interval), to_number(amount), to_datetime(when)
    return None if n is None or moment is None else add_interval(unit, n, moment)


def _date_diff(interval: object, first: object, second: object) -> int | None:
    unit, a, b = _interval(interval), to_datetime(first), to_datetime(second)
    return None if a is None or b is None else diff_interval(unit, a, b)


def _date_from_num(value: object) -> datetime | None:
    ticks = to_int(value)
    return None if ticks is None else from_filetime(ticks)


def _num_from_date(value: object) -> int | None:
    moment = to_datetime(value)
    return None if moment is None else to_filetime(moment)


_cached_format: Final = lru_cache(maxsize=128)(compile_format)


def _build_format_date_time(site: CallSite) -> Eval:
    source = site.arg(0)
    styles = prepared(site, 1, parse_styles)
    input_format = prepared(site, 2, _cached_format)
    output_format = prepared(site, 3, _cached_format)

    def run(attrs: Attrs, now: Now) -> object:
        value = single(source(attrs, now))
        if value is None or value == "":
            return None
        out = output_format(attrs, now)
        if out is None:
            raise InvalidValue("outputFormat is null")
        if not isinstance(value, datetime):
            value = _parse_with(input_format(attrs, now), to_str(value) or "", styles(attrs, now))
        return out.format(value)

    return run


def _input_format_is_not_styles(site: CallSite) -> None:
    """Mixing the two forms, FormatDateTime([d], "AssumeUniversal", "yyyy-MM-dd") reads the
    styles as the input format, which compiles (A, s, u ... are literals or specifiers) and
    then matches no date; say so at load instead."""
    value = site.constant(2)
    if not isinstance(value, str) or not value.strip():
        return
    try:
        parse_styles(value)
    except ValueError:
        return
    raise site.error(f"inputFormat {value!r} is a DateTimeStyles value, not a date format",
                     f"{site.spec.signature}, with both formats", 2)


def _parse_with(fmt: DateFormat | None, text: str, styles: frozenset[str] | None) -> datetime:
    if fmt is None:
        raise InvalidValue("inputFormat is null")
    return fmt.parse(text, styles or frozenset())


# ---------------------------------------------------------------- control-flow builders

def _build_iif(site: CallSite) -> Eval:
    condition, if_true, if_false = site.args

    def run(attrs: Attrs, now: Now) -> object:
        return if_true(attrs, now) if to_bool(condition(attrs, now)) else if_false(attrs, now)

    return run


def _build_switch(site: CallSite) -> Eval:
    if len(site.args) % 2:
        raise site.error(f"Switch takes pairs of key and value after source and defaultValue, "
                         f"got {len(site.args)} arguments", "an even number of arguments")
    source, default = site.args[0], site.args[1]
    keys, values = site.args[2::2], site.args[3::2]
    constants = [site.constant(i) for i in range(2, len(site.args), 2)]
    if all(k is not VARIABLE for k in constants):
        table: dict[str, Eval] = {}
        for key, value in zip(constants, values, strict=True):
            table.setdefault(to_str(key) or "", value)  # the first matching key wins
        return lambda attrs, now: table.get(to_str(source(attrs, now)) or "", default)(attrs, now)

    def run(attrs: Attrs, now: Now) -> object:
        wanted = to_str(source(attrs, now)) or ""
        for key, value in zip(keys, values, strict=True):
            if (to_str(key(attrs, now)) or "") == wanted:
                return value(attrs, now)
        return default(attrs, now)

    return run


def _build_coalesce(site: CallSite) -> Eval:
    args = site.args

    def run(attrs: Attrs, now: Now) -> object:
        for arg in args:
            value = arg(attrs, now)
            if value is not None and value != []:
                return value
        return None

    return run


def _build_ignore_flow(site: CallSite) -> Eval:
    (inner,) = site.args

    def run(attrs: Attrs, now: Now) -> object:
        value = inner(attrs, now)
        return IGNORE if _is_null_or_empty(value) else value

    return run


def _build_redact(site: CallSite) -> Eval:
    return site.args[0]  # the value flows unchanged; Expression.redacted hides it in logs


def _build_select_unique(site: CallSite) -> Eval:
    rules = site.args

    def run(attrs: Attrs, now: Now) -> UniqueCandidates:
        values = (to_str(rule(attrs, now)) for rule in rules)
        return UniqueCandidates(dict.fromkeys(v for v in values if v))

    return run


def _now(attrs: Attrs, now: Now) -> datetime | None:
    return now  # Expression.evaluate fixes "now" once per evaluation


def _build_now(site: CallSite) -> Eval:
    return _now


# ------------------------------------------------------------------------------ registry

_is_interval = one_of(0, INTERVALS, f"an interval ({', '.join(INTERVALS)})")
_is_compare_type = one_of(3, tuple(str(k) for k in _COMPARE_TYPES),
                           "vbBinaryCompare or vbTextCompare")
_is_culture = one_of(1, is_culture, "a culture name such as en-US or tr-TR")


def _is_delimiter(site: CallSite) -> None:
    if site.constant(1) == "":
        raise site.error("delimiter can't be empty", "a delimiter such as \",\"", 1)


_SPECS: Final = (
    define("Append", "source suffix", eager(_append, maps_lists=True)),
    define("AppRoleAssignmentsComplex", "appRoleAssignments",
        eager(_complex_roles(assertive=False)), placement="top"),
    define("AssertiveAppRoleAssignmentsComplex", "appRoleAssignments",
        eager(_complex_roles(assertive=True)), placement="top"),
    define("BitAnd", "value1 value2", eager(_bit_and)),
    define("CBool", "expression", eager(to_bool)),
    define("CDate", "expression", eager(to_datetime)),
    define("Coalesce", "source", _build_coalesce, repeat="source"),
    define("ConvertToBase64", "source", eager(_null_or(_base64))),
    define("ConvertToUTF8Hex", "source", eager(_null_or(_utf8_hex))),
    define("Count", "attribute", eager(_count)),
    define("CStr", "value", eager(to_str)),
    define("DateAdd", "interval value dateTime", eager(_date_add), checks=(_is_interval,)),
    define("DateDiff", "interval date1 date2", eager(_date_diff), checks=(_is_interval,)),
    define("DateFromNum", "value", eager(_date_from_num)),
    define("FormatDateTime", "source dateTimeStyles inputFormat outputFormat",
        _build_format_date_time, optional="dateTimeStyles", min_args=4,
        checks=(_input_format_is_not_styles,),
        older="source inputFormat outputFormat"),  # Microsoft's HR-provisioning guides
    define("Guid", "", eager(lambda: str(uuid.uuid4()))),
    define("IgnoreFlowIfNullOrEmpty", "expression", _build_ignore_flow, placement="flow",
        child=forward),
    define("IIF", "condition valueIfTrue valueIfFalse", _build_iif,
        child=branches(lambda i: i > 0)),
    define("InStr", "value1 value2 start compareType", eager(_instr),
        optional="start compareType", checks=(at_least(2, 1), _is_compare_type)),
    define("IsNull", "expression", eager(lambda v: v is None)),
    define("IsNullOrEmpty", "expression", eager(_is_null_or_empty)),
    define("IsPresent", "expression", eager(lambda v: not _is_null_or_empty(v))),
    define("IsString", "expression", eager(lambda v: isinstance(v, str))),
    define("Item", "attribute index", eager(_item), checks=(at_least(1, 1),)),
    define("Join", "separator source", eager(_join), repeat="source"),
    define("Left", "String NumChars", eager(_left)),
    define("Len", "String", eager(_len)),
    define("Mid", "source start length", eager(_mid), checks=(at_least(1, 1), at_least(2, 0))),
    define("NormalizeDiacritics", "source",
           eager(_null_or(normalize_diacritics), maps_lists=True)),
    define("Not", "source", eager(lambda v: not is_true(v))),
    define("Now", "", _build_now, reads_clock=True),
    define("NumFromDate", "value", eager(_num_from_date)),
    define("PCase", "source wordSeparators", eager(_pcase, maps_lists=True),
        optional="wordSeparators"),
    define("RandomString", "Length MinimumNumbers MinimumSpecialCharacters MinimumCapital "
        "MinimumLowerCase CharactersToAvoid", eager(_random), optional="CharactersToAvoid",
        checks=(_check_random,)),
    define("Redact", "value", _build_redact, child=forward, redacts=True),
    define("RemoveDuplicates", "attribute", eager(_remove_duplicates)),
    define("Replace", "source oldValue regexPattern regexGroupName replacementValue "
        "replacementAttributeName template", build_replace,
        optional="oldValue regexPattern regexGroupName replacementValue "
                 "replacementAttributeName template"),
    define("SelectUniqueValue", "uniqueValueRule1 uniqueValueRule2", _build_select_unique,
        repeat="uniqueValueRule", placement="top"),
    define("SingleAppRoleAssignment", "appRoleAssignments", eager(_single_role)),
    define("Split", "source delimiter", eager(_split), checks=(_is_delimiter,)),
    define("StripSpaces", "source",
           eager(_null_or(lambda t: t.replace(" ", "")), maps_lists=True)),
    define("Switch", "source defaultValue key value", _build_switch, optional="defaultValue",
        repeat="key value", min_args=4, child=branches(lambda i: i % 2 == 1)),
    define("ToLower", "source culture", eager(_case(to_lower), maps_lists=True),
        optional="culture", checks=(_is_culture,)),
    define("ToUpper", "source culture", eager(_case(to_upper), maps_lists=True),
        optional="culture", checks=(_is_culture,)),
    define("Word", "String WordNumber Delimiters", eager(_word)),
)

REGISTRY: Final[Mapping[str, FunctionSpec]] = {function.name: function for function in _SPECS}

UNSUPPORTED: Final[Mapping[str, str]] = {
    "DefaultDomain": "DefaultDomain() needs an Entra tenant's verified domains, which "
                     "scimflow does not have; write the domain as a string constant",
}
