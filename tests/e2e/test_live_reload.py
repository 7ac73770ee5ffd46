"""Live reload with the real workers: a new version of one app's mapping on control.config
reaches ingest and mapper while they run (no process restarts), re-evaluates that app's
users through a full scan, and leaves the other app as it was; a bad version keeps the last
good one running and is reported; a removed app gets no more commands.

The second app runs ``dry_run`` on the same target: its commands are planned like any
app's, and it never writes, so the target shows the first app's writes only.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from schemas import ProvisioningCommand
from schemas.config import ConfigVersion
from services.runtime.config_store import ConfigStore
from tests.conftest import APP, Pipeline, read_all, user

pytestmark = pytest.mark.e2e

Factory = Callable[..., Pipeline]


def _titled(name: str, title: str, **more: Any) -> dict[str, Any]:
    app: dict[str, Any] = copy.deepcopy({**APP, "name": name, **more})
    app["mappings"]["user"]["attributes"][5]["value"] = title
    return app


def _commands(p: Pipeline, app: str) -> list[ProvisioningCommand]:
    return [c for c in read_all(p.bootstrap, p.topics.commands, ProvisioningCommand) if c.app == app]


def _pids(p: Pipeline) -> dict[str, int]:
    return {name: proc.pid for name, proc in p.sup.procs.items()}


def test_a_new_mapping_version_remaps_one_app_without_a_restart(pipeline_factory: Factory) -> None:
    users = [user(i) for i in range(5)]
    p = pipeline_factory(users, app=_titled("app", "Staff"),
                         more_apps=[_titled("other", "Staff", dry_run=True)])
    p.wait_for("initial sync", lambda: len(p.scim.users()) == 5)
    p.wait_for("commands of both apps", lambda: len(_commands(p, "other")) >= 5)
    pids = _pids(p)
    store = ConfigStore(p.bootstrap, p.topics)
    try:
        # The workers applied their --config file at start: one version per app, not three.
        assert {n: v.version for n, v in store.current().items()} == {"app": 1, "other": 1}
        other_before = len(_commands(p, "other"))

        store.write("app", "app", _titled("app", "Manager"), expected=1, author="test")
        p.wait_for("every user remapped in the target",
                   lambda: {u["title"] for u in p.scim.users()} == {"Manager"}, timeout=60)
        updates = [a for a in p.activity() if a.action == "update"]
        assert {a.source_id for a in updates} == {u["id"] for u in users}
        assert {(m.name, m.old_value, m.new_value) for a in updates for m in a.modified_properties} == {
            ("title", "Staff", "Manager")}
        other = _commands(p, "other")
        assert len(other) > other_before  # the scan planned it too, with what it had
        assert {c.attributes.get("title") for c in other} == {"Staff"}
        assert _pids(p) == pids and not p.sup.dead()

        # A version no worker can load: the last good one stays, and it is reported.
        broken = {**_titled("app", "Broken"), "from_a_newer_scimflow": 1}
        store._send(_raw("app", 3, broken))
        p.wait_for("the rejection on the errors topic",
                   lambda: any(e.error_code == "ConfigVersionRejected" for e in p.errors()))
        rejected = [e for e in p.errors() if e.error_code == "ConfigVersionRejected"]
        assert {e.app for e in rejected} == {"app"} and {e.service for e in rejected} >= {"ingest", "mapper"}
        users[0] = {**users[0], "displayName": "Renamed"}
        p.write_directory(users)
        p.wait_for("the rename planned with the last good mapping", lambda: any(
            c.source_id == users[0]["id"] and c.attributes.get("displayName") == "Renamed"
            for c in _commands(p, "app")))
        assert {c.attributes.get("title") for c in _commands(p, "app")
                if c.attributes.get("displayName") == "Renamed"} == {"Manager"}

        # A removed app is no longer planned: a new user reaches the other app only.
        store.write("app", "app", None, expected=3, author="test")
        p.wait_for("the removal read", lambda: _logged(p, "app removed: no longer planned"))
        users.append(user(99))
        p.write_directory(users)
        p.wait_for("the new user planned for the other app",
                   lambda: any(c.source_id == "u00099" for c in _commands(p, "other")))
        assert not any(c.source_id == "u00099" for c in _commands(p, "app"))
        assert _pids(p) == pids and not p.sup.dead()
    finally:
        store.close()


def _raw(name: str, version: int, definition: dict[str, Any]) -> ConfigVersion:
    """A version as a newer scimflow would write it (ConfigStore validates; this does not)."""
    return ConfigVersion(kind="app", name=name, version=version, definition=definition,
                         author="newer", at=datetime.now(UTC), write_id=f"newer{version}")


def _logged(p: Pipeline, text: str) -> bool:
    return text in (p.dir / "logs" / "mapper.log").read_text(encoding="utf-8", errors="replace")
