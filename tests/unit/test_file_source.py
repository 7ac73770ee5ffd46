"""The file source turns edits into exactly the changes they are."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from services.ingest.objects import SourceObject, diff
from services.ingest.sources.base import Operation
from services.ingest.sources.file import DirectoryFileError, FileDirectory, FileSourceError, parse_directory
from services.runtime.config import FileSource

BASE = """
users:
  - {id: u1, userPrincipalName: a@x.com, givenName: Ada}
  - {id: u2, userPrincipalName: b@x.com, givenName: Bob}
groups:
  - {id: g1, displayName: Eng, members: [u1]}
"""


def test_memberships_are_derived_from_groups() -> None:
    snap = parse_directory(BASE)
    assert snap[("user", "u1")].memberships == ("g1",)
    assert snap[("user", "u2")].memberships == ()
    assert snap[("group", "g1")].members == ("u1",)


def test_one_attribute_edit_is_one_upsert() -> None:
    changes = list(diff(parse_directory(BASE), parse_directory(BASE.replace("Bob", "Robert"))))
    assert [(op, o.object_id, o.attributes["givenName"]) for op, o in changes] == [("upsert", "u2", "Robert")]


def test_removed_user_is_a_delete_and_group_change() -> None:
    new = BASE.replace("  - {id: u2, userPrincipalName: b@x.com, givenName: Bob}\n", "")
    assert sorted((op, o.object_id) for op, o in diff(parse_directory(BASE), parse_directory(new))) == [
        ("delete", "u2")]


def test_membership_change_updates_the_user_and_the_group() -> None:
    new = BASE.replace("members: [u1]", "members: [u1, u2]")
    changed = sorted((op, o.object_id) for op, o in diff(parse_directory(BASE), parse_directory(new)))
    assert changed == [("upsert", "g1"), ("upsert", "u2")]


def test_unchanged_file_has_no_changes() -> None:
    assert list(diff(parse_directory(BASE), parse_directory(BASE))) == []


@pytest.mark.parametrize(
    ("text", "reason"),
    [("users: [", "not valid YAML"), ("users: {a: 1}", "`users` must be a list"),
     ("users: [{name: x}]", "users[0] must be a mapping with an `id`"),
     ("users: [{id: a}, {id: a}]", "duplicate id 'a'")],
)
def test_bad_files_are_rejected_with_a_reason(text: str, reason: str) -> None:
    with pytest.raises(DirectoryFileError, match=reason.replace("[", r"\[")):
        parse_directory(text)


# -- the file source behind the source interface (FileDirectory) ---------------------------------


def test_a_bad_file_is_reported_once_and_the_fixed_file_is_published_by_the_poll(tmp_path: Path) -> None:
    path = tmp_path / "directory.yaml"
    path.write_text("users: [{id: u1, givenName: Ada}, {givenName: NoId}]\n")
    reports: list[str] = []
    changes: list[tuple[str, str, str]] = []

    async def report(reason: str) -> None:
        reports.append(reason)

    async def on_change(op: Operation, obj: SourceObject) -> None:
        changes.append((op, obj.object_id, str(obj.attributes.get("givenName"))))

    async def scenario() -> None:
        source = FileDirectory(FileSource(name="hr", path=str(path)), path, report)
        for _ in range(2):  # the same bad version is reported once
            with pytest.raises(FileSourceError) as failure:
                await source.scan()
            assert failure.value.reported
        assert await source.poll(on_change) == 0
        path.write_text("users: [{id: u1, givenName: Ada}, {id: u2, givenName: Bob}]\n")
        assert await source.poll(on_change) == 2  # nothing was published yet: all of it now
        path.write_text("users: [{id: u1, givenName: Ada2}]\n")
        assert await source.poll(on_change) == 2
        assert (await source.fetch("u1", "user")) is not None
        assert await source.fetch("u2", "user") is None

    asyncio.run(scenario())
    assert len(reports) == 1 and "users[1]" in reports[0]
    assert changes == [("upsert", "u1", "Ada"), ("upsert", "u2", "Bob"), ("upsert", "u1", "Ada2"),
                       ("delete", "u2", "None")]  # a delete carries no attributes
