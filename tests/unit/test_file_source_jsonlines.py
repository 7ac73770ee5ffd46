"""The JSON Lines file source reads only what was appended, and still sees rewrites, truncation
and rotation: each edit turns into exactly the changes it is."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from services.ingest.objects import SourceObject
from services.ingest.sources.base import Operation
from services.ingest.sources.file import FileSourceError, JsonLinesDirectory, file_directory, read_directory
from services.ingest.sources.jsonlines import JsonLinesLog
from services.runtime.config import FileSource

T = TypeVar("T")


def line(**record: Any) -> str:
    return json.dumps(record) + "\n"


BASE = (line(id="u1", givenName="Ada") + line(id="u2", givenName="Bob")
        + line(objectType="group", id="g1", displayName="Eng", members=["u1"]))


class Source:
    """A JsonLinesDirectory over ``path``, with what it reported and published recorded."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.reports: list[str] = []
        self.changes: list[tuple[Operation, SourceObject]] = []

        async def report(reason: str) -> None:
            self.reports.append(reason)

        self.directory = JsonLinesDirectory(FileSource(name="hr", path=str(path)), path, report)

    async def poll(self) -> list[tuple[str, str, Any]]:
        """The changes one poll publishes: (operation, id, givenName or members/memberships)."""
        start = len(self.changes)

        async def on_change(op: Operation, obj: SourceObject) -> None:
            self.changes.append((op, obj))

        await self.directory.poll(on_change)
        return [(op, o.object_id, _shown(o)) for op, o in self.changes[start:]]

    async def scan(self) -> dict[str, Any]:
        return {o.object_id: _shown(o) async for o in self.directory.scan_objects()}


def _shown(obj: SourceObject) -> Any:
    if obj.object_type == "group":
        return obj.members
    return (obj.attributes.get("givenName"), obj.memberships)


def run(scenario: Callable[[Source], Coroutine[Any, Any, T]], path: Path) -> T:
    return asyncio.run(scenario(Source(path)))


def append(path: Path, text: str) -> None:
    with path.open("a") as f:
        f.write(text)


def test_the_scan_streams_the_live_version_of_each_object(tmp_path: Path) -> None:
    path = tmp_path / "directory.jsonl"
    path.write_text(BASE + line(id="u2", givenName="Robert") + line(id="u3", givenName="Cy")
                    + line(id="u3", deleted=True) + "\n")

    async def scenario(s: Source) -> dict[str, Any]:
        return await s.scan()

    assert run(scenario, path) == {"u1": ("Ada", ("g1",)), "g1": ("u1",), "u2": ("Robert", ())}


def test_appended_lines_are_exactly_their_changes(tmp_path: Path) -> None:
    path = tmp_path / "directory.jsonl"
    path.write_text(BASE)

    async def scenario(s: Source) -> list[list[tuple[str, str, Any]]]:
        await s.scan()
        seen = [await s.poll()]  # nothing changed since the scan
        append(path, line(id="u2", givenName="Robert"))
        seen.append(await s.poll())
        append(path, line(id="u2", givenName="Robert"))  # the same again: no change
        seen.append(await s.poll())
        append(path, line(objectType="group", id="g1", displayName="Eng", members=["u2"]))
        seen.append(await s.poll())
        append(path, line(id="u1", deleted=True) + line(id="u4", givenName="Dee"))
        seen.append(await s.poll())
        return seen

    assert run(scenario, path) == [
        [],
        [("upsert", "u2", ("Robert", ()))],
        [],
        [("upsert", "g1", ("u2",)), ("upsert", "u1", ("Ada", ())), ("upsert", "u2", ("Robert", ("g1",)))],
        [("delete", "u1", (None, ())), ("upsert", "u4", ("Dee", ()))],
    ]


def test_a_line_written_in_two_steps_is_read_once_it_is_whole(tmp_path: Path) -> None:
    path = tmp_path / "directory.jsonl"
    path.write_text(BASE)
    whole = line(id="u5", givenName="Eve")

    async def scenario(s: Source) -> list[Any]:
        await s.scan()
        append(path, whole[:9])
        first = await s.poll()
        scanned = await s.scan()
        append(path, whole[9:])
        return [first, sorted(scanned), await s.poll()]

    assert run(scenario, path) == [[], ["g1", "u1", "u2"], [("upsert", "u5", ("Eve", ()))]]


