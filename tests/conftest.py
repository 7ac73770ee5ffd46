"""Shared fixtures: one real broker per test session, a real scim2-server per test, and a
factory that runs the whole pipeline (three real worker processes) on unique topics."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import yaml

from schemas import ActivityRecord, ErrorRecord
from services.devstack.broker import Broker, start_broker
from services.devstack.processes import free_ports
from services.devstack.scim_target import ScimTarget, start_scim_target
from services.devstack.supervisor import Supervisor
from services.runtime.kafka import consume, create_topics
from services.runtime.settings import load_settings
from services.runtime.topics import Topics
from tests.support.faultproxy import FaultProxy
from tests.support.fixtures import server_fixture

PARTITIONS = 3


@pytest.fixture(scope="session")
def broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    """One broker per pytest process: under pytest-xdist (``make test``) each worker starts its
    own, so workers share no topic, consumer group or offset."""
    config = request.config
    capture = config.pluginmanager.getplugin("capturemanager")

    def show(line: str) -> None:
        # CI must show which broker the suite ran on; pytest would otherwise capture the line.
        # An xdist worker's output goes nowhere: it hands the line to the controller, which
        # prints it in the summary (pytest_testnodedown below).
        if (workeroutput := getattr(config, "workeroutput", None)) is not None:
            workeroutput.setdefault(_BROKER_LINES, []).append(line)
        with capture.global_and_fixture_disabled():
            print(f"\n{line}", flush=True)

    with start_broker(load_settings(partitions=PARTITIONS), log=show) as b:
        yield b


_BROKER_LINES = "scimflow_broker_lines"
_broker_lines: list[str] = []


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """The controller of an xdist run: keep what each worker said about its broker."""
    worker = node.gateway.id
    _broker_lines.extend(f"[{worker}] {line}" for line in node.workeroutput.get(_BROKER_LINES, []))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _broker_lines:
        terminalreporter.section("brokers")
        for line in _broker_lines:
            terminalreporter.write_line(line)


scim_target = server_fixture(start_scim_target, doc="""A fresh scim2-server per test; a module
overrides it with one line for one per module or another server (tests/support/fixtures.py).""")


@pytest.fixture
def proxy(scim_target: ScimTarget) -> Iterator[FaultProxy]:
    """The fault proxy in front of ``scim_target``: counts and logs what reaches it."""
    with FaultProxy(scim_target.base_url) as p:
        yield p


@pytest.fixture
def http(scim_target: ScimTarget) -> Iterator[httpx.Client]:
    """A plain client on ``scim_target`` for assertions (not the code under test)."""
    with httpx.Client(base_url=scim_target.base_url, timeout=30,
                      headers={"Authorization": f"Bearer {scim_target.token}"}) as client:
        yield client


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Scim:
    """A small synchronous view of the target for assertions (not the code under test)."""

    def __init__(self, target: ScimTarget) -> None:
        self.http = httpx.Client(base_url=target.base_url, timeout=10,
                                 headers={"Authorization": f"Bearer {target.token}"})

    def users(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        start = 1
        while True:
            page = self.http.get("/Users", params={"startIndex": start, "count": 500}).json()
            resources = page.get("Resources", [])
            out.extend(resources)
            if not resources or len(out) >= page.get("totalResults", 0):
                return out
            start += len(resources)

    def count(self) -> int:
        """How many users the target holds (one cheap request)."""
        total: int = self.http.get("/Users", params={"count": 1}).json()["totalResults"]
        return total

    def by_username(self) -> dict[str, dict[str, Any]]:
        return {u["userName"]: u for u in self.users()}

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        schemas = ["urn:ietf:params:scim:schemas:core:2.0:User"]
        r = self.http.post("/Users", json={"schemas": schemas, **body})
        r.raise_for_status()
        result: dict[str, Any] = r.json()
        return result


def user(i: int, **extra: Any) -> dict[str, Any]:
    return {"id": f"u{i:05d}", "userPrincipalName": f"user{i}@example.com", "givenName": f"Given{i}",
            "surname": f"Sur{i}", "displayName": f"User {i}", "mail": f"user{i}@example.com",
            "department": "Engineering", "accountEnabled": True, **extra}


APP = {
    "name": "app",
    "target": {"base_url": "${TEST_SCIM_URL}", "token": "env:TEST_SCIM_TOKEN"},
    "assignments": {"groups": ["g-all"]},
    "mappings": {"user": {"attributes": [
        {"target": "userName", "source": "userPrincipalName", "matching": 1},
        {"target": "externalId", "source": "id"},
        {"target": "displayName", "source": "displayName"},
        {"target": "name.givenName", "source": "givenName"},
        {"target": "name.familyName", "source": "surname"},
        {"target": "title", "type": "constant", "value": "Staff"},
    ]}},
}


@dataclass
class Pipeline:
    dir: Path
    topics: Topics
    bootstrap: str
    scim: Scim
    sup: Supervisor
    directory_file: Path
    _activity: list[ActivityRecord] = field(default_factory=list)
    _errors: list[ErrorRecord] = field(default_factory=list)

    def write_directory(self, users: list[dict[str, Any]],
                        groups: list[dict[str, Any]] | None = None) -> None:
        if groups is None:
            groups = [{"id": "g-all", "displayName": "All", "members": [u["id"] for u in users]}]
        tmp = self.directory_file.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump({"users": users, "groups": groups}, sort_keys=False))
        tmp.replace(self.directory_file)  # atomic, like an editor's save

    def activity(self) -> list[ActivityRecord]:
        self._activity = read_all(self.bootstrap, self.topics.activity, ActivityRecord)
        return self._activity

    def errors(self) -> list[ErrorRecord]:
        self._errors = read_all(self.bootstrap, self.topics.errors, ErrorRecord)
        return self._errors

    def wait_for(self, what: str, check: Callable[[], bool], timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            dead = self.sup.dead()
            assert not dead, f"workers died: {dead}; logs in {self.dir / 'logs'}"
            time.sleep(0.3)
        raise AssertionError(f"timed out after {timeout}s waiting for: {what}; logs in {self.dir / 'logs'}")


def read_all(bootstrap: str, topic: str, kind: Any) -> list[Any]:
    """Every record of ``topic`` that decodes as ``kind`` (a Struct or a union of them)."""
    dec: msgspec.json.Decoder[Any] = msgspec.json.Decoder(kind)
    out = []
    for m in consume(bootstrap, topic, idle_timeout=0.5):
        try:
            out.append(dec.decode(m.value))
        except msgspec.DecodeError:
            continue
    return out


def launch(bootstrap: str, target: ScimTarget, folder: Path, config: dict[str, Any],
           env: Mapping[str, str] | None = None, *,
           metrics_ports: dict[str, int] | None = None,
           prefix: str | None = None) -> tuple[Topics, Supervisor]:
    """Topics of their own on the broker, ``config`` as ``folder/scimflow.yaml``, and a
    Supervisor for the three workers on them (not started), provisioning into ``target``
    (``${TEST_SCIM_URL}``, ``env:TEST_SCIM_TOKEN``); ``env`` adds to their environment.
    ``prefix`` names the topics (default: a fresh one per call)."""
    prefix = prefix or f"t{uuid.uuid4().hex[:8]}."
    topics = Topics(prefix, PARTITIONS)
    create_topics(bootstrap, topics.specs())
    (folder / "scimflow.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    full_env = {"SCIMFLOW_KAFKA_BOOTSTRAP": bootstrap, "SCIMFLOW_TOPIC_PREFIX": prefix,
                "SCIMFLOW_PARTITIONS": str(PARTITIONS), "SCIMFLOW_DATA_DIR": str(folder / "data"),
                "SCIMFLOW_LOG_FORMAT": "json", "SCIMFLOW_LOG_LEVEL": os.environ.get("TEST_LOG_LEVEL", "info"),
                "TEST_SCIM_URL": target.base_url, "TEST_SCIM_TOKEN": target.token, **(env or {})}
    sup = Supervisor(config=folder / "scimflow.yaml", env=full_env, log_dir=folder / "logs",
                     metrics_ports=metrics_ports or {})
    return topics, sup


@pytest.fixture
def pipeline_factory(broker: Broker, scim_target: ScimTarget,
                     tmp_path: Path) -> Iterator[Callable[..., Pipeline]]:
    started: list[Pipeline] = []

    def make(users: list[dict[str, Any]], *, app: dict[str, Any] | None = None,
             groups: list[dict[str, Any]] | None = None, start: bool = True,
             metrics: bool = False, more_apps: list[dict[str, Any]] | None = None,
             env: Mapping[str, str] | None = None) -> Pipeline:
        config = {"sources": [{"name": "hr", "type": "file", "path": "directory.yaml",
                               "poll_interval": 0.1}],
                  "applications": [app or APP, *(more_apps or [])]}
        ports = dict(zip(("ingest", "mapper", "writer"), free_ports(3), strict=True)) if metrics else {}
        topics, sup = launch(broker.bootstrap, scim_target, tmp_path, config, env, metrics_ports=ports)
        p = Pipeline(tmp_path, topics, broker.bootstrap, Scim(scim_target), sup, tmp_path / "directory.yaml")
        p.write_directory(users, groups)
        started.append(p)
        if start:
            sup.start()
        return p

    yield make
    for p in started:
        # Nothing of a finished test needs a clean shutdown; faust's takes seconds per test.
        p.sup.kill_all()
