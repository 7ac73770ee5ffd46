"""The expression language's syntax and the checks compile_expression makes at load."""

from __future__ import annotations

import pytest

from services.mapper.expressions import (
    FUNCTIONS,
    ExpressionError,
    compile_expression,
)
from services.runtime.errors import ConfigError


def ev(text: str, **attrs: object) -> object:
    return compile_expression(text).evaluate(attrs)


def error(text: str) -> ExpressionError:
    with pytest.raises(ExpressionError) as info:
        compile_expression(text)
    return info.value


# ----------------------------------------------------------------------------- operands

@pytest.mark.parametrize(("text", "expected"), [
    ('"United States"', "United States"),
    (r'"Company name: \"Contoso\""', 'Company name: "Contoso"'),  # the doc's escaping example
    (r'"back\\slash"', "back\\slash"),
    (r'"\d+"', r"\d+"),  # any other backslash stays as written (regexes)
    ('""', ""),
    ('"a,b)c"', "a,b)c"),
    ("42", 42),
    ("-10", -10),
    ("+3", 3),
    ("42568.75", 42568.75),
    ("&HF7", 0xF7),
    ("&hff", 255),
    ("True", True),
    ("False", False),
    ("vbTextCompare", 1),
    ("vbBinaryCompare", 0),
])
def test_constants(text: str, expected: object) -> None:
    assert ev(text) == expected


def test_attribute_reference_alone_is_an_expression() -> None:
    assert ev("[mail]", mail="a@b.c") == "a@b.c"


@pytest.mark.parametrize("name", [
    "extension_9a8b7c_employeeType",
    "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber",
    "Some Attribute.With dots",
])
def test_attribute_names_may_hold_any_character_but_a_bracket(name: str) -> None:
    expression = compile_expression(f"ToUpper([{name}])")
    assert expression.attributes == {name}
    assert expression.evaluate({name: "x"}) == "X"


def test_attribute_name_is_trimmed() -> None:
    assert ev("[ mail ]", mail="a@b.c") == "a@b.c"


def test_attribute_lookup_falls_back_to_any_case() -> None:
    assert ev("[givenname]", givenName="Ann") == "Ann"
    assert ev("[givenName]", givenName="exact", givenname="other") == "exact"


def test_missing_and_empty_multi_valued_attributes_are_null() -> None:
    assert ev("IsNull([nothing])") is True
    assert ev("IsNull([proxyAddresses])", proxyAddresses=[]) is True
    assert ev("[proxyAddresses]", proxyAddresses=("a", "b")) == ["a", "b"]


def test_whitespace_and_newlines_between_tokens() -> None:
    text = '\n  Join (\t"." ,\r\n [a] ,  [b]  )  \n'
    assert ev(text, a="x", b="y") == "x.y"


def test_nested_calls() -> None:
    assert ev('ToUpper(Left(Join("", [a], [b]), 3))', a="ab", b="cd") == "ABC"


def test_empty_argument_list() -> None:
    assert isinstance(ev("Guid()"), str)
    assert isinstance(ev("Guid( )"), str)


def test_omitted_optional_arguments_are_null() -> None:
    assert ev('Switch([a], , "x", "1")', a="y") is None
    assert ev('Replace([a], "o", , , "0", , )', a="foo") == "f00"


# --------------------------------------------------------------------------- comparisons

@pytest.mark.parametrize(("condition", "expected"), [
    ('"a" = "a"', True), ('"a" = "A"', False), ('"a" <> "b"', True),
    ('"b" > "a"', True), ('"a" >= "a"', True), ('"a" < "b"', True), ('"b" <= "a"', False),
    ("10 > 9", True), ('Len("abc") = 3', True), ('Len("abc") < "10"', True),
    ('"10" > "9"', False),  # two strings compare as text, ordinally
])
def test_comparison_operators(condition: str, expected: bool) -> None:
    assert ev(f'IIF({condition}, "yes", "no")') == ("yes" if expected else "no")


def test_comparison_without_spaces() -> None:
    assert ev('IIF([c]="USA","y","n")', c="USA") == "y"