def test_a_rewrite_by_rename_is_compared_record_by_record(tmp_path: Path) -> None:
    path = tmp_path / "directory.jsonl"
    path.write_text(BASE)

    async def scenario(s: Source) -> list[tuple[str, str, Any]]:
        await s.scan()
        new = tmp_path / "directory.jsonl.tmp"
        new.write_text(line(id="u1", givenName="Ada") + line(id="u3", givenName="Cy")
                       + line(objectType="group", id="g1", displayName="Eng", members=["u1", "u3"]))
        new.replace(path)  # a new inode: rotation, or an editor's atomic save
        return sorted(await s.poll())

    assert run(scenario, path) == [("delete", "u2", (None, ())), ("upsert", "g1", ("u1", "u3")),
                                   ("upsert", "u3", ("Cy", ("g1",)))]


def test_truncation_and_an_in_place_rewrite_are_read_in_full(tmp_path: Path) -> None:
    path = tmp_path / "directory.jsonl"
    path.write_text(BASE)
    inode = path.stat().st_ino

    async def scenario(s: Source) -> list[list[tuple[str, str, Any]]]:
        await s.scan()
        with path.open("r+") as f:  # same inode, shorter file
            f.truncate(0)
            f.write(line(id="u1", givenName="Ada"))
        shorter = sorted(await s.poll())
        # Same inode, longer than what was read, but not an append: the start was rewritten.
        path.write_text(line(id="u1", givenName="Ann") + line(id="u2", givenName="Bob") + " " * 200 + "\n")
        rewritten = sorted(await s.poll())
        assert path.stat().st_ino == inode
        return [shorter, rewritten]

    assert run(scenario, path) == [
        # g1 is gone, so u1 is in no group now
        [("delete", "g1", ()), ("delete", "u2", (None, ())), ("upsert", "u1", ("Ada", ()))],
        [("upsert", "u1", ("Ann", ())), ("upsert", "u2", ("Bob", ()))],
    ]


def test_a_bad_line_is_reported_once_and_skipped(tmp_path: Path) -> None:
    path = tmp_path / "directory.jsonl"
    path.write_text(BASE + "{not json\n" + line(givenName="no id"))

    async def scenario(s: Source) -> tuple[dict[str, Any], list[tuple[str, str, Any]]]:
        scanned = await s.scan()
        await s.scan()
        append(path, line(id="u6", givenName="Fay"))
        return scanned, await s.poll()

    source = Source(path)
    scanned, changes = asyncio.run(scenario(source))
    assert sorted(scanned) == ["g1", "u1", "u2"]
    assert changes == [("upsert", "u6", ("Fay", ()))]
    assert len(source.reports) == 2
    assert "not a JSON object" in source.reports[0] and "no `id`" in source.reports[1]


def test_a_missing_file_fails_the_scan_rather_than_looking_empty(tmp_path: Path) -> None:
    async def scenario(s: Source) -> None:
        with pytest.raises(FileSourceError, match="cannot read"):
            await s.scan()

    run(scenario, tmp_path / "absent.jsonl")


def test_fetch_reads_one_object_from_its_line(tmp_path: Path) -> None:
    path = tmp_path / "directory.ndjson"
    path.write_text(BASE + line(id="u1", givenName="Ann"))

    async def scenario(s: Source) -> tuple[Any, Any]:
        directory = file_directory(FileSource(name="hr", path=str(path)), path, _ignore)
        assert isinstance(directory, JsonLinesDirectory)
        u1 = await directory.fetch("u1", "user")
        return (None if u1 is None else _shown(u1)), await directory.fetch("g2", "group")

    assert run(scenario, path) == (("Ann", ("g1",)), None)


def test_the_log_keeps_an_int_per_object_not_the_object(tmp_path: Path) -> None:
    path = tmp_path / "directory.jsonl"
    path.write_text("".join(line(id=f"u{i}", givenName="x" * 200) for i in range(100)))
    log = JsonLinesLog(path)
    log.catch_up()
    assert len(log) == 100
    assert all(isinstance(v, int) for v in log._state.index.values())
    assert path.stat().st_size == log.offset


async def _ignore(reason: str) -> None:
    return None


def test_read_directory_reads_json_lines_too(tmp_path: Path) -> None:
    """What the CLI's preview and demo read: the live objects, memberships included."""
    path = tmp_path / "directory.jsonl"
    path.write_text(BASE + line(id="u2", deleted=True))
    snapshot = read_directory(path)
    assert sorted(snapshot) == [("group", "g1"), ("user", "u1")]
    assert snapshot[("user", "u1")].memberships == ("g1",)
