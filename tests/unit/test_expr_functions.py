"""Each function's semantics beyond Microsoft's examples, and the engine's type rules:
null handling, multi-valued attributes, conversions, and errors per object."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from services.mapper.expressions import (
    IGNORE,
    EvaluationError,
    ExpressionError,
    RoleAssignments,
    UniqueCandidates,
    compile_expression,
)


def ev(text: str, **attrs: object) -> object:
    return compile_expression(text).evaluate(attrs)


# ------------------------------------------------------------------------------ type rules

@pytest.mark.parametrize(("value", "expected"), [
    (True, "True"), (False, "False"), (42, "42"), ("x", "x"), (None, None), (["only"], "only"),
    ([], None),
])
def test_cstr(value: object, expected: object) -> None:
    assert ev("CStr([v])", v=value) == expected


def test_cstr_of_numbers_and_dates() -> None:
    assert ev("CStr(5.0)") == "5"
    assert ev("CStr(2.5)") == "2.5"
    assert ev('CStr(CDate("2021-07-02T15:33:38Z"))') == "7/2/2021 3:33:38 PM"
    assert ev('CStr(CDate("2021-07-02T00:05:00Z"))') == "7/2/2021 12:05:00 AM"


def test_multi_valued_attribute_where_one_value_is_needed() -> None:
    with pytest.raises(EvaluationError) as info:
        ev("ToUpper(Left([proxyAddresses], 3))", proxyAddresses=["a", "b"])
    assert info.value.function == "Left"
    assert "expects a single value, got 2 values" in str(info.value)
    assert str(info.value).startswith("Left: ")


@pytest.mark.parametrize(("value", "expected"), [
    (True, True), (False, False), ("True", True), ("false", False), ("TRUE", True),
    (1, True), (0, False), ("0", False), ("2", True), (None, False), ("", False),
])
def test_cbool(value: object, expected: bool) -> None:
    assert ev("CBool([v])", v=value) is expected


def test_cbool_of_text_that_is_no_boolean_is_an_error() -> None:
    with pytest.raises(EvaluationError, match=r"CBool: expects True or False, got 'maybe'"):
        ev("CBool([v])", v="maybe")


@pytest.mark.parametrize(("value", "expected"), [
    (True, False), ("True", False), ("true", False), (False, True), ("False", True),
    (None, True), ("anything", True), (0, True), (1, False),
])
def test_not(value: object, expected: bool) -> None:
    # "If source value is True, returns False. Otherwise, returns True."
    assert ev("Not([v])", v=value) is expected


# -------------------------------------------------------------------------- comparisons

@pytest.mark.parametrize(("condition", "attrs", "expected"), [
    ('[a] = ""', {}, True),                      # null equals ""
    ('[a] = ""', {"a": ""}, True),
    ('[a] <> ""', {}, False),
    ("[a] = [b]", {}, True),                     # null equals null
    ('[a] = "x"', {}, False),
    ('[a] > "x"', {}, False),                    # ordering with null is false
    ("[a] < 5", {}, False),
    ('[n] = "7"', {"n": 7}, True),               # a number on one side: numbers
    ("[n] > 10", {"n": "9"}, False),
    ("[n] > 10", {"n": "11"}, True),
    ('[n] = "abc"', {"n": 7}, False),            # not a number: text
    ('[b] = "True"', {"b": True}, True),         # a boolean on one side: booleans
    ('[b] = "false"', {"b": False}, True),
    ("[b] = True", {"b": "TRUE"}, True),
    ('CDate([d]) > CDate("2020-01-01")', {"d": "2021-01-01"}, True),
    ('CDate([d]) = "2021-01-01T00:00:00Z"', {"d": "2021-01-01"}, True),  # dates as dates
    ('[a] = "x"', {"a": ["x"]}, True),           # a one-value list is its value
])
def test_comparison_rules(condition: str, attrs: dict[str, object], expected: bool) -> None:
    assert ev(f"CBool({condition})", **attrs) is expected


def test_comparison_of_a_multi_valued_attribute_is_an_error() -> None:
    with pytest.raises(EvaluationError, match="comparison =: expects a single value"):
        ev('IIF([a] = "x", 1, 2)', a=["x", "y"])


def test_iif_evaluates_only_the_chosen_branch() -> None:
    assert ev('IIF([a] = "x", "ok", CDate("garbage"))', a="x") == "ok"
    with pytest.raises(EvaluationError, match="CDate"):
        ev('IIF([a] = "x", "ok", CDate("garbage"))', a="y")


def test_iif_condition_from_functions() -> None:
    assert ev('IIF(IsPresent([a]), "yes", "no")', a="v") == "yes"
    assert ev('IIF(Not(IsPresent([a])), "yes", "no")') == "yes"
    assert ev('IIF([flag], "on", "off")', flag=True) == "on"
    assert ev('IIF([flag], "on", "off")', flag="False") == "off"


def test_iif_condition_must_be_a_boolean() -> None:
    with pytest.raises(EvaluationError, match="IIF: expects True or False"):
        ev('IIF([a], "on", "off")', a="USA")


# ---------------------------------------------------------------------------------- text

def test_append_with_nulls() -> None:
    assert ev('Append([a], "@x")') == "@x"
    assert ev("Append([a], [b])", a="a") == "a"


def test_append_applies_to_every_value() -> None:
    assert ev('Append([aliases], "@contoso.com")', aliases=["a", "b"]) == [
        "a@contoso.com", "b@contoso.com"]


def test_join_skips_nulls_and_empties_and_flattens_lists() -> None:
    assert ev('Join(",", [a], [list], "", [b])', a="1", list=["2", "3"], b=4) == "1,2,3,4"
    assert ev('Join(",", [a], [b])') == ""
    assert ev('Join("", "a", "b")') == "ab"
    assert ev('Join(".", True, 5)') == "True.5"


@pytest.mark.parametrize(("text", "expected"), [
    ('Left("John", 0)', ""), ('Left("John", -1)', "John"), ('Left("John", 10)', "John"),
    ("Left([missing], 2)", ""),
])
def test_left_rules(text: str, expected: str) -> None:
    assert ev(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ('Mid("John Doe", 1, 4)', "John"), ('Mid("John Doe", 6, 100)', "Doe"),
    ('Mid("John", 9, 2)', ""), ('Mid("John", 2, 0)', ""), ("Mid([missing], 1, 2)", ""),
])
def test_mid_is_one_based(text: str, expected: str) -> None:
    assert ev(text) == expected


def test_mid_rejects_a_constant_start_below_one() -> None:
    with pytest.raises(ExpressionError, match="start must be 1 or more, got 0") as info:
        compile_expression('Mid([a], 0, 2)')
    assert info.value.position == 9


def test_mid_rejects_a_computed_start_below_one() -> None:
    with pytest.raises(EvaluationError, match="Mid: start must be 1 or more"):
        ev("Mid([a], [start], 2)", a="abc", start="0")


def test_len() -> None:
    assert ev("Len([missing])") == 0
    assert ev("Len(True)") == 4


@pytest.mark.parametrize(("text", "expected"), [
    ('Word("a  b", 2, " ")', "b"),          # consecutive delimiters make no empty word
    ('Word("a b", 3, " ")', ""), ('Word("a b", 0, " ")', ""), ('Word([missing], 1, " ")', ""),
    ('Word("a-b]c", 3, "-]")', "c"),         # regex metacharacters are plain delimiters
    ('Word("abc", 1, "")', "abc"),
])
def test_word_rules(text: str, expected: str) -> None:
    assert ev(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ('InStr("abc", "d")', 0), ('InStr("abc", "")', 1), ('InStr("", "a")', 0),
    ('InStr("repEated", "e", 3, vbTextCompare)', 4),
    ('InStr("repEated", "E", 1, "vbTextCompare")', 2),
    ('InStr("abc", "c", 9)', 0), ('InStr([missing], "a")', 0),
])
def test_instr_rules(text: str, expected: int) -> None:
    assert ev(text) == expected


def test_instr_checks_constants_at_load() -> None:
    with pytest.raises(ExpressionError, match="vbBinaryCompare or vbTextCompare"):
        compile_expression('InStr("a", "b", 1, "vbSomething")')
    with pytest.raises(ExpressionError, match="start must be 1 or more"):
        compile_expression('InStr("a", "b", 0)')


def test_strip_spaces_removes_only_spaces() -> None:
    assert ev("StripSpaces([a])", a=" Mary  Ann\tX ") == "MaryAnn\tX"
    assert ev("StripSpaces([a])") is None


@pytest.mark.parametrize(("source", "expected"), [
    ("Zoë", "Zoe"), ("Ærøskøbing", "AEroeskoebing"), ("Łódź", "Lodz"), ("Straße", "Strasse"),
    ("İstanbul \u0131l\u0131k", "Istanbul ilik"), ("Nguyễn Thị Hương", "Nguyen Thi Huong"),
    ("Đorđe", "Dorde"), ("Ǣ ǟ Ȭ ǖ ṻ", "AE a O u u"),
    ("Zoe\u0308", "Zoe"),        # a loose combining mark, too
    ("Δήμητρα 東京", "Δημητρα 東京"),  # other scripts keep their letters
    ("plain", "plain"),
])
def test_normalize_diacritics(source: str, expected: str) -> None:
    assert ev("NormalizeDiacritics([a])", a=source) == expected


def test_normalize_diacritics_over_values_and_null() -> None:
    assert ev("NormalizeDiacritics([a])", a=["José", "Zoë"]) == ["Jose", "Zoe"]
    assert ev("NormalizeDiacritics([a])") is None


@pytest.mark.parametrize(("text", "expected"), [
    ('ToUpper("straße")', "STRAßE"),            # .NET maps one character at a time
    ('ToLower("İSTANBUL")', "istanbul"),
    ('ToUpper("istanbul", "tr-TR")', "İSTANBUL"),
    ('ToLower("ISPARTA", "tr-TR")', "\u0131sparta"),
    ('ToUpper("istanbul", "en-US")', "ISTANBUL"),
    ('ToUpper("ab", "")', "AB"),
])
def test_case_mapping_and_culture(text: str, expected: str) -> None:
    assert ev(text) == expected


def test_case_mapping_null_and_lists() -> None:
    assert ev("ToLower([a])") is None
    assert ev("ToLower([a])", a=["A", "B"]) == ["a", "b"]


def test_culture_is_checked_at_load() -> None:
    with pytest.raises(ExpressionError, match="is not a culture name"):
        compile_expression('ToUpper([a], "english please")')


@pytest.mark.parametrize(("source", "expected"), [
    ("o'NEIL mcdonald-smith", "O'neil Mcdonald-Smith"),  # .NET: an apostrophe is in-word
    ("anne_marie jean+paul", "Anne_Marie Jean+Paul"),
    ("3RD street", "3Rd Street"),                          # a letter after a digit starts
    ("ÉLODIE ÇA", "Élodie Ça"),
])
def test_pcase_default_separators(source: str, expected: str) -> None:
    assert ev("PCase([a])", a=source) == expected


def test_pcase_custom_separators_only() -> None:
    assert ev('PCase([a], " ")', a="ANNE-MARIE O'NEIL") == "Anne-marie O'neil"
    assert ev("PCase([a])") is None


def test_convert_functions_with_null_and_unicode() -> None:
    assert ev("ConvertToBase64([a])") is None
    assert ev("ConvertToUTF8Hex([a])") is None
    assert ev('ConvertToUTF8Hex("é")') == "C3A9"
    assert ev('ConvertToBase64("é")') == "6QA="


# ------------------------------------------------------------------------------- Replace

def test_replace_text_everywhere_and_case_sensitively() -> None:
    assert ev('Replace([a], "o", , , "0", , )', a="Foo Oo") == "F00 O0"


def test_replace_over_every_value() -> None:
    text = 'Replace([proxyAddresses], "contoso.com", , , "fabrikam.com", , )'
    assert ev(text, proxyAddresses=["smtp:a@contoso.com", "SMTP:b@contoso.com"]) == [
        "smtp:a@fabrikam.com", "SMTP:b@fabrikam.com"]


def test_replace_with_null_source() -> None:
    assert ev('Replace([a], "o", , , "0", , )') is None
    assert ev('Replace([a], "<u>", , , , , "<u>@x")') is None


@pytest.mark.parametrize(("replacement", "expected"), [
    ("$2-$1", "world-hello"), ("${second}:${first}", "world:hello"), ("$$1", "$1"),
    ("[$&]", "[hello world]"), ("$9", "$9"), ("<$`|$'>", "<|>"), ("$+", "world"),
])
def test_replace_regex_substitutions(replacement: str, expected: str) -> None:
    text = f'Replace([a], , "(?<first>\\\\w+) (?<second>\\\\w+)", , "{replacement}", , )'
    assert ev(text, a="hello world") == expected


def test_replace_reference_to_a_group_a_computed_pattern_lacks_stays_as_written() -> None:
    text = 'Replace([a], , [pattern], , "${missing}", , )'
    assert ev(text, a="hello", pattern="l+") == "he${missing}o"


def test_replace_regex_backreference_in_dotnet_syntax() -> None:
    text = r'Replace([a], , "(?<c>\\w)\\k<c>", , "${c}", , )'
    assert ev(text, a="aabbcd") == "abcd"


def test_replace_regex_pattern_from_an_attribute() -> None:
    assert ev("Replace([a], , [pattern], , \"#\", , )", a="a1b22", pattern="\\d+") == "a#b#"
    with pytest.raises(EvaluationError, match="Replace: invalid regular expression"):
        ev("Replace([a], , [pattern], , \"#\", , )", a="a", pattern="(")


def test_replace_group_replaces_only_the_group() -> None:
    text = r'Replace([a], , "(?<user>[^@]+)@(?<domain>.+)", "domain", "fabrikam.com", , )'
    assert ev(text, a="jo@contoso.com") == "jo@fabrikam.com"


def test_replace_from_attribute_without_a_match_is_null() -> None:
    text = r'Replace([a], , "(?<d>\\d+)", "d", , [b], )'
    assert ev(text, b="no digits") is None
    assert ev(text) is None


@pytest.mark.parametrize(("text", "message"), [
    ('Replace([a])', "can't tell what to replace from the arguments given (nothing)"),
    ('Replace([a], "x", "y", , "z", , )', "(oldValue, regexPattern, replacementValue)"),
    ('Replace([a], , "(?<x>y)", "nope", "z", , )', "regexGroupName 'nope' is not a named group"),
    ('Replace([a], , "(?<x>y)", , "${nope}", , )', "refers to ${nope}"),
    ('Replace([a], , "(", , "z", , )', "invalid regular expression"),
])
def test_replace_checks_its_arguments_at_load(text: str, message: str) -> None:
    with pytest.raises(ExpressionError) as info:
        compile_expression(text)
    assert message in str(info.value)


# ------------------------------------------------------------------ multi-valued functions

def test_count() -> None:
    assert ev("Count([a])", a=["x", "y", "z"]) == 3
    assert ev("Count([a])", a="x") == 1
    assert ev("Count([a])") == 0


@pytest.mark.parametrize(("index", "expected"), [(1, "x"), (3, "z"), (4, None)])
def test_item_is_one_based(index: int, expected: object) -> None:
    assert ev(f"Item([a], {index})", a=["x", "y", "z"]) == expected


def test_item_rules() -> None:
    assert ev("Item([a], 1)", a="single") == "single"
    assert ev("Item([a], 1)") is None
    assert ev('Item([a], "2")', a=["x", "y"]) == "y"
    with pytest.raises(ExpressionError, match="index must be 1 or more, got 0"):
        compile_expression("Item([proxyAddresses], 0)")


def test_remove_duplicates_rules() -> None:
    assert ev("RemoveDuplicates([a])") is None
    assert ev("RemoveDuplicates([a])", a="x") == ["x"]
    assert ev("RemoveDuplicates([a])", a=["B", "b", "B"]) == ["B", "b"]  # case-sensitive
    with pytest.raises(EvaluationError, match="RemoveDuplicates: can only remove"):
        ev("RemoveDuplicates([a])", a=[{"value": "x"}])


def test_split_rules() -> None:
    assert ev('Split([a], ";")', a="x; y;;z ;") == ["x", "y", "z"]
    assert ev('Split([a], ", ")', a="x, y") == ["x", "y"]
    assert ev('Split([a], ",")') is None
    assert ev('Split([a], ",")', a=["x,y", "z"]) == ["x", "y", "z"]
    with pytest.raises(ExpressionError, match="delimiter can't be empty"):
        compile_expression('Split([a], "")')


def test_coalesce_rules() -> None:
    assert ev('Coalesce([a], [b], "default")', b="") == ""  # "" is a value, not null
    assert ev('Coalesce([a], [b], "default")', a=[]) == "default"
    assert ev("Coalesce([a], [b])") is None
    assert ev('Coalesce([a], CDate("garbage"))', a="x") == "x"  # stops at the first value


@pytest.mark.parametrize(("value", "is_null", "null_or_empty", "present", "is_string"), [
    (None, True, True, False, False), ("", False, True, False, True),
    ("x", False, False, True, True), ([], True, True, False, False),
    (["x"], False, False, True, False), (5, False, False, True, False),
    (True, False, False, True, False),
])
def test_null_checks(value: object, is_null: bool, null_or_empty: bool, present: bool,
                     is_string: bool) -> None:
    assert ev("IsNull([v])", v=value) is is_null
    assert ev("IsNullOrEmpty([v])", v=value) is null_or_empty
    assert ev("IsPresent([v])", v=value) is present
    assert ev("IsString([v])", v=value) is is_string


def test_bit_and() -> None:
    assert ev("BitAnd([uac], 2)", uac=514) == 2
    assert ev('BitAnd([uac], "2")', uac="512") == 0
    assert ev("BitAnd([uac], 2)") is None
    with pytest.raises(EvaluationError, match="BitAnd: expects a number, got 'x'"):
        ev("BitAnd([uac], 2)", uac="x")


# -------------------------------------------------------------------------------- Switch

def test_switch_first_matching_key_wins_and_keys_are_case_sensitive() -> None:
    text = 'Switch([a], "none", "x", "1", "x", "2", "X", "3")'
    assert ev(text, a="x") == "1"
    assert ev(text, a="X") == "3"
    assert ev(text, a="y") == "none"


def test_switch_with_computed_keys() -> None:
    text = 'Switch([a], "none", [k1], "first", ToUpper([k2]), "second")'
    assert ev(text, a="B", k1="a", k2="b") == "second"
    assert ev(text, a="c", k1="a", k2="b") == "none"


def test_switch_only_evaluates_the_chosen_value() -> None:
    text = 'Switch([a], CDate("bad"), "x", "ok", "y", CDate("bad"))'
    assert ev(text, a="x") == "ok"


def test_switch_default_may_be_an_attribute() -> None:
    text = 'Switch([companyName], [companyName], "Company A", "A", "Company B", "B")'
    assert ev(text, companyName="Contoso") == "Contoso"


def test_switch_is_evaluated_against_the_whole_object_every_time() -> None:
    # Microsoft documents that Switch can set the target to null when its source did not
    # change but another attribute did. The engine always evaluates from the full object.
    expression = compile_expression('Switch([companyName], "External", "Company A", "A")')
    before = {"displayName": "Ann", "companyName": "Company A"}
    after = {"displayName": "Ann B", "companyName": "Company A"}
    assert expression.evaluate(before) == expression.evaluate(after) == "A"


# --------------------------------------------------------------- flow and unique values

def test_ignore_flow_on_an_empty_list_and_a_value() -> None:
    assert ev("IgnoreFlowIfNullOrEmpty([a])", a=[]) is IGNORE
    assert ev("IgnoreFlowIfNullOrEmpty([a])", a=["x"]) == ["x"]
    assert ev("IgnoreFlowIfNullOrEmpty([a])", a=False) is False
    assert repr(IGNORE) == "IGNORE"


def test_select_unique_value_drops_empty_and_repeated_candidates() -> None:
    text = 'SelectUniqueValue([a], Join(".", [b], [c]), [a], "fallback")'
    value = ev(text, a="x", b="", c="")
    assert value == UniqueCandidates(("x", "fallback"))
    assert isinstance(value, tuple)


def test_redact_passes_the_value() -> None:
    assert ev("Redact([password])", password="s3cret") == "s3cret"


# ----------------------------------------------------------------------------- app roles

_ASSIGNMENTS = [
    {"id": "06b07648", "value": "Admin", "displayName": "Administrator"},
    {"value": "User"},
    "Auditor",
    {"value": "Admin", "displayName": "Admin via group"},
]


def test_app_role_assignments_complex() -> None:
    value = ev("AppRoleAssignmentsComplex([appRoleAssignments])",
               appRoleAssignments=_ASSIGNMENTS)
    assert isinstance(value, RoleAssignments)
    assert value.assertive is False
    assert list(value) == [
        {"primary": False, "type": "WindowsAzureActiveDirectoryRole",
         "display": "Administrator", "value": "Admin"},
        {"primary": False, "type": "WindowsAzureActiveDirectoryRole", "display": "User",
         "value": "User"},
        {"primary": False, "type": "WindowsAzureActiveDirectoryRole", "display": "Auditor",
         "value": "Auditor"},
    ]


def test_assertive_app_role_assignments_complex() -> None:
    value = ev("AssertiveAppRoleAssignmentsComplex([appRoleAssignments])",
               appRoleAssignments=_ASSIGNMENTS[1:3])
    assert isinstance(value, RoleAssignments)
    assert value.assertive is True
    assert [role["value"] for role in value] == ["User", "Auditor"]
    empty = ev("AssertiveAppRoleAssignmentsComplex([appRoleAssignments])")
    assert isinstance(empty, RoleAssignments)
    assert len(empty) == 0  # no roles: the target's roles are replaced with none
    assert "assertive=True" in repr(empty)


def test_single_app_role_assignment() -> None:
    text = "SingleAppRoleAssignment([appRoleAssignments])"
    assert ev(text, appRoleAssignments=[{"value": "Admin"}]) == "Admin"
    assert ev(text, appRoleAssignments=_ASSIGNMENTS) == "Admin"  # several: the first
    assert ev(text) is None
    assert ev(f"ToLower({text})", appRoleAssignments="Admin") == "admin"


def test_app_role_assignment_without_a_value_is_an_error() -> None:
    with pytest.raises(EvaluationError, match="SingleAppRoleAssignment: an app role"):
        ev("SingleAppRoleAssignment([r])", r=[{"displayName": "no value"}])


# ------------------------------------------------------------------------- random values

def test_guid_is_random() -> None:
    expression = compile_expression("Guid()")
    first, second = expression.evaluate({}), expression.evaluate({})
    assert first != second
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}",
                        str(first))


def test_random_string_with_no_minimums_uses_letters_and_digits() -> None:
    value = ev("RandomString(40, 0, 0, 0, 0)")
    assert isinstance(value, str)
    assert len(value) == 40
    assert value.isalnum()


def test_random_string_checks_sizes() -> None:
    with pytest.raises(ExpressionError, match="add up to 7, more than Length 6"):
        compile_expression("RandomString(6, 3, 2, 1, 1)")
    with pytest.raises(ExpressionError, match="between 1 and 256"):
        compile_expression("RandomString(300, 1, 1, 1, 1)")
    with pytest.raises(EvaluationError, match="RandomString: Length must be between"):
        ev("RandomString([n], 0, 0, 0, 0)", n=0)


def test_random_string_cannot_avoid_a_required_class() -> None:
    with pytest.raises(EvaluationError, match="leaves no character"):
        ev('RandomString(4, 1, 0, 0, 0, "0123456789")')


# ------------------------------------------------------------------------------- errors

def test_evaluation_error_names_the_innermost_failing_function() -> None:
    with pytest.raises(EvaluationError) as info:
        ev('Join("-", ToUpper([a]), FormatDateTime([d], , "yyyy-MM-dd", "dd.MM.yyyy"))',
           a="x", d="31/12/2020")
    assert info.value.function == "FormatDateTime"
    assert "'31/12/2020' does not match the format 'yyyy-MM-dd'" in info.value.reason


def test_evaluation_error_is_a_scimflow_error() -> None:
    from services.runtime.errors import ScimflowError

    with pytest.raises(ScimflowError):
        ev('CDate("garbage")')


def test_now_is_fixed_for_one_evaluation() -> None:
    now = datetime(2024, 2, 29, 12, tzinfo=UTC)
    assert ev('DateDiff("s", Now(), Now())') == 0
    assert compile_expression("Now()").evaluate({}, now=now) == now
    naive = datetime(2024, 2, 29, 12)
    assert compile_expression("Now()").evaluate({}, now=naive) == now
    current = compile_expression("Now()").evaluate({})
    assert isinstance(current, datetime)
    assert current.tzinfo is UTC
