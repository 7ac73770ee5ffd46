"""The three workers' real /metrics output: correct values, valid exposition, known names.

This is what Prometheus scrapes, so the dashboard and alert tests (which check their
queries against ``METRIC_NAMES``) are only as good as this check that the services really
export those names.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.runtime.metrics import METRIC_NAMES
from tests.conftest import Pipeline, user

pytestmark = pytest.mark.e2e


def scrape(port: int) -> str:
    return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text


def value(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def test_workers_export_what_the_dashboards_use(pipeline_factory: Callable[..., Pipeline]) -> None:
    p = pipeline_factory([user(i) for i in range(20)], metrics=True)
    ports = p.sup.metrics_ports
    p.wait_for("20 users", lambda: p.scim.count() == 20)
    p.wait_for("the managed-objects gauge", lambda: value(
        scrape(ports["writer"]), "scimflow_managed_objects", app="app", object_type="user") == 20)
    ingest, mapper, writer = (scrape(ports[n]) for n in ("ingest", "mapper", "writer"))

    assert value(ingest, "scimflow_changes_ingested_total", source="hr", operation="upsert") == 21
    assert value(ingest, "scimflow_cycles_total", source="hr", status="complete") == 1
    assert value(ingest, "scimflow_last_successful_cycle_timestamp_seconds", source="hr") > 0
    assert value(mapper, "scimflow_commands_total", app="app", operation="upsert") == 20
    assert value(writer, "scimflow_provisioning_outcomes_total", app="app", action="create",
                 status="success") == 20
    # scim2-server offers /Bulk: the 20 creates go out in at most 20 POSTs (usually one).
    assert 1 <= value(writer, "scimflow_target_requests_total", app="app", method="POST",
                      status_class="2xx") <= 20
    # GETs: the target's capabilities and the scan's one listing of users and groups; no
    # lookup per user (discovery settles them all).
    gets = value(writer, "scimflow_target_request_duration_seconds_count", app="app", method="GET")
    assert 1 <= gets < 20
    assert value(writer, "scimflow_provisioning_latency_seconds_count", app="app") == 20

    for text in (ingest, mapper, writer):
        names = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
        unknown = {n for n in names - METRIC_NAMES if not n.startswith("stamina_")}
        assert not unknown, f"exported but not in METRIC_NAMES (dashboards cannot rely on them): {unknown}"
        assert not any("u000" in line for line in text.splitlines()), "an object id became a label"

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package prometheus; `make test` installs it)")
    for text in (ingest, mapper, writer):
        check = subprocess.run([promtool, "check", "metrics"], input=text.encode(),
                               capture_output=True, check=False)
        assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()
