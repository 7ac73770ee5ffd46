"""Admin API tokens: parsing the named references, and who a presented token belongs to."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.admin.auth import parse_tokens
from services.runtime.errors import ConfigError


def test_named_tokens_from_env_and_file(tmp_path: Path) -> None:
    (tmp_path / "t").write_text("file-token\n")
    tokens = parse_tokens(f"ci=env:CI_TOKEN, ops=file:{tmp_path / 't'}", environ={"CI_TOKEN": "env-token"})
    assert tokens.names == ["ci", "ops"]
    assert tokens.identify("Bearer env-token") == "ci"
    assert tokens.identify("bearer file-token") == "ops"
    for header in (None, "", "Bearer", "Bearer ", "Bearer wrong", "Basic env-token", "env-token",
                   "Bearer env-token-and-more", "Bearer env-toke"):
        assert tokens.identify(header) is None, header


@pytest.mark.parametrize(("spec", "message"), [
    ("", "no admin token configured"),
    ("ops", "expected name=env:VAR"),
    ("ops=s3cr3t-raw-token", "expected env:VAR or file:/path"),
    ("ops=env:MISSING", "environment variable MISSING is not set"),
    ("ops=file:/nonexistent/token", "cannot read /nonexistent/token"),
    ("ops=env:A,ops=env:A", "given twice"),
    ("bad name=env:A", "expected name=env:VAR"),
])
def test_bad_token_settings_are_clear_errors(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_tokens(spec, environ={"A": "x"})
    assert "s3cr3t-raw-token" not in str(info.value)
    assert "SCIMFLOW_ADMIN_TOKENS" in str(info.value)


def test_tokens_never_show_in_repr() -> None:
    tokens = parse_tokens("ops=env:T", environ={"T": "very-secret"})
    assert "very-secret" not in repr(tokens) and "ops" in repr(tokens)
