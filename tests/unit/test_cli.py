"""The control commands of ``scimflow``: each maps onto one operation of the backend (the
admin API or Kafka directly), prints tables or JSON, and exits non-zero on failure. The
backend is replaced by a recorder here; tests/e2e/test_control_plane.py runs the real one."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime
from typing import Any, Literal

import pytest
from typer.testing import CliRunner

from services import cli as cli_module
from services.admin.control import ProvisionFailedError
from services.cli import control, up

runner = CliRunner()

REPORT: dict[str, Any] = {
          "app": "crm", "mode": "automatic", "status": "quarantined", "status_reason": "credentials",
          "status_by": "alice", "status_at": "2026-01-01T00:00:00+00:00", "dry_run": False,
          "managed_users": 7, "disabled_users": 1, "managed_groups": 2, "escrowed": 3,
          "quarantined_since": None, "next_probe": None,
          "first_cycle_start": "2026-01-01T00:00:00+00:00", "last_cycle_start": "2026-01-01T00:10:00+00:00",
          "last_cycle_end": None, "last_cycle_seconds": None, "cycle_running": True,
          "progress": {"cycle_id": "c2", "done": 4, "total": None}, "outcomes": {"create/success": 7},
          "held_removals": 0, "last_error": "RequestRejected: bad", "last_error_at": None}

TRACE: dict[str, Any] = {"object_id": "u1", "object_type": "user", "request_id": "r1", "outcome": "success",
         "action": "create", "target_id": "t1", "message": "in scope", "source_attributes": {"upn": "a"},
         "steps": [{"name": n, "status": "success", "detail": f"{n} detail"}
                   for n in ("import", "scope", "match", "action", "export")], "members": []}


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.trace = TRACE
        self.connection_ok = True

    def status(self, app: str | None = None) -> list[dict[str, Any]]:
        self.calls.append(("status", app))
        return [REPORT] if app else [REPORT, {**REPORT, "app": "wiki", "status": "on", "status_reason": None}]

    def set_status(self, app: str, status: Literal["on", "off"]) -> dict[str, Any]:
        self.calls.append(("set_status", app, status))
        return {"app": app, "action": "start" if status == "on" else "stop", "outcome": "accepted"}

    def restart(self, app: str, *, reset_links: bool) -> dict[str, Any]:
        self.calls.append(("restart", app, reset_links))
        return {"app": app, "action": "restart", "outcome": "accepted", "reset_links": reset_links,
                "request_id": "r9"}

    def allow_deletes(self, app: str) -> dict[str, Any]:
        self.calls.append(("allow_deletes", app))
        return {"app": app, "action": "allow-deletes", "outcome": "accepted", "before": "now"}

    def provision(self, app: str, object_id: str, object_type: Literal["user", "group"], *,
                  timeout: float | None = None) -> dict[str, Any]:
        self.calls.append(("provision", app, object_id, object_type, timeout))
        if object_id == "ghost":
            raise ProvisionFailedError("provision user ghost in crm: ObjectNotFound: nowhere",
                                       {**TRACE, "outcome": "notFound", "steps": TRACE["steps"][:1]},
                                       not_found=True)
        return self.trace

    def test_connection(self, app: str) -> dict[str, Any]:
        self.calls.append(("test_connection", app))
        return {"app": app, "ok": self.connection_ok, "attribute": "userName",
                "message": "fine" if self.connection_ok else "test connection failed: 401 Unauthorized"}

    def records(self, kind: str, *, app: str | None = None, status: str | None = None,
                limit: int = 100) -> list[dict[str, Any]]:
        self.calls.append(("records", kind, app, status))
        return [{"type": "provisioning.activity.v1", "id": "a1", "at": datetime.now(UTC).isoformat(),
                 "app": "crm", "object_type": "user", "action": "create", "status": "success",
                 "source": "hr", "source_id": "u1"}]


@pytest.fixture
def backend(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    recorder = Recorder()
    seen: list[tuple[Any, ...]] = []

    def fake(api: Any, token_file: Any, config: Any, by: str, *, secrets: bool = False) -> Any:
        seen.append((api, by, secrets))
        return contextlib.nullcontext(recorder)

    monkeypatch.setattr(control, "backend", fake)
    recorder.calls = seen  # the backend choice first, then the operations
    return recorder


def invoke(*args: str) -> Any:
    return runner.invoke(cli_module.cli, list(args), env={"SCIMFLOW_ADMIN_URL": "", "SCIMFLOW_CONFIG": ""})


@pytest.mark.parametrize(("args", "call"), [
    (["stop", "crm", "--by", "bob"], ("set_status", "crm", "off")),
    (["start", "crm"], ("set_status", "crm", "on")),
    (["allow-deletes", "crm"], ("allow_deletes", "crm")),
    (["restart", "crm", "--no-watch"], ("restart", "crm", False)),
    (["restart", "crm", "--reset-links", "--no-watch"], ("restart", "crm", True)),
    (["provision", "crm", "u1"], ("provision", "crm", "u1", "user", None)),
    (["provision", "crm", "g1", "--group", "--timeout", "3"], ("provision", "crm", "g1", "group", 3.0)),
    (["test-connection", "crm"], ("test_connection", "crm")),
    (["status"], ("status", None)),
    (["status", "crm"], ("status", "crm")),
    (["tail", "activity", "--api", "http://x", "--no-follow", "--app", "crm"],
     ("records", "activity", "crm", None)),
])
def test_each_command_is_one_backend_operation(backend: Recorder, args: list[str],
                                               call: tuple[Any, ...]) -> None:
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert backend.calls[1:] == [call]


def test_by_names_the_caller_and_test_connection_resolves_secrets(backend: Recorder) -> None:
    invoke("stop", "crm", "--by", "bob")
    invoke("test-connection", "crm")
    assert backend.calls[0] == (None, "bob", False)
    assert backend.calls[2] == (None, "", True)


def test_json_output_is_the_operation_result(backend: Recorder) -> None:
    result = invoke("restart", "crm", "--reset-links", "--json")
    assert json.loads(result.stdout) == {"app": "crm", "action": "restart", "outcome": "accepted",
                                         "reset_links": True, "request_id": "r9"}
    assert json.loads(invoke("status", "--json").stdout)[1]["app"] == "wiki"
    assert json.loads(invoke("provision", "crm", "u1", "--json").stdout)["target_id"] == "t1"


def test_human_output_shows_details_steps_and_status(backend: Recorder) -> None:
    details = invoke("status", "crm").stdout
    for text in ("sync details: crm", "quarantined: credentials", "7 (1 disabled)", "managed groups",
                 "escrowed objects", "running: 4", "RequestRejected: bad", "alice"):
        assert text in details, text
    table = invoke("status").stdout
    assert "crm" in table and "wiki" in table
    trace = invoke("provision", "crm", "u1").stdout
    assert all(f"{n} detail" in trace for n in ("import", "scope", "match", "action", "export"))
    assert "crm: provisioning is off" in invoke("stop", "crm").stdout


def test_failures_exit_non_zero_with_the_reason(backend: Recorder) -> None:
    missing = invoke("provision", "crm", "ghost")
    assert missing.exit_code == 2
    assert "ObjectNotFound: nowhere" in missing.stderr and "import detail" in missing.stdout
    backend.trace = {**TRACE, "outcome": "failure", "message": "409"}
    assert invoke("provision", "crm", "u1").exit_code == 1
    backend.connection_ok = False
    failed = invoke("test-connection", "crm")
    assert failed.exit_code == 1 and "401 Unauthorized" in failed.stdout


def test_api_mode_needs_a_token_and_direct_mode_a_broker() -> None:
    no_token = runner.invoke(cli_module.cli, ["stop", "crm", "--api", "http://127.0.0.1:1"],
                             env={"SCIMFLOW_ADMIN_TOKEN": ""})
    assert no_token.exit_code == 2 and "needs a token" in no_token.stderr
    no_broker = runner.invoke(cli_module.cli, ["stop", "crm"],
                              env={"SCIMFLOW_KAFKA_BOOTSTRAP": "", "SCIMFLOW_ADMIN_URL": ""})
    assert no_broker.exit_code == 2 and "SCIMFLOW_KAFKA_BOOTSTRAP is not set" in no_broker.stderr
    unreachable = runner.invoke(cli_module.cli, ["status", "--api", "http://127.0.0.1:1"],
                                env={"SCIMFLOW_ADMIN_TOKEN": "tok-secret"})
    assert unreachable.exit_code == 2 and "cannot reach the admin API" in unreachable.stderr
    assert "tok-secret" not in unreachable.output


def test_restart_watches_the_new_cycle_until_it_ends(backend: Recorder,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    soon = datetime.now(UTC).replace(year=2100).isoformat()
    states = iter([
        {**REPORT, "cycle_running": False},  # the cycle before the restart
        {**REPORT, "last_cycle_start": soon, "cycle_running": True, "progress": {"done": 2, "total": None}},
        {**REPORT, "last_cycle_start": soon, "cycle_running": True, "progress": {"done": 5, "total": 9}},
        {**REPORT, "last_cycle_start": soon, "cycle_running": False, "last_cycle_end": soon},
    ])
    monkeypatch.setattr(backend, "status", lambda app=None: [next(states)])
    monkeypatch.setattr("services.cli.control.time.sleep", lambda _: None)
    result = invoke("restart", "crm", "--watch")
    assert result.exit_code == 0, result.output
    assert "crm: cycle done" in result.stderr
    assert next(states, None) is None  # it watched until the end, and no further


def test_up_announces_the_admin_api_with_its_own_token_file(
        tmp_path: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from services.runtime.config import load_config

    monkeypatch.setenv("DEMO_SCIM_TOKEN", "demo-secret")
    monkeypatch.setenv("DEMO_SCIM_URL", "http://127.0.0.1:9/v2")
    loaded = load_config("examples/demo.yaml")
    env = {"DEMO_SCIM_TOKEN": "demo-secret", "DEMO_SCIM_URL": "http://127.0.0.1:9/v2"}
    up.announce(loaded, "127.0.0.1:9092", env, tmp_path, "http://127.0.0.1:8088")
    printed = capsys.readouterr().out
    api_lines = [line for line in printed.splitlines() if "SCIMFLOW_ADMIN_URL=http://127.0.0.1:8088" in line]
    assert len(api_lines) == 2
    token = f"SCIMFLOW_ADMIN_TOKEN=$(cat {tmp_path / 'admin-token'}) scimflow"
    assert all(token in line for line in api_lines)
    assert "demo-secret" not in printed


def test_expr_object_shows_the_mapped_resource_and_its_references(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """`expr --config --app --object`: the resource one object maps to, from the demo files."""
    import shutil
    from pathlib import Path

    for name in ("demo.yaml", "directory.yaml"):
        shutil.copy(Path("examples") / name, tmp_path / name)
    config = tmp_path / "demo.yaml"
    config.write_text(config.read_text().replace(
        "      users: [u-0100]\n", "      users: [u-0100]\n      expand_nested_groups: true\n"))
    monkeypatch.setenv("DEMO_SCIM_TOKEN", "unused")
    result = runner.invoke(cli_module.cli, ["expr", "--config", str(config), "--app", "demo",
                                            "--object", "u-0003"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["operation"] == "upsert"
    assert shown["resource_on_create"]["userName"] == "linus.turing3@example.com"
    manager = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager"
    assert shown["references"] == {manager: "u-0118"}
    assert manager not in json.dumps(shown["resource_on_create"])  # written by the writer, as a target id


def test_the_cli_loads_no_dev_stack_until_up_runs() -> None:
    """`python -m services.cli` (how the supervisor starts workers) works, and only `up`
    imports the embedded broker, the supervisor and the demo target."""
    import os
    import subprocess
    import sys

    devstack = ("services.runtime.broker", "services.runtime.supervisor", "services.runtime.scim_target")
    probe = ("import sys, runpy; sys.argv = ['scimflow', 'validate', 'examples/demo.yaml']\n"
             "try:\n    runpy.run_module('services.cli', run_name='__main__')\n"
             "except SystemExit as exc:\n    assert not exc.code, exc.code\n"
             f"print(sorted(set({devstack!r}) & set(sys.modules)))\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "DEMO_SCIM_TOKEN": "unused"}, check=False)
    assert done.returncode == 0, done.stderr
    assert "OK (1 applications" in done.stdout
    assert done.stdout.strip().endswith("[]"), done.stdout
