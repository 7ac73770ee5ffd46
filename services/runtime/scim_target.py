"""A real, throwaway SCIM 2.0 target: ``scim2-server`` in a subprocess on a loopback port.

Tests use it as the "SaaS app" scimflow provisions into, and ``scimflow up`` starts one for
the demo. scim2-server keeps every resource in memory (its ``InMemoryStorage``; nothing is
written to disk unless ``--dump-resources`` is given, which we never pass), so each process
starts empty and a fresh target per test or per module needs no cleanup.

The server runs in its own session (process group) so that stopping it also stops anything
it spawned; :meth:`ScimTarget.stop` sends SIGTERM, then SIGKILL, and an ``atexit`` hook stops
any target the caller forgot.

The bearer token reaches the server through an environment variable, not ``argv``: the
command line of a process is readable by every local user (``ps``), its environment is not.

``threads=N`` serves the same scim2-server application with waitress (HTTP/1.1 keep-alive,
a pool of N worker threads) instead of its stock ``wsgiref`` server (HTTP/1.0, a new
connection and thread per request). The benchmarks use it so that the target is not what
they measure.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

import httpx

from services.runtime.errors import ScimflowError

__all__ = ["ScimTarget", "ScimTargetError", "start_scim_target"]

_TOKEN_ENV = "SCIMFLOW_SCIM_TARGET_TOKEN"  # noqa: S105 - a variable name, not a secret
_THREADS_ENV = "SCIMFLOW_SCIM_TARGET_THREADS"

# Runs scim2-server's own CLI entry point (the same code as the `scim2-server` script),
# adding the token from the environment so it never appears in the process list.
# With threads, scim2-server's own `make_server` is swapped for a waitress server.
_LAUNCHER = (
    "import os, sys\n"
    "from scim2_server.testserver import cli\n"
    f"token = os.environ.pop({_TOKEN_ENV!r})\n"
    f"threads = int(os.environ.pop({_THREADS_ENV!r}, '0'))\n"
    "if threads:\n"
    "    from waitress.server import create_server\n"
    "    class Waitress:\n"
    "        def __init__(self, host, port, app, server_class=None):\n"
    "            self.server = create_server(app, host=host, port=port, threads=threads,\n"
    "                                        connection_limit=1000, ident='scim2-server')\n"
    "        def __enter__(self): return self\n"
    "        def __exit__(self, *exc): self.server.close()\n"
    "        def serve_forever(self): self.server.run()\n"
    "    cli.make_server = Waitress\n"
    "sys.argv = ['scim2-server', *sys.argv[1:], '--bearer-token=' + token]\n"
    "cli.main()\n"
)

_START_TIMEOUT = 20.0
_STOP_GRACE = 5.0
_PORT_ATTEMPTS = 3


class ScimTargetError(ScimflowError):
    """The local SCIM target could not be started."""


class ScimTarget:
    """A running scim2-server: where it answers, the token it accepts, and how to stop it."""

    def __init__(self, *, base_url: str, token: str, process: subprocess.Popen[bytes],
                 log_file: Path, owns_log: bool) -> None:
        self.base_url = base_url
        self.token = token
        self.log_file = log_file
        self._process = process
        self._owns_log = owns_log

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def running(self) -> bool:
        return self._process.poll() is None

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after a grace period). Idempotent."""
        _LIVE.discard(self)
        _terminate(self._process)
        if self._owns_log:
            self.log_file.unlink(missing_ok=True)

    def __enter__(self) -> ScimTarget:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        # Never the token: reprs end up in logs and test reports.
        state = "running" if self.running else "stopped"
        return f"ScimTarget(base_url={self.base_url!r}, pid={self.pid}, {state})"


_LIVE: set[ScimTarget] = set()


@atexit.register
def _stop_all() -> None:
    """Stop the targets still running when the interpreter exits (a crashed test run)."""
    for target in list(_LIVE):
        target.stop()


