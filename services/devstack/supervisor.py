"""``scimflow up``: the whole pipeline on one machine, for the demo and for tests.

Starts (in this order) a broker, optionally the local demo SCIM target, the three
workers and the admin API (``scimflow admin``) as child processes; stops them in reverse
order on Ctrl-C or SIGTERM so nothing is left behind.

What ``up`` keeps between runs lives in one data dir (:func:`claim_data_dir`): the
broker's log dir, the demo target's resources, the worker logs. One ``up`` at a time
holds it, so the next one resumes where the last one stopped, or wipes it (``--fresh``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

from services.devstack.processes import spawn
from services.runtime.errors import ScimflowError

__all__ = ["ADMIN", "DATA_DIR_NAME", "SERVICES", "DataDirError", "Supervisor", "claim_data_dir",
           "default_data_dir", "wipe_data_dir"]

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
        return self._spawn(name, name, extra_env)

    def start_replica(self, service: str, replica: int,
                      extra_env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start one more instance of ``service`` in the same consumer group (it shares the
        work, partitions split between the instances): named ``service-N`` (``N`` >= 2;
        the first instance is plain ``service``), with its own log file ``service-N.log``,
        its own ``/metrics`` port (``metrics_ports["service-N"]``, if set) and its own data
        dir (a worker's local state is per process: two never share one)."""
        if replica < 2:
            raise ValueError(f"replica {replica}: the first instance is started by start_one")
        name = f"{service}-{replica}"
        data = self.env.get("SCIMFLOW_DATA_DIR")
        env = {} if data is None else {"SCIMFLOW_DATA_DIR": f"{data}-{name}"}
        return self._spawn(name, service, {**env, **(extra_env or {})})

    def _spawn(self, name: str, service: str,
               extra_env: Mapping[str, str] | None) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # In a session of its own: we stop workers ourselves, in order, after Ctrl-C.
        proc = spawn([sys.executable, "-m", "services.cli", service, "--config", str(self.config)],
                     self.log_dir / f"{name}.log",
                     env={**os.environ, **self.env, **self._metrics_env(name), **(extra_env or {})})
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


DATA_DIR_NAME = ".scimflow"
"""``scimflow up``'s data dir, by default beside the config file (:func:`default_data_dir`)."""
_MARKER = "scimflow-data-dir.txt"
_LOCK = "up.lock"
_MARKER_TEXT = """\
What `scimflow up` keeps between runs: the embedded broker's topics and committed offsets
(kafka/), the demo SCIM target's users and groups (scim-target/), worker logs (logs/).
`scimflow up` resumes from it; `scimflow up --fresh` wipes it and starts over.
"""


class DataDirError(ScimflowError):
    """The data dir is held by another ``scimflow up``, or is not one to use or wipe."""


def default_data_dir(config: Path) -> Path:
    """``.scimflow/`` beside ``config``: each config resumes its own state."""
    return config.resolve().parent / DATA_DIR_NAME


@contextlib.contextmanager
def claim_data_dir(path: Path, *, fresh: bool = False) -> Iterator[bool]:
    """Hold ``path`` as this process's data dir for the block; yield whether it has the
    state of an earlier run (after ``fresh`` wiped it: never).

    The lock is an ``flock`` on ``up.lock``, which names its holder's pid: the kernel
    drops it when the holder exits, however it exits, so a killed ``up`` leaves no stale
    lock. A directory with files but no marker is someone else's: neither used nor wiped.
    """
    path.mkdir(parents=True, exist_ok=True)
    _refuse_foreign(path)
    with (path / _LOCK).open("a+", encoding="utf-8") as lock:
        _lock(lock, path)
        try:
            (path / _MARKER).write_text(_MARKER_TEXT, encoding="utf-8")
            if fresh:
                wipe_data_dir(path)
            yield _has_state(path)
        finally:
            lock.truncate(0)  # the pid of a process that no longer holds it misleads
            fcntl.flock(lock, fcntl.LOCK_UN)


def wipe_data_dir(path: Path) -> None:
    """Remove everything an earlier run kept in ``path`` (not the lock, not the marker).

    Call it only while holding ``path`` (:func:`claim_data_dir` with ``fresh``)."""
    for entry in _state_entries(path):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _lock(lock: IO[str], path: Path) -> None:
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "unknown"
        raise DataDirError(f"data dir {path} is in use by another `scimflow up` (pid {holder}); "
                           "stop that one first, or pass --data-dir DIR to run another") from None
    lock.seek(0)
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")
    lock.flush()


def _refuse_foreign(path: Path) -> None:
    if (path / _MARKER).is_file() or not _state_entries(path):
        return
    raise DataDirError(f"{path} is not a scimflow data dir (it has files and no {_MARKER}); "
                       "`scimflow up` neither uses nor wipes it: pass --data-dir with a new "
                       "or empty directory")


def _state_entries(path: Path) -> list[Path]:
    return [entry for entry in path.iterdir() if entry.name not in (_MARKER, _LOCK)]


def _has_state(path: Path) -> bool:
    return bool(_state_entries(path))
