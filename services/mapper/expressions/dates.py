"""Dates for the expression engine: reading what directories send, .NET format strings,
VBA-style DateAdd/DateDiff intervals and Active Directory's FILETIME numbers.

Entra runs on .NET, so FormatDateTime takes .NET custom date and time format strings
("yyyyMMddHHmmss.fZ", "M/d/yyyy h:mm:ss tt", "yyyy-MM-ddzzz") and the single-letter
standard ones ("d", "o", "s", "u", ...), with the invariant (en-US) month and day names.
A format is compiled once into tokens; formatting and parsing walk the tokens.
"""

from __future__ import annotations

import re
from calendar import monthrange
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from typing import Final

from services.mapper.expressions.values import InvalidValue, single

__all__ = [
    "DATE_TIME_STYLES",
    "INTERVALS",
    "DateFormat",
    "add_interval",
    "compile_format",
    "diff_interval",
    "from_filetime",
    "parse_date",
    "parse_styles",
    "to_datetime",
    "to_filetime",
]

INTERVALS: Final = ("yyyy", "m", "d", "ww", "h", "n", "s")
DATE_TIME_STYLES: Final = frozenset({
    "None", "AllowLeadingWhite", "AllowTrailingWhite", "AllowInnerWhite", "AllowWhiteSpaces",
    "NoCurrentDateDefault", "AdjustToUniversal", "AssumeLocal", "AssumeUniversal",
    "RoundtripKind",
})

_MONTHS: Final = ("January", "February", "March", "April", "May", "June", "July", "August",
                  "September", "October", "November", "December")
_DAYS: Final = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_FILETIME_EPOCH: Final = datetime(1601, 1, 1, tzinfo=UTC)
_FILETIME_NEVER: Final = 0x7FFFFFFFFFFFFFFF  # accountExpires: "never"
_TICK: Final = timedelta(microseconds=1)

# ---------------------------------------------------------------- lenient parsing (CDate)

_OFFSET: Final = r"(Z|z|[+-]\d{2}(?::?\d{2})?)"
_ISO: Final = re.compile(
    r"(\d{4})-(\d{1,2})-(\d{1,2})"
    r"(?:[T ](\d{1,2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?)?()\s*" + _OFFSET + "?")
_US: Final = re.compile(
    r"(\d{1,2})/(\d{1,2})/(\d{4})"
    r"(?:\s+(\d{1,2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?\s*([AaPp][Mm])?)?\s*" + _OFFSET + "?")
_GENERALIZED: Final = re.compile(
    r"(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})?(\d{2})?(?:[.,](\d+))?()" + _OFFSET + "?")


def parse_date(text: str) -> datetime:
    """A UTC datetime from the date formats directories and HR systems send.

    ISO-8601 (``2009-06-15T01:45:30-07:00``, ``2021-08-24``, Workday's
    ``2020-03-16-07:00``), US (``8/25/2021 5:41:18 PM``), LDAP generalized time
    (``20150123105347.1Z``) and RFC 1123. A value without a time zone is taken as UTC.
    """
    stripped = text.strip()
    iso = _ISO.fullmatch(stripped)
    if iso:
        return _from_groups(int(iso[1]), int(iso[2]), int(iso[3]), iso.groups()[3:])
    us = _US.fullmatch(stripped)
    if us:
        return _from_groups(int(us[3]), int(us[1]), int(us[2]), us.groups()[3:])
    generalized = _GENERALIZED.fullmatch(stripped)
    if generalized:
        year, month, day = (int(g) for g in generalized.groups()[:3])
        return _from_groups(year, month, day, (generalized[4], generalized[5] or "0",
                                               *generalized.groups()[5:]))
    try:
        return parsedate_to_datetime(stripped).astimezone(UTC)
    except (TypeError, ValueError, IndexError):
        raise InvalidValue(f"{text!r} is not a date this engine can read") from None


