"""What every way of starting a broker shares: the :class:`Broker` handle, its error, and
launching a broker process on free loopback ports (again on new ones if it lost the race
for a port).

Private to the broker modules: import :class:`Broker` and :class:`BrokerError` from
:mod:`services.devstack.broker`.
"""

from __future__ import annotations

import atexit
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from services.devstack.processes import accepts, terminate
from services.runtime.errors import ScimflowError

__all__ = ["BIND_ATTEMPTS", "READY_TIMEOUT", "Broker", "BrokerError", "Log", "PortTakenError",
           "await_listener", "say_not_kept", "stderr_log", "strip_ansi", "tail", "with_fresh_ports"]

Log = Callable[[str], None]

READY_TIMEOUT = 90.0
_STOP_GRACE = 20.0
"""Kafka stops in ~2s; the broker that writes the class archive (apache_kafka) needs ~5s more."""
BIND_ATTEMPTS = 3
_PORT_TAKEN = re.compile(r"Address already in use|AddrInUse")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class BrokerError(ScimflowError):
    """No broker could be fetched or started; the message says why and what it printed."""


def stderr_log(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


class Broker:
    """A broker to talk to at :attr:`bootstrap`; :meth:`stop` it (or use ``with``)."""

    def __init__(self, kind: str, bootstrap: str, *, version: str = "",
                 data_dir: Path | None = None, keeps_data: bool = False,
                 process: subprocess.Popen[bytes] | None = None,
                 container: Any = None, on_exit: Callable[[int], None] | None = None,
                 log: Log = stderr_log, listeners: Mapping[str, str] | None = None) -> None:
        self.kind = kind
        self.bootstrap = bootstrap
        self.listeners = dict(listeners or {})
        """Listeners besides the PLAINTEXT :attr:`bootstrap`, by name (``SASL_SSL``,
        ``SSL``): ``host:port`` each."""
        self.version = version
        self.data_dir = data_dir
        """The dir with the broker's data and log; :meth:`stop` removes it unless
        :attr:`keeps_data`."""
        self.keeps_data = keeps_data
        """The data outlives this broker: the next start on the same ``state_dir`` has it."""
        self._process = process
        self._container = container
        self._on_exit = on_exit
        self._log = log
        self._lock = threading.Lock()
        self._stopped = False
        if process is not None or container is not None:
            # A parent that dies of an exception must not leave a broker behind.
            atexit.register(self.stop)

    def __repr__(self) -> str:
        return f"Broker(kind={self.kind!r}, bootstrap={self.bootstrap!r}, pid={self.pid})"

    @property
    def pid(self) -> int | None:
        """The broker process (also its process group); ``None`` unless we run it."""
        return None if self._process is None else self._process.pid

    @property
    def log_file(self) -> Path | None:
        """Where the broker process writes its output, while it runs."""
        return None if self.data_dir is None else self.data_dir / "broker.log"

    @property
    def running(self) -> bool:
        """False once a broker we started has exited (or been stopped)."""
        if self._stopped:
            return self._process is None and self._container is None
        return self._process is None or self._process.poll() is None

    def stop(self) -> None:
        """Stop the broker we started and remove its data (unless kept); safe to call twice."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        atexit.unregister(self.stop)
        try:
            if self._process is not None:
                self._report_early_exit()
                terminate(self._process, _STOP_GRACE)
                if self._on_exit is not None:
                    self._on_exit(self._process.returncode)
            if self._container is not None:
                self._container.stop()
        finally:
            if self.data_dir is not None and not self.keeps_data:
                shutil.rmtree(self.data_dir, ignore_errors=True)

    def _report_early_exit(self) -> None:
        assert self._process is not None
        code = self._process.poll()
        if code is not None and self.log_file is not None:
            self._log(f"broker: {self.kind} had exited with code {code}; "
                      f"its log ended with:\n{tail(self.log_file)}")

    def __enter__(self) -> Broker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def say_not_kept(log: Log, kind: str, why: str, instead: str) -> None:
    """Tell the user that a broker of ``kind`` starts empty although asked to keep state."""
    log(f"broker: {kind} does not keep its state ({why}): topics, positions and managed "
        f"state start empty on every start, and scimflow adopts the target's accounts "
        f"again. For {instead}.")


# --- a broker process on free ports --------------------------------------------------


class PortTakenError(Exception):
    """Someone bound one of our free ports between our choosing it and the broker's bind."""


def with_fresh_ports(launch: Callable[[Path], Broker], prefix: str) -> Broker:
    """Run ``launch`` in a fresh temp dir, again with new ports if it lost a port race."""
    for _ in range(BIND_ATTEMPTS):
        workdir = Path(tempfile.mkdtemp(prefix=prefix))
        try:
            return launch(workdir)  # the Broker owns workdir from here on
        except BaseException as exc:
            shutil.rmtree(workdir, ignore_errors=True)
            if not isinstance(exc, PortTakenError):
                raise
    raise BrokerError(f"could not bind free loopback ports in {BIND_ATTEMPTS} attempts")


def await_listener(name: str, process: subprocess.Popen[bytes], port: int,
                   log_file: Path) -> None:
    """Wait until ``process`` accepts connections on ``port``; kill it if it never will."""
    try:
        _poll_listener(name, process, port, log_file)
    except BaseException:
        terminate(process, _STOP_GRACE)
        raise


def _poll_listener(name: str, process: subprocess.Popen[bytes], port: int,
                   log_file: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while not accepts(port):
        code = process.poll()
        if code is not None:
            output = tail(log_file)
            if _PORT_TAKEN.search(output):
                raise PortTakenError
            raise BrokerError(f"{name} exited with code {code} before it answered; "
                              f"its log ended with:\n{output}")
        if time.monotonic() > deadline:
            raise BrokerError(f"{name} did not listen on port {port} within "
                              f"{READY_TIMEOUT:.0f}s; its log ends with:\n{tail(log_file)}")
        time.sleep(0.1)


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` of a broker's log, without colour codes."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(strip_ansi(text).rstrip().splitlines()[-lines:])


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)
