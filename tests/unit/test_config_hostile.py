"""Values that parse but would behave badly, and files that are not config at all: each is
a ConfigError naming the file and line, never a traceback, a hang or a silent default."""

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
"""


@pytest.fixture(autouse=True)
def _token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_TOKEN", "x")


def error_for(tmp_path: Path, content: str | bytes) -> ConfigError:
    path = tmp_path / "scimflow.yaml"
    if isinstance(content, str):
        path.write_text(content)
    else:
        path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.file == str(path)
    return info.value


@pytest.mark.parametrize(
    ("replace", "by", "line", "expected"),
    [
        ("path: dir.yaml}", "path: dir.yaml, full_scan_interval: 0}", 2, "Expected `float` > 0.0"),
        ("path: dir.yaml}", "path: dir.yaml, full_scan_interval: -60}", 2, "full_scan_interval"),
        ("path: dir.yaml}", "path: dir.yaml, poll_interval: -5}", 2, "poll_interval"),
        ("    mappings:", "    deletion_threshold: -1\n    mappings:", 8, "Expected `int` >= 0"),
    ],
)
def test_values_that_would_misbehave_are_refused(tmp_path: Path, replace: str, by: str,
                                                 line: int, expected: str) -> None:
    error = error_for(tmp_path, GOOD.replace(replace, by))
    assert error.line == line, str(error)
    assert expected in str(error)


def test_a_base_url_with_credentials_is_refused_without_repeating_them(tmp_path: Path) -> None:
    error = error_for(tmp_path, GOOD.replace("http://127.0.0.1", "https://admin:hunter2@127.0.0.1"))
    assert error.line == 6
    assert "without credentials" in str(error) and "$.applications[0].target.base_url" in str(error)
    assert "hunter2" not in str(error)


def test_a_duplicate_key_names_both_lines(tmp_path: Path) -> None:
    text = GOOD.replace("      token: env:T_TOKEN\n",
                        "      token: env:T_TOKEN\n      base_url: http://other/v2\n")
    error = error_for(tmp_path, text)
    assert error.line == 8
    assert "duplicate key `base_url` (first at line 6)" in str(error)


def test_a_yaml_alias_bomb_is_refused_quickly(tmp_path: Path) -> None:
    levels = ['a0: &a0 ["x","x","x","x","x","x","x","x","x","x"]']
    levels += [f"a{i}: &a{i} [{','.join(['*a' + str(i - 1)] * 10)}]" for i in range(1, 9)]
    # 10**9 values once expanded: refused at the budget instead of exhausting memory.
    error = error_for(tmp_path, "\n".join(levels) + "\n")
    assert "expands to more than 100,000 values" in str(error)


def test_a_binary_file_is_a_config_error(tmp_path: Path) -> None:
    error = error_for(tmp_path, b"sources:\n  - \xff\xfe\x00garbage\n")
    assert error.line == 2
    assert "not UTF-8 text: byte 0xff at offset 13" in str(error)


def test_control_characters_are_a_config_error(tmp_path: Path) -> None:
    error = error_for(tmp_path, "sources: []\napplications: [\x00]\n")
    assert error.line == 2
    assert "is not allowed in YAML" in str(error)