def _from_groups(year: int, month: int, day: int,
                 rest: tuple[str | None, ...]) -> datetime:
    hour, minute, second, fraction, half, offset = rest
    hour_n = int(hour or 0)
    if half:
        hour_n = hour_n % 12 + (12 if half.upper() == "PM" else 0)
    micro = int((fraction or "0")[:6].ljust(6, "0"))
    try:
        value = datetime(year, month, day, hour_n, int(minute or 0), int(second or 0), micro,
                         tzinfo=_zone(offset))
    except ValueError as exc:
        raise InvalidValue(f"invalid date: {exc}") from None
    return value.astimezone(UTC)


def _zone(offset: str | None) -> timezone:
    if not offset or offset in "Zz":
        return UTC
    sign = -1 if offset[0] == "-" else 1
    digits = offset[1:].replace(":", "")
    minutes = int(digits[:2]) * 60 + int(digits[2:4] or 0)
    return timezone(sign * timedelta(minutes=minutes))


def to_datetime(value: object) -> datetime | None:
    """A datetime from a datetime or date text; None stays None."""
    value = single(value)
    if value is None or isinstance(value, datetime):
        return value
    if isinstance(value, str):
        return parse_date(value) if value.strip() else None
    raise InvalidValue(f"expects a date, got a {type(value).__name__} value")


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# ---------------------------------------------------------------- intervals and FILETIME

def add_interval(interval: str, amount: float, when: datetime) -> datetime:
    """DateAdd: ``when`` plus ``amount`` of ``interval`` (months clamp to the month's end)."""
    try:
        if interval in ("yyyy", "m"):
            if not float(amount).is_integer():
                raise InvalidValue(f"can only add whole {_UNIT_NAMES[interval]}")
            months = int(amount) * (12 if interval == "yyyy" else 1)
            return _add_months(when, months)
        return when + timedelta(**{_TIMEDELTA_UNITS[interval]: amount})
    except (OverflowError, ValueError):
        raise InvalidValue("the result is outside the supported date range") from None


def _add_months(when: datetime, months: int) -> datetime:
    year, month0 = divmod(when.month - 1 + months, 12)
    year += when.year
    day = min(when.day, monthrange(year, month0 + 1)[1]) if 1 <= year <= 9999 else when.day
    return when.replace(year=year, month=month0 + 1, day=day)


_TIMEDELTA_UNITS: Final = {"d": "days", "ww": "weeks", "h": "hours", "n": "minutes",
                           "s": "seconds"}
_UNIT_NAMES: Final = {"yyyy": "years", "m": "months"}
_UNIT_TICKS: Final = {"d": 86_400_000_000, "h": 3_600_000_000, "n": 60_000_000, "s": 1_000_000}


def diff_interval(interval: str, first: datetime, second: datetime) -> int:
    """DateDiff like VBA: calendar parts for years/months/weeks, whole units otherwise."""
    first, second = _utc(first), _utc(second)
    if interval == "yyyy":
        return second.year - first.year
    if interval == "m":
        return (second.year - first.year) * 12 + second.month - first.month
    if interval == "ww":  # Sundays crossed, as VBA's DateDiff("ww") counts them
        return (_week_start(second) - _week_start(first)).days // 7
    micros = (second - first) // _TICK
    whole = abs(micros) // _UNIT_TICKS[interval]
    return whole if micros >= 0 else -whole


def _week_start(value: datetime) -> date:
    day = value.date()
    return day - timedelta(days=(day.weekday() + 1) % 7)