def start_scim_target(*, token: str | None = None, port: int = 0,
                      log_file: Path | None = None, threads: int = 0) -> ScimTarget:
    """Start scim2-server on 127.0.0.1 and return once it answers HTTP.

    ``port=0`` picks a free port (and retries with another one if a concurrent process
    grabs it first). ``token`` defaults to a random one. The server's request log goes to
    ``log_file``, or to a temporary file removed by :meth:`ScimTarget.stop`. ``threads > 0``
    serves it with waitress and that many worker threads (HTTP/1.1 keep-alive).
    """
    token = token if token is not None else secrets.token_urlsafe(24)
    if not token:
        raise ValueError("the SCIM target token must not be empty")
    tries = 1 if port else _PORT_ATTEMPTS
    last: ScimTargetError | None = None
    for _ in range(tries):
        try:
            return _start_once(token, port or _free_port(), log_file, threads)
        except _PortTakenError as exc:
            last = exc
    raise ScimTargetError(f"could not start scim2-server after {tries} attempt(s): {last}")


class _PortTakenError(ScimTargetError):
    """The chosen port was taken between choosing it and the server binding it."""


def _start_once(token: str, port: int, log_file: Path | None, threads: int) -> ScimTarget:
    owns_log = log_file is None
    log_path = log_file if log_file is not None else _temp_log()
    process = _spawn(token, port, log_path, threads)
    target = ScimTarget(base_url=f"http://127.0.0.1:{port}/v2", token=token,
                        process=process, log_file=log_path, owns_log=owns_log)
    _LIVE.add(target)
    try:
        _wait_until_ready(target)
    except BaseException:
        target.stop()
        raise
    return target


def _spawn(token: str, port: int, log_path: Path, threads: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, _TOKEN_ENV: token, _THREADS_ENV: str(threads), "PYTHONUNBUFFERED": "1"}
    with log_path.open("ab") as log:
        # The child keeps its own copy of the log descriptor; ours can close at once.
        return subprocess.Popen(
            [sys.executable, "-c", _LAUNCHER, "--hostname", "127.0.0.1", "--port", str(port)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
            start_new_session=True,  # own process group: stop() signals the whole group
        )


def _wait_until_ready(target: ScimTarget) -> None:
    """Poll an authenticated search until it answers 200.

    Authenticated, so that another server that won the race for the port (and answers
    401 to our random token) is not mistaken for ours.
    """
    url = f"{target.base_url}/Users"
    headers = {"Authorization": f"Bearer {target.token}"}
    deadline = time.monotonic() + _START_TIMEOUT
    with httpx.Client(timeout=2.0, headers=headers) as http:
        while time.monotonic() < deadline:
            if not target.running:
                _raise_exited(target)
            with contextlib.suppress(httpx.TransportError):
                if http.get(url, params={"count": "0"}).status_code == 200:
                    return
            time.sleep(0.05)
    raise ScimTargetError(f"scim2-server at {target.base_url} did not answer within "
                          f"{_START_TIMEOUT:.0f}s; log: {_log_tail(target.log_file)}")


def _raise_exited(target: ScimTarget) -> None:
    tail = _log_tail(target.log_file)
    if "Address already in use" in tail or "address already in use" in tail:
        raise _PortTakenError(f"port of {target.base_url} already in use")
    raise ScimTargetError(f"scim2-server exited with status {target._process.returncode} "
                          f"before answering; log: {tail}")


def _terminate(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    _signal_group(process, signal.SIGTERM)
    try:
        process.wait(timeout=_STOP_GRACE)
    except subprocess.TimeoutExpired:
        _signal_group(process, signal.SIGKILL)
        process.wait()


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    # The group id is the child's pid (start_new_session); it may already be gone.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _temp_log() -> Path:
    handle, name = tempfile.mkstemp(prefix="scim2-server-", suffix=".log")
    os.close(handle)
    return Path(name)


def _log_tail(path: Path, limit: int = 2000) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "<no log>"
    return text[-limit:].strip() or "<empty log>"
