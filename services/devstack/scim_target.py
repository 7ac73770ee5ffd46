"""A real, throwaway SCIM 2.0 target: ``scim2-server`` in a subprocess on a loopback port.

Tests use it as the "SaaS app" scimflow provisions into, and ``scimflow up`` starts one for
the demo. scim2-server keeps every resource in memory (its ``InMemoryStorage``; nothing is
written to disk unless ``--dump-resources`` is given, which we never pass), so each process
starts empty and a fresh target per test or per module needs no cleanup.

``resources_file=PATH`` makes a target that remembers, for ``scimflow up``, whose pipeline
state survives a restart (a target that forgot its users while scimflow remembers creating
them would be no demo of anything). scim2-server has no storage on disk and only dumps
(never loads) its resources, at a clean stop; so the server here runs a subclass of its
``InMemoryStorage`` that loads ``PATH`` at start and rewrites it after every write: what
the target acknowledged survives even a SIGKILL.

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
import itertools
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from services.devstack.processes import LOOPBACK, free_port, spawn, terminate
from services.runtime.errors import ScimflowError

__all__ = ["ScimTarget", "ScimTargetError", "start_scim_target"]

_TOKEN_ENV = "SCIMFLOW_SCIM_TARGET_TOKEN"  # noqa: S105 - a variable name, not a secret
_THREADS_ENV = "SCIMFLOW_SCIM_TARGET_THREADS"
_RESOURCES_ENV = "SCIMFLOW_SCIM_TARGET_RESOURCES"

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
    f"resources = os.environ.pop({_RESOURCES_ENV!r}, '')\n"
    "if resources:\n"
    "    from services.devstack.scim_target import _file_backed_storage\n"
    "    cli.InMemoryStorage = _file_backed_storage(resources)\n"
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
    def port(self) -> int:
        port = httpx.URL(self.base_url).port
        assert port is not None  # base_url is built with one
        return port

    @property
    def running(self) -> bool:
        return self._process.poll() is None

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after a grace period). Idempotent."""
        _LIVE.discard(self)
        terminate(self._process, _STOP_GRACE)
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
                      log_file: Path | None = None, threads: int = 0,
                      resources_file: Path | None = None) -> ScimTarget:
    """Start scim2-server on 127.0.0.1 and return once it answers HTTP.

    ``port=0`` picks a free port (and retries with another one if a concurrent process
    grabs it first). ``token`` defaults to a random one. The server's request log goes to
    ``log_file``, or to a temporary file removed by :meth:`ScimTarget.stop`. ``threads > 0``
    serves it with waitress and that many worker threads (HTTP/1.1 keep-alive).
    ``resources_file`` keeps the users and groups in that JSON file, from one start to the
    next (created on the first write; one target at a time per file).
    """
    token = token if token is not None else secrets.token_urlsafe(24)
    if not token:
        raise ValueError("the SCIM target token must not be empty")
    tries = 1 if port else _PORT_ATTEMPTS
    last: ScimTargetError | None = None
    for _ in range(tries):
        try:
            return _start_once(token, port or free_port(), log_file, threads, resources_file)
        except _PortTakenError as exc:
            last = exc
    raise ScimTargetError(f"could not start scim2-server after {tries} attempt(s): {last}")


class _PortTakenError(ScimTargetError):
    """The chosen port was taken between choosing it and the server binding it."""


def _start_once(token: str, port: int, log_file: Path | None, threads: int,
                resources_file: Path | None) -> ScimTarget:
    owns_log = log_file is None
    log_path = log_file if log_file is not None else _temp_log()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    process = _spawn(token, port, log_path, threads, resources_file)
    target = ScimTarget(base_url=f"http://{LOOPBACK}:{port}/v2", token=token,
                        process=process, log_file=log_path, owns_log=owns_log)
    _LIVE.add(target)
    try:
        _wait_until_ready(target)
    except BaseException:
        target.stop()
        raise
    return target


