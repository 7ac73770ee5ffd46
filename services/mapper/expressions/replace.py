"""Replace, the one function with five modes: which arguments are filled in decides.

| given                                              | does                               |
| oldValue, replacementValue                         | plain text replacement             |
| oldValue, template                                 | source into the template           |
| regexPattern, replacementValue                     | regex with .NET $-substitutions    |
| regexPattern, regexGroupName, replacementValue     | only the named group of each match |
| regexPattern, regexGroupName, replacementAttributeName | source, else the group from another attribute |

The mode, a constant pattern, its group name and the groups a constant replacement refers
to are all checked when the expression is compiled.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final

from services.mapper.expressions.calls import Attrs, CallSite, Eval, Now, eager, prepared
from services.mapper.expressions.text import (
    compile_dotnet_regex,
    expand,
    parse_substitution,
    substitution_groups,
)
from services.mapper.expressions.values import InvalidValue, to_str

__all__ = ["build_replace"]

Regex = Callable[[Attrs, Now], re.Pattern[str] | None]

_REPLACE_MODES: Final = {
    frozenset({"oldValue", "replacementValue"}): "text",
    frozenset({"oldValue", "template"}): "template",
    frozenset({"regexPattern", "replacementValue"}): "regex",
    frozenset({"regexPattern", "regexGroupName", "replacementValue"}): "group",
    frozenset({"regexPattern", "regexGroupName", "replacementAttributeName"}): "attribute",
}
_REPLACE_EXPECTED: Final = ("oldValue + replacementValue, oldValue + template, "
                            "regexPattern + replacementValue, regexPattern + regexGroupName + "
                            "replacementValue, or regexPattern + regexGroupName + "
                            "replacementAttributeName")


def build_replace(site: CallSite) -> Eval:
    given = frozenset(site.spec.param(i) for i in range(1, len(site.args)) if site.present(i))
    mode = _REPLACE_MODES.get(given)
    if mode is None:
        names = ", ".join(sorted(given)) or "nothing"
        raise site.error(f"can't tell what to replace from the arguments given ({names})",
                         _REPLACE_EXPECTED)
    if mode == "text":
        return eager(_replace_text, maps_lists=True)(_subset(site, 0, 1, 4))
    if mode == "template":
        return eager(_replace_template, maps_lists=True)(_subset(site, 0, 1, 6))
    regex = _regex_of(site)
    if mode == "regex":
        return _build_replace_regex(site, regex)
    group = _group_of(site)
    if mode == "group":
        return _build_replace_group(site, regex, group)
    return _build_replace_from_attribute(site, regex, group)


def _subset(site: CallSite, *indexes: int) -> CallSite:
    return CallSite(site.spec, site.node, tuple(site.args[i] for i in indexes), site.attribute)


def _replace_text(source: object, old: object, new: object) -> str | None:
    text, find = to_str(source), _text(old)
    if text is None or not find:
        return text
    return text.replace(find, _text(new))


def _replace_template(source: object, old: object, template: object) -> str | None:
    text = to_str(source)
    if text is None:
        return None
    return _text(template).replace(_text(old), text)


def _regex_of(site: CallSite) -> Regex:
    return prepared(site, 2, compile_dotnet_regex)


def _constant_regex(site: CallSite) -> re.Pattern[str] | None:
    """The pattern, if it is a string constant (already checked by ``_prepared``)."""
    pattern = site.constant(2)
    return compile_dotnet_regex(pattern) if isinstance(pattern, str) else None


def _group_of(site: CallSite) -> Eval:
    name, compiled = site.constant(3), _constant_regex(site)
    if isinstance(name, str) and compiled is not None and name not in compiled.groupindex:
        raise site.error(f"regexGroupName {name!r} is not a named group of the pattern",
                         f"one of {sorted(compiled.groupindex)}", 3)
    return site.arg(3)


def _build_replace_regex(site: CallSite, regex: Regex) -> Eval:
    replacement = prepared(site, 4, parse_substitution)
    _check_substitution(site)
    source = site.arg(0)

    def one(text: str, attrs: Attrs, now: Now) -> str:
        pattern, parts = regex(attrs, now), replacement(attrs, now) or ()
        if pattern is None:
            raise InvalidValue("regexPattern is null")
        return pattern.sub(lambda m: expand(parts, m), text)

    return _per_text(source, one)


def _check_substitution(site: CallSite) -> None:
    compiled, replacement = _constant_regex(site), site.constant(4)
    if compiled is None or not isinstance(replacement, str):
        return
    for ref in substitution_groups(parse_substitution(replacement)):
        if isinstance(ref, str) and ref not in compiled.groupindex:
            raise site.error(f"replacementValue refers to ${{{ref}}}, which the pattern "
                             "does not define", f"one of {sorted(compiled.groupindex)}", 4)


def _build_replace_group(site: CallSite, regex: Regex,
                         group: Eval) -> Eval:
    source, new = site.arg(0), site.arg(4)

    def one(text: str, attrs: Attrs, now: Now) -> str:
        pattern, name, value = regex(attrs, now), to_str(group(attrs, now)), _text(new(attrs, now))
        if pattern is None or name is None:
            raise InvalidValue("regexPattern and regexGroupName can't be null")
        return pattern.sub(lambda m: _splice(m, name, value), text)

    return _per_text(source, one)


def _splice(match: re.Match[str], group: str, value: str) -> str:
    """The match with only the named group's part replaced."""
    try:
        start, end = match.span(group)
    except IndexError:
        raise InvalidValue(f"regexGroupName {group!r} is not a group of the pattern") from None
    if start < 0:
        return match.group(0)
    whole = match.group(0)
    offset = match.start()
    return whole[:start - offset] + value + whole[end - offset:]


def _per_text(source: Eval, one: Callable[[str, Attrs, Now], str]) -> Eval:
    """Apply ``one`` to the source text (each value of a multi-valued source)."""
    def run(attrs: Attrs, now: Now) -> object:
        value = source(attrs, now)
        if isinstance(value, list):
            return [one(t, attrs, now) if (t := to_str(v)) is not None else None for v in value]
        text = to_str(value)
        return None if text is None else one(text, attrs, now)
    return run


def _build_replace_from_attribute(site: CallSite,
                                  regex: Regex,
                                  group: Eval) -> Eval:
    source = site.arg(0)
    name = site.constant(5)
    # A string constant names the attribute; [attribute] or a function gives the value.
    other = site.attribute(name) if isinstance(name, str) else site.arg(5)

    def run(attrs: Attrs, now: Now) -> object:
        text = to_str(source(attrs, now))
        if text:
            return text
        fallback, pattern, wanted = to_str(other(attrs, now)), regex(attrs, now), to_str(group(attrs, now))
        if not fallback or pattern is None or wanted is None:
            return None
        match = pattern.search(fallback)
        return match.group(wanted) if match else None

    return run


def _text(value: object) -> str:
    return to_str(value) or ""
