"""What scimflow listens on is reachable from this host only, unless configured otherwise."""

from __future__ import annotations

import socket
import time

from services.devstack.processes import free_port
from services.runtime.config import PushSource
from services.runtime.metrics import start_metrics_server
from services.runtime.settings import load_settings


def _connects(host: str, port: int) -> bool:
    deadline = time.monotonic() + 2
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)


def test_metrics_listen_on_loopback_by_default() -> None:
    settings = load_settings({"SCIMFLOW_METRICS_PORT": str(free_port())})
    assert settings.metrics_host == "127.0.0.1"
    start_metrics_server(settings.metrics_port, settings.metrics_host)
    assert _connects("127.0.0.1", settings.metrics_port)
    # 127.0.0.2 is this host too, but not the address bound: a socket on 0.0.0.0 would accept.
    assert not _connects("127.0.0.2", settings.metrics_port)


def test_metrics_listen_where_the_deployment_says() -> None:
    everywhere = "0.0.0.0"  # noqa: S104 - what a pod's manifest sets
    settings = load_settings({"SCIMFLOW_METRICS_PORT": str(free_port()), "SCIMFLOW_METRICS_HOST": everywhere})
    start_metrics_server(settings.metrics_port, settings.metrics_host)
    assert _connects("127.0.0.2", settings.metrics_port)


def test_a_push_source_listens_on_loopback_unless_told() -> None:
    assert PushSource(name="hr", token="env:T").listen == "127.0.0.1:8085"