def test_comparisons_can_not_be_chained() -> None:
    err = error('IIF("a" = "a" = "a", 1, 2)')
    assert "chained" in str(err)
    assert err.position == 14


# -------------------------------------------------------------------------------- errors

def test_unknown_function_suggests_the_closest_name() -> None:
    err = error('Join("@", Jion("a", "b"))')
    assert str(err) == ('expression error at position 10: unknown function "Jion" '
                        '(did you mean "Join"?)')
    assert err.position == 10
    assert err.expected == '"Join"'


@pytest.mark.parametrize(("pasted", "canonical"), [
    ('switch([a], "x", "1", "one")', 'Switch([a], "x", "1", "one")'),
    ('JOIN("-", [a], [b])', 'Join("-", [a], [b])'),
    ('formatDateTime([d], , "yyyy-MM-dd", "dd.MM.yyyy")',
     'FormatDateTime([d], , "yyyy-MM-dd", "dd.MM.yyyy")'),
    ('iif(IsNullorEmpty([c]), "none", [c])', 'IIF(IsNullOrEmpty([c]), "none", [c])'),
    ('Instr([a], "1", , vbTextCompare)', 'InStr([a], "1", , vbTextCompare)'),
    ('toupper(normalizediacritics(stripSpaces([n])))',
     'ToUpper(NormalizeDiacritics(StripSpaces([n])))'),
    ('rEpLaCe([n], "ë", , , "e", , )', 'Replace([n], "ë", , , "e", , )'),
    ('COALESCE([c], [b])', 'Coalesce([c], [b])'),
    ('selectuniquevalue(join(".", [a], [b]), [a])', 'SelectUniqueValue(Join(".", [a], [b]), [a])'),
])
def test_function_names_match_in_any_case(pasted: str, canonical: str) -> None:
    attrs = {"a": "1", "b": "2", "d": "2020-12-31", "n": "Zoë Ann"}
    expression = compile_expression(pasted)
    assert expression.evaluate(attrs) == compile_expression(canonical).evaluate(attrs)
    assert expression.function == compile_expression(canonical).function
    assert expression.text == pasted


def test_function_in_any_case_keeps_what_the_function_implies() -> None:
    assert compile_expression('redact([secret])').redacted is True
    assert compile_expression("now()").evaluate({}) is not None  # reads the clock
    assert compile_expression("GUID()").function == "Guid"
    err = error('IIF(ignoreflowifnullorempty([a]), "x", "y")')
    assert str(err).startswith("expression error at position 4: IgnoreFlowIfNullOrEmpty decides")


def test_errors_in_any_case_name_the_function_as_microsoft_spells_it() -> None:
    assert "Join takes at least 2 arguments, got 1" in str(error('join("-")'))
    assert 'did you mean "Join"?' in str(error('jion("-", [a])'))
    assert 'did you mean "IsNullOrEmpty"?' in str(error("isnullorempy([a])"))
    assert 'did you mean "FormatDateTime"?' in str(error('FORMATDATE([d], , "yyyy", "yyyy")'))
    assert "DefaultDomain() needs an Entra tenant" in str(error("defaultdomain()"))


def test_look_alike_letters_do_not_fold() -> None:
    # U+017F (long s) lower-cases to itself but case-folds to "s": not a way to spell Switch
    err = error('\u017fwitch([a], "x", "1", "2")')
    assert 'unknown function "\u017fwitch" (did you mean "Switch"?)' in str(err)


def test_function_is_the_outermost_call() -> None:
    assert compile_expression('toLower(Join(".", [a], [b]))').function == "ToLower"
    assert compile_expression("[mail]").function is None
    assert compile_expression('[a] = "1"').function is None


def test_unknown_function_without_a_close_match_lists_all() -> None:
    err = error("Frobnicate([a])")
    assert "expected one of Append, AppRoleAssignmentsComplex" in str(err)
    assert err.expected.startswith("one of Append")


def test_default_domain_is_reported_as_unsupported() -> None:
    assert "DefaultDomain() needs an Entra tenant" in str(error('Join("@", [a], DefaultDomain())'))


