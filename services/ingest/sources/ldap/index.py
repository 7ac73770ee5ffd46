"""The LDAP directory as last seen, in memory: pure code, no connection.

``DirectoryIndex`` maps entryUUID -> entry, DN -> entryUUID and member DN -> groups, and
answers what one LDAP change changes downstream (a group's members, every user who joined or
left it); ``make_entry`` turns what python-ldap returns into an ``LdapEntry``;
``normalize_dn`` spells a DN one way, and the AD source compares its DNs with it too.

A renamed entry keeps its former DN as an alias while some group still lists that DN:
OpenLDAP's refint overlay rewrites those member values without a new entryCSN, so the
rewrite never reaches a sync consumer, and the member must not seem to have left.
"""

from __future__ import annotations

import base64
import collections
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import ldap  # type: ignore[import-untyped]
import ldap.dn  # type: ignore[import-untyped]

from services.ingest.objects import ObjectType, Snapshot, SourceObject

__all__ = ["DirectoryIndex", "EntryShape", "LdapEntry", "make_entry", "normalize_dn"]

_REMEMBERED_DELETES = 10_000
_UNIQUE_MEMBER_UID = re.compile(r"#'[01]*'B$")  # uniqueMember's optional "#'0101'B" suffix


class EntryShape(NamedTuple):
    """What ``make_entry`` needs of the source's settings: which attributes are read, and which
    mean group and member (``connection.entry_shape`` fills in the defaults)."""

    attributes: tuple[str, ...]
    group_classes: tuple[str, ...]
    member_attributes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class LdapEntry:
    """One directory entry as the source needs it: id, DN, kind, attributes, member DNs."""

    uuid: str
    dn: str
    key: str  # the DN normalized for comparison
    object_type: ObjectType
    attributes: dict[str, Any]
    member_keys: frozenset[str] = frozenset()


class DirectoryIndex:
    """The directory as last seen: answers what a change changes, and builds source objects.

    A renamed entry keeps its former DN as an alias while some group still lists that DN:
    OpenLDAP's refint overlay rewrites those member values without a new entryCSN, so the
    rewrite never reaches a sync consumer, and the member must not seem to have left.
    """

    def __init__(self) -> None:
        self._entries: dict[str, LdapEntry] = {}
        self._by_key: dict[str, str] = {}
        self._groups_of: dict[str, set[str]] = {}  # member key -> ids of the groups listing it
        self._aliases: dict[str, str] = {}  # former key -> id, while a group lists it
        self._alias_keys: dict[str, set[str]] = {}  # id -> its former keys
        self._cold: set[str] = set()
        self._gone: collections.OrderedDict[str, ObjectType] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def uuids(self) -> set[str]:
        return set(self._entries)

    def has(self, uuid: str) -> bool:
        return uuid in self._entries

    def load(self, entries: Iterable[LdapEntry], *, cold: bool = False) -> None:
        """Add entries without computing changes; ``cold``: their state downstream is unknown."""
        for entry in entries:
            self._link(entry)
            if cold:
                self._cold.add(entry.uuid)

    def mark_cold(self) -> None:
        """Forget what downstream has seen: the next change of any group re-reports all its members."""
        self._cold = set(self._entries)

    def upsert(self, entry: LdapEntry) -> list[str]:
        """Apply an added or changed entry; the ids whose objects may have changed, it first."""
        uuid = entry.uuid
        old = self._entries.get(uuid)
        was_cold = uuid in self._cold
        if old is not None:
            self._unlink(old)
        affected = [uuid, *self._drop_alias(entry.key)]
        self._link(entry)
        self._cold.discard(uuid)
        if old is not None and old.key != entry.key and old.key in self._groups_of:
            self._aliases[old.key] = uuid
            self._alias_keys.setdefault(uuid, set()).add(old.key)
        if old is None or old.key != entry.key:
            affected += self._groups_listing(entry.key) + (self._groups_listing(old.key) if old else [])
        before = old.member_keys if old is not None else frozenset()
        affected += self._users(before | entry.member_keys if was_cold else before ^ entry.member_keys)
        self._prune_aliases(before - entry.member_keys)
        return _unique(affected)

    def delete(self, uuid: str) -> tuple[SourceObject | None, list[str]]:
        """Apply a delete: the deleted object (None if not in the index) and the ids it changes."""
        old = self._entries.get(uuid)
        if old is None:
            return None, []
        obj = self.object(uuid)
        keys = [old.key, *self._alias_keys.get(uuid, ())]
        affected = [g for key in keys for g in self._groups_listing(key)] + self._users(old.member_keys)
        for key in keys[1:]:
            self._drop_alias(key)
        self._unlink(old)
        self._cold.discard(uuid)
        self._prune_aliases(old.member_keys)
        self._remember_gone(uuid, old.object_type)
        return obj, _unique(affected)

    def forgotten(self, uuid: str) -> SourceObject:
        """A deleted object the index does not hold: its kind if deleted lately, else ``user``."""
        return SourceObject(self._gone.get(uuid, "user"), uuid, {})

    def object(self, uuid: str) -> SourceObject:
        entry = self._entries[uuid]
        if entry.object_type == "group":
            members = {u for k in entry.member_keys if (u := self._resolve(k)) is not None}
            return SourceObject("group", uuid, entry.attributes, members=tuple(sorted(members)))
        keys = [entry.key, *self._alias_keys.get(uuid, ())]
        memberships = sorted({g for key in keys for g in self._groups_listing(key)})
        return SourceObject("user", uuid, entry.attributes, memberships=tuple(memberships))

    def snapshot(self) -> Snapshot:
        objects = (self.object(uuid) for uuid in self._entries)
        return {obj.key: obj for obj in objects}

    def _link(self, entry: LdapEntry) -> None:
        self._entries[entry.uuid] = entry
        self._by_key[entry.key] = entry.uuid
        for key in entry.member_keys:
            self._groups_of.setdefault(key, set()).add(entry.uuid)

    def _unlink(self, entry: LdapEntry) -> None:
        del self._entries[entry.uuid]
        if self._by_key.get(entry.key) == entry.uuid:
            del self._by_key[entry.key]
        for key in entry.member_keys:
            groups = self._groups_of.get(key, set())
            groups.discard(entry.uuid)
            if not groups:
                self._groups_of.pop(key, None)

    def _resolve(self, key: str) -> str | None:
        return self._by_key.get(key) or self._aliases.get(key)

    def _drop_alias(self, key: str) -> list[str]:
        """Forget that ``key`` was someone's former DN; returns that someone (if any)."""
        owner = self._aliases.pop(key, None)
        if owner is None:
            return []
        keys = self._alias_keys.get(owner, set())
        keys.discard(key)
        if not keys:
            self._alias_keys.pop(owner, None)
        return [owner]

    def _prune_aliases(self, keys: Iterable[str]) -> None:
        for key in keys:
            if key in self._aliases and key not in self._groups_of:
                self._drop_alias(key)

    def _groups_listing(self, key: str) -> list[str]:
        return sorted(g for g in self._groups_of.get(key, ()) if g in self._entries)

    def _users(self, keys: Iterable[str]) -> list[str]:
        found = (self._resolve(k) for k in keys)
        return sorted(u for u in found if u is not None and self._entries[u].object_type == "user")

    def _remember_gone(self, uuid: str, kind: ObjectType) -> None:
        # A cookie replayed after a crash may repeat a delete: keep its kind for a while.
        self._gone[uuid] = kind
        if len(self._gone) > _REMEMBERED_DELETES:
            self._gone.popitem(last=False)


