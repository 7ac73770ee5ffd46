"""LiveConfig without a broker: the records of ``control.config`` are handed to it in order
(``take``, then ``catch_up`` where the reader reaches the end offsets of its start), as its
follow loop does; and what the GitOps apply at start decides to write."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from schemas import ErrorRecord
from schemas.codecs import encode
from schemas.config import ConfigVersion
from services.runtime import metrics
from services.runtime.config import LoadedConfig, load_config
from services.runtime.live_config import LiveApp, LiveConfig, _needs_write, is_from_file
from services.runtime.topics import Topics

pytestmark = pytest.mark.anyio

APP: dict[str, Any] = {
    "name": "crm",
    "target": {"base_url": "https://crm.example.com/scim/v2", "token": "env:LIVE_CRM_TOKEN"},
    "assignments": {"groups": ["g-all"]},
    "mappings": {"user": {"attributes": [
        {"target": "userName", "source": "userPrincipalName", "matching": 1},
        {"target": "title", "type": "constant", "value": "Staff"},
    ]}},
}
SECRET = "s3cret-value-never-shown"


def _app(name: str = "crm", title: str = "Staff", **changes: Any) -> dict[str, Any]:
    app = copy.deepcopy({**APP, "name": name, **changes})
    app["mappings"]["user"]["attributes"][1]["value"] = title
    return app


def _version(name: str, version: int, definition: dict[str, Any] | None, **fields: Any) -> bytes:
    return encode(ConfigVersion(kind="app", name=name, version=version, definition=definition,
                                removed=definition is None, author="test", at=datetime.now(UTC),
                                write_id=f"w{version}", **fields))


@pytest.fixture
def base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LoadedConfig:
    monkeypatch.setenv("LIVE_CRM_TOKEN", SECRET)
    (tmp_path / "hr.yaml").write_text("users: []\ngroups: []\n")
    path = tmp_path / "scimflow.yaml"
    path.write_text(yaml.safe_dump({"applications": [_app()],
                                    "sources": [{"type": "file", "name": "hr", "path": "hr.yaml"}]}))
    return load_config(path)


class Calls:
    def __init__(self, live: LiveConfig) -> None:
        self.seen: list[tuple[str, int | None]] = []
        self.errors: list[ErrorRecord] = []
        self.refuse: set[tuple[str, int]] = set()
        live.on_app(self.on_app)
        live._on_error = self.on_error

    async def on_app(self, name: str, live: LiveApp | None) -> None:
        if live is not None and (name, live.version) in self.refuse:
            raise ValueError("mapping does not compile")
        self.seen.append((name, None if live is None else live.version))

    async def on_error(self, record: ErrorRecord) -> None:
        self.errors.append(record)


def _live(base: LoadedConfig, service: Any = "mapper") -> tuple[LiveConfig, Calls]:
    live = LiveConfig("unused:9092", Topics("t."), base, service=service)
    return live, Calls(live)


def _title(live: LiveConfig, name: str = "crm") -> Any:
    return live.apps[name].app.mappings.user.attributes[1].value


async def test_an_empty_topic_runs_the_file_as_it_is(base: LoadedConfig) -> None:
    live, calls = _live(base)
    await live.catch_up()
    assert live.caught_up.is_set()
    assert {n: a.version for n, a in live.apps.items()} == {"crm": 0}
    assert live.apps["crm"].loaded is base and calls.seen == [] and calls.errors == []


async def test_at_start_the_topics_newest_version_replaces_the_file(base: LoadedConfig) -> None:
    live, calls = _live(base)
    for v in (1, 2, 3):
        await live.take(_version("crm", v, _app(title=f"T{v}")))
    await live.take(_version("erp", 1, _app("erp")))
    assert calls.seen == [] and live.apps["crm"].version == 0  # nothing half-read is run
    await live.catch_up()
    assert sorted(calls.seen) == [("crm", 3), ("erp", 1)]
    assert _title(live) == "T3" and live.apps["erp"].app.name == "erp"
    assert live.apps["crm"].loaded.secret("env:LIVE_CRM_TOKEN").reveal() == SECRET


async def test_the_same_definition_as_the_file_changes_the_version_only(base: LoadedConfig) -> None:
    live, calls = _live(base)
    await live.take(_version("crm", 1, _app()))
    await live.catch_up()
    assert calls.seen == [] and live.apps["crm"].version == 1
    assert metrics.CONFIG_VERSION.labels(service="mapper", app="crm")._value.get() == 1


async def test_a_new_version_applies_to_its_app_only(base: LoadedConfig) -> None:
    live, calls = _live(base)
    await live.take(_version("erp", 1, _app("erp")))
    await live.catch_up()
    erp = live.apps["erp"]
    await live.take(_version("crm", 1, _app(title="Boss")))
    assert calls.seen == [("erp", 1), ("crm", 1)]
    assert _title(live) == "Boss" and live.apps["erp"] is erp


async def test_the_first_record_of_a_version_wins_and_older_versions_are_ignored(base: LoadedConfig) -> None:
    live, calls = _live(base)
    await live.catch_up()
    await live.take(_version("crm", 2, _app(title="First")))
    await live.take(_version("crm", 2, _app(title="Loser")))  # lost the race for version 2
    await live.take(_version("crm", 1, _app(title="Older")))
    assert _title(live) == "First" and calls.seen == [("crm", 2)]


async def test_a_removal_takes_the_app_away(base: LoadedConfig) -> None:
    live, calls = _live(base)
    await live.catch_up()
    await live.take(_version("crm", 1, None))
    assert "crm" not in live.apps and calls.seen == [("crm", None)]


@pytest.mark.parametrize(("definition", "why"), [
    ({**_app(), "owner": "someone"}, "unknown field `owner`"),
    (_app(target={"base_url": "https://x", "token": "env:LIVE_NOT_SET"}), "LIVE_NOT_SET is not set"),
    (_app(mode="sometimes"), "Invalid enum value 'sometimes' (at $.mode)"),
])
async def test_a_bad_version_keeps_the_last_good_and_reports_it(
        base: LoadedConfig, definition: dict[str, Any], why: str) -> None:
    live, calls = _live(base, "writer")  # the writer resolves the targets' secrets
    await live.catch_up()
    await live.take(_version("crm", 1, _app(title="Good")))
    before = metrics.CONFIG_REJECTED.labels(service="writer", app="crm")._value.get()
    await live.take(_version("crm", 2, definition))
    assert _title(live) == "Good" and live.apps["crm"].version == 1
    assert calls.seen == [("crm", 1)]
    [error] = calls.errors
    assert error.error_code == "ConfigVersionRejected" and error.app == "crm"
    assert "'crm' version 2" in error.reason and why in error.reason and "version 1 stays" in error.reason
    assert SECRET not in error.reason
    assert metrics.CONFIG_REJECTED.labels(service="writer", app="crm")._value.get() == before + 1
    await live.take(_version("crm", 3, _app(title="Fixed")))  # the next good one is taken
    assert _title(live) == "Fixed"


async def test_a_target_secret_the_mapper_does_not_hold_is_not_its_concern(base: LoadedConfig) -> None:
    # Each Deployment gets only its own Secrets: the mapper never resolves a target's token.
    live, calls = _live(base, "mapper")
    await live.catch_up()
    await live.take(_version("crm", 1, _app(title="Ok", target={"base_url": "https://x",
                                                                 "token": "env:LIVE_NOT_SET"})))
    assert _title(live) == "Ok" and calls.errors == []


async def test_a_version_a_callback_refuses_is_rejected_and_at_start_the_previous_one_runs(
        base: LoadedConfig) -> None:
    live, calls = _live(base)
    calls.refuse = {("crm", 2)}
    await live.take(_version("crm", 1, _app(title="One")))
    await live.take(_version("crm", 2, _app(title="Two")))
    await live.catch_up()
    assert _title(live) == "One" and calls.seen == [("crm", 1)]
    assert [e.error_code for e in calls.errors] == ["ConfigVersionRejected"]
    assert "mapping does not compile" in calls.errors[0].reason


async def test_a_record_from_a_newer_scimflow_is_rejected_by_name(base: LoadedConfig) -> None:
    live, calls = _live(base)
    await live.catch_up()
    newer = b'{"type":"control.config.v2","kind":"app","name":"crm","version":1,"spec":{}}'
    await live.take(newer)
    await live.take(b"not json at all")
    assert live.apps["crm"].version == 0
    assert [e.app for e in calls.errors] == ["crm"] and "newer scimflow" in calls.errors[0].reason


def _from(version: int, definition: dict[str, Any] | None, *, file: bool) -> ConfigVersion:
    return ConfigVersion(kind="app", name="crm", version=version, definition=definition,
                         removed=definition is None, author="x", at=datetime.now(UTC), write_id="w",
                         comment="applied from /etc/scimflow.yaml at start" if file else "edit")


def test_the_file_is_applied_when_new_or_changed_and_not_over_a_later_edit() -> None:
    v1 = _from(1, _app(title="A"), file=True)
    assert is_from_file(v1) and not is_from_file(_from(2, _app(), file=False))
    assert _needs_write([], _app())
    assert not _needs_write([v1], _app(title="A"))
    assert _needs_write([v1], _app(title="B"))  # the file changed: it wins
    edited = [v1, _from(2, _app(title="Edit"), file=False)]
    assert not _needs_write(edited, _app(title="A"))  # unchanged file: the edit survives
    assert _needs_write(edited, _app(title="C"))
    assert not _needs_write([v1, _from(2, None, file=False)], _app(title="A"))  # removed by an admin
    assert not _needs_write([_from(1, _app(title="D"), file=False)], _app(title="D"))  # already live