@pytest.mark.parametrize(("text", "message", "position"), [
    ('Left("abc")', "Left takes 2 arguments, got 1", 0),
    ('Left("abc", 1, 2)', "Left takes 2 arguments, got 3", 0),
    ('Join("x")', "Join takes at least 2 arguments, got 1", 0),
    ("Now(1)", "Now takes no arguments, got 1", 0),
    ('ToLower("a", "b", "c")', "ToLower takes 1 to 2 arguments, got 3", 0),
    ('InStr("a")', "InStr takes 2 to 4 arguments, got 1", 0),
    ('SelectUniqueValue("a")', "SelectUniqueValue takes at least 2 arguments, got 1", 0),
    ('Switch([a], "d", "k")', "Switch takes at least 4 arguments, got 3", 0),
    ('Switch([a], "d", "k", "v", "k2")', "an even number of arguments", 0),
    ("Left(, 3)", "argument 1 (String) of Left can't be empty", 5),
    ('Mid("abc", 1, )', "argument 3 (length) of Mid can't be empty", 14),
])
def test_argument_counts_and_empty_arguments(text: str, message: str, position: int) -> None:
    err = error(text)
    assert message in str(err)
    assert err.position == position


def test_arity_error_expects_the_signature() -> None:
    assert error('Left("abc")').expected == "Left(String, NumChars)"
    assert error('Switch([a])').expected == \
        "Switch(source, defaultValue, key, value, key, value, ...)"


@pytest.mark.parametrize(("text", "message", "position"), [
    ("", "the expression is empty", 0),
    ("   ", "the expression is empty", 3),
    ('Join("a", "b', "unterminated string constant", 10),
    ('"abc\\"', "unterminated string constant", 0),
    ("Join(\"a\", [b", "unterminated attribute reference", 10),
    ("ToUpper([])", "empty attribute name", 8),
    ('Join("a", "b"', 'missing ")" to close Join( opened at position 0', 13),
    ('Join("a" "b")', "unexpected '\"' in the arguments of Join", 9),
    ('Join("a", "b"))', "unexpected ')' after the end of the expression", 14),
    ('ToUpper("a") ToLower("b")', "after the end of the expression", 13),
    ("ToUpper(abc)", "unknown name 'abc'", 8),
    ("Guid", "unknown name 'Guid'", 0),
    ("ToUpper(#)", "unexpected '#'", 8),
    ("Left(\"a\", 1.)", "malformed number", 12),
    ("BitAnd(&H, 1)", "malformed hexadecimal number", 9),
    ("IIF([a] =", "the expression ends too early", 9),
])
def test_syntax_errors(text: str, message: str, position: int) -> None:
    err = error(text)
    assert message in str(err)
    assert err.position == position
    assert str(err).startswith(f"expression error at position {position}: ")


def test_deep_nesting_is_an_expression_error() -> None:
    assert ev("ToUpper(" * 60 + '"a"' + ")" * 60) == "A"
    err = error("ToUpper(" * 65 + '"a"' + ")" * 65)
    assert "nested more than 64 deep" in str(err)
    assert err.position == 64 * len("ToUpper(")


def test_syntax_error_says_what_was_expected() -> None:
    err = error('Join("a" "b")')
    assert err.expected == '"," or ")"'
    assert str(err).endswith('(expected "," or ")")')


def test_error_is_a_config_error_with_file_and_line() -> None:
    with pytest.raises(ConfigError) as info:
        compile_expression("Jion([a])", file="scimflow.yaml", line=12)
    err = info.value
    assert isinstance(err, ExpressionError)
    assert err.file == "scimflow.yaml"
    assert err.line == 12
    assert err.text == "Jion([a])"
    assert str(err).startswith("scimflow.yaml:12: expression error at position 0")


def test_error_without_a_file_has_no_config_prefix() -> None:
    assert not str(error("Jion([a])")).startswith("<config>")


# ------------------------------------------------------------------------- placement rules

