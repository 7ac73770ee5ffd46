"""A worker's probes mean something: liveness is its event loop answering, readiness is
Kafka reachable, the group joined and the tables restored. Real `scimflow writer` and
`scimflow mapper` processes on a broker of the test's own, which the test stops."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from services.devstack.broker import Broker, start_broker
from services.devstack.processes import free_port
from services.runtime.kafka import create_topics
from services.runtime.settings import load_settings
from services.runtime.topics import Topics

ROOT = Path(__file__).resolve().parents[2]
CONFIG = {
    "sources": [{"name": "hr", "type": "file", "path": "directory.yaml"}],
    "applications": [{"name": "app", "target": {"base_url": "http://127.0.0.1:9/v2", "token": "env:T"},
                      "mappings": {"user": {"attributes": [
                          {"target": "userName", "source": "upn", "matching": 1}]}}}],
}


@pytest.fixture
def own_broker() -> Iterator[Broker]:
    with start_broker(load_settings(partitions=2), kind="apache-kafka") as broker:
        yield broker


def _start(service: str, broker: Broker, tmp_path: Path) -> tuple[subprocess.Popen[bytes], int]:
    (tmp_path / "scimflow.yaml").write_text(yaml.safe_dump(CONFIG))
    (tmp_path / "directory.yaml").write_text("users: []\ngroups: []\n")
    topics = Topics("probe.", 2)
    create_topics(broker.bootstrap, topics.specs())
    port = free_port()
    env = {**os.environ, "SCIMFLOW_KAFKA_BOOTSTRAP": broker.bootstrap, "SCIMFLOW_TOPIC_PREFIX": "probe.",
           "SCIMFLOW_PARTITIONS": "2", "SCIMFLOW_DATA_DIR": str(tmp_path / "data"),
           "SCIMFLOW_METRICS_PORT": str(port), "SCIMFLOW_LOG_FORMAT": "json"}
    if service == "writer":
        # Only the writer is given the target's token, as each Deployment gets only its own
        # Secrets: the mapper must start without it.
        env["T"] = "token-value"
    log = (tmp_path / f"{service}.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "services.cli", service, "--config",
                             str(tmp_path / "scimflow.yaml")], env=env, cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT)
    return proc, port


def _get(port: int, path: str) -> httpx.Response | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2)
    except httpx.HTTPError:
        return None


def _wait(what: str, check: object, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():  # type: ignore[operator]
            return time.monotonic() - started
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout}s: {what}")


@pytest.mark.parametrize("service", ["writer", "mapper"])
def test_readiness_follows_kafka_and_liveness_follows_the_loop(
        service: str, own_broker: Broker, tmp_path: Path) -> None:
    proc, port = _start(service, own_broker, tmp_path)
    try:
        _wait("ready", lambda: (r := _get(port, "/readyz")) is not None and r.status_code == 200, 90)
        ready = _get(port, "/readyz")
        assert ready is not None and ready.json() == {"ready": True, "failing": []}
        metrics = _get(port, "/metrics")
        assert metrics is not None and "scimflow_build_info" in metrics.text

        own_broker.stop()
        lost = _wait("not ready once the broker is gone",
                     lambda: (r := _get(port, "/readyz")) is not None and r.status_code == 503, 20)
        assert lost < 15
        body = _get(port, "/readyz")
        assert body is not None and "kafka" in body.json()["failing"]
        alive = _get(port, "/healthz")
        assert alive is not None and alive.status_code == 200  # the loop still answers

    finally:
        proc.kill()
        proc.wait()
