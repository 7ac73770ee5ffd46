"""Live reload in the mapper and ingest, without a broker: LiveConfig is handed versions as
its follow loop would (``take``), and the mapper's compiled apps and ingest's scans follow."""

from __future__ import annotations

import asyncio
import copy
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from schemas import DirectoryChange, ErrorRecord
from schemas.codecs import encode
from schemas.config import ConfigVersion
from services.ingest.control import Controller
from services.ingest.main import rescan_on_config
from services.ingest.worker import FileIngest, Publisher
from services.mapper.main import LiveApps
from services.mapper.planner import plan
from services.runtime.config import FileSource, LoadedConfig, load_config
from services.runtime.live_config import LiveConfig
from services.runtime.topics import Topics

pytestmark = pytest.mark.anyio

APP: dict[str, Any] = {
    "name": "crm",
    "target": {"base_url": "http://127.0.0.1:9/v2", "token": "env:LIVE_T"},
    "scope": "all",
    "mappings": {"user": {"attributes": [
        {"target": "userName", "source": "upn", "matching": 1},
        {"target": "title", "type": "expression", "expression": '"Staff"'},
    ]}},
}


def _app(name: str, title_expression: str = '"Staff"') -> dict[str, Any]:
    app: dict[str, Any] = copy.deepcopy({**APP, "name": name})
    app["mappings"]["user"]["attributes"][1]["expression"] = title_expression
    return app


def _version(name: str, version: int, definition: dict[str, Any] | None) -> bytes:
    return encode(ConfigVersion(kind="app", name=name, version=version, definition=definition,
                                removed=definition is None, author="t", at=datetime.now(UTC),
                                write_id=f"w{version}"))


@pytest.fixture
def base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LoadedConfig:
    monkeypatch.setenv("LIVE_T", "x")
    (tmp_path / "hr.yaml").write_text("users: []\ngroups: []\n")
    path = tmp_path / "scimflow.yaml"
    path.write_text(yaml.safe_dump({"applications": [_app("crm"), _app("erp")],
                                    "sources": [{"type": "file", "name": "hr", "path": "hr.yaml"}]}))
    return load_config(path)


def _change() -> DirectoryChange:
    return DirectoryChange(source="hr", object_type="user", object_id="u1", operation="upsert",
                           attributes={"upn": "u1@x", "accountEnabled": True}, change_id="c1",
                           observed_at=datetime.now(UTC))


def _titles(apps: LiveApps) -> dict[str, Any]:
    out = {}
    for compiled in apps.current():
        command = plan(compiled, _change())
        assert command is not None
        out[compiled.app.name] = command.attributes["title"]
    return out


async def test_the_mapper_recompiles_only_the_changed_app_and_drops_a_removed_one(base: LoadedConfig) -> None:
    apps = LiveApps(base)
    live = LiveConfig("unused:9092", Topics("t."), base, service="mapper")
    live.on_app(apps.on_app)
    await live.catch_up()
    erp = apps.compiled["erp"]
    await live.take(_version("crm", 1, _app("crm", '"Manager"')))
    assert _titles(apps) == {"crm": "Manager", "erp": "Staff"}
    assert apps.compiled["erp"] is erp  # not recompiled
    await live.take(_version("crm", 2, None))
    assert _titles(apps) == {"erp": "Staff"}


async def test_a_mapping_that_does_not_compile_is_rejected_and_the_last_good_one_maps(
        base: LoadedConfig) -> None:
    apps = LiveApps(base)
    errors: list[ErrorRecord] = []

    async def report(record: ErrorRecord) -> None:
        errors.append(record)

    live = LiveConfig("unused:9092", Topics("t."), base, service="mapper", on_error=report)
    live.on_app(apps.on_app)
    await live.catch_up()
    await live.take(_version("crm", 1, _app("crm", '"Lead"')))
    await live.take(_version("crm", 2, _app("crm", "NoSuchFunction([upn])")))
    assert _titles(apps)["crm"] == "Lead" and live.apps["crm"].version == 1
    [error] = errors
    assert error.error_code == "ConfigVersionRejected" and "version 2" in error.reason
    assert "NoSuchFunction" in error.reason and "version 1 stays in effect" in error.reason


async def _nothing(_: Any) -> None:
    return None


async def test_ingest_scans_every_source_when_an_app_changes_after_start_only(
        base: LoadedConfig, tmp_path: Path) -> None:
    ingest = FileIngest(FileSource(name="hr", path="hr.yaml"), tmp_path / "hr.yaml",
                        Publisher(_nothing, _nothing, _nothing))
    controller = Controller({"hr": ingest}, _nothing)
    live = LiveConfig("unused:9092", Topics("t."), base, service="ingest")
    live.on_app(rescan_on_config(live, controller, settle=0.0))
    await live.take(_version("crm", 1, _app("crm", '"At start"')))
    await live.catch_up()
    await asyncio.sleep(0.01)
    assert not ingest._scan_wanted.is_set()  # read at start: the start-up scan covers it
    await live.take(_version("crm", 2, None))
    await asyncio.sleep(0.01)
    assert not ingest._scan_wanted.is_set()  # a removal needs no scan
    await live.take(_version("new", 1, _app("new")))
    await asyncio.sleep(0.01)
    assert ingest._scan_wanted.is_set()  # an added app: its initial cycle