def _spawn(token: str, port: int, log_path: Path, threads: int,
           resources_file: Path | None) -> subprocess.Popen[bytes]:
    env = {**os.environ, _TOKEN_ENV: token, _THREADS_ENV: str(threads), "PYTHONUNBUFFERED": "1"}
    if resources_file is not None:
        env[_RESOURCES_ENV] = str(resources_file.resolve())
    return spawn([sys.executable, "-c", _LAUNCHER, "--hostname", LOOPBACK, "--port", str(port)],
                 log_path, env=env)


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


# --- in the server process: resources kept in a file ----------------------------------


def _file_backed_storage(path: str) -> type[Any]:
    """scim2-server's ``InMemoryStorage``, loaded from ``path`` and saved to it after every
    create, update and delete: the whole file, renamed into place so a half-written one
    is never read, from each resource's JSON kept since its last write (only the written
    resource is serialised again). Runs in the server process, which imports scim2-server."""
    from scim2_server.memory import InMemoryStorage  # noqa: PLC0415  # the server's import

    file = Path(path)

    class FileBackedStorage(InMemoryStorage):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._saved: dict[tuple[str, str], str] = {}
            with self.lock:
                self.resources = _load_resources(file)
                self._saved = {_stored_key(r): _dumped(r) for r in self.resources}
                # ETags must not repeat across restarts: versions go on from the last one.
                self.versions = itertools.count(_last_version(self.resources) + 1)

        def create(self, *args: Any, **kwargs: Any) -> Any:
            with self.lock:
                created = super().create(*args, **kwargs)
                self._changed(created)
                return created

        def update(self, *args: Any, **kwargs: Any) -> Any:
            with self.lock:
                updated = super().update(*args, **kwargs)
                self._changed(updated)
                return updated

        def delete(self, resource_type: Any, resource_id: str, **kwargs: Any) -> None:
            with self.lock:
                super().delete(resource_type, resource_id, **kwargs)
                self._saved.pop((resource_type.name, resource_id), None)
                _save(file, self._saved.values())

        def _changed(self, resource: Any) -> None:
            self._saved[_stored_key(resource)] = _dumped(resource)
            _save(file, self._saved.values())

    return FileBackedStorage


def _load_resources(file: Path) -> list[Any]:
    """The resources saved in ``file`` as scim2-server's models (none if no file yet)."""
    from scim2_models import ScimProvider, get_model_by_payload  # noqa: PLC0415
    from scim2_server.utils import (  # noqa: PLC0415
        load_default_resource_types,
        load_default_schemas,
        load_default_service_provider_config,
    )

    try:
        saved = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    # The models the server itself uses: it runs with the default schemas (no --schema).
    provider = ScimProvider.from_discovery(load_default_schemas().values(),
                                           load_default_resource_types().values(),
                                           config=load_default_service_provider_config())
    models = [m for m in map(provider.model_for, provider.resource_types) if m is not None]
    loaded = []
    for payload in saved:
        model = get_model_by_payload(models, payload, with_extensions=False)
        if model is None:
            raise ValueError(f"{file}: no model for a resource with schemas {payload.get('schemas')}")
        loaded.append(model.model_validate(payload))
    return loaded


def _stored_key(resource: Any) -> tuple[str, str]:
    return resource.meta.resource_type, resource.id


def _dumped(resource: Any) -> str:
    return json.dumps(resource.model_dump(), separators=(",", ":"))


def _last_version(resources: list[Any]) -> int:
    numbers = (re.search(r"\d+", r.meta.version or "") for r in resources)
    return max((int(n[0]) for n in numbers if n is not None), default=0)


def _save(file: Path, dumped: Iterable[str]) -> None:
    partial = file.with_name(f".{file.name}.tmp")
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.write_text("[\n" + ",\n".join(dumped) + "\n]\n", encoding="utf-8")
    partial.replace(file)
