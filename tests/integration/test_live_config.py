"""LiveConfig and the GitOps apply at start on a real broker: versions written with
ConfigStore reach a following LiveConfig (the state read at start, then each new version),
and three workers applying the same file at once make one version, not three."""

from __future__ import annotations

import asyncio
import copy
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from schemas import ErrorRecord
from schemas.config import ConfigVersion
from services.devstack.broker import Broker
from services.runtime.config import LoadedConfig, load_config
from services.runtime.config_store import ConfigStore
from services.runtime.kafka import create_topics
from services.runtime.live_config import LiveApp, LiveConfig, apply_file_at_start, is_from_file
from services.runtime.topics import Topics
from tests.conftest import APP, PARTITIONS

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


def _app(name: str, title: str) -> dict[str, Any]:
    app: dict[str, Any] = copy.deepcopy({**APP, "name": name})
    app["mappings"]["user"]["attributes"][5]["value"] = title
    return app


def _config(folder: Path, *apps: dict[str, Any]) -> LoadedConfig:
    (folder / "directory.yaml").write_text("users: []\ngroups: []\n")
    path = folder / "scimflow.yaml"
    path.write_text(yaml.safe_dump({"applications": list(apps),
                                    "sources": [{"type": "file", "name": "hr", "path": "directory.yaml"}]}))
    return load_config(path)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_SCIM_URL", "http://127.0.0.1:9/v2")
    monkeypatch.setenv("TEST_SCIM_TOKEN", "t0ken")


@pytest.fixture
def topics(broker: Broker) -> Topics:
    topics = Topics(f"t{uuid.uuid4().hex[:8]}.", PARTITIONS)
    create_topics(broker.bootstrap, topics.specs())
    return topics


def _title(live: LiveApp) -> Any:
    return live.app.mappings.user.attributes[5].value


async def _until(check: Any) -> None:
    for _ in range(400):  # 20 s
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("timed out")


@pytest.mark.usefixtures("env")
async def test_live_config_follows_the_topic(broker: Broker, topics: Topics, tmp_path: Path) -> None:
    base = _config(tmp_path, _app("crm", "Staff"), _app("erp", "Staff"))
    store = ConfigStore(broker.bootstrap, topics)
    store.write("app", "crm", _app("crm", "At start"), expected=0, author="test")
    errors: list[ErrorRecord] = []
    calls: list[tuple[str, int | None]] = []

    async def on_error(record: ErrorRecord) -> None:
        errors.append(record)

    live = LiveConfig(broker.bootstrap, topics, base, service="writer", on_error=on_error, retry_after=0.5)
    live.on_app(lambda name, app: calls.append((name, None if app is None else app.version)))
    task = asyncio.create_task(live.run())
    try:
        await asyncio.wait_for(live.caught_up.wait(), 30)
        assert calls == [("crm", 1)] and _title(live.apps["crm"]) == "At start"
        assert live.apps["erp"].version == 0  # the file's app the topic never named runs on

        erp = live.apps["erp"]
        await asyncio.to_thread(store.write, "app", "crm", _app("crm", "Live"), expected=1, author="test")
        await _until(lambda: live.apps["crm"].version == 2)
        assert _title(live.apps["crm"]) == "Live" and live.apps["erp"] is erp

        bad = {**_app("crm", "Bad"), "from_the_future": True}
        await asyncio.to_thread(store._send, _record("crm", 3, bad))  # as a newer scimflow would write it
        await _until(lambda: bool(errors))
        assert live.apps["crm"].version == 2 and errors[0].app == "crm"
        assert "version 3" in errors[0].reason and "from_the_future" in errors[0].reason

        await asyncio.to_thread(store.write, "app", "crm", None, expected=3, author="test")
        await _until(lambda: "crm" not in live.apps)
        assert calls == [("crm", 1), ("crm", 2), ("crm", None)]
    finally:
        task.cancel()
        store.close()


def _record(name: str, version: int, definition: dict[str, Any]) -> ConfigVersion:
    return ConfigVersion(kind="app", name=name, version=version, definition=definition, author="future",
                         at=datetime.now(UTC), write_id=uuid.uuid4().hex[:12])


@pytest.mark.usefixtures("env")
def test_three_workers_applying_one_file_at_once_make_one_version(broker: Broker, topics: Topics,
                                                                   tmp_path: Path) -> None:
    loaded = _config(tmp_path, _app("crm", "v1"))
    with ThreadPoolExecutor(3) as pool:
        written = list(pool.map(lambda s: apply_file_at_start(broker.bootstrap, topics, loaded, service=s),
                                ["ingest", "mapper", "writer"]))
    store = ConfigStore(broker.bootstrap, topics)
    try:
        assert sum(len(w) for w in written) == 1
        [v1] = store.history("crm")
        assert is_from_file(v1) and v1.author.startswith("scimflow-") and str(loaded.file) in v1.comment

        # An edit through the API survives a restart with the same file ...
        store.write("app", "crm", _app("crm", "edited"), expected=1, author="admin")
        assert apply_file_at_start(broker.bootstrap, topics, loaded, service="mapper") == []
        # ... and a changed file (a GitOps commit) wins.
        changed = _config(tmp_path, _app("crm", "v2"))
        [v3] = apply_file_at_start(broker.bootstrap, topics, changed, service="mapper")
        assert v3.version == 3 and v3.definition == _app("crm", "v2")
        assert [v.version for v in store.history("crm")] == [1, 2, 3]
    finally:
        store.close()
