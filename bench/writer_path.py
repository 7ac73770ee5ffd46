"""How far one command travels in the writer's code before it reaches the target.

Issue 14 measured ``Writer.handle`` for an update of an existing user: every function of
scimflow's own code (``services/``, ``schemas/``) entered between ``Writer.handle`` and the
``ScimClient`` call that writes (a *stop*), how many distinct files those stops are in, and
how many stops return to a file the path already visited (stops minus distinct files).
A path that jumps between files to take one decision is hard to read; this counts it.

Two updates are measured: ``change`` (a change event: decided against what scimflow last
wrote) and ``scan`` (during a full scan with ``drift: repair``: decided against the target's
listing). The target is an ``httpx.MockTransport`` (the count ends before the request is
built), so this runs in milliseconds with no server. Usage::

    PYTHONPATH=. python bench/writer_path.py [-v] [module-that-holds-Writer]

The module defaults to ``services.writer.apply``; give ``services.writer.worker`` to measure
a checkout from before issue 14 moved ``Writer``. ``-v`` lists every stop on stderr.

``make bench`` runs it as a phase of bench/pipeline.py (as it runs bench/mapping.py): its
figures are in that run's JSON, as ``writer_path_{change,scan}_{stops,files,...}``. Run
alone, the last line printed is one JSON object with the same figures.
"""

from __future__ import annotations

import asyncio
import importlib
import itertools
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import msgspec
import structlog

from schemas import ManagedObject, MatchingAttribute, ProvisioningCommand
from services.runtime.config import Application
from services.scim.client import ScimClient

_ROOT = Path(__file__).resolve().parent.parent
_OWN = (str(_ROOT / "services") + "/", str(_ROOT / "schemas") + "/")
_APP = msgspec.convert({
    "name": "crm", "target": {"base_url": "http://crm.invalid/v2", "token": "env:T"}, "drift": "repair",
    "mappings": {"user": {"attributes": [{"target": "userName", "source": "upn", "matching": 1},
                                         {"target": "displayName", "source": "name"}]}},
}, Application)


_TARGET = {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "id": "t-1",
           "userName": "ada@example.com", "displayName": "Ada", "active": True}


def _answer(request: httpx.Request) -> httpx.Response:
    if request.method == "GET":
        return httpx.Response(200, json={
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:ListResponse"], "totalResults": 1,
            "startIndex": 1, "itemsPerPage": 1, "Resources": [_TARGET]})
    return httpx.Response(200, json={**_TARGET, "displayName": "Ada Lovelace"})


def _command(cycle_id: str | None) -> ProvisioningCommand:
    return ProvisioningCommand(
        app="crm", object_type="user", source="hr", source_id="u1", operation="upsert",
        reason="user is assigned directly",
        attributes={"userName": "ada@example.com", "displayName": "Ada Lovelace"},
        matching=[MatchingAttribute(target="userName", value="ada@example.com")],
        change_id="c-1", observed_at=datetime.now(UTC), cycle_id=cycle_id)


def _managed() -> ManagedObject:
    """The user as scimflow last wrote it: the display name changed in the source since."""
    then = datetime.now(UTC) - timedelta(days=1)
    return ManagedObject(app="crm", object_type="user", source_id="u1", target_id="t-1",
                         attributes={"userName": "ada@example.com", "displayName": "Ada", "active": True},
                         origin="created", created_at=then, updated_at=then)


class _Path:
    """Records the stops from the first call of ``Writer.handle`` to the first ScimClient call."""

    def __init__(self) -> None:
        self.stops: list[tuple[str, str]] = []
        self.recording = False
        self.reached = False

    def __call__(self, frame: FrameType, event: str, _: Any) -> None:
        if event != "call" or self.reached:
            return
        code = frame.f_code
        if not self.recording:
            self.recording = code.co_name == "handle" and "Writer" in _qualname(frame)
        if not self.recording:
            return
        if _qualname(frame).startswith("ScimClient."):
            self.reached = True
            self.stops.append((_short(code.co_filename), _qualname(frame)))
            return
        if code.co_filename.startswith(_OWN):
            self.stops.append((_short(code.co_filename), _qualname(frame)))


def _qualname(frame: FrameType) -> str:
    return getattr(frame.f_code, "co_qualname", frame.f_code.co_name)


def _short(filename: str) -> str:
    return str(Path(filename).resolve().relative_to(_ROOT)) if filename.startswith(_OWN) else filename


async def _measure(module: str, *, scan: bool) -> _Path:
    writer_class = importlib.import_module(module).Writer
    path = _Path()
    async with ScimClient(_APP.target.base_url, "token", transport=httpx.MockTransport(_answer)) as client:
        writer = writer_class(_APP, client)
        if scan:
            await writer.discover("scan-1")  # the scan's listing, taken at its start
        sys.setprofile(path)
        try:
            await writer.handle(_command("scan-1" if scan else None), _managed())
        finally:
            sys.setprofile(None)
    return path


def _figures(name: str, path: _Path) -> dict[str, Any]:
    """The figures of one path, named ``writer_path_{name}_*`` like the bench's other figures."""
    files = [f for f, _ in path.stops]
    distinct = list(dict.fromkeys(files))
    figures = {
        "stops": len(files),
        "files": len(distinct),
        "returns_to_visited_file": len(files) - len(distinct),
        "file_switches": sum(1 for a, b in itertools.pairwise(files) if a != b),
        "switches_back_to_visited_file": sum(
            1 for i, f in enumerate(files) if i and f != files[i - 1] and f in files[:i]),
        "reached_scim_client": path.reached,
        "visited": distinct,
    }
    return {f"writer_path_{name}_{key}": value for key, value in figures.items()}


def run_writer_path(module: str = "services.writer.apply", *, verbose: bool = False) -> dict[str, Any]:
    """Both paths (a change event's update, a full scan's update) of ``module``'s Writer."""
    # The writer logs as it goes; to stderr, so that stdout holds the figures alone.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    result: dict[str, Any] = {}
    for name, scan in (("change", False), ("scan", True)):
        path = asyncio.run(_measure(module, scan=scan))
        result |= _figures(name, path)
        if verbose:
            print(f"{name}:", file=sys.stderr)
            for file, function in path.stops:
                print(f"  {file}: {function}", file=sys.stderr)
    return result


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "-v"]
    result = run_writer_path(args[0] if args else "services.writer.apply", verbose="-v" in sys.argv)
    for key, value in result.items():
        sys.stderr.write(f"[bench] {key:>42}: {value}\n")
    print(json.dumps(result, sort_keys=True))  # the last line: machine-readable


if __name__ == "__main__":
    main()
