"""The Graph, push and AD source configs: what they accept, what they reject (with the line),
and that their secrets resolve and never show."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas import ErrorRecord
from services.ingest.sources.ad import AdDirectory, search_filter
from services.ingest.sources.graph import (
    DEFAULT_USER_ATTRIBUTES,
    GraphDirectory,
    token_endpoint,
    user_attributes,
)
from services.ingest.sources.push import PushDirectory
from services.runtime.config import ActiveDirectorySource, GraphSource, LoadedConfig, PushSource, load_config
from services.runtime.errors import ConfigError

APP = """\
applications:
  - name: app1
    target: {base_url: "http://127.0.0.1:9/v2", token: env:T_TOKEN}
    mappings:
      user:
        attributes:
          - {target: userName, source: upn, matching: 1}
"""

SOURCES = """\
sources:
  - name: entra
    type: graph
    tenant_id: contoso
    client_id: app-id
    client_secret: env:T_GRAPH
    page_size: 200
  - name: hr-push
    type: push
    token: env:T_PUSH
    listen: 127.0.0.1:8099
  - name: corp-ad
    type: ad
    url: ldaps://dc1.corp.example.com
    base_dn: DC=corp,DC=example,DC=com
    bind_dn: svc@corp.example.com
    password: env:T_AD
"""


@pytest.fixture(autouse=True)
def secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"T_TOKEN": "t", "T_GRAPH": "graph-secret-1", "T_PUSH": "push-secret-2",
                        "T_AD": "ad-secret-3"}.items():
        monkeypatch.setenv(name, value)


def _load(tmp_path: Path, sources: str) -> LoadedConfig:
    path = tmp_path / "scimflow.yaml"
    path.write_text(sources + APP)
    return load_config(path)


async def _no_report(record: ErrorRecord) -> None:
    raise AssertionError(record)


def test_graph_push_and_ad_sources_load_with_their_secrets(tmp_path: Path) -> None:
    loaded = _load(tmp_path, SOURCES)
    graph, push, ad = loaded.config.sources
    assert isinstance(graph, GraphSource) and isinstance(push, PushSource)
    assert isinstance(ad, ActiveDirectorySource)
    assert token_endpoint(graph) == "https://login.microsoftonline.com/contoso/oauth2/v2.0/token"
    assert user_attributes(graph) == DEFAULT_USER_ATTRIBUTES and graph.page_size == 200
    g = GraphDirectory(graph, loaded.secret(graph.client_secret).reveal())
    assert "graph-secret-1" not in repr(g) and "graph-secret-1" not in repr(g.client.settings)
    p = PushDirectory(push, loaded.secret(push.token).reveal(), _no_report)
    assert (p.host, p.listen_port) == ("127.0.0.1", 8099)
    assert "push-secret-2" not in repr(p)
    a = AdDirectory(ad, loaded.secret(ad.password).reveal())
    assert search_filter(ad).endswith("(isDeleted=TRUE))") and "ad-secret-3" not in repr(a)


@pytest.mark.parametrize(("edit", "line", "expected"), [
    (("page_size: 200", "page_size: 5000"), 7, "<= 999"),
    (("client_secret: env:T_GRAPH", "client_secret: plain-text"), 6, "client_secret"),
    (("listen: 127.0.0.1:8099", "listen: nowhere"), 11, "listen"),
    (("url: ldaps://dc1.corp.example.com", "url: http://dc1"), 14, "sources[2].url"),
])
def test_bad_values_are_reported_with_their_line(tmp_path: Path, edit: tuple[str, str], line: int,
                                                 expected: str) -> None:
    with pytest.raises(ConfigError) as failure:
        _load(tmp_path, SOURCES.replace(*edit))
    assert failure.value.line == line and expected in str(failure.value)


def test_two_push_sources_cannot_share_a_port(tmp_path: Path) -> None:
    twice = SOURCES + "  - {name: other-push, type: push, token: env:T_PUSH, listen: '127.0.0.1:8099'}\n"
    with pytest.raises(ConfigError, match=r"already listens on 127\.0\.0\.1:8099"):
        _load(tmp_path, twice)
