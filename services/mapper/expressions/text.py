"""Text helpers behind the string functions, matching what Entra's .NET code does.

- case mapping is .NET's: one character at a time (``"ß"`` stays ``"ß"`` in ToUpper),
  with Turkish/Azeri dotted and dotless i for the ``tr``/``az`` cultures;
- PCase without separators is .NET's ``TextInfo.ToTitleCase`` applied to the lower-cased
  text (Unicode punctuation and symbols separate words, an apostrophe does not);
- regular expressions are written in .NET syntax (``(?<name>...)``, ``\\k<name>``,
  ``${name}`` in replacements) and translated once to Python's ``re``.
"""

from __future__ import annotations

import re
import secrets
import string
import unicodedata
from collections.abc import Callable
from functools import lru_cache
from typing import Final

from services.mapper.expressions.values import InvalidValue

__all__ = [
    "SPECIAL_CHARACTERS",
    "Substitution",
    "check_random_string",
    "compile_dotnet_regex",
    "expand",
    "is_culture",
    "normalize_diacritics",
    "parse_substitution",
    "proper_case",
    "random_string",
    "substitution_groups",
    "to_lower",
    "to_upper",
]

# ------------------------------------------------------------------ NormalizeDiacritics

# Letters that are not "base letter + combining mark" in Unicode, mapped as Entra's
# documented table maps them (ø -> oe, æ -> ae, ß -> ss, ł -> l, dotless i -> i).
_LETTERS: Final = str.maketrans({
    "æ": "ae", "Æ": "AE", "ø": "oe", "Ø": "OE", "œ": "oe", "Œ": "OE", "ß": "ss",
    "ł": "l", "Ł": "L", "\u0131": "i", "đ": "d", "Đ": "D",
})
_COMBINING: Final = re.compile("[\u0300-\u036f]")


def _fold(ch: str) -> str:
    decomposed = unicodedata.normalize("NFD", ch).translate(_LETTERS)
    return unicodedata.normalize("NFC", _COMBINING.sub("", decomposed))


class _FoldTable(dict[int, str]):
    """str.translate table that works out (and remembers) each character's plain form;
    works for precomposed letters and for loose combining marks alike."""

    def __missing__(self, code: int) -> str:
        folded = self[code] = _fold(chr(code))
        return folded


_FOLD: Final = _FoldTable()


def normalize_diacritics(text: str) -> str:
    """Replace accented Latin letters with plain ones ("Zoë" -> "Zoe")."""
    if text.isascii():
        return text
    return text.translate(_FOLD)


# --------------------------------------------------------------------------- case mapping

_CULTURE: Final = re.compile(r"[A-Za-z]{2,3}(?:-[A-Za-z0-9]{2,8})*")
_TURKIC: Final = ("tr", "az")


def is_culture(name: str) -> bool:
    """Whether ``name`` looks like an RFC 4646 culture name ("en-US", "tr-TR", "")."""
    return name == "" or _CULTURE.fullmatch(name) is not None


def _turkic(culture: str | None) -> bool:
    return bool(culture) and culture.split("-")[0].lower() in _TURKIC  # type: ignore[union-attr]


def _lower_char(ch: str) -> str:
    lowered = ch.lower()
    return lowered if len(lowered) == 1 else ("i" if ch == "\u0130" else ch)


def _upper_char(ch: str) -> str:
    upper = ch.upper()
    return upper if len(upper) == 1 else ch


def to_lower(text: str, culture: str | None = None) -> str:
    """ToLower with .NET's simple case mapping (invariant unless the culture is Turkic)."""
    if _turkic(culture):
        text = text.replace("I", "\u0131").replace("\u0130", "i")
    if text.isascii():
        return text.lower()
    return "".join(map(_lower_char, text))


def to_upper(text: str, culture: str | None = None) -> str:
    """ToUpper with .NET's simple case mapping (invariant unless the culture is Turkic)."""
    if _turkic(culture):
        text = text.replace("i", "\u0130").replace("\u0131", "I")
    if text.isascii():
        return text.upper()
    return "".join(map(_upper_char, text))


# -------------------------------------------------------------------------------- PCase

_SEPARATOR_CATEGORIES: Final = frozenset({
    "Zs", "Zl", "Zp", "Cc", "Cf", "Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po",
    "Sm", "Sc", "Sk", "So",
})


def _is_separator(ch: str) -> bool:
    return ch != "'" and unicodedata.category(ch) in _SEPARATOR_CATEGORIES


def proper_case(text: str, separators: str | None = None) -> str:
    """PCase: first letter of each word upper case, the rest lower case."""
    lowered = to_lower(text)
    if separators is None:
        return _title_case(lowered)
    out, start = [], True
    for ch in lowered:
        out.append(_upper_char(ch) if start else ch)
        start = ch in separators
    return "".join(out)


