"""Config errors name the file, the line and what was expected; secrets stay hidden."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.runtime.config import load_config
from services.runtime.errors import ConfigError

GOOD = """\
sources:
  - {name: hr, type: file, path: dir.yaml}
applications:
  - name: app1
    target:
      base_url: http://127.0.0.1:9/v2
      token: env:T_TOKEN
    mappings:
      user:
        attributes:
          - {target: userName, source: upn, matching: 1}
          - {target: title, type: constant, value: Engineer}
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "scimflow.yaml"
    p.write_text(text)
    return p


def test_valid_config_loads_and_resolves_env_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_TOKEN", "s3cr3t-value")
    loaded = load_config(write(tmp_path, GOOD))
    app = loaded.application("app1")
    assert app.scope == "assigned"
    assert app.mappings.user.actions == ["create", "update", "delete"]
    secret = loaded.secret(app.target.token or "")
    assert secret.reveal() == "s3cr3t-value"
    assert "s3cr3t" not in repr(secret) and "s3cr3t" not in str(loaded)


def test_file_secret_relative_to_config(tmp_path: Path) -> None:
    (tmp_path / "token.txt").write_text("from-file\n")
    loaded = load_config(write(tmp_path, GOOD.replace("env:T_TOKEN", "file:token.txt")))
    assert loaded.secret("file:token.txt").reveal() == "from-file"


@pytest.mark.parametrize(
    ("replace", "by", "line", "expected"),
    [
        ("base_url: http://127.0.0.1:9/v2", "base_url: 42", 6, "Expected `str`, got `int`"),
        ("token: env:T_TOKEN", "token: plain-text-token", 7, "Expected `str` matching regex"),
        ("    mappings:", "    colour: blue\n    mappings:", 8, "unknown field `colour`"),
        ("{target: title, type: constant, value: Engineer}", "{target: title, type: constant}", 12,
         "a `constant` mapping needs `value`"),
        ("{target: userName, source: upn, matching: 1}", "{target: userName, source: upn}", 11,
         "expected at least one attribute with `matching"),
        ("type: file", "type: ldapz", 2, "Invalid value 'ldapz'"),
    ],
)
def test_errors_name_file_line_and_expectation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                replace: str, by: str, line: int, expected: str) -> None:
    monkeypatch.setenv("T_TOKEN", "x")
    path = write(tmp_path, GOOD.replace(replace, by))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.file == str(path)
    assert info.value.line == line, str(info.value)
    assert expected in str(info.value)
    assert str(info.value).startswith(f"{path}:{line}: ")


def test_missing_env_secret_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("T_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="T_TOKEN is not set") as info:
        load_config(write(tmp_path, GOOD))
    assert info.value.line == 7


def test_invalid_yaml_reports_its_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, GOOD.replace("  - name: app1", "  - name: [app1")))
    assert info.value.line is not None and info.value.line >= 4
    assert "invalid YAML" in str(info.value)


def test_env_interpolation_with_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_TOKEN", "x")
    monkeypatch.delenv("SCIM_URL", raising=False)
    text = GOOD.replace("http://127.0.0.1:9/v2", "${SCIM_URL:-http://127.0.0.1:7/v2}")
    assert load_config(write(tmp_path, text)).application("app1").target.base_url == "http://127.0.0.1:7/v2"
    monkeypatch.setenv("SCIM_URL", "https://scim.example.com/v2")
    assert load_config(write(tmp_path, text)).application("app1").target.base_url == "https://scim.example.com/v2"


def test_duplicate_app_names_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_TOKEN", "x")
    app = GOOD.split("applications:\n", 1)[1]
    with pytest.raises(ConfigError, match="duplicate application name 'app1'") as info:
        load_config(write(tmp_path, GOOD + app))
    assert info.value.line == 13


def test_demo_config_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEMO_SCIM_TOKEN", "x")
    loaded = load_config(Path(__file__).parents[2] / "examples" / "demo.yaml")
    assert [a.name for a in loaded.config.applications] == ["demo"]


def test_expressions_are_not_environment_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_TOKEN", "x")
    expression = 'Replace([mail], , "(?<user>[^@]+)@.*", , "${user}@corp.example", , )'
    text = GOOD.replace("          - {target: title, type: constant, value: Engineer}",
                        f"          - target: mail\n            type: expression\n"
                        f"            expression: '{expression}'")
    loaded = load_config(write(tmp_path, text))
    assert loaded.application("app1").mappings.user.attributes[1].expression == expression


TOKEN = "      token: env:T_TOKEN\n"
OAUTH2 = "      oauth2: {token_url: 'https://idp.example/token', client_id: c, client_secret: env:T_SECRET}\n"


def test_target_needs_exactly_one_credential(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_TOKEN", "x")
    monkeypatch.setenv("T_SECRET", "y")
    where = r"exactly one of `token`.*\(at \$\.applications\[0\]\.target\)"
    with pytest.raises(ConfigError, match=where) as info:
        load_config(write(tmp_path, GOOD.replace(TOKEN, TOKEN + OAUTH2)))
    assert info.value.line == 6
    with pytest.raises(ConfigError, match="exactly one of"):
        load_config(write(tmp_path, GOOD.replace(TOKEN, "")))


def test_oauth2_client_secret_is_a_resolved_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_SECRET", "client-s3cret")
    loaded = load_config(write(tmp_path, GOOD.replace(TOKEN, OAUTH2)))
    oauth2 = loaded.application("app1").target.oauth2
    assert oauth2 is not None and loaded.secret(oauth2.client_secret).reveal() == "client-s3cret"
    assert "client-s3cret" not in repr(loaded)


def test_rate_limit_and_quarantine_bounds_are_checked(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_TOKEN", "x")
    text = GOOD.replace(TOKEN, TOKEN + "      quarantine: {failure_ratio: 1.5}\n")
    with pytest.raises(ConfigError, match=r"<= 1.*quarantine\.failure_ratio") as info:
        load_config(write(tmp_path, text))
    assert info.value.line == 8
