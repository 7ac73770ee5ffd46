"""The metrics module: what /metrics exposes is exactly METRIC_NAMES, named by Prometheus'
conventions, with bounded labels, and it passes ``promtool check metrics``."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.request

import prometheus_client
import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from services.runtime import metrics as m

# Label names a scimflow metric may carry: each has a small, closed set of values.
BOUNDED_LABELS = {"app", "object_type", "action", "status", "source", "service", "method",
                  "status_class", "reason", "operation", "error_code", "topic", "version", "le",
                  "limit", "route", "outcome"}


def _touch_every_metric() -> None:
    m.CHANGES_INGESTED.labels(source="hr-file", operation="upsert").inc()
    m.cycle_started("hr-file")
    m.set_cycle_progress("hr-file", 5, 10)
    m.cycle_finished("hr-file", 42.0, complete=True, ended_at=1_700_000_000.0)
    m.COMMANDS.labels(app="crm", operation="upsert").inc()
    m.observe_target_request("crm", "post", 201, 0.08)
    m.TARGET_RETRIES.labels(app="crm").inc()
    m.OUTCOMES.labels(app="crm", object_type="user", action="create", status="success").inc()
    m.PROVISIONING_LATENCY.labels(app="crm").observe(1.5)
    m.MANAGED_OBJECTS.labels(app="crm", object_type="user").set(10)
    m.ESCROWED_OBJECTS.labels(app="crm").set(0)
    m.STAGED_DELETES.labels(app="crm").set(0)
    m.set_quarantined("crm", None)
    m.ERRORS.labels(service="writer", error_code="RequestRejected").inc()
    m.MALFORMED_MESSAGES.labels(service="mapper", topic="scimflow.directory.changes").inc()
    m.SKIPPED_RECORDS.labels(service="writer").inc()
    m.STALLED_PARTITIONS.labels(service="writer").inc()
    m.CONSUMER_LAG.labels(service="writer", topic="scimflow.provisioning.commands").set(3)
    m.TARGET_RATE_LIMIT.labels(app="crm", limit="concurrency").set(16)
    m.TARGET_THROTTLED.labels(app="crm").inc()
    m.RETRIES_WAITING.labels(app="crm").set(0)
    m.DEFERRED_REFERENCES.labels(app="crm").set(0)
    m.QUARANTINES.labels(app="crm", reason="credentials").inc()
    m.REMOVED_APP_COMMANDS.labels(app="crm").inc()
    m.CONTROL_ACTIONS.labels(action="stop", outcome="accepted").inc()
    m.ADMIN_REQUESTS.labels(route="/apps/{app}", status_class="2xx").inc()
    m.CONFIG_VERSION.labels(service="writer", app="crm").set(1)
    m.CONFIG_REJECTED.labels(service="writer", app="crm").inc()


def _exposition() -> str:
    _touch_every_metric()
    return generate_latest(REGISTRY).decode()


def _samples() -> list[tuple[str, dict[str, str]]]:
    return [(s.name, s.labels) for fam in text_string_to_metric_families(_exposition())
            for s in fam.samples]


def test_exposition_has_exactly_metric_names() -> None:
    # stamina's own retry counter shows series only after a retry happened in this process
    # (other tests may have caused one); it is third-party and no dashboard uses it.
    exposed = {name for name, _ in _samples() if not name.startswith("stamina_")}
    assert exposed == m.METRIC_NAMES


def test_scimflow_series_follow_naming_conventions() -> None:
    families = list(text_string_to_metric_families(_exposition()))
    ours = [f for f in families if f.name.startswith("scimflow_")]
    assert len(ours) >= 20
    for fam in ours:
        if fam.type == "counter":
            assert all(s.name.endswith("_total") for s in fam.samples), fam.name
        if fam.type == "histogram":
            assert fam.name.endswith("_seconds"), f"{fam.name}: durations are seconds"
        if fam.type == "gauge":
            assert not fam.name.endswith("_total"), fam.name
        assert fam.documentation, f"{fam.name} has no HELP text"


def test_scimflow_labels_are_bounded() -> None:
    for name, labels in _samples():
        if name.startswith("scimflow_"):
            extra = set(labels) - BOUNDED_LABELS
            assert not extra, f"{name} has unbounded labels {extra}"


def test_no_created_series_doubles_the_counters() -> None:
    assert not any(name.endswith("_created") for name, _ in _samples())


def test_promtool_accepts_the_exposition() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package `prometheus`; `make system-deps` installs it)")
    result = subprocess.run([promtool, "check", "metrics"], input=_exposition().encode(),
                            capture_output=True, timeout=30, check=False)
    assert result.returncode == 0, (result.stdout + result.stderr).decode()


@pytest.mark.parametrize(("status", "expected"), [
    (200, "2xx"), (204, "2xx"), (301, "3xx"), (404, "4xx"), (429, "4xx"), (503, "5xx"),
    (None, "error"), (0, "error"), (999, "error"),
])
def test_status_class(status: int | None, expected: str) -> None:
    assert m.status_class(status) == expected


def test_observe_target_request_counts_and_times() -> None:
    def requests() -> float:
        labels = {"app": "t-obs", "method": "PATCH", "status_class": "5xx"}
        return REGISTRY.get_sample_value("scimflow_target_requests_total", labels) or 0.0

    def bucket(le: str) -> float:
        labels = {"app": "t-obs", "method": "PATCH", "le": le}
        return REGISTRY.get_sample_value("scimflow_target_request_duration_seconds_bucket", labels) or 0.0

    before, le2_before, le5_before = requests(), bucket("2.0"), bucket("5.0")
    m.observe_target_request("t-obs", "patch", 503, 3.0)
    assert requests() == before + 1
    # 3 s is above the 2 s bucket, inside the 5 s one.
    assert bucket("2.0") == le2_before
    assert bucket("5.0") == le5_before + 1


def test_quarantine_keeps_one_series_per_app() -> None:
    def series() -> dict[str, float]:
        return {s.labels["reason"]: s.value
                for fam in text_string_to_metric_families(generate_latest(REGISTRY).decode())
                if fam.name == "scimflow_app_quarantined"
                for s in fam.samples if s.labels["app"] == "t-q"}

    m.set_quarantined("t-q", "InvalidCredentials")
    assert series() == {"InvalidCredentials": 1.0}
    m.set_quarantined("t-q", "HighFailureRate")
    assert series() == {"HighFailureRate": 1.0}
    m.set_quarantined("t-q", None)
    assert series() == {"none": 0.0}


def test_only_a_complete_cycle_moves_last_success() -> None:
    def last() -> float | None:
        return REGISTRY.get_sample_value("scimflow_last_successful_cycle_timestamp_seconds",
                                         {"source": "t-cyc"})

    m.cycle_started("t-cyc")
    m.set_cycle_progress("t-cyc", 1, 4)
    assert REGISTRY.get_sample_value("scimflow_cycle_progress_ratio", {"source": "t-cyc"}) == 0.25
    assert REGISTRY.get_sample_value("scimflow_cycle_running", {"source": "t-cyc"}) == 1
    m.cycle_finished("t-cyc", 10, complete=False, ended_at=100.0)
    assert last() is None
    interrupted = {"source": "t-cyc", "status": "interrupted"}
    assert REGISTRY.get_sample_value("scimflow_cycles_total", interrupted) == 1
    m.cycle_finished("t-cyc", 10, complete=True, ended_at=200.0)
    assert last() == 200.0
    assert REGISTRY.get_sample_value("scimflow_cycle_running", {"source": "t-cyc"}) == 0
    m.set_cycle_progress("t-cyc", 0, 0)  # an empty scan is done, not stuck at 0 %
    assert REGISTRY.get_sample_value("scimflow_cycle_progress_ratio", {"source": "t-cyc"}) == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_metrics_server_serves_the_registry() -> None:
    port = _free_port()
    m.start_metrics_server(port, "127.0.0.1")
    deadline = time.monotonic() + 5
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
                body = resp.read().decode()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    assert "scimflow_build_info{" in body
    assert "process_resident_memory_bytes" in body


def test_port_zero_disables_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, str]] = []
    monkeypatch.setattr(prometheus_client, "start_http_server",
                        lambda port, addr: calls.append((port, addr)))
    m.start_metrics_server(0)
    assert calls == []
    m.start_metrics_server(9100)
    assert calls == [(9100, "127.0.0.1")]  # loopback unless SCIMFLOW_METRICS_HOST says otherwise