def _unique(ids: list[str]) -> list[str]:
    return list(dict.fromkeys(ids))


def normalize_dn(dn: str) -> str:
    """A DN in one spelling: attribute names and values lower-cased, spaces and escapes canonical."""
    try:
        rdns = ldap.dn.str2dn(dn)
    except ldap.DECODING_ERROR:
        return dn.strip().lower()
    canonical = [sorted((t.lower(), v.lower(), f) for t, v, f in rdn) for rdn in rdns]
    return str(ldap.dn.dn2str(canonical))


def make_entry(shape: EntryShape, dn: str, attrs: dict[str, list[bytes]], uuid: str) -> LdapEntry:
    """An LdapEntry from what python-ldap returns: ``{attribute: [value, ...]}`` as bytes."""
    by_name = {name.lower(): values for name, values in attrs.items()}
    classes = {v.decode("utf-8", "replace").lower() for v in by_name.get("objectclass", [])}
    is_group = bool(classes & {c.lower() for c in shape.group_classes})
    attributes: dict[str, Any] = {"dn": dn}
    for name in shape.attributes:
        if values := by_name.get(name.lower()):
            attributes[name] = _value(values)
    members = frozenset(_member_keys(by_name, shape.member_attributes)) if is_group else frozenset()
    return LdapEntry(uuid.lower(), dn, normalize_dn(dn), "group" if is_group else "user", attributes, members)


def _member_keys(by_name: dict[str, list[bytes]], member_attributes: tuple[str, ...]) -> Iterator[str]:
    for name in member_attributes:
        for raw in by_name.get(name.lower(), []):
            yield normalize_dn(_UNIQUE_MEMBER_UID.sub("", raw.decode("utf-8", "replace")))


def _value(values: list[bytes]) -> str | list[str]:
    """One value as a string, several as a list; binary values as base64 text."""
    texts = [_text(v) for v in values]
    return texts[0] if len(texts) == 1 else texts


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode("ascii")