def from_filetime(ticks: int) -> datetime | None:
    """DateFromNum: AD's 100-ns ticks since 1601 to a UTC datetime; 0 and "never" are null."""
    if ticks in (0, _FILETIME_NEVER):
        return None
    try:
        return _FILETIME_EPOCH + timedelta(microseconds=ticks // 10)
    except OverflowError:
        raise InvalidValue(f"{ticks} is outside the supported date range") from None


def to_filetime(when: datetime) -> int:
    """NumFromDate: a datetime to AD's 100-ns ticks since 1601 (UTC)."""
    return (_utc(when) - _FILETIME_EPOCH) // _TICK * 10


# ---------------------------------------------------------------- .NET format strings

_STANDARD: Final = {
    "d": "M/d/yyyy", "D": "dddd, MMMM d, yyyy", "f": "dddd, MMMM d, yyyy h:mm tt",
    "F": "dddd, MMMM d, yyyy h:mm:ss tt", "g": "M/d/yyyy h:mm tt", "G": "M/d/yyyy h:mm:ss tt",
    "m": "MMMM d", "M": "MMMM d", "o": "yyyy'-'MM'-'dd'T'HH':'mm':'ss'.'fffffffK",
    "O": "yyyy'-'MM'-'dd'T'HH':'mm':'ss'.'fffffffK", "r": "ddd, dd MMM yyyy HH':'mm':'ss 'GMT'",
    "R": "ddd, dd MMM yyyy HH':'mm':'ss 'GMT'", "s": "yyyy'-'MM'-'dd'T'HH':'mm':'ss",
    "t": "h:mm tt", "T": "h:mm:ss tt", "u": "yyyy'-'MM'-'dd HH':'mm':'ss'Z'",
    "y": "MMMM yyyy", "Y": "MMMM yyyy",
}
_SPECIFIERS: Final = frozenset("dfFghHKmMstyz")

Token = tuple[str, int] | str  # (specifier, repeat count) or literal text


@dataclass(frozen=True, slots=True)
class DateFormat:
    """A compiled .NET date/time format: format a datetime, or parse text with it."""

    text: str
    tokens: tuple[Token, ...]
    pattern: re.Pattern[str]
    fields: tuple[tuple[str, int], ...]

    def format(self, value: datetime) -> str:
        out: list[str] = []
        for token in self.tokens:
            if isinstance(token, str):
                out.append(token)
                continue
            text = _FORMATTERS[token[0]](value, token[1])
            if token[0] == "F" and not text and out and out[-1].endswith("."):
                out[-1] = out[-1][:-1]  # .NET drops the "." before an empty F
            out.append(text)
        return "".join(out)

    def parse(self, text: str, styles: frozenset[str] = frozenset()) -> datetime:
        match = self.pattern.fullmatch(text.strip())
        if match is None:
            raise InvalidValue(f"{text!r} does not match the format {self.text!r}")
        parts: dict[str, str] = {}
        for (spec, count), group in zip(self.fields, match.groups(), strict=True):
            if group is not None:
                parts[spec if count < 3 or spec not in "dM" else spec * 3] = group
        return _assemble(parts, styles)


def compile_format(text: str) -> DateFormat:
    """Compile a .NET date/time format string; ValueError says what is wrong with it."""
    if not text:
        raise ValueError("the format is empty")
    tokens = tuple(_tokenize(_STANDARD.get(text, text) if len(text) == 1 else text))
    if len(text) == 1 and text not in _STANDARD:
        raise ValueError(f"{text!r} is not a standard .NET date format "
                         f"(one of {''.join(sorted(_STANDARD))}); use %{text} for the custom one")
    regex, fields = _parse_regex(tokens)
    return DateFormat(text, tokens, re.compile(regex, re.IGNORECASE), fields)


def parse_styles(text: str) -> frozenset[str]:
    """The DateTimeStyles named in ``text`` (e.g. "AssumeUniversal, AllowLeadingWhite")."""
    names = {part.strip().removeprefix("DateTimeStyles.") for part in re.split(r"[,|]", text)}
    names.discard("")
    unknown = names - DATE_TIME_STYLES
    if unknown:
        raise ValueError(f"unknown DateTimeStyles {', '.join(sorted(unknown))} "
                         f"(expected {', '.join(sorted(DATE_TIME_STYLES))})")
    return frozenset(names)


def _tokenize(fmt: str) -> list[Token]:
    tokens: list[Token] = []
    i = 0
    while i < len(fmt):
        ch = fmt[i]
        if ch in _SPECIFIERS:
            j = i
            while j < len(fmt) and fmt[j] == ch:
                j += 1
            tokens.append(_specifier(ch, j - i))
            i = j
        elif ch in "'\"":
            literal, i = _quoted(fmt, i)
            tokens.append(literal)
        elif ch == "%" and i + 1 < len(fmt) and fmt[i + 1] in _SPECIFIERS:
            tokens.append(_specifier(fmt[i + 1], 1))
            i += 2
        elif ch == "\\" and i + 1 < len(fmt):
            tokens.append(fmt[i + 1])
            i += 2
        else:
            tokens.append(ch)
            i += 1
    return tokens


def _specifier(ch: str, count: int) -> tuple[str, int]:
    if ch in "fF" and count > 7:
        raise ValueError(f"at most 7 {ch} in a format, got {count}")
    return ch, count


def _quoted(fmt: str, start: int) -> tuple[str, int]:
    quote, out, i = fmt[start], list[str](), start + 1
    while i < len(fmt):
        if fmt[i] == quote:
            return "".join(out), i + 1
        if fmt[i] == "\\" and i + 1 < len(fmt):
            i += 1
        out.append(fmt[i])
        i += 1
    raise ValueError(f"unterminated quoted text starting at {start} in {fmt!r}")


# --------------------------------------------------------------- formatting one specifier

def _fmt_day(v: datetime, n: int) -> str:
    if n <= 2:
        return f"{v.day:0{n}d}"
    name = _DAYS[v.weekday()]
    return name[:3] if n == 3 else name


def _fmt_month(v: datetime, n: int) -> str:
    if n <= 2:
        return f"{v.month:0{n}d}"
    name = _MONTHS[v.month - 1]
    return name[:3] if n == 3 else name


def _fmt_year(v: datetime, n: int) -> str:
    return f"{v.year % 100:0{n}d}" if n <= 2 else f"{v.year:0{n}d}"


def _fmt_fraction(v: datetime, n: int) -> str:
    return f"{v.microsecond:06d}0"[:n]


def _fmt_fraction_trimmed(v: datetime, n: int) -> str:
    return _fmt_fraction(v, n).rstrip("0")


def _fmt_offset(v: datetime, n: int) -> str:
    offset = v.utcoffset() or timedelta(0)
    sign = "-" if offset < timedelta(0) else "+"
    hours, minutes = divmod(abs(offset) // timedelta(minutes=1), 60)
    if n == 1:
        return f"{sign}{hours}"
    return f"{sign}{hours:02d}" if n == 2 else f"{sign}{hours:02d}:{minutes:02d}"


def _fmt_kind(v: datetime, n: int) -> str:
    if v.tzinfo is None:
        return ""
    return "Z" if v.utcoffset() == timedelta(0) else _fmt_offset(v, 3)


def _fmt_half(v: datetime, n: int) -> str:
    half = "AM" if v.hour < 12 else "PM"
    return half[:1] if n == 1 else half


def _pad(value: int, n: int) -> str:
    return f"{value:0{min(n, 2)}d}"


_FORMATTERS: Final[dict[str, Callable[[datetime, int], str]]] = {
    "d": _fmt_day, "M": _fmt_month, "y": _fmt_year, "f": _fmt_fraction,
    "F": _fmt_fraction_trimmed, "z": _fmt_offset, "K": _fmt_kind, "t": _fmt_half,
    "g": lambda v, n: "A.D.",
    "h": lambda v, n: _pad(v.hour % 12 or 12, n), "H": lambda v, n: _pad(v.hour, n),
    "m": lambda v, n: _pad(v.minute, n), "s": lambda v, n: _pad(v.second, n),
}

# ------------------------------------------------------------------ parsing with a format

_NAMES_RE: Final = {
    "ddd": "|".join(d[:3] for d in _DAYS), "dddd": "|".join(_DAYS),
    "MMM": "|".join(m[:3] for m in _MONTHS), "MMMM": "|".join(_MONTHS),
}


def _one_or_two(n: int) -> str:
    return r"(\d{1,2})" if n == 1 else r"(\d{2})"


_FIELD_REGEX: Final[dict[str, Callable[[int], str]]] = {
    "d": _one_or_two, "M": _one_or_two, "h": _one_or_two, "H": _one_or_two,
    "m": _one_or_two, "s": _one_or_two,
    "y": lambda n: {1: r"(\d{1,2})", 2: r"(\d{2})", 3: r"(\d{3,4})"}.get(n, rf"(\d{{{n}}})"),
    "f": lambda n: rf"(\d{{{n}}})",
    "F": lambda n: rf"(\d{{0,{n}}})",
    "t": lambda n: "([AP])" if n == 1 else "([AP]M)",
    "z": lambda n: {1: r"([+-]\d{1,2})", 2: r"([+-]\d{2})"}.get(n, r"([+-]\d{2}:\d{2})"),
    "K": lambda n: r"(Z|[+-]\d{2}:\d{2})?",
    "g": lambda n: r"(A\.?D\.?)?",
}


def _field_regex(spec: str, n: int) -> str:
    if spec in "dM" and n >= 3:  # day and month names
        return f"({_NAMES_RE[spec * min(n, 4)]})"
    return _FIELD_REGEX[spec](n)


def _parse_regex(tokens: tuple[Token, ...]) -> tuple[str, tuple[tuple[str, int], ...]]:
    parts: list[str] = []
    fields: list[tuple[str, int]] = []
    for piece in tokens:
        if isinstance(piece, str):
            parts.append("(Z)" if piece == "Z" else r"\s+" if piece.isspace()
                         else re.escape(piece))
            if piece == "Z":  # .NET's parser reads a literal Z as "this is UTC"
                fields.append(("K", 1))
            continue
        parts.append(_field_regex(*piece))
        fields.append(piece)
    return "".join(parts), tuple(fields)


def _assemble(parts: dict[str, str], styles: frozenset[str]) -> datetime:
    today = datetime.now(UTC)
    year = _year(parts, today)
    month = _MONTHS_LOWER.index(parts["MMM"].lower()[:3]) + 1 if "MMM" in parts \
        else int(parts.get("M", 1 if {"y", "d"} & parts.keys() else today.month))
    day = int(parts.get("d", 1 if {"y", "M", "MMM"} & parts.keys() else today.day))
    hour = int(parts.get("H", 0))
    if "h" in parts:
        hour = int(parts["h"]) % 12 + (12 if parts.get("t", "A").upper().startswith("P") else 0)
    fraction = parts.get("f") or parts.get("F") or "0"
    offset = parts.get("z") or parts.get("K")
    try:
        value = datetime(year, month, day, hour, int(parts.get("m", 0)), int(parts.get("s", 0)),
                         int(fraction[:6].ljust(6, "0")))
    except ValueError as exc:
        raise InvalidValue(f"invalid date: {exc}") from None
    if offset:
        return value.replace(tzinfo=_zone(offset)).astimezone(UTC)
    if {"AssumeUniversal", "AssumeLocal"} & styles:
        return value.replace(tzinfo=UTC)  # the service's local time is UTC
    return value


_MONTHS_LOWER: Final = tuple(m[:3].lower() for m in _MONTHS)


def _year(parts: dict[str, str], today: datetime) -> int:
    text = parts.get("y")
    if text is None:
        return today.year
    year = int(text)
    if len(text) <= 2:  # .NET's two-digit-year window: 00-49 -> 20xx, 50-99 -> 19xx
        year += 2000 if year < 50 else 1900
    return year
