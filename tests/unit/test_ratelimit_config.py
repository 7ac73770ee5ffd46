"""``target.rate_limit``: the app's and each operation's ``max_requests_per_second`` reach the
client's limiter, and mistakes in them name the file and the line."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.runtime.config import load_config
from services.runtime.errors import ConfigError
from services.runtime.settings import load_settings
from services.scim.client import client_for
from tests.support.limiter import burst_seconds

pytestmark = pytest.mark.anyio

CONFIG = """\
sources:
  - {name: hr, type: file, path: dir.yaml}
applications:
  - name: app1
    target:
      base_url: http://127.0.0.1:9/v2
      token: env:T_TOKEN
      rate_limit:
        max_requests_per_second: 10
        operations:
          delete: {max_requests_per_second: 0.5}
    mappings:
      user:
        attributes:
          - {target: userName, source: upn, matching: 1}
"""



def test_operation_limits_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_TOKEN", "x")
    path = tmp_path / "scimflow.yaml"
    path.write_text(CONFIG)
    limit = load_config(path).application("app1").target.rate_limit
    assert limit.max_requests_per_second == 10
    assert limit.per_operation() == {"delete": 0.5}


@pytest.mark.parametrize(("replace", "by", "line", "expected"), [
    ("delete: {max_requests_per_second: 0.5}", "delete: {max_requests_per_second: 20}", 11,
     "expected at most the app's max_requests_per_second (10)"),
    ("delete: {max_requests_per_second: 0.5}", "remove: {max_requests_per_second: 0.5}", 11,
     "unknown field `remove`"),
    ("delete: {max_requests_per_second: 0.5}", "delete: {max_requests_per_second: 0}", 11,
     "Expected `float` > 0.0"),
])
def test_mistakes_name_the_file_and_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         replace: str, by: str, line: int, expected: str) -> None:
    monkeypatch.setenv("T_TOKEN", "x")
    path = tmp_path / "scimflow.yaml"
    path.write_text(CONFIG.replace(replace, by))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}:{line}: "), str(info.value)
    assert expected in str(info.value)


async def test_the_client_paces_each_operation_to_its_limit(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_TOKEN", "x")
    path = tmp_path / "scimflow.yaml"
    path.write_text(CONFIG.replace("0.5}", "5}"))
    loaded = load_config(path)
    async with client_for(loaded.application("app1"), loaded, load_settings({})) as client:
        limiter = client.limiter
        assert limiter is not None
        assert await burst_seconds(limiter, "delete", 3) >= 0.39  # 5 deletes/s: 200 ms apart
        assert await burst_seconds(limiter, "read", 3) < 0.39  # the app's 10/s: 100 ms apart
