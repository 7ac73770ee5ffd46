"""Dates: what CDate reads, .NET format strings in FormatDateTime, DateAdd/DateDiff
intervals and AD FILETIME numbers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Final

import pytest

from services.mapper.expressions import EvaluationError, ExpressionError, compile_expression
from services.mapper.expressions.dates import compile_format


def ev(text: str, **attrs: object) -> object:
    return compile_expression(text).evaluate(attrs)


# ------------------------------------------------------------------------------- CDate

@pytest.mark.parametrize(("text", "expected"), [
    ("2021-08-24", datetime(2021, 8, 24, tzinfo=UTC)),
    ("2021-08-24T10:11:12Z", datetime(2021, 8, 24, 10, 11, 12, tzinfo=UTC)),
    ("2021-08-24T10:11:12.1234567Z", datetime(2021, 8, 24, 10, 11, 12, 123456, tzinfo=UTC)),
    ("2021-08-24T10:11:12+0200", datetime(2021, 8, 24, 8, 11, 12, tzinfo=UTC)),
    ("2021-08-24 10:11", datetime(2021, 8, 24, 10, 11, tzinfo=UTC)),
    ("2020-03-16-07:00", datetime(2020, 3, 16, 7, tzinfo=UTC)),   # Workday date + zone
    ("8/25/2021 5:41:18 PM", datetime(2021, 8, 25, 17, 41, 18, tzinfo=UTC)),
    ("12/1/2021 12:00:00 AM", datetime(2021, 12, 1, tzinfo=UTC)),
    ("12/1/2021 12:30:00 PM", datetime(2021, 12, 1, 12, 30, tzinfo=UTC)),
    ("8/25/2021", datetime(2021, 8, 25, tzinfo=UTC)),
    ("20150123105347.1Z", datetime(2015, 1, 23, 10, 53, 47, 100000, tzinfo=UTC)),
    ("20150123105347Z", datetime(2015, 1, 23, 10, 53, 47, tzinfo=UTC)),
    ("20150123105347-0500", datetime(2015, 1, 23, 15, 53, 47, tzinfo=UTC)),
    ("Tue, 15 Jun 2009 01:45:30 GMT", datetime(2009, 6, 15, 1, 45, 30, tzinfo=UTC)),
    ("  2021-08-24  ", datetime(2021, 8, 24, tzinfo=UTC)),
])
def test_cdate_reads(text: str, expected: datetime) -> None:
    value = ev("CDate([d])", d=text)
    assert value == expected
    assert isinstance(value, datetime)
    assert value.utcoffset() == timedelta(0)


@pytest.mark.parametrize("text", ["garbage", "2021-02-30", "13/1/2021", "2021-08-24T25:00"])
def test_cdate_rejects(text: str) -> None:
    with pytest.raises(EvaluationError) as info:
        ev("CDate([d])", d=text)
    assert info.value.function == "CDate"


def test_cdate_of_null_and_empty_is_null() -> None:
    assert ev("CDate([d])") is None
    assert ev("CDate([d])", d="") is None


def test_cdate_of_a_number_is_an_error() -> None:
    with pytest.raises(EvaluationError, match="CDate: expects a date, got a int value"):
        ev("CDate(5)")


# ---------------------------------------------------------------------- FormatDateTime

_MOMENT = datetime(2009, 6, 15, 13, 45, 30, 617500, tzinfo=UTC)  # a Monday


@pytest.mark.parametrize(("fmt", "expected"), [
    ("yyyy-MM-dd", "2009-06-15"),
    ("M/d/yyyy h:mm:ss tt", "6/15/2009 1:45:30 PM"),
    ("yyyyMMddHHmmss.fZ", "20090615134530.6Z"),
    ("dd.MM.yy HH:mm", "15.06.09 13:45"),
    ("ddd, d MMM yyyy", "Mon, 15 Jun 2009"),
    ("dddd MMMM", "Monday June"),
    ("fff FFFF ffffff", "617 6175 617500"),
    ("yyyy-MM-ddTHH:mm:ss.FFFFFFFK", "2009-06-15T13:45:30.6175Z"),
    ("yyyy-MM-ddzzz", "2009-06-15+00:00"),
    ("h t", "1 P"),
    ("'Year' yyyy \\y \\'y\\'", "Year 2009 y '9'"),
    ('"Day" %d', "Day 15"),
    ("s", "2009-06-15T13:45:30"),
    ("u", "2009-06-15 13:45:30Z"),
    ("o", "2009-06-15T13:45:30.6175000Z"),
    ("d", "6/15/2009"),
    ("G", "6/15/2009 1:45:30 PM"),
    ("D", "Monday, June 15, 2009"),
    ("r", "Mon, 15 Jun 2009 13:45:30 GMT"),
])
def test_format_date_time_output_formats(fmt: str, expected: str) -> None:
    assert compile_format(fmt).format(_MOMENT) == expected


def test_f_specifier_drops_the_dot_when_there_is_no_fraction() -> None:
    assert compile_format("HH:mm:ss.FFF").format(datetime(2020, 1, 1, 8)) == "08:00:00"


_INPUTS: Final = [
    ("20150123105347.1Z", "yyyyMMddHHmmss.fZ", "2015-01-23 10:53:47"),
    ("12/31/2020 08:00:00 PM", "M/d/yyyy hh:mm:ss tt", "2020-12-31 20:00:00"),
    ("1/2/2020 8:05:00 am", "M/d/yyyy h:mm:ss tt", "2020-01-02 08:05:00"),
    ("2020-12-31-08:00", "yyyy-MM-ddzzz", "2020-12-31 08:00:00"),   # to UTC, like Entra
    ("2020-12-31+08:00", "yyyy-MM-ddzzz", "2020-12-30 16:00:00"),
    ("31 December 2020", "d MMMM yyyy", "2020-12-31 00:00:00"),
    ("31-dec-20", "dd-MMM-yy", "2020-12-31 00:00:00"),
    ("Thursday, 31-Dec-1970", "dddd, dd-MMM-yyyy", "1970-12-31 00:00:00"),
    ("2020-12-31T10:00:00Z", "yyyy-MM-ddTHH:mm:ssK", "2020-12-31 10:00:00"),
    ("  2020-12-31  ", "yyyy-MM-dd", "2020-12-31 00:00:00"),
]


@pytest.mark.parametrize(("source", "input_format", "expected"), _INPUTS)
def test_format_date_time_input_formats(source: str, input_format: str, expected: str) -> None:
    text = f'FormatDateTime([d], , "{input_format}", "yyyy-MM-dd HH:mm:ss")'
    assert ev(text, d=source) == expected


@pytest.mark.parametrize(("source", "input_format", "expected"), _INPUTS)
def test_format_date_time_older_form_reads_as_with_empty_styles(
        source: str, input_format: str, expected: str) -> None:
    # FormatDateTime(source, inputFormat, outputFormat): Microsoft's earlier reference, still
    # in its HR-provisioning guides; dateTimeStyles takes its default, as when left empty.
    text = f'FormatDateTime([d], "{input_format}", "yyyy-MM-dd HH:mm:ss")'
    assert ev(text, d=source) == expected


@pytest.mark.parametrize(("text", "attrs", "expected"), [
    # "How to synchronize attributes for Lifecycle workflows" (2023), its Workday row
    ('FormatDateTime([StatusHireDate], "yyyy-MM-ddzzz", "yyyyMMddHHmmss.fZ")',
     {"StatusHireDate": "2012-03-16-07:00"}, "20120316070000.0Z"),
    # ... its SuccessFactors row (4 arguments there) written in the older form
    ('FormatDateTime([endDate], "M/d/yyyy hh:mm:ss tt", "yyyyMMddHHmmss.fZ")',
     {"endDate": "12/31/2020 08:00:00 PM"}, "20201231200000.0Z"),
    # the earlier reference's ServiceNow example
    ('FormatDateTime([extensionAttribute1], "yyyyMMddHHmmss.fZ", "yyyy-MM-dd")',
     {"extensionAttribute1": "20150123105347.1Z"}, "2015-01-23"),
    # the NumFromDate Workday example with the older form inside
    ('NumFromDate(Join("", FormatDateTime([ContractEndDate], "yyyy-MM-ddzzz", "yyyy-MM-dd"), '
     '" 23:59:59-08:00"))', {"ContractEndDate": "2020-12-31-08:00"}, 132539615990000000),
    # as pasted from a forum: lower case, a guard inside
    ('formatdatetime(IIF(Len([extensionAttribute9]) = 10, [extensionAttribute9], ""), '
     '"dd/MM/yyyy", "yyyy-MM-dd")', {"extensionAttribute9": "31/12/2020"}, "2020-12-31"),
    ('formatdatetime(IIF(Len([extensionAttribute9]) = 10, [extensionAttribute9], ""), '
     '"dd/MM/yyyy", "yyyy-MM-dd")', {"extensionAttribute9": "n/a"}, None),
])
def test_format_date_time_older_form_hr_guide_examples(
        text: str, attrs: dict[str, object], expected: object) -> None:
    assert compile_expression(text).evaluate(attrs) == expected


def test_format_date_time_older_form_with_computed_formats_and_null() -> None:
    text = "FormatDateTime([d], [inFormat], [outFormat])"
    assert ev(text, d="2020-12-31", inFormat="yyyy-MM-dd", outFormat="MMM d") == "Dec 31"
    assert ev(text, inFormat="yyyy", outFormat="yyyy") is None
    with pytest.raises(EvaluationError, match="FormatDateTime: '2020-01-01' does not match"):
        ev('FormatDateTime([d], "yyyyMMdd", "yyyy")', d="2020-01-01")


def test_format_date_time_styles() -> None:
    naive = 'FormatDateTime([d], , "yyyy-MM-dd", "yyyy-MM-ddK")'
    utc = 'FormatDateTime([d], "AssumeUniversal, AllowLeadingWhite", "yyyy-MM-dd", "yyyy-MM-ddK")'
    assert ev(naive, d="2020-01-02") == "2020-01-02"
    assert ev(utc, d="2020-01-02") == "2020-01-02Z"
    assert ev('FormatDateTime([d], "DateTimeStyles.RoundtripKind", "yyyy", "yyyy")',
              d="2020") == "2020"


def test_format_date_time_accepts_a_date_value() -> None:
    text = 'FormatDateTime(DateAdd("d", 1, CDate([d])), , "yyyy-MM-dd", "dd/MM/yyyy")'
    assert ev(text, d="2020-12-31") == "01/01/2021"


def test_format_date_time_null_and_empty_source() -> None:
    assert ev('FormatDateTime([d], , "yyyy", "yyyy")') is None
    assert ev('FormatDateTime([d], , "yyyy", "yyyy")', d="") is None


def test_format_date_time_with_computed_formats() -> None:
    text = "FormatDateTime([d], , [inFormat], [outFormat])"
    assert ev(text, d="2020-12-31", inFormat="yyyy-MM-dd", outFormat="MMM d") == "Dec 31"
    with pytest.raises(EvaluationError, match="FormatDateTime: 'q' is not a standard"):
        ev(text, d="2020", inFormat="yyyy", outFormat="q")


@pytest.mark.parametrize(("text", "message"), [
    ('FormatDateTime([d], , "yyyy", "x")', "'x' is not a standard .NET date format"),
    ('FormatDateTime([d], , "", "yyyy")', "the format is empty"),
    ('FormatDateTime([d], , "yyyy \'open", "yyyy")', "unterminated quoted text"),
    ('FormatDateTime([d], , "ffffffff", "yyyy")', "at most 7 f"),
    ('FormatDateTime([d], "AssumeMartian", "yyyy", "yyyy")', "unknown DateTimeStyles"),
    ('FormatDateTime([d], "yyyy", "x")', "'x' is not a standard .NET date format"),
    ('FormatDateTime([d], "ffffffff", "yyyy")', "at most 7 f"),
])
def test_format_date_time_checks_constants_at_load(text: str, message: str) -> None:
    with pytest.raises(ExpressionError) as info:
        compile_expression(text)
    assert message in str(info.value)


_ARITY = ("FormatDateTime takes 4 arguments (or 3 in the older form "
          "FormatDateTime(source, inputFormat, outputFormat)), got")


@pytest.mark.parametrize(("text", "count"), [
    ('FormatDateTime([d], "yyyy")', 2),
    ("FormatDateTime([d])", 1),
    ("FormatDateTime()", 0),
    ('FormatDateTime([d], , "yyyy", "yyyy", "yyyy")', 5),
])
def test_format_date_time_other_argument_counts(text: str, count: int) -> None:
    with pytest.raises(ExpressionError) as info:
        compile_expression(f'Join("", {text})')
    assert str(info.value) == f"expression error at position 9: {_ARITY} {count}"
    assert info.value.expected == ("FormatDateTime(source, dateTimeStyles, inputFormat, "
                                   "outputFormat)")


def test_format_date_time_older_form_can_not_leave_a_format_empty() -> None:
    with pytest.raises(ExpressionError) as info:
        compile_expression('FormatDateTime([d], , "yyyy")')
    assert str(info.value) == (
        "expression error at position 20: FormatDateTime with 3 arguments is the older form "
        "FormatDateTime(source, inputFormat, outputFormat), whose argument 2 (inputFormat) "
        "can't be empty; the current form is "
        "FormatDateTime(source, dateTimeStyles, inputFormat, outputFormat)")
    with pytest.raises(ExpressionError, match=r"argument 3 \(outputFormat\)"):
        compile_expression('FormatDateTime([d], "yyyy", )')


def test_format_date_time_constant_errors_point_at_the_argument_as_written() -> None:
    with pytest.raises(ExpressionError) as info:
        compile_expression('FormatDateTime([d], "yyyy", "x")')
    assert info.value.position == 28


@pytest.mark.parametrize("text", [
    'FormatDateTime([d], "AssumeUniversal", "yyyy-MM-dd")',   # styles, then a lost format
    'FormatDateTime([d], , "DateTimeStyles.RoundtripKind", "yyyy")',
])
def test_format_date_time_styles_in_place_of_the_input_format(text: str) -> None:
    with pytest.raises(ExpressionError, match="is a DateTimeStyles value, not a date format"):
        compile_expression(text)


def test_format_date_time_source_not_matching() -> None:
    with pytest.raises(EvaluationError, match="does not match the format 'yyyyMMdd'"):
        ev('FormatDateTime([d], , "yyyyMMdd", "yyyy")', d="2020-01-01")
    with pytest.raises(EvaluationError, match="invalid date"):
        ev('FormatDateTime([d], , "yyyyMMdd", "yyyy")', d="20200230")


# ---------------------------------------------------------------------- DateAdd / DateDiff

@pytest.mark.parametrize(("interval", "amount", "start", "expected"), [
    ("m", 1, "2021-01-31", datetime(2021, 2, 28, tzinfo=UTC)),    # clamps to the month's end
    ("m", -1, "2021-03-31", datetime(2021, 2, 28, tzinfo=UTC)),
    ("m", 13, "2020-12-15", datetime(2022, 1, 15, tzinfo=UTC)),
    ("yyyy", 1, "2020-02-29", datetime(2021, 2, 28, tzinfo=UTC)),
    ("h", 25, "2021-01-01", datetime(2021, 1, 2, 1, tzinfo=UTC)),
    ("n", -90, "2021-01-01", datetime(2020, 12, 31, 22, 30, tzinfo=UTC)),
    ("s", 3600, "2021-01-01", datetime(2021, 1, 1, 1, tzinfo=UTC)),
    ("d", "3", "2021-01-01", datetime(2021, 1, 4, tzinfo=UTC)),   # a number as text
])
def test_date_add(interval: str, amount: object, start: str, expected: datetime) -> None:
    assert ev(f'DateAdd("{interval}", [n], [d])', n=amount, d=start) == expected


def test_date_add_nulls_and_errors() -> None:
    assert ev('DateAdd("d", 1, [d])') is None
    assert ev('DateAdd("d", [n], "2021-01-01")') is None
    with pytest.raises(EvaluationError, match="can only add whole months"):
        ev('DateAdd("m", 1.5, "2021-01-01")')
    with pytest.raises(EvaluationError, match="outside the supported date range"):
        ev('DateAdd("yyyy", 9000, "2021-01-01")')
    with pytest.raises(EvaluationError, match="interval must be one of"):
        ev('DateAdd([i], 1, "2021-01-01")', i="q")
    with pytest.raises(ExpressionError, match="is not an interval"):
        compile_expression('DateDiff("days", Now(), Now())')


@pytest.mark.parametrize(("interval", "first", "second", "expected"), [
    ("d", "2021-01-01T10:00:00Z", "2021-01-02T09:59:59Z", 0),   # whole days, truncated
    ("d", "2021-01-02T09:59:59Z", "2021-01-01T10:00:00Z", 0),
    ("d", "2021-01-03T10:00:00Z", "2021-01-01T10:00:00Z", -2),
    ("ww", "2021-08-21", "2021-08-22", 1),     # Saturday to Sunday crosses a week
    ("ww", "2021-08-22", "2021-08-28", 0),     # Sunday to Saturday does not
    ("m", "2021-01-31", "2021-02-01", 1),      # calendar months, like VBA
    ("yyyy", "2021-12-31", "2022-01-01", 1),
    ("h", "2021-01-01T00:00:00Z", "2021-01-01T01:59:00Z", 1),
])
def test_date_diff(interval: str, first: str, second: str, expected: int) -> None:
    assert ev(f'DateDiff("{interval}", [a], [b])', a=first, b=second) == expected


def test_date_diff_with_null_is_null() -> None:
    assert ev('DateDiff("d", [a], "2021-01-01")') is None


# ------------------------------------------------------------------------------ FILETIME

def test_date_from_num_reads_text_and_the_never_values() -> None:
    assert ev("DateFromNum([t])", t="129699324000000000") == datetime(2012, 1, 1, 23,
                                                                      tzinfo=UTC)
    assert ev("DateFromNum([t])", t="0") is None
    assert ev("DateFromNum([t])", t=9223372036854775807) is None
    assert ev("DateFromNum([t])") is None
    with pytest.raises(EvaluationError, match="outside the supported date range"):
        ev("DateFromNum([t])", t=9223372036854775806)


def test_num_from_date_round_trip() -> None:
    assert ev("NumFromDate(DateFromNum([t]))", t=129699324000000000) == 129699324000000000
    assert ev('NumFromDate("2012-01-01T23:00:00Z")') == 129699324000000000
    assert ev("NumFromDate([d])") is None


def test_dates_as_text_in_string_functions() -> None:
    moment = datetime(2021, 7, 2, 15, 33, 38, tzinfo=timezone(timedelta(hours=2)))
    assert ev('Join(" ", "at", Now())') != ""
    assert compile_expression('Join(" ", "at", Now())').evaluate({}, now=moment) == \
        "at 7/2/2021 1:33:38 PM"