def _title_case(text: str) -> str:
    """.NET ToTitleCase: a word starts at a letter and runs to the next separator."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        i += 1
        if not ch.isalpha():
            out.append(ch)
            continue
        out.append(_upper_char(ch))
        while i < n and not _is_separator(text[i]):
            out.append(text[i])
            i += 1
    return "".join(out)


# -------------------------------------------------------------------- .NET regular expressions

def _translate_regex(pattern: str) -> str:
    """.NET named groups and back-references in Python ``re`` syntax."""
    out: list[str] = []
    i, in_class = 0, False
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            piece, i = _translate_escape(pattern, i, in_class)
            out.append(piece)
        elif in_class:
            in_class = ch != "]"
            out.append(ch)
            i += 1
        elif ch == "[":
            in_class = True
            piece = "[^]" if pattern.startswith("[^]", i) else "[]" \
                if pattern.startswith("[]", i) else "["
            out.append(piece)
            i += len(piece)
        elif pattern.startswith("(?<", i) and pattern[i + 3:i + 4] not in ("=", "!"):
            out.append("(?P<")
            i += 3
        elif pattern.startswith("(?'", i):
            end = pattern.find("'", i + 3)
            out.append(f"(?P<{pattern[i + 3:end]}>" if end > 0 else ch)
            i = end + 1 if end > 0 else i + 1
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _translate_escape(pattern: str, i: int, in_class: bool) -> tuple[str, int]:
    nxt = pattern[i + 1:i + 2]
    if not in_class and nxt == "k" and pattern[i + 2:i + 3] in ("<", "'"):
        close = ">" if pattern[i + 2] == "<" else "'"
        end = pattern.find(close, i + 3)
        if end > 0:
            return f"(?P={pattern[i + 3:end]})", end + 1
    if not in_class and nxt == "z":
        return r"\Z", i + 2
    if not in_class and nxt == "Z":
        return r"(?=\n?\Z)", i + 2
    return pattern[i:i + 2], i + 2


@lru_cache(maxsize=256)
def compile_dotnet_regex(pattern: str) -> re.Pattern[str]:
    """Compile a .NET-syntax regular expression; ValueError says what is wrong."""
    try:
        return re.compile(_translate_regex(pattern))
    except re.error as exc:
        raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from None


# A .NET replacement pattern, split into literal text and references to the match:
# ("group", name-or-number), ("before", ""), ("after", ""), ("last", ""), ("input", "").
Reference = tuple[str, int | str]
Substitution = tuple[str | Reference, ...]
_SUBSTITUTION: Final = re.compile(r"\$(?:(\$)|\{(\w+)\}|(\d+)|([&`'+_]))")
_SPECIAL_REFS: Final[dict[str, Reference]] = {
    "&": ("group", 0), "`": ("before", ""), "'": ("after", ""), "+": ("last", ""),
    "_": ("input", ""),
}


def parse_substitution(text: str) -> Substitution:
    """Split ``$1``, ``${name}``, ``$&``, ``$$`` ... out of a replacement pattern."""
    parts: list[str | Reference] = []
    last = 0
    for m in _SUBSTITUTION.finditer(text):
        parts.append(text[last:m.start()])
        dollar, name, number, special = m.groups()
        if dollar:
            parts.append("$")
        elif name is not None:
            parts.append(("group", int(name) if name.isdigit() else name))
        elif number is not None:
            parts.append(("group", int(number)))
        else:
            parts.append(_SPECIAL_REFS[special])
        last = m.end()
    parts.append(text[last:])
    return tuple(p for p in parts if p != "")


def substitution_groups(parts: Substitution) -> list[int | str]:
    """The groups a substitution refers to (to check them against the pattern)."""
    return [p[1] for p in parts if isinstance(p, tuple) and p[0] == "group"]


def expand(parts: Substitution, match: re.Match[str]) -> str:
    """The replacement text for one match."""
    out: list[str] = []
    for part in parts:
        if isinstance(part, str):
            out.append(part)
        else:
            out.append(_reference(part, match))
    return "".join(out)


def _reference(part: Reference, match: re.Match[str]) -> str:
    kind = part[0]
    if kind == "group":
        try:
            return match.group(part[1]) or ""
        except IndexError:  # .NET leaves a reference to a missing group as written
            ref = part[1]
            return f"${ref}" if isinstance(ref, int) else f"${{{ref}}}"
    if kind == "before":
        return match.string[:match.start()]
    if kind == "after":
        return match.string[match.end():]
    if kind == "last":
        return (match.group(match.lastindex) or "") if match.lastindex else ""
    return match.string


# --------------------------------------------------------------------------- RandomString

SPECIAL_CHARACTERS: Final = "~!@#$%^&*_-+=`|\\(){}[]:;\"'<>,.?/"
_POOLS: Final = (string.digits, SPECIAL_CHARACTERS, string.ascii_uppercase,
                 string.ascii_lowercase)
_MAX_LENGTH: Final = 256


def check_random_string(length: int, minimums: tuple[int, int, int, int]) -> str | None:
    """Why these RandomString sizes are impossible, or None when they are fine."""
    if not 1 <= length <= _MAX_LENGTH:
        return f"Length must be between 1 and {_MAX_LENGTH}, got {length}"
    if min(minimums) < 0:
        return "minimum counts can't be negative"
    if sum(minimums) > length:
        return f"the minimum counts add up to {sum(minimums)}, more than Length {length}"
    return None


def random_string(length: int, minimums: tuple[int, int, int, int], avoid: str = "") -> str:
    """A random string with at least the given numbers of digits, special characters,
    capitals and lower-case letters, without the characters in ``avoid``."""
    problem = check_random_string(length, minimums)
    if problem:
        raise InvalidValue(problem)
    pools = tuple("".join(c for c in pool if c not in avoid) for pool in _POOLS)
    chars: list[str] = []
    for pool, count in zip(pools, minimums, strict=True):
        if count and not pool:
            raise InvalidValue("CharactersToAvoid leaves no character for a required class")
        chars.extend(secrets.choice(pool) for _ in range(count))
    filler = "".join(p for p, c in zip(pools, minimums, strict=True) if c) \
        or pools[0] + pools[2] + pools[3]
    chars.extend(secrets.choice(filler) for _ in range(length - len(chars)))
    _shuffle(chars)
    return "".join(chars)


_shuffle: Final[Callable[[list[str]], None]] = secrets.SystemRandom().shuffle
