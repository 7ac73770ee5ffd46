"""A worker whose clean shutdown cannot finish (here: a shutdown hook that never returns,
as faust's stop does when the broker is gone) exits anyway after ``shutdown_timeout``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.devstack.broker import Broker

WORKER = """
import asyncio, sys
from services.runtime.kafka import faust_app, run_worker
from services.runtime.settings import load_settings

settings = load_settings()
app = faust_app("stuck", settings, settings.kafka_bootstrap)

@app.agent(app.topic(settings.topic_prefix + "in"))
async def consume(stream) -> None:
    async for _ in stream:
        pass

@app.task
async def ready() -> None:
    print("ready", flush=True)

@app.on_before_shutdown.connect
async def never_returns(app, **_) -> None:
    if sys.argv[2] == "stuck":
        await asyncio.sleep(3600)

run_worker(app, shutdown_timeout=float(sys.argv[1]))
"""

DEADLINE = 3.0


def _start(broker: Broker, tmp_path: Path, mode: str, deadline: float) -> subprocess.Popen[str]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "SCIMFLOW_KAFKA_BOOTSTRAP": broker.bootstrap,
           "SCIMFLOW_TOPIC_PREFIX": f"t{uuid.uuid4().hex[:8]}.", "SCIMFLOW_DATA_DIR": str(tmp_path),
           "SCIMFLOW_LOG_FORMAT": "json"}
    proc = subprocess.Popen([sys.executable, str(script), str(deadline), mode], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=Path(__file__).parents[2])
    assert proc.stdout is not None
    for line in proc.stdout:  # faust is up once its tasks run
        if line.strip() == "ready":
            return proc
    raise AssertionError(f"the worker exited before it was ready (exit {proc.wait()})")


@pytest.fixture
def workers() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_stuck_shutdown_ends_after_the_deadline(broker: Broker, tmp_path: Path,
                                                  workers: list[subprocess.Popen[str]]) -> None:
    proc = _start(broker, tmp_path, "stuck", DEADLINE)
    workers.append(proc)
    proc.send_signal(signal.SIGTERM)
    asked = time.monotonic()
    time.sleep(DEADLINE - 1)
    assert proc.poll() is None, "the shutdown hook never returns: only the deadline can end it"
    assert proc.wait(timeout=DEADLINE + 15) == 75
    assert time.monotonic() - asked >= DEADLINE - 0.1
    assert proc.stdout is not None
    assert "shutdown_timed_out" in proc.stdout.read()


def test_a_clean_shutdown_exits_normally_before_the_deadline(broker: Broker, tmp_path: Path,
                                                             workers: list[subprocess.Popen[str]]) -> None:
    proc = _start(broker, tmp_path, "clean", 60)
    workers.append(proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert proc.stdout is not None
    assert "shutdown_timed_out" not in proc.stdout.read()
