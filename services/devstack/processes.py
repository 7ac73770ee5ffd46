"""Child processes of the dev stack: free loopback ports, starting a process, stopping it.

The broker, the demo SCIM target, the workers ``scimflow up`` supervises and the servers
the tests start all run as child processes in a session (process group) of their own, so
that stopping one also stops whatever it spawned, and a Ctrl-C meant for the parent does
not reach them before the parent stops them in order.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from collections.abc import Mapping
from pathlib import Path

__all__ = ["LOOPBACK", "accepts", "bindable", "free_port", "free_ports", "spawn", "terminate"]

LOOPBACK = "127.0.0.1"


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """``count`` distinct ports the kernel considers free right now (someone may take one
    before our child binds it: callers that must not lose that race retry)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in sockets]


def free_port(preferred: int = 0, host: str = LOOPBACK) -> int:
    """``preferred`` if nothing listens on it, else a free port the kernel picks."""
    if preferred and bindable(preferred, host):
        return preferred
    return free_ports(1, host)[0]


def bindable(port: int, host: str = LOOPBACK) -> bool:
    """Whether nothing listens on ``port`` (so a server could bind it now)."""
    with socket.socket() as sock:
        # As the servers we start do (the JVM's server sockets, Python's http.server,
        # aiohttp): connections of a run that just stopped, left in TIME_WAIT, do not keep
        # the next one off its port.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def accepts(port: int, host: str = LOOPBACK) -> bool:
    """Whether something accepts connections on ``port`` now."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def spawn(argv: list[str], log_file: Path, *,
          env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``argv`` with its output appended to ``log_file``, in a session of its own."""
    with log_file.open("ab") as out:
        # Own process group, so terminate() can signal everything it started and a Ctrl-C
        # meant for the parent does not kill the child before the parent stops it cleanly.
        # The child keeps its own copy of the log descriptor; ours can close at once.
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)


def terminate(process: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM the process group, give it ``grace`` seconds to shut down cleanly, then
    SIGKILL it. Nothing happens to a process that has already exited."""
    if process.poll() is not None:
        return
    _signal_group(process, signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        _signal_group(process, signal.SIGKILL)
        process.wait()


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    # The group id is the child's pid (spawn starts a new session); it may already be gone.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
