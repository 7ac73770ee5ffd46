"""`scimflow up`, Ctrl-C, `scimflow up` again: the second run picks up where the first
stopped (same topics, offsets and changelogs, same target accounts) and writes only what
changed in the directory meanwhile; it neither creates nor adopts anything again."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from schemas import ActivityRecord
from services.runtime.kafka import consume

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]

DIRECTORY = """\
users:
{users}
groups:
- id: g-sales
  displayName: Sales
  members: [u-0001, u-0002]
"""
USER = """\
- id: {id}
  userPrincipalName: {id}@example.com
  displayName: User {id}
  givenName: Given
  surname: {id}
  mail: {id}@example.com
  jobTitle: {title}
  department: Sales
  accountEnabled: true
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    if shutil.which("java") is None or shutil.which("mvn") is None:
        pytest.skip("only the Apache Kafka broker (java >= 17 and mvn) keeps its state")
    shutil.copy(Path("examples/demo.yaml"), tmp_path / "demo.yaml")
    _write_directory(tmp_path, {"u-0001": "Analyst"})
    return tmp_path / "demo.yaml"


def test_a_second_up_resumes_and_writes_only_what_changed(config: Path) -> None:
    state = config.parent / ".scimflow"
    with _Up(config) as first:
        first.wait_for("initial sync done")
        before = _target_users(state)
    assert sorted(before) == ["u-0001@example.com", "u-0002@example.com", "u-0100@example.com"]
    assert first.returncode == 0, first.output()

    _write_directory(config.parent, {"u-0001": "Chief Analyst"})  # changed while stopped
    second_started = datetime.now(UTC)
    with _Up(config) as second:
        assert "resuming the last run" in second.wait_for("data dir:")
        _wait_until(lambda: _target_users(state)["u-0001@example.com"]["title"] == "Chief Analyst")
        after = _target_users(state)
        activity = _activity(state)
    assert {k: u["id"] for k, u in after.items()} == {k: u["id"] for k, u in before.items()}

    first_run = [a for a in activity if a.at < second_started and a.object_type == "user"]
    second_run = [a for a in activity if a.at >= second_started and a.object_type == "user"]
    # The first run's records are still on the topic: the broker kept it.
    assert sorted(a.source_id for a in first_run if a.action == "create") == ["u-0001", "u-0002",
                                                                             "u-0100"]
    written = [(a.action, a.source_id) for a in second_run if a.action not in ("skip",)]
    assert written == [("update", "u-0001")]


def test_up_says_at_once_when_the_target_does_not_answer(config: Path) -> None:
    text = config.read_text().replace("${DEMO_SCIM_URL:-http://127.0.0.1:18080/v2}", "http://127.0.0.1:9/v2")
    config.write_text(text)
    with _Up(config, "--no-demo-target", env={"DEMO_SCIM_TOKEN": "t0ken-for-nobody"}) as up:
        line = up.wait_for("the target does not work", timeout=60)
    assert "app demo" in line
    assert "127.0.0.1:9" in up.output() and "t0ken-for-nobody" not in up.output()


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class _Up:
    """One `scimflow up` process and what it printed so far."""

    def __init__(self, config: Path, *args: str, env: dict[str, str] | None = None) -> None:
        environ = {k: v for k, v in os.environ.items() if k != "SCIMFLOW_KAFKA_BOOTSTRAP"}
        # COLUMNS: rich would wrap long lines (paths) at 80 columns on a pipe.
        environ |= {"SCIMFLOW_BROKER": "apache-kafka", "SCIMFLOW_LOG_FORMAT": "json", "COLUMNS": "400",
                    **(env or {})}
        self.log = config.parent / f"up-{time.monotonic_ns()}.out"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "services.cli", "up", "--config", str(config), *args],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=environ,
                # Started with SIGINT ignored, as from a test runner or a background job:
                # Ctrl-C must stop it all the same.
                preexec_fn=_ignore_sigint)  # noqa: PLW1509 (one signal call before exec)
        self.returncode: int | None = None

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = 60.0) -> str:
        """The first printed line with ``text``, once there is one."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = next((ln for ln in self.output().splitlines() if text in ln), None)
            if line is not None:
                return line
            assert self.proc.poll() is None, f"scimflow up exited:\n{self.output()}"
            time.sleep(0.2)
        raise AssertionError(f"no {text!r} within {timeout:.0f}s:\n{self.output()}")

    def __enter__(self) -> _Up:
        return self

    def __exit__(self, *exc: object) -> None:
        self.interrupt()

    def interrupt(self) -> None:
        """Ctrl-C, and wait until everything it started is down."""
        self.proc.send_signal(signal.SIGINT)
        try:
            self.returncode = self.proc.wait(timeout=45)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


def _write_directory(folder: Path, titles: dict[str, str]) -> None:
    users = "".join(USER.format(id=uid, title=titles.get(uid, "Engineer"))
                    for uid in ("u-0001", "u-0002", "u-0100", "u-0200"))
    (folder / "directory.yaml").write_text(DIRECTORY.format(users=users.rstrip("\n")))


def _target_users(state: Path) -> dict[str, dict[str, Any]]:
    """The demo target's users by userName, found through the files `up` keeps."""
    port = (state / "scim-target" / "port").read_text().strip()
    token = (state / "demo-token").read_text().strip()
    listed = httpx.get(f"http://127.0.0.1:{port}/v2/Users", params={"count": 100}, timeout=10,
                       headers={"Authorization": f"Bearer {token}"}).json()
    return {u["userName"]: u for u in listed.get("Resources", [])}


def _activity(state: Path) -> list[ActivityRecord]:
    bootstrap = f"127.0.0.1:{(state / 'kafka' / 'ports').read_text().split()[0]}"
    decoder = msgspec.json.Decoder(ActivityRecord)
    return [decoder.decode(r.value)
            for r in consume(bootstrap, "scimflow.provisioning.activity", idle_timeout=3)]


def _wait_until(check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (KeyError, httpx.HTTPError):
            pass  # not there yet
        time.sleep(0.3)
    raise AssertionError(f"not true within {timeout:.0f}s")
