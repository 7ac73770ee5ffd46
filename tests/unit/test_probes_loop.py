"""Liveness is served by the worker's own event loop: a blocked loop does not answer."""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace

import httpx

from services.devstack.processes import free_port
from services.runtime.probes import Probes
from services.runtime.settings import load_settings


def test_a_blocked_event_loop_fails_liveness_and_a_running_one_passes() -> None:
    port = free_port()
    settings = load_settings({"SCIMFLOW_METRICS_PORT": str(port)})
    app = SimpleNamespace(producer_only=True, task=lambda _: None)
    probes = Probes(app, settings, "127.0.0.1:9")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    serving = asyncio.run_coroutine_threadsafe(probes.serve(), loop)
    try:
        deadline = time.monotonic() + 5
        while True:
            try:
                assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        # Kafka never answered (nothing listens on port 9): alive, but not ready.
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1)
        assert (ready.status_code, ready.json()["failing"]) == (503, ["kafka"])

        loop.call_soon_threadsafe(time.sleep, 3)  # a blocking call stalls the loop
        time.sleep(0.2)
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
            answered = True
        except httpx.TimeoutException:
            answered = False
        assert not answered, "a stuck loop must not look alive"
    finally:
        serving.cancel()
        time.sleep(3)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