@pytest.mark.parametrize("text", [
    'Join("", SelectUniqueValue("a", "b"))',
    'IIF([a] = "x", SelectUniqueValue("a", "b"), "c")',
    "ToUpper(AppRoleAssignmentsComplex([appRoleAssignments]))",
    "Count(AssertiveAppRoleAssignmentsComplex([appRoleAssignments]))",
])
def test_top_level_only_functions(text: str) -> None:
    assert "must be the whole expression" in str(error(text))


def test_top_level_functions_may_be_redacted() -> None:
    assert compile_expression('Redact(SelectUniqueValue("a", "b"))').redacted


@pytest.mark.parametrize("text", [
    'IIF(IgnoreFlowIfNullOrEmpty([country]),[country],"Other")',  # the doc's "Unsupported"
    'Join(",", IgnoreFlowIfNullOrEmpty([a]))',
    'Switch(IgnoreFlowIfNullOrEmpty([a]), "d", "k", "v")',
    'Switch([a], "d", IgnoreFlowIfNullOrEmpty([a]), "v")',
])
def test_ignore_flow_must_not_be_an_argument(text: str) -> None:
    assert "must wrap the whole expression" in str(error(text))


@pytest.mark.parametrize("text", [
    "IgnoreFlowIfNullOrEmpty([a])",
    'IIF([b] = "x", IgnoreFlowIfNullOrEmpty([a]), "y")',
    'Switch([b], IgnoreFlowIfNullOrEmpty([a]), "k", IgnoreFlowIfNullOrEmpty([c]))',
    "Redact(IgnoreFlowIfNullOrEmpty([a]))",
    'IIF([b] = "x", IIF([c] = "y", IgnoreFlowIfNullOrEmpty([a]), "z"), "w")',
])
def test_ignore_flow_where_its_result_flows_out(text: str) -> None:
    compile_expression(text)


# ------------------------------------------------------------------------ compiled facts

def test_attributes_lists_every_reference() -> None:
    expression = compile_expression(
        'Coalesce([mail], Join(".", [givenName], [surname]), [mail])')
    assert expression.attributes == frozenset({"mail", "givenName", "surname"})


def test_replacement_attribute_name_as_a_string_is_an_attribute() -> None:
    expression = compile_expression(
        r'Replace([telephoneNumber], , "(?<n>\\d+)", "n", , "mobile", )')
    assert expression.attributes == {"telephoneNumber", "mobile"}
    assert expression.evaluate({"mobile": "+1 555"}) == "1"


def test_redacted_flag() -> None:
    assert not compile_expression("[a]").redacted
    assert compile_expression('Join("", Redact([password]), "x")').redacted


def test_expression_keeps_its_text() -> None:
    expression = compile_expression("ToUpper([a])")
    assert expression.text == "ToUpper([a])"
    assert repr(expression) == "Expression('ToUpper([a])')"


def test_function_list_is_the_documented_one() -> None:
    documented = {
        "Append", "AppRoleAssignmentsComplex", "AssertiveAppRoleAssignmentsComplex", "BitAnd",
        "CBool", "CDate", "Coalesce", "ConvertToBase64", "ConvertToUTF8Hex", "Count", "CStr",
        "DateAdd", "DateDiff", "DateFromNum", "FormatDateTime", "Guid",
        "IgnoreFlowIfNullOrEmpty", "IIF", "InStr", "IsNull", "IsNullOrEmpty", "IsPresent",
        "IsString", "Item", "Join", "Left", "Len", "Mid", "NormalizeDiacritics", "Not", "Now",
        "NumFromDate", "PCase", "RandomString", "Redact", "RemoveDuplicates", "Replace",
        "SelectUniqueValue", "SingleAppRoleAssignment", "Split", "StripSpaces", "Switch",
        "ToLower", "ToUpper", "Word",
    }
    assert set(FUNCTIONS) == documented


def test_compiled_expression_is_reusable() -> None:
    expression = compile_expression('Join(" ", [a], [b])')
    assert [expression.evaluate({"a": str(i), "b": "x"}) for i in range(3)] == [
        "0 x", "1 x", "2 x"]
