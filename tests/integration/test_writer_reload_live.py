"""The writer following control.config on a real broker, as services/writer/main.py wires it:
LiveConfig calls ``follow_versions`` for each new version, and no command is applied before
the topic was read at start, so the first write already uses the topic's version.

The processor runs in the test's event loop (tests/support/writer_harness.py) against a
real scim2-server behind a counting fault proxy.
"""

from __future__ import annotations

import asyncio
import copy
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.devstack.broker import Broker
from services.devstack.scim_target import ScimTarget
from services.runtime import metrics
from services.runtime.config import LoadedConfig, load_config
from services.runtime.config_store import ConfigStore
from services.runtime.kafka import create_topics
from services.runtime.live_config import LiveConfig
from services.runtime.settings import load_settings
from services.runtime.topics import Topics
from services.writer.main import build_writers, follow_versions
from services.writer.worker import CommandProcessor
from tests.conftest import APP, PARTITIONS
from tests.support.faultproxy import FaultProxy
from tests.support.writer_harness import Harness, Recorder, for_app, user_cmd

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


def _app(name: str, **more: Any) -> dict[str, Any]:
    return copy.deepcopy({**APP, "name": name, **more})


def _config(folder: Path, *apps: dict[str, Any]) -> LoadedConfig:
    (folder / "directory.yaml").write_text("users: []\ngroups: []\n")
    path = folder / "scimflow.yaml"
    path.write_text(yaml.safe_dump({"applications": list(apps),
                                    "sources": [{"type": "file", "name": "hr", "path": "directory.yaml"}]}))
    return load_config(path)


def _harness(loaded: LoadedConfig) -> Harness:
    """The writer's processor as main.py builds it: waiting for the config topic."""
    settings = load_settings({}, partitions=PARTITIONS)
    managed: dict[bytes, bytes] = {}
    escrow: dict[bytes, bytes] = {}
    activity, errors, control = Recorder(), Recorder(), Recorder()
    processor = CommandProcessor(settings, build_writers(settings, loaded), managed, activity=activity,
                                 errors=errors, escrow=escrow, control=control, loaded=loaded,
                                 restoring=("config",))
    return Harness(processor, managed, escrow, activity, errors, control)


async def _until(check: Callable[[], bool]) -> None:
    for _ in range(400):  # 20 s
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("timed out")


async def test_the_writer_writes_with_the_topics_versions_from_the_first_command(
        broker: Broker, scim_target: ScimTarget, proxy: FaultProxy, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_SCIM_URL", proxy.url)
    monkeypatch.setenv("TEST_SCIM_TOKEN", scim_target.token)
    topics = Topics(f"t{uuid.uuid4().hex[:8]}.", PARTITIONS)
    create_topics(broker.bootstrap, topics.specs())
    base = _config(tmp_path, _app("crm"), _app("erp"))
    store = ConfigStore(broker.bootstrap, topics)
    # On the topic before the writer starts: crm with the Create action off.
    no_create = _app("crm")
    no_create["mappings"]["user"]["actions"] = ["update", "delete"]
    store.write("app", "crm", no_create, expected=0, author="test")
    h = _harness(base)
    live = LiveConfig(broker.bootstrap, topics, base, service="writer",
                      on_error=lambda r: h.processor.publisher.error(r.id.encode(), r))
    live.on_app(follow_versions(h.processor))
    erp = h.processor.writers["erp"]
    tasks: list[asyncio.Task[None]] = []
    try:
        await h.feed(*for_app("crm", user_cmd(0)))
        await asyncio.sleep(0.5)
        assert proxy.log == [] and h.activity() == []  # nothing before the topic was read

        async def config_read() -> None:
            await live.caught_up.wait()
            h.processor.config_read()

        tasks = [asyncio.create_task(live.run()), asyncio.create_task(config_read())]
        await _until(lambda: len(h.activity()) == 1)
        await h.settle()
        # Under the topic's version the account is not created (the file's would have).
        skip = h.activity()[0]
        assert (skip.app, skip.action, skip.status) == ("crm", "skip", "skipped")
        assert not proxy.requests("POST")
        assert h.processor.writers["erp"] is erp  # the file's version: nothing replaced it

        # A new version while it runs: crm creates again; erp is not touched.
        store.write("app", "crm", _app("crm"), expected=1, author="test")
        await _until(lambda: "create" in h.processor.writers["crm"].user_actions)
        await h.feed(*for_app("crm", user_cmd(0)))
        await h.settle()
        assert [(a.app, a.action, a.status) for a in h.activity()[1:]] == [("crm", "create", "success")]
        assert h.processor.writers["erp"] is erp

        # erp removed: its commands are skipped, nothing is written, no error record.
        store.write("app", "erp", None, expected=0, author="test")
        await _until(lambda: "erp" not in h.processor.writers)
        before = metrics.REMOVED_APP_COMMANDS.labels(app="erp")._value.get()
        proxy.clear_log()
        await h.feed(*for_app("erp", user_cmd(1)))
        await h.settle()
        assert proxy.log == [] and len(h.activity()) == 2 and h.errors() == []
        assert metrics.REMOVED_APP_COMMANDS.labels(app="erp")._value.get() == before + 1
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        store.close()
        await h.processor.close()
