"""The writer's link index on disk (services/writer/link_store.py): links, offsets, reopen."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from schemas import ManagedObject
from schemas.codecs import encode
from services.runtime.settings import load_settings
from services.writer.link_store import RocksLinkStore, open_links
from services.writer.links import LinkIndex, MemoryLinkStore

NOW = datetime.now(UTC)


def state(source_id: str, target_id: str, app: str = "a") -> ManagedObject:
    return ManagedObject(app=app, object_type="user", source_id=source_id, target_id=target_id,
                         attributes={}, origin="created", created_at=NOW, updated_at=NOW)


@pytest.fixture(params=["memory", "rocksdb"])
def links(request: pytest.FixtureRequest, tmp_path: Path) -> LinkIndex:
    if request.param == "memory":
        return LinkIndex(MemoryLinkStore())
    return LinkIndex(RocksLinkStore(tmp_path / "links"))


def test_set_get_move_and_drop_keep_both_directions(links: LinkIndex) -> None:
    assert links.set(state("u1", "T1")) and not links.set(state("u1", "T1"))
    assert (links.target_id("a", "u1"), links.owner("a", "T1"), len(links)) == ("T1", "u1", 1)
    assert links.set(state("u1", "T9"))  # moved: the old target id is nobody's any more
    assert (links.owner("a", "T1"), links.owner("a", "T9"), len(links)) == (None, "u1", 1)
    links.drop("a", "u1")
    assert (links.target_id("a", "u1"), links.owner("a", "T9"), len(links)) == (None, None, 0)


def test_a_target_id_taken_over_stays_with_its_new_owner(links: LinkIndex) -> None:
    links.set(state("u1", "T1"))
    links.set(state("u2", "T1"))  # the target object now belongs to u2
    links.drop("a", "u1")
    assert links.owner("a", "T1") == "u2" and links.target_id("a", "u2") == "T1"


def test_changelog_records_and_forget_app_touch_only_their_app(links: LinkIndex) -> None:
    assert links.apply(b"a/u1", encode(state("u1", "T1"))) == ("a", "u1")
    links.apply(b"b/u1", encode(state("u1", "B1", app="b")))
    links.apply(b"a/u2", encode(state("u2", "T2")))
    links.apply(b"a/u2", None)
    assert len(links) == 2
    links.forget_app("a")
    assert links.target_id("a", "u1") is None and links.owner("a", "T1") is None
    assert links.target_id("b", "u1") == "B1" and len(links) == 1


def test_links_offsets_and_count_survive_a_reopen(tmp_path: Path) -> None:
    store = RocksLinkStore(tmp_path / "links")
    LinkIndex(store).set(state("u1", "T1"))
    store.read_to(0, 5)
    store.read_to(3, 12)
    store.read_to(0, 7)
    assert store.offsets() == {0: 7, 3: 12}  # pending ones count before a flush too
    store.close()
    again = LinkIndex(RocksLinkStore(tmp_path / "links"))
    assert again.store.offsets() == {0: 7, 3: 12}
    assert (again.target_id("a", "u1"), again.owner("a", "T1"), len(again)) == ("T1", "u1", 1)


def test_offsets_not_flushed_are_lost_but_entries_are_not(tmp_path: Path) -> None:
    """The order a crash keeps: entries are written before the offsets that cover them."""
    store = RocksLinkStore(tmp_path / "links")
    store.read_to(0, 3)
    store.flush()
    LinkIndex(store).set(state("u1", "T1"))
    store.read_to(0, 4)  # not flushed yet: a kill -9 now reads offset 3 again
    del store  # no close, no flush: like a process that was killed
    again = RocksLinkStore(tmp_path / "links")
    assert again.offsets() == {0: 3} and again.link("a", "u1") == "T1"


def test_offsets_are_flushed_after_enough_records(tmp_path: Path) -> None:
    store = RocksLinkStore(tmp_path / "links")
    for offset in range(1, 2001):
        store.read_to(1, offset)
    del store
    assert RocksLinkStore(tmp_path / "links").offsets() == {1: 2000}


def test_clear_empties_links_and_offsets(tmp_path: Path) -> None:
    store = RocksLinkStore(tmp_path / "links")
    links = LinkIndex(store)
    links.set(state("u1", "T1"))
    store.read_to(2, 9)
    store.flush()
    store.clear()
    assert (len(links), links.target_id("a", "u1"), links.owner("a", "T1"), store.offsets()) == \
        (0, None, None, {})
    store.close()
    assert len(RocksLinkStore(tmp_path / "links")) == 0


def test_memory_store_resumes_nothing(tmp_path: Path) -> None:
    links = LinkIndex()
    links.store.read_to(0, 10)
    assert links.store.offsets() == {}
    open_links(links, load_settings({"SCIMFLOW_STATE_STORE": "memory"}), tmp_path)
    assert isinstance(links.store, MemoryLinkStore) and not (tmp_path / "links").exists()
    open_links(links, load_settings({"SCIMFLOW_STATE_STORE": "rocksdb"}), tmp_path)
    assert isinstance(links.store, RocksLinkStore) and (tmp_path / "links").is_dir()
