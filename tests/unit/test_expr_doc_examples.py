"""Microsoft's own examples, verbatim, from "Reference for writing expressions for
attribute mappings in Microsoft Entra ID" (functions-for-customizing-application-data).

Each test names the doc example it comes from. Where the doc's stated output is wrong
for its own expression, the test says so and asserts what the expression really gives.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.mapper.expressions import IGNORE, UniqueCandidates, compile_expression


def ev(text: str, now: datetime | None = None, **attrs: object) -> object:
    return compile_expression(text).evaluate(attrs, now=now)


def ev_with(text: str, attrs: dict[str, object]) -> object:
    return compile_expression(text).evaluate(attrs)


def test_append_constant_suffix_to_user_name() -> None:
    # "Append constant suffix to user name"
    assert ev('Append([userPrincipalName], ".test")',
              userPrincipalName="John.Doe@contoso.com") == "John.Doe@contoso.com.test"


def test_bitand_example() -> None:
    # BitAnd: "BitAnd(&HF, &HF7) ... returns 7"
    assert ev("BitAnd(&HF, &HF7)") == 7


def test_cbool_example_same_values() -> None:
    # CBool: "CBool([attribute1] = [attribute2]) Returns True if both attributes have the
    # same value."
    assert ev("CBool([attribute1] = [attribute2])", attribute1="x", attribute2="x") is True
    assert ev("CBool([attribute1] = [attribute2])", attribute1="x", attribute2="y") is False


@pytest.mark.parametrize(("expression", "attrs", "text", "utc"), [
    # CDate Example 1
    ("CDate([StatusHireDate])", {"StatusHireDate": "2020-03-16-07:00"},
     "3/16/2020 7:00:00 AM", datetime(2020, 3, 16, 7, tzinfo=UTC)),
    # CDate Example 2
    ('CDate("2021-06-30+08:00")', {}, "6/29/2021 4:00:00 PM",
     datetime(2021, 6, 29, 16, tzinfo=UTC)),
    # CDate Example 3
    ('CDate("2009-06-15T01:45:30-07:00")', {}, "6/15/2009 8:45:30 AM",
     datetime(2009, 6, 15, 8, 45, 30, tzinfo=UTC)),
])
def test_cdate_examples(expression: str, attrs: dict[str, object], text: str,
                        utc: datetime) -> None:
    assert ev_with(expression, attrs) == utc  # the value: a UTC datetime
    assert ev_with(f"CStr({expression})", attrs) == text  # as text: Entra's format


def test_coalesce_mail_else_upn() -> None:
    # "Flow mail value if not NULL, otherwise flow userPrincipalName"
    assert ev("Coalesce([mail],[userPrincipalName])", mail=None,
              userPrincipalName="John.Doe@contoso.com") == "John.Doe@contoso.com"


def test_convert_to_base64_example() -> None:
    # ConvertToBase64: 'Returns "SABlAGwAbABvACAAdwBvAHIAbABkACEA"' (UTF-16 "Unicode")
    assert ev('ConvertToBase64("Hello world!")') == "SABlAGwAbABvACAAdwBvAHIAbABkACEA"


def test_convert_to_utf8_hex_example() -> None:
    # ConvertToUTF8Hex: "Returns 48656C6C6F20776F726C6421"
    assert ev('ConvertToUTF8Hex("Hello world!")') == "48656C6C6F20776F726C6421"


@pytest.mark.parametrize(("interval", "value", "expected"), [
    # DateAdd Example 1 table, dateTime (StatusHireDate) = 2012-03-16-07:00
    ("d", 7, "3/23/2012 7:00:00 AM"),
    ("d", -10, "3/6/2012 7:00:00 AM"),
    ("ww", 2, "3/30/2012 7:00:00 AM"),
    ("m", 10, "1/16/2013 7:00:00 AM"),
    ("yyyy", 2, "3/16/2014 7:00:00 AM"),
])
def test_date_add_table(interval: str, value: int, expected: str) -> None:
    text = f'CStr(DateAdd("{interval}", {value}, CDate([StatusHireDate])))'
    assert ev(text, StatusHireDate="2012-03-16-07:00") == expected


_NOW = datetime(2021, 8, 25, 17, 41, 18, tzinfo=UTC)  # "8/25/2021 5:41:18 PM"


@pytest.mark.parametrize(("interval", "expected"), [
    # DateDiff Example 1 table: date1 = Now() = 8/25/2021 5:41:18 PM, date2 = 2012-03-16-07:00
    ("d", -3449), ("ww", -493), ("m", -113), ("yyyy", -9),
])
def test_date_diff_against_now(interval: str, expected: int) -> None:
    text = f'DateDiff("{interval}", Now(), CDate([StatusHireDate]))'
    assert ev(text, now=_NOW, StatusHireDate="2012-03-16-07:00") == expected


@pytest.mark.parametrize(("interval", "date1", "date2", "expected"), [
    # DateDiff Example 1 table, the rows with two literal dates
    ("d", "2021-08-18+08:00", "2021-08-31+08:00", 13),
    ("d", "2021-08-31+08:00", "2021-08-31+08:00", 0),
    ("h", "2021-08-24", "2021-08-25", 24),
    ("n", "2021-08-24", "2021-08-25", 1440),
    ("s", "2021-08-24", "2021-08-25", 86400),
])
def test_date_diff_between_dates(interval: str, date1: str, date2: str, expected: int) -> None:
    assert ev(f'DateDiff("{interval}", CDate("{date1}"), CDate("{date2}"))') == expected


@pytest.mark.parametrize(("hire_date", "expected"), [
    ("2021-08-28", "True"),    # hire date within five days
    ("2021-09-30", "False"),   # further away
])
def test_date_diff_with_iif_and_switch(hire_date: str, expected: str) -> None:
    # DateDiff "Example 2: Combine DateDiff with IIF function to set attribute value"
    text = '''Switch([Active], ,
  "1", IIF(DateDiff("d", Now(), CDate([StatusHireDate])) > 5, "False", "True"),
  "0", "False")'''
    assert ev(text, now=_NOW, Active="1", StatusHireDate=hire_date) == expected
    assert ev(text, now=_NOW, Active="0", StatusHireDate=hire_date) == "False"


def test_date_from_num_example() -> None:
    # DateFromNum: "Returns a DateTime representing January 1, 2012 at 11:00PM."
    assert ev("DateFromNum(129699324000000000)") == datetime(2012, 1, 1, 23, tzinfo=UTC)


def test_format_date_time_servicenow_example() -> None:
    # "Output date as a string in a certain format"
    assert ev('FormatDateTime([extensionAttribute1], , "yyyyMMddHHmmss.fZ", "yyyy-MM-dd")',
              extensionAttribute1="20150123105347.1Z") == "2015-01-23"


def test_guid_example_shape() -> None:
    # Guid: 'Sample output: "00aa00aa-bb11-cc22-dd33-44ee44ee44ee"'
    value = ev("Guid()")
    assert isinstance(value, str)
    assert [len(part) for part in value.split("-")] == [8, 4, 4, 4, 12]


def test_ignore_flow_example_1() -> None:
    # IgnoreFlowIfNullOrEmpty "Example 1: Don't flow an attribute if it's null"
    assert ev("IgnoreFlowIfNullOrEmpty([department])") is IGNORE
    assert ev("IgnoreFlowIfNullOrEmpty([department])", department="") is IGNORE
    assert ev("IgnoreFlowIfNullOrEmpty([department])", department="Sales") == "Sales"


@pytest.mark.parametrize(("prefix", "expected"), [
    ("3443", "Dr."), ("3445", "Prof. Dr."), ("9999", IGNORE), (None, IGNORE),
])
def test_ignore_flow_example_2(prefix: str | None, expected: object) -> None:
    # IgnoreFlowIfNullOrEmpty "Example 2: ... evaluates to empty string or null"
    text = ('IgnoreFlowIfNullOrEmpty(Switch([prefix], "", "3443", "Dr.", "3444", "Prof.", '
            '"3445", "Prof. Dr."))')
    assert ev(text, prefix=prefix) == expected


def test_ignore_flow_wrapping_iif_is_supported() -> None:
    # IIF known limitations: 'Supported: IgnoreFlowIfNullOrEmpty(IIF([country]="USA",[region],""))'
    text = 'IgnoreFlowIfNullOrEmpty(IIF([country]="USA",[region],""))'
    assert ev(text, country="USA", region="West") == "West"
    assert ev(text, country="NL", region="West") is IGNORE


@pytest.mark.parametrize(("country", "expected"), [("USA", "USA"), ("NL", "Sales")])
def test_iif_example(country: str, expected: str) -> None:
    # IIF: 'IIF([country]="USA",[country],[department])'
    assert ev('IIF([country]="USA",[country],[department])', country=country,
              department="Sales") == expected


@pytest.mark.parametrize(("country", "state", "and_result", "or_result"), [
    ("USA", "CA", "True", "True"), ("USA", "WA", "False", "True"),
    ("NL", "CA", "False", "True"), ("NL", "NH", "False", "False"),
])
def test_iif_and_or_by_nesting(country: str, state: str, and_result: str,
                               or_result: str) -> None:
    # IIF known limitations: AND / OR logic with nested IIF
    and_text = 'IIF([country]="USA",IIF([state]="CA","True","False"),"False")'
    or_text = 'IIF([country]="USA","True",IIF([state]="CA","True","False"))'
    assert ev(and_text, country=country, state=state) == and_result
    assert ev(or_text, country=country, state=state) == or_result


@pytest.mark.parametrize("text", [
    # IIF known limitations: "Unsupported IIF expression examples" -- they work here
    # (see docs/expressions.md, "Where scimflow differs").
    'IIF([country]="","Other",[country])',
    'IIF(IsNullOrEmpty([country]),"Other",[country])',
    'IIF(IsPresent([country]),[country],"Other")',
    # ... and the recommended workaround
    'Switch([country],[country],"","Other")',
])
def test_iif_null_checks_that_entra_does_not_support(text: str) -> None:
    assert ev(text) == "Other"
    assert ev(text, country="") == "Other"
    assert ev(text, country="Peru") == "Peru"


def test_instr_examples() -> None:
    # InStr: evaluates to 5; and with start and vbBinaryCompare, evaluates to 7
    assert ev('InStr("The quick brown fox","quick")') == 5
    assert ev('InStr("repEated","e",3,vbBinaryCompare)') == 7


def test_left_example() -> None:
    # Left: 'Left("John Doe", 3) Returns "Joh".'
    assert ev('Left("John Doe", 3)') == "Joh"


def test_len_examples() -> None:
    # Len Example 1
    assert ev('Len("John Doe")') == 8
    assert ev("Len(42568)") == 5
    assert ev("Len(42568.75)") == 8


@pytest.mark.parametrize(("first", "last", "expected"), [
    ("John", "Smith", "SmithJohn"), ("John", "Parker", "ParkerJ"),
])
def test_len_account_alias_example(first: str, last: str, expected: str) -> None:
    # Len Example 2 (verbatim, including the blank lines and "Join (" with a space)
    text = '''IIF(Len([LastName]) <= 5,  

  Left(Join ("",[LastName],[FirstName]),10),  
  Join("", Mid([LastName],1,9), Mid([FirstName],1,1)) 

)'''  # noqa: W291 - the doc's trailing spaces, verbatim
    assert ev(text, FirstName=first, LastName=last) == expected


def test_normalize_diacritics_example() -> None:
    # "Remove diacritics from a string"
    assert ev("NormalizeDiacritics([givenName])", givenName="Zoë") == "Zoe"


def test_num_from_date_workday_example() -> None:
    # NumFromDate Workday example; 2020-12-31 23:59:59-08:00 is 2021-01-01 07:59:59 UTC
    text = ('NumFromDate(Join("", FormatDateTime([ContractEndDate], ,"yyyy-MM-ddzzz", '
            '"yyyy-MM-dd"), " 23:59:59-08:00"))')
    assert ev(text, ContractEndDate="2020-12-31-08:00") == 132539615990000000


def test_num_from_date_successfactors_example() -> None:
    # NumFromDate SuccessFactors example
    text = ('NumFromDate(Join("",FormatDateTime([endDate], ,"M/d/yyyy hh:mm:ss tt",'
            '"yyyy-MM-dd")," 23:59:59-08:00"))')
    assert ev(text, endDate="12/31/2020 08:00:00 AM") == 132539615990000000


@pytest.mark.parametrize(("text", "attrs", "expected"), [
    # PCase examples table
    ("PCase([firstName])", {"firstName": "PABLO GONSALVES (SECOND)"},
     "Pablo Gonsalves (Second)"),
    ("PCase([lastName],\" '-\")", {"lastName": "PINTO-DE'SILVA"}, "Pinto-De'Silva"),
    ('PCase(Join(" ",[firstName],[lastName]))', {"firstName": "GREGORY", "lastName": "JAMES"},
     "Gregory James"),
])
def test_pcase_examples(text: str, attrs: dict[str, object], expected: str) -> None:
    assert ev_with(text, attrs) == expected


def test_random_string_examples() -> None:
    # RandomString Example 1: 6 characters, 3 numbers and 3 lower case
    value = ev("RandomString(6,3,0,0,3)")
    assert isinstance(value, str)
    assert len(value) == 6
    assert sum(c.isdigit() for c in value) == 3
    assert sum(c.islower() for c in value) == 3
    # Example 2: 10 characters, >= 2 numbers, 2 special, 2 capitals, 1 lower, no "?" or ","
    for _ in range(50):
        value = ev('RandomString(10,2,2,2,1,"?,")')
        assert isinstance(value, str)
        assert len(value) == 10
        assert "?" not in value
        assert "," not in value
        assert sum(c.isdigit() for c in value) >= 2
        assert sum(c.isupper() for c in value) >= 2
        assert sum(not c.isalnum() for c in value) >= 2


@pytest.mark.parametrize("text", [
    # Redact Examples 1-3
    "Redact([userPrincipalName])", 'Redact("StringToBeRedacted")',
    "Redact(RandomString(6,3,0,0,3))",
])
def test_redact_examples(text: str) -> None:
    expression = compile_expression(text)
    assert expression.redacted
    assert expression.evaluate({"userPrincipalName": "a@b.c"}) is not None


def test_remove_duplicates_example() -> None:
    # RemoveDuplicates([proxyAddresses])
    assert ev("RemoveDuplicates([proxyAddresses])",
              proxyAddresses=["smtp:a@b.c", "SMTP:x@b.c", "smtp:a@b.c"]) == [
        "smtp:a@b.c", "SMTP:x@b.c"]


@pytest.mark.parametrize(("text", "attrs", "expected"), [
    # Replace Example 1: oldValue and replacementValue
    ('Replace([BusinessTitle],"Product Developer", , , "Software Engineer", , )',
     {"BusinessTitle": "Product Developer"}, "Software Engineer"),
    # Replace Example 2: oldValue and template
    ('Replace([UserID],"<username>", , , , , "<username>@contoso.com")',
     {"UserID": "jsmith"}, "jsmith@contoso.com"),
    # Replace Example 3: regexPattern and replacementValue with a group name
    (r'Replace([telephoneNumber], , "\\+(?<isdCode>\\d* )(?<phoneNumber>\\d{10})", , '
     r'"${phoneNumber}", , )', {"telephoneNumber": "+91 9998887777"}, "9998887777"),
    # Replace Example 3, second part. The doc says "19998887777", but its pattern
    # [()\s-]+ does not remove the "+"; .NET gives "+19998887777" too.
    (r'Replace([mobile], , "[()\\s-]+", , "", , )', {"mobile": "+1 (999) 888-7777"},
     "+19998887777"),
    # Replace Example 4: regexPattern, regexGroupName and replacementValue
    (r'Replace([AddressLineData], ,"(?<streetNumber>^\\d*)","streetNumber", "888", , )',
     {"AddressLineData": "545 Tremont Street"}, "888 Tremont Street"),
    ('Replace([userPrincipalName], , "(?<Suffix>@(.)*)", "Suffix", "", , )',
     {"userPrincipalName": "jsmith@contoso.com"}, "jsmith"),
    # Replace Example 5: regexPattern, regexGroupName and replacementAttributeName
    (r'Replace([telephoneNumber], , "\\+(?<isdCode>\\d* )(?<phoneNumber>\\d{10})", '
     r'"phoneNumber" , , [mobile], )',
     {"telephoneNumber": "", "mobile": "+91 8887779999"}, "8887779999"),
    # Replace Example 6
    ('Replace([mailNickname], , "[a-zA-Z_]*", , "", , )', {"mailNickname": "john_doe72"},
     "72"),
    # Examples section: "Strip known domain name"
    ('Replace([mail], "@contoso.com", , ,"", ,)', {"mail": "john.doe@contoso.com"},
     "john.doe"),
])
def test_replace_examples(text: str, attrs: dict[str, object], expected: str) -> None:
    assert ev_with(text, attrs) == expected


def test_replace_example_5_source_has_a_value() -> None:
    # Replace Example 5: "If source has a value, source is returned"
    text = (r'Replace([telephoneNumber], , "\\+(?<isdCode>\\d* )(?<phoneNumber>\\d{10})", '
            r'"phoneNumber" , , [mobile], )')
    assert ev(text, telephoneNumber="555-1234", mobile="+91 8887779999") == "555-1234"


def test_select_unique_value_upn_example() -> None:
    # "Generate unique value for userPrincipalName (UPN) attribute" (verbatim)
    text = '''    SelectUniqueValue( 
        Join("@", NormalizeDiacritics(StripSpaces(Join(".",  [PreferredFirstName], [PreferredLastName]))), "contoso.com"), 
        Join("@", NormalizeDiacritics(StripSpaces(Join(".",  Mid([PreferredFirstName], 1, 1), [PreferredLastName]))), "contoso.com"),
        Join("@", NormalizeDiacritics(StripSpaces(Join(".",  Mid([PreferredFirstName], 1, 2), [PreferredLastName]))), "contoso.com")
    )'''  # noqa: E501, W291 - verbatim
    value = ev(text, PreferredFirstName="John", PreferredLastName="Smith")
    assert isinstance(value, UniqueCandidates)
    assert value == ("John.Smith@contoso.com", "J.Smith@contoso.com", "Jo.Smith@contoso.com")


def test_split_example() -> None:
    # "Split a string into a multi-valued array"
    assert ev('Split([extensionAttribute5], ",")',
              extensionAttribute5="PermissionSetOne, PermissionSetTwo") == [
        "PermissionSetOne", "PermissionSetTwo"]


@pytest.mark.parametrize(("state", "expected"), [
    ("QLD", "Australia/Brisbane"), ("SA", "Australia/Adelaide"), ("WA", "Australia/Sydney"),
])
def test_switch_time_zone_example(state: str, expected: str) -> None:
    # "Replace a value based on predefined set of options"
    text = ('Switch([state], "Australia/Sydney", "NSW", "Australia/Sydney","QLD", '
            '"Australia/Brisbane", "SA", "Australia/Adelaide")')
    assert ev(text, state=state) == expected


@pytest.mark.parametrize(("flag", "expected"), [("True", "1"), ("TRUE", "1"), ("false", "0")])
def test_switch_case_insensitive_via_tolower(flag: str, expected: str) -> None:
    # Switch note: 'Switch(ToLower([statusFlag]), "0", "true", "1", "false", "0")'
    assert ev('Switch(ToLower([statusFlag]), "0", "true", "1", "false", "0")',
              statusFlag=flag) == expected


def test_switch_empty_key_matches_empty_source() -> None:
    # Switch caution: 'Switch([statusFlag], "Default Value", "true", "1", "", "0")'
    text = 'Switch([statusFlag], "Default Value", "true", "1", "", "0")'
    assert ev(text, statusFlag="") == "0"
    assert ev(text) == "0"
    assert ev(text, statusFlag="maybe") == "Default Value"


def test_switch_to_iif_rewrite_gives_the_same_result() -> None:
    # Switch caution, resolution: the IIF rewrite of the companyName Switch
    switch = 'Switch([companyName], "External", "Company A", "A", "Company B", "B")'
    iif = 'IIF([companyName] = "Company A", "A", IIF([companyName] = "Company B", "B", "External"))'
    for company in ("Company A", "Company B", "Contoso"):
        assert ev(switch, companyName=company) == ev(iif, companyName=company)


def test_tolower_upn_example() -> None:
    # "Convert generated userPrincipalName (UPN) value to lower case"
    text = ('ToLower(Join("@", NormalizeDiacritics(StripSpaces(Join(".",  [PreferredFirstName], '
            '[PreferredLastName]))), "contoso.com"))')
    assert ev(text, PreferredFirstName="John", PreferredLastName="Smith") == \
        "john.smith@contoso.com"


def test_word_examples() -> None:
    # Word: returns "brown"; and "has"
    assert ev('Word("The quick brown fox",3," ")') == "brown"
    assert ev('Word("This,string!has&many separators",3,",!&#")') == "has"


def test_generate_user_alias_example() -> None:
    # Examples: "Generate user alias by concatenating parts of first and last name"
    assert ev("Append(Mid([givenName], 1, 3), Mid([surname], 1, 5))", givenName="John",
              surname="Doe") == "JohDoe"


def test_comma_between_last_and_first_name_example() -> None:
    # Examples: "Add a comma between last name and first name." -- the "" is skipped
    assert ev('Join(", ", "", [surname], [givenName])', givenName="John", surname="Doe") == \
        "Doe, John"


def test_id_from_object_id_example() -> None:
    # Examples: "Generate an ID for a user based on their Microsoft Entra object ID". The
    # doc's output was computed from another object id than the one it shows, so this
    # asserts the value for the id shown: "1000" + the UTF-8 hex digits without letters.
    text = 'Join("", 1000, Replace(ConvertToUTF8Hex([objectId]), , "[a-zA-Z_]*", , "", , ))'
    assert ev(text, objectId="00aa00aa-bb11-cc22-dd33-44ee44ee44ee") == (
        "100030306161303061612626231312636332322646433332343465653434656534346565")


def test_proxy_addresses_primary_example() -> None:
    # Examples: "Set a primary SMTP address in proxyAddresses"
    text = 'Append("SMTP:", Join("@", Join(".", [givenName], [surname]), "contoso.com"))'
    assert ev(text, givenName="John", surname="Doe") == "SMTP:John.Doe@contoso.com"


def test_proxy_addresses_primary_and_alias_example() -> None:
    # Examples: "Set primary and alias addresses in proxyAddresses" (verbatim)
    text = '''Split(
    Join(",",
        Append("smtp:", Join("@", NormalizeDiacritics(StripSpaces(Join(".", [givenName], [surname]))), "contoso.onmicrosoft.com")),
        Append("SMTP:", Join("@", NormalizeDiacritics(StripSpaces(Join(".", [givenName], [surname]))), "contoso.com"))
    ),
    ","
)'''  # noqa: E501 - verbatim
    assert ev(text, givenName="John", surname="Doe") == [
        "smtp:John.Doe@contoso.onmicrosoft.com", "SMTP:John.Doe@contoso.com"]


def test_is_soft_deleted_active_mapping() -> None:
    # The default SCIM "active" mapping: Switch([IsSoftDeleted], , "False", "True", "True",
    # "False"), with IsSoftDeleted a boolean attribute.
    text = 'Switch([IsSoftDeleted], , "False", "True", "True", "False")'
    assert ev(text, IsSoftDeleted=False) == "True"
    assert ev(text, IsSoftDeleted=True) == "False"
