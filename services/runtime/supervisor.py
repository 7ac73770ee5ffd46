"""``scimflow up``: the whole pipeline on one machine, for the demo and for tests.

Starts (in this order) a broker, optionally the local demo SCIM target, the three
workers and the admin API (``scimflow admin``) as child processes; stops them in reverse
order on Ctrl-C or SIGTERM so nothing is left behind.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from services.runtime.errors import ScimflowError

__all__ = ["ADMIN", "SERVICES", "Supervisor", "free_port"]

SERVICES = ("ingest", "mapper", "writer")
ADMIN = "admin"
"""The admin API: started by :meth:`Supervisor.start_admin`, not with the workers, because
it needs tokens (``scimflow up`` makes one; tests start it when they use it)."""


@dataclass
class Supervisor:
    """Child worker processes of one pipeline."""

    config: Path
    env: Mapping[str, str]
    log_dir: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    metrics_ports: dict[str, int] = field(default_factory=dict)
    """Per-worker ``/metrics`` port (one machine, so each worker needs its own)."""

    def start(self, services: Sequence[str] = SERVICES) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for name in services:
            self.start_one(name)

    def start_one(self, name: str, extra_env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = (self.log_dir / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", name, "--config", str(self.config)],
            env={**os.environ, **self.env, **self._metrics_env(name), **(extra_env or {})},
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # we stop workers ourselves, in order, after Ctrl-C
        )
        log.close()
        self.procs[name] = proc
        return proc

    def start_admin(self, *, port: int, tokens: str, host: str = "127.0.0.1",
                    timeout: float = 30.0) -> str:
        """Start the admin API on ``host:port`` with ``tokens`` (``name=file:/path,...``, see
        SCIMFLOW_ADMIN_TOKENS) and return its URL once ``/healthz`` answers."""
        env = {"SCIMFLOW_ADMIN_HOST": host, "SCIMFLOW_ADMIN_PORT": str(port),
               "SCIMFLOW_ADMIN_TOKENS": tokens}
        proc = self.start_one(ADMIN, env)
        url = f"http://{host}:{port}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                log = self.log_dir / "admin.log"
                raise ScimflowError(f"the admin API exited ({proc.returncode}); see {log}")
            try:
                if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                    return url
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise ScimflowError(f"the admin API did not answer on {url} within {timeout:.0f}s")

    def _metrics_env(self, name: str) -> dict[str, str]:
        port = self.metrics_ports.get(name)
        return {} if port is None else {"SCIMFLOW_METRICS_PORT": str(port)}

    def kill(self, name: str) -> None:
        """SIGKILL one worker (tests use this to prove crash recovery)."""
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def kill_all(self) -> None:
        """SIGKILL every worker: the end of a test, where nothing needs a clean shutdown."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
        for proc in self.procs.values():
            proc.wait(timeout=10)
        self.procs.clear()

    def stop_one(self, name: str, timeout: float = 20.0) -> None:
        """Stop one worker cleanly (SIGTERM), as a rolling restart would."""
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def dead(self) -> list[str]:
        return [n for n, p in self.procs.items() if p.poll() is not None]

    def stop(self, timeout: float = 20.0) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        self.procs.clear()


def free_port(preferred: int = 0, host: str = "127.0.0.1") -> int:
    """``preferred`` if nothing listens on it, else a free port the OS picks."""
    for port in (preferred, 0) if preferred else (0,):
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            bound: int = sock.getsockname()[1]
            return bound
    raise RuntimeError("no free port")
