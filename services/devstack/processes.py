"""Child processes of the dev stack: free loopback ports, starting a process, stopping it.

The broker, the demo SCIM target, the workers ``scimflow up`` supervises and the servers
the tests start all run as child processes in a session (process group) of their own, so
that stopping one also stops whatever it spawned, and a Ctrl-C meant for the parent does
not reach them before the parent stops them in order. They also die with the parent
(Linux ``PR_SET_PDEATHSIG``): a parent killed outright (SIGKILL to ``scimflow up``, SIGTERM
to pytest, which skips its teardown) leaves no broker, target or worker running.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

__all__ = ["LOOPBACK", "accepts", "bindable", "die_with_parent", "free_port", "free_ports", "spawn",
           "terminate"]

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
                                stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                preexec_fn=_child_setup(os.getpid()))  # noqa: PLW1509 (below)


_PR_SET_PDEATHSIG = 1
# Resolved once in the parent: between fork and exec the child only makes one C call and
# one system call, taking no lock another thread of the parent could hold (which is why
# preexec_fn is called unsafe with threads; the tests run a fault-proxy thread).
_prctl = (ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).prctl
          if sys.platform.startswith("linux") else None)


def die_with_parent(parent: int | None = None) -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux; elsewhere a no-op).

    ``parent``: the pid the caller expects as parent; if it is already gone (it died
    between the fork and this call), exit now instead of living on as an orphan.
    """
    if _prctl is None:
        return
    _prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if parent is not None and os.getppid() != parent:
        os._exit(1)


def _child_setup(parent: int) -> Callable[[], None] | None:
    # The kernel ties the signal to the parent *thread*: a child spawned from a short-lived
    # thread would die with that thread. Only the main thread's children get it.
    if threading.current_thread() is not threading.main_thread():
        return None
    return lambda: die_with_parent(parent)


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
