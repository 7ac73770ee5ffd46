"""A second real SCIM 2.0 target we did not write: SCIMMY (npm ``scimmy`` with its Express
routers ``scimmy-routers``) in a Node.js subprocess on a loopback port.

scim2-server (:mod:`services.devstack.scim_target`) is the suite's main target; a client
tested against one server only learns that server's reading of RFC 7644. SCIMMY has its own
filter parser and matcher, its own PatchOp implementation and its own paging, so the same
scenarios run against it show where scimflow relies on one server's leniency.
``tests/support/scimmy/server.cjs`` is only the in-memory storage SCIMMY asks its host for.

The npm packages are pinned by ``tests/support/scimmy/package-lock.json`` and installed
with ``npm ci`` into a cache directory outside the repository (``SCIMFLOW_DATA_DIR``, by
default ``~/.cache/scimflow``), keyed by the lock file's hash, so that a changed lock
installs afresh and an unchanged one costs nothing: ``make scimmy-deps`` (a prerequisite of
``make test``) runs :func:`ensure_installed`, and :func:`start_scimmy_target` calls it too
in case pytest runs on its own.

The returned object is a :class:`services.devstack.scim_target.ScimTarget` (``base_url``,
``token``, ``stop()``), so fixtures and helpers written for scim2-server take it as is. The
token reaches Node through the environment, never ``argv`` (visible in ``ps``).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from services.devstack.processes import spawn
from services.devstack.scim_target import ScimTarget, ScimTargetError
from services.runtime.settings import load_settings

__all__ = ["PACKAGE_DIR", "ensure_installed", "installed_dir", "start_scimmy_target"]

PACKAGE_DIR = Path(__file__).parent / "scimmy"
_MANIFESTS = ("package.json", "package-lock.json")
_MARKER = ".installed"
_START_TIMEOUT = 20.0
_INSTALL_TIMEOUT = 300.0
_LISTENING = re.compile(rb"^listening (\d+)$", re.MULTILINE)

_LIVE: set[ScimTarget] = set()


@atexit.register
def _stop_all() -> None:
    """Stop the targets still running when the interpreter exits (a crashed test run)."""
    for target in list(_LIVE):
        target.stop()


def installed_dir() -> Path:
    """Where the pinned packages live: one directory per version of the lock file."""
    digest = hashlib.sha256((PACKAGE_DIR / "package-lock.json").read_bytes()).hexdigest()[:12]
    return Path(load_settings().data_dir).expanduser() / f"scimmy-{digest}"


def ensure_installed() -> Path:
    """``npm ci`` the pinned packages into :func:`installed_dir` unless already there."""
    home = installed_dir()
    if (home / _MARKER).is_file():
        return home
    npm = shutil.which("npm")
    if npm is None:
        raise ScimTargetError("npm is not on PATH: install Node.js (>= 18) and npm, or run "
                              "`make scimmy-deps`")
    home.mkdir(parents=True, exist_ok=True)
    with _exclusive(home / ".lock"):
        if (home / _MARKER).is_file():  # another process installed it while we waited
            return home
        for name in _MANIFESTS:
            shutil.copyfile(PACKAGE_DIR / name, home / name)
        _npm_ci(npm, home)
        (home / _MARKER).write_text("ok\n")
    return home


def _npm_ci(npm: str, home: Path) -> None:
    # --ignore-scripts: nothing of these packages needs a build step; none is allowed one.
    command = [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"]
    try:
        subprocess.run(command, cwd=home, check=True, capture_output=True,
                       timeout=_INSTALL_TIMEOUT, stdin=subprocess.DEVNULL)
    except subprocess.CalledProcessError as exc:
        output = (exc.stderr or exc.stdout or b"").decode(errors="replace")[-2000:]
        raise ScimTargetError(f"npm ci in {home} failed ({exc.returncode}): {output}") from exc
    except subprocess.TimeoutExpired as exc:
        raise ScimTargetError(f"npm ci in {home} took over {_INSTALL_TIMEOUT:.0f}s") from exc


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """One process at a time fills the cache (pytest-xdist workers, make and pytest)."""
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def start_scimmy_target(*, token: str | None = None) -> ScimTarget:
    """Start the SCIMMY server on 127.0.0.1 (a port it picks) and return once it answers
    an authenticated request. Its base URL is ``http://127.0.0.1:<port>/scim/v2``."""
    token = token if token is not None else secrets.token_urlsafe(24)
    if not token:
        raise ValueError("the SCIM target token must not be empty")
    node = shutil.which("node")
    if node is None:
        raise ScimTargetError("node is not on PATH: install Node.js (>= 18)")
    modules = ensure_installed()
    handle, name = tempfile.mkstemp(prefix="scimmy-", suffix=".log")
    os.close(handle)
    log_file = Path(name)
    process = _spawn(node, modules, token, log_file)
    # The URL is known only once Node reports its port; stop() works before that too.
    target = ScimTarget(base_url="", token=token, process=process, log_file=log_file,
                        owns_log=True)
    _LIVE.add(target)
    try:
        target.base_url = f"http://127.0.0.1:{_wait_for_port(target)}/scim/v2"
        _wait_until_ready(target)
    except BaseException:
        target.stop()
        raise
    return target


def _spawn(node: str, modules: Path, token: str, log_file: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "SCIMMY_MODULES": str(modules), "SCIMMY_TOKEN": token}
    # Own process group (spawn starts a session): ScimTarget.stop() signals the group.
    return spawn([node, str(PACKAGE_DIR / "server.cjs"), "0"], log_file, env=env)


def _wait_for_port(target: ScimTarget) -> int:
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        found = _LISTENING.search(target.log_file.read_bytes())
        if found:
            return int(found[1])
        if not target.running:
            raise ScimTargetError(f"the SCIMMY server exited before listening; log: {_tail(target)}")
        time.sleep(0.05)
    raise ScimTargetError(f"the SCIMMY server did not listen within {_START_TIMEOUT:.0f}s; "
                          f"log: {_tail(target)}")


def _wait_until_ready(target: ScimTarget) -> None:
    """An authenticated search answering 200: the routers and the token check are up."""
    headers = {"Authorization": f"Bearer {target.token}"}
    deadline = time.monotonic() + _START_TIMEOUT
    with httpx.Client(timeout=2.0, headers=headers) as http:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                if http.get(f"{target.base_url}/Users", params={"count": "0"}).status_code == 200:
                    return
            if not target.running:
                break
            time.sleep(0.05)
    raise ScimTargetError(f"the SCIMMY server at {target.base_url} did not answer; "
                          f"log: {_tail(target)}")


def _tail(target: ScimTarget, limit: int = 2000) -> str:
    text = target.log_file.read_text(encoding="utf-8", errors="replace")
    return text[-limit:].strip() or "<empty log>"


def main(argv: list[str]) -> int:
    """``python -m tests.support.scimmy_target install``: what ``make scimmy-deps`` runs."""
    if argv != ["install"]:
        print("usage: python -m tests.support.scimmy_target install", file=sys.stderr)
        return 2
    print(f"scimmy: pinned packages in {ensure_installed()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
