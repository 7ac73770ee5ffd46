"""Expressions as pasted into ``scimflow expr`` and into a config ``scimflow validate``
checks: both go through the same engine, so they accept and reject the same text and say
the same thing about it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from services import cli as cli_module

runner = CliRunner()

ATTRS = json.dumps({"givenName": "Zoë", "surname": "Doe", "StatusHireDate": "2012-03-16-07:00"})
CANONICAL = 'Join(".", NormalizeDiacritics([givenName]), [surname])'


def expr(text: str) -> Result:
    return runner.invoke(cli_module.cli, ["expr", text, "--attrs", ATTRS])


def validate(tmp_path: Path, expression: str, monkeypatch: pytest.MonkeyPatch) -> Result:
    """``scimflow validate`` on the demo config with its displayName expression replaced."""
    for name in ("demo.yaml", "directory.yaml"):
        shutil.copy(Path("examples") / name, tmp_path / name)
    config = tmp_path / "demo.yaml"
    text = config.read_text()
    original = "expression: 'Join(\" \", [givenName], [surname])'"
    assert original in text
    config.write_text(text.replace(original, f"expression: '{expression}'"))
    monkeypatch.setenv("DEMO_SCIM_TOKEN", "unused")
    return runner.invoke(cli_module.cli, ["validate", str(config)])


def words(text: str) -> str:
    return " ".join(text.split())  # the console wraps long lines


@pytest.mark.parametrize("pasted", [
    'join(".", normalizediacritics([givenName]), [surname])',
    'JOIN(".", NORMALIZEDIACRITICS([givenName]), [surname])',
    'Join(".", normalizeDiacritics([givenName]), [surname])',
])
def test_expr_accepts_function_names_in_any_case(pasted: str) -> None:
    canonical, result = expr(CANONICAL), expr(pasted)
    assert result.exit_code == 0, result.output
    assert result.stdout == canonical.stdout == '"Zoe.Doe"\n'


def test_expr_reads_the_older_format_date_time() -> None:
    result = expr('formatDateTime([StatusHireDate], "yyyy-MM-ddzzz", "yyyyMMddHHmmss.fZ")')
    assert result.exit_code == 0, result.output
    assert result.stdout == '"20120316070000.0Z"\n'


def test_validate_accepts_what_expr_accepts(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    result = validate(tmp_path, 'join(" ", [givenName], formatDateTime([hired], '
                                '"yyyy-MM-ddzzz", "yyyyMMddHHmmss.fZ"))', monkeypatch)
    assert result.exit_code == 0, result.output
    assert "OK (1 applications: demo" in words(result.stdout)


@pytest.mark.parametrize(("pasted", "reason"), [
    ('formatdatetime([givenName], "yyyy")',
     "FormatDateTime takes 4 arguments (or 3 in the older form FormatDateTime(source, "
     "inputFormat, outputFormat)), got 2"),
    ('jion(" ", [givenName], [surname])', 'unknown function "jion" (did you mean "Join"?)'),
])
def test_validate_and_expr_report_the_same_error(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 pasted: str, reason: str) -> None:
    from_expr, from_validate = expr(pasted), validate(tmp_path, pasted, monkeypatch)
    assert from_expr.exit_code == from_validate.exit_code == 2
    assert words(from_expr.stderr) == f"error: expression error at position 0: {reason}"
    assert f"expression error at position 0: {reason}" in words(from_validate.stderr)
    assert "displayName" in from_validate.stderr  # validate also says which mapping
