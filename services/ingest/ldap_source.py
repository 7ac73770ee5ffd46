"""The LDAP directory source: full reads, and RFC 4533 syncrepl for changes as they happen.

``LdapSource.scan`` reads every user and group with a normal (paged) search.
``LdapSource.watch`` runs a refreshAndPersist sync search from a stored cookie in a
thread (python-ldap's ``SyncreplConsumer``), and hands what the server sends to the event
loop through an ``asyncio.Queue``; there it is applied to an in-memory index of the
directory (entryUUID -> entry, DN -> entryUUID, member DN -> groups) that turns each LDAP
change into the source objects it changes:

- objects are keyed by ``entryUUID``, so a rename (modrdn) is an upsert of the same id;
- a group whose members change is upserted, and so is every user who joined or left it
  (their ``memberships`` changed), although the user entries themselves did not change;
- a delete arrives from the server as a bare entryUUID; the index says what it was;
- a renamed entry's former DN stays an alias while groups list it: OpenLDAP's refint
  overlay rewrites those member values without a new entryCSN, so the consumer never sees
  the rewrite, and a rename must not look like leaving every group.

A new cookie is handed to ``on_cookie`` only after every change it covers went through
``on_change``, so a cookie persisted by the caller never skips a change. When the
connection is lost the watcher reconnects with exponential backoff from the last cookie.

On a fresh process resuming from a stored cookie, the index is first filled by a normal
search (nothing is emitted for it) and the sync search then sends only what changed since
the cookie. What the index cannot know then is what a group looked like before the
restart, so a group changed while ingest was down gets an upsert for every current member,
and an entry deleted while ingest was down that the index never saw is reported as a
``user`` delete (deleting a user id nobody manages is a no-op downstream). The periodic
full scan corrects anything else, as for every source.

python-ldap has no type annotations; ``Any`` stays in the few functions marked as the
LDAP boundary, and every python-ldap error is wrapped in ``LdapSourceError`` there.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import re
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import ldap  # type: ignore[import-untyped]
import ldap.dn  # type: ignore[import-untyped]
import ldap.filter  # type: ignore[import-untyped]
import ldap.ldapobject  # type: ignore[import-untyped]
import ldap.syncrepl  # type: ignore[import-untyped]
import stamina
import structlog
from ldap.controls import SimplePagedResultsControl  # type: ignore[import-untyped]

from services.ingest.file_source import ObjectType, Snapshot, SourceObject
from services.ingest.source import DirectorySource, OnPosition, SourceError, SourceUnavailableError

__all__ = [
    "DirectoryIndex",
    "LdapDirectory",
    "LdapEntry",
    "LdapSettings",
    "LdapSource",
    "LdapSourceError",
    "LdapStats",
    "LdapUnavailableError",
    "Operation",
    "make_entry",
    "normalize_dn",
]

log = structlog.get_logger("scimflow.ingest.ldap")

Operation = Literal["upsert", "delete"]
OnChange = Callable[[Operation, SourceObject], Awaitable[None]]
OnCookie = Callable[[bytes], Awaitable[None]]

DEFAULT_ATTRIBUTES = (
    "uid", "cn", "sn", "givenName", "displayName", "mail", "title", "departmentNumber",
    "employeeNumber", "employeeType", "telephoneNumber", "mobile", "o", "ou", "l", "manager",
    "preferredLanguage", "description",
)
_POLL_SECONDS = 0.5  # how long the sync thread blocks in libldap before looking at its stop flag
_PAGE_SIZE = 500
_REMEMBERED_DELETES = 10_000
_SYNC_REFRESH_REQUIRED = 4096  # RFC 4533 e-syncRefreshRequired: the cookie is too old
_UNIQUE_MEMBER_UID = re.compile(r"#'[01]*'B$")  # uniqueMember's optional "#'0101'B" suffix


@dataclass(frozen=True)
class LdapSettings:
    """Where the directory is and what to read from it. ``password`` never appears in a repr."""

    url: str
    base_dn: str
    bind_dn: str
    password: str = field(repr=False)
    user_filter: str = "(objectClass=inetOrgPerson)"
    group_filter: str = "(|(objectClass=groupOfNames)(objectClass=groupOfUniqueNames))"
    attributes: tuple[str, ...] = DEFAULT_ATTRIBUTES
    group_classes: tuple[str, ...] = ("groupOfNames", "groupOfUniqueNames")
    """An entry the filters select is a group if it has one of these object classes."""
    member_attributes: tuple[str, ...] = ("member", "uniqueMember")
    timeout: float = 10.0
    """Seconds to connect, and for each search page."""
    reconnect_initial: float = 0.2
    reconnect_max: float = 30.0

    def __post_init__(self) -> None:
        if not self.url.lower().startswith(("ldap://", "ldaps://", "ldapi://")):
            raise ValueError(f"LDAP url must start with ldap://, ldaps:// or ldapi://, got {self.url!r}")

    @property
    def search_filter(self) -> str:
        return f"(|{self.user_filter}{self.group_filter})"

    @property
    def request_attributes(self) -> list[str]:
        return [*self.attributes, "objectClass", *self.member_attributes]


class LdapSourceError(SourceError):
    """The LDAP source failed. As such (not an LdapUnavailableError) the directory refused what
    we asked (credentials, base DN, filter, limits, access): retrying will not help."""

    code = "LdapSourceFailed"
    recommended_action = ("Check the LDAP source's url, base_dn, bind_dn, password and filters, "
                          "and the bind DN's access and limits on the server.")


class LdapUnavailableError(LdapSourceError, SourceUnavailableError):
    """The directory could not be reached or went away; worth retrying."""

    code = "LdapUnavailable"
    recommended_action = "None needed if it recovers; otherwise check that the directory server is up."


class _RefreshRequiredError(LdapUnavailableError):
    """The server no longer knows our cookie; sync again from scratch."""


@dataclass
class LdapStats:
    """Counters of one source, for metrics and for tests that must tell a resume from a re-read."""

    sessions: int = 0
    seeded: int = 0
    """Entries read by the normal search that fills the index before resuming from a cookie."""
    refreshed: int = 0
    """Entries the sync refresh phases sent (only what changed since the cookie)."""
    persisted: int = 0
    """Entries sent as they changed, after the refresh phase."""
    deletes: int = 0
    emitted: int = 0


# -- the index (pure) ---------------------------------------------------------------------------


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


def make_entry(settings: LdapSettings, dn: str, attrs: dict[str, list[bytes]], uuid: str) -> LdapEntry:
    """An LdapEntry from what python-ldap returns: ``{attribute: [value, ...]}`` as bytes."""
    by_name = {name.lower(): values for name, values in attrs.items()}
    classes = {v.decode("utf-8", "replace").lower() for v in by_name.get("objectclass", [])}
    is_group = bool(classes & {c.lower() for c in settings.group_classes})
    attributes: dict[str, Any] = {"dn": dn}
    for name in settings.attributes:
        if values := by_name.get(name.lower()):
            attributes[name] = _value(values)
    members = frozenset(_member_keys(by_name, settings.member_attributes)) if is_group else frozenset()
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


# -- what the sync thread sends to the event loop -------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Upsert:
    entry: LdapEntry


@dataclass(frozen=True, slots=True)
class _Delete:
    uuids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Present:
    uuids: tuple[str, ...] | None  # None: the present phase is over
    refresh_deletes: bool = False


@dataclass(frozen=True, slots=True)
class _Cookie:
    value: bytes


@dataclass(frozen=True, slots=True)
class _RefreshDone:
    pass


@dataclass(frozen=True, slots=True)
class _End:
    error: BaseException | None


_Event = _Upsert | _Delete | _Present | _Cookie | _RefreshDone | _End


# -- the source ---------------------------------------------------------------------------------


@dataclass
class _SyncState:
    """What outlives one connection: the index, what downstream has seen, the cookie handed out."""

    cookie: bytes | None
    index: DirectoryIndex = field(default_factory=DirectoryIndex)
    emitted: dict[str, bytes] = field(default_factory=dict)
    stats: LdapStats = field(default_factory=LdapStats)
    blind: bool = False
    """The index may lack entries deleted before the refresh now running (it was filled by a
    search, or marked cold): a delete of an id it does not know may be one of ours."""

    def forget_downstream(self) -> None:
        self.index.mark_cold()
        self.emitted.clear()
        self.blind = True


class LdapSource:
    """One LDAP directory: full reads with ``scan``, changes as they happen with ``watch``."""

    def __init__(self, settings: LdapSettings, *, cookie: bytes | None = None) -> None:
        self.settings = settings
        self._state = _SyncState(cookie)
        self._closed = False
        self._threads: list[tuple[threading.Thread, threading.Event]] = []

    @property
    def stats(self) -> LdapStats:
        return self._state.stats

    @property
    def cookie(self) -> bytes | None:
        """The last cookie handed to ``on_cookie`` (or the one given at construction)."""
        return self._state.cookie

    async def scan(self) -> Snapshot:
        """Every user and group now in the directory (a normal paged search, its own connection)."""
        index = DirectoryIndex()
        index.load(await asyncio.to_thread(_read_entries, self.settings))
        return index.snapshot()

    async def watch(self, on_change: OnChange, on_cookie: OnCookie) -> None:
        """Emit changes as they happen, until cancelled or closed; see the module docstring."""
        while not self._closed:
            # A fresh backoff per healthy session: the first reconnect after a loss is immediate.
            retrying = stamina.retry_context(
                on=LdapUnavailableError, attempts=None, timeout=None,
                wait_initial=self.settings.reconnect_initial, wait_max=self.settings.reconnect_max,
                wait_jitter=self.settings.reconnect_initial)
            async for attempt in retrying:
                with attempt:
                    await self._session(on_change, on_cookie)

    async def fetch(self, uuid: str) -> SourceObject | None:
        """One entry by entryUUID, read now; its groups or members as the index knows them (a
        full read if the index does not hold it yet). None if the filters select no such entry."""
        entry = await asyncio.to_thread(_read_one, self.settings, uuid.lower())
        if entry is None:
            return None
        index = self._state.index
        if not index.has(entry.uuid):
            return (await self.scan()).get((entry.object_type, entry.uuid))
        known = index.object(entry.uuid)
        return SourceObject(entry.object_type, entry.uuid, entry.attributes,
                            memberships=known.memberships, members=known.members)

    def close(self) -> None:
        """Stop the sync thread (it notices within half a second). The source cannot watch again."""
        self._closed = True
        for thread, stop in self._threads:
            stop.set()
            thread.join(timeout=_POLL_SECONDS + 2 * self.settings.timeout)
        self._threads.clear()

    async def _session(self, on_change: OnChange, on_cookie: OnCookie) -> None:
        """One sync search until its connection ends. Returns normally if it got past the refresh
        (the caller reconnects at once); raises LdapUnavailableError if it did not (backoff)."""
        if self._closed:
            return
        state = self._state
        if state.cookie is not None and not len(state.index):
            await self._seed()
        queue: asyncio.Queue[_Event] = asyncio.Queue()
        stop = self._start_thread(queue)
        state.stats.sessions += 1
        log.info("ldap sync connecting", url=self.settings.url, base_dn=self.settings.base_dn,
                 resumed=state.cookie is not None)
        session = _Session(state, on_change, on_cookie, self.settings.url)
        try:
            await session.run(queue)
        except _RefreshRequiredError:
            log.warning("ldap server no longer knows the cookie; syncing from scratch", url=self.settings.url)
            state.cookie = None
            raise
        except LdapUnavailableError as exc:
            if not session.refreshed:
                raise
            log.warning("ldap sync connection lost; reconnecting", url=self.settings.url, reason=str(exc))
        finally:
            stop.set()
            if session.dirty:
                # The index holds changes whose cookie was not handed out: the server sends them
                # again, and the index must not hide from that replay what they changed.
                state.forget_downstream()

    async def _seed(self) -> None:
        entries = await asyncio.to_thread(_read_entries, self.settings)
        self._state.index.load(entries, cold=True)
        self._state.blind = True
        self._state.stats.seeded += len(entries)
        log.info("ldap index filled before resuming", url=self.settings.url, entries=len(entries))

    def _start_thread(self, queue: asyncio.Queue[_Event]) -> threading.Event:
        loop = asyncio.get_running_loop()
        stop = threading.Event()

        def send(event: _Event) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed while the thread was ending
                loop.call_soon_threadsafe(queue.put_nowait, event)

        thread = threading.Thread(target=_sync_thread, args=(self.settings, self._state.cookie, send, stop),
                                  name="ldap-syncrepl", daemon=True)
        self._threads = [(t, s) for t, s in self._threads if t.is_alive()] + [(thread, stop)]
        thread.start()
        return stop


class LdapDirectory(DirectorySource):
    """An ``LdapSource`` behind the interface the ingest loop drives; the position is the cookie."""

    def __init__(self, name: str, settings: LdapSettings, *, full_scan_interval: float = 600.0) -> None:
        self.name = name
        self.settings = settings
        self.full_scan_interval = full_scan_interval
        self.reconnect_initial = settings.reconnect_initial
        self.reconnect_max = settings.reconnect_max
        self.source: LdapSource | None = None

    async def start(self, position: bytes | None) -> None:
        self.source = LdapSource(self.settings, cookie=position)
        log.info("ldap source starting", source=self.name, url=self.settings.url,
                 base_dn=self.settings.base_dn, resumed=position is not None)

    async def scan(self) -> Snapshot:
        return await self._source().scan()

    async def watch(self, on_change: OnChange, on_position: OnPosition) -> None:
        await self._source().watch(on_change, on_position)

    async def fetch(self, object_id: str, object_type: ObjectType) -> SourceObject | None:
        found = await self._source().fetch(object_id)
        return found if found is not None and found.object_type == object_type else None

    async def close(self) -> None:
        if self.source is not None:
            await asyncio.to_thread(self.source.close)

    def _source(self) -> LdapSource:
        if self.source is None:
            raise RuntimeError(f"LdapDirectory {self.name}: start() was not called")
        return self.source


_Plan = dict[str, tuple[Operation, SourceObject | None]]


class _Session:
    """Applies what one sync search sends, in order: collected during the refresh, live after it."""

    def __init__(self, state: _SyncState, on_change: OnChange, on_cookie: OnCookie, url: str) -> None:
        self.state = state
        self.url = url
        self.on_change = on_change
        self.on_cookie = on_cookie
        self.refreshed = False
        self.dirty = False
        self.full = state.cookie is None  # the server sends all content; what it leaves out is gone
        self.pending: _Plan = {}
        self.presented: set[str] = set()
        self.cookie: bytes | None = None

    async def run(self, queue: asyncio.Queue[_Event]) -> None:
        while True:
            event = await queue.get()
            if isinstance(event, _End):
                if event.error is not None:
                    raise event.error
                return
            self._apply(event)
            if self.refreshed:
                await self._flush()

    def _apply(self, event: _Event) -> None:
        match event:
            case _Upsert(entry):
                self._upsert(entry)
            case _Delete(uuids):
                self._delete(uuids)
            case _Present(uuids, refresh_deletes):
                self._present(uuids, refresh_deletes)
            case _Cookie(value):
                self.cookie = value
            case _RefreshDone():
                self.refreshed = True
                log.info("ldap sync refresh done", url=self.url, changes=len(self.pending),
                         entries=len(self.state.index))

    def _upsert(self, entry: LdapEntry) -> None:
        stats = self.state.stats
        if self.refreshed:
            stats.persisted += 1
        else:
            stats.refreshed += 1
        self.dirty = True
        for uuid in self.state.index.upsert(entry):
            self._plan(uuid, "upsert", None)

    def _delete(self, uuids: Iterable[str]) -> None:
        index = self.state.index
        for uuid in uuids:
            self.dirty = True
            self.state.stats.deletes += 1
            gone, affected = index.delete(uuid)
            if gone is None and self.state.blind and not self.refreshed:
                gone = index.forgotten(uuid)
            if gone is not None:
                self._plan(uuid, "delete", gone)
            for other in affected:
                self._plan(other, "upsert", None)

    def _present(self, uuids: tuple[str, ...] | None, refresh_deletes: bool) -> None:
        if uuids is not None:
            self.presented.update(uuids)
            return
        if not refresh_deletes or self.full:
            # The end of a present phase, or of a sync from scratch: what the server did not
            # name is gone.
            self._delete(sorted(self.state.index.uuids() - self.presented))
        self.presented.clear()

    def _plan(self, uuid: str, op: Operation, gone: SourceObject | None) -> None:
        self.pending.pop(uuid, None)  # the latest change of an object goes last
        self.pending[uuid] = (op, gone)

    async def _flush(self) -> None:
        pending, self.pending = self.pending, {}
        for uuid, (op, gone) in pending.items():
            await self._emit(uuid, op, gone)
        cookie, self.cookie = self.cookie, None
        if cookie is None:
            return
        self.state.blind = False
        if cookie != self.state.cookie:
            await self.on_cookie(cookie)
            self.state.cookie = cookie
        self.dirty = False

    async def _emit(self, uuid: str, op: Operation, gone: SourceObject | None) -> None:
        """Hand one change to ``on_change``; an upsert only if something visible changed."""
        state = self.state
        if op == "delete" and gone is not None:
            state.emitted.pop(uuid, None)
            await self.on_change("delete", gone)
        elif op == "upsert" and state.index.has(uuid):
            obj = state.index.object(uuid)
            fingerprint = obj.fingerprint()
            if state.emitted.get(uuid) == fingerprint:
                return
            await self.on_change("upsert", obj)
            state.emitted[uuid] = fingerprint
        else:
            return
        state.stats.emitted += 1


# -- the LDAP boundary: python-ldap objects are Any from here on --------------------------------


def _connect(settings: LdapSettings, factory: Callable[[str], Any] = ldap.initialize) -> Any:
    """A bound connection, or LdapSourceError (never with the password in it)."""
    conn = factory(settings.url)
    try:
        conn.set_option(ldap.OPT_PROTOCOL_VERSION, 3)
        conn.set_option(ldap.OPT_REFERRALS, 0)
        conn.set_option(ldap.OPT_NETWORK_TIMEOUT, settings.timeout)
        _keepalive(conn)
        conn.simple_bind_s(settings.bind_dn, settings.password)
    except ldap.LDAPError as exc:
        with contextlib.suppress(ldap.LDAPError):
            conn.unbind_s()
        raise _wrap(settings, "bind", exc) from None
    return conn


def _keepalive(conn: Any) -> None:
    # A persist search is silent while nothing changes: TCP keepalive notices a dead peer.
    for option, value in (("OPT_X_KEEPALIVE_IDLE", 60), ("OPT_X_KEEPALIVE_PROBES", 3),
                          ("OPT_X_KEEPALIVE_INTERVAL", 10)):
        if hasattr(ldap, option):
            conn.set_option(getattr(ldap, option), value)


def _read_entries(settings: LdapSettings) -> list[LdapEntry]:
    """Every entry the filters select, read with the simple paged results control."""
    conn = _connect(settings)
    try:
        return [make_entry(settings, dn, attrs, _uuid_of(dn, attrs)) for dn, attrs in _paged(conn, settings)]
    except ldap.LDAPError as exc:
        raise _wrap(settings, "search", exc) from None
    finally:
        with contextlib.suppress(ldap.LDAPError):
            conn.unbind_s()


def _read_one(settings: LdapSettings, uuid: str) -> LdapEntry | None:
    """The entry with this entryUUID that the filters select, or None."""
    conn = _connect(settings)
    try:
        wanted = f"(&{settings.search_filter}(entryUUID={ldap.filter.escape_filter_chars(uuid)}))"
        results = conn.search_ext_s(settings.base_dn, ldap.SCOPE_SUBTREE, wanted,
                                    [*settings.request_attributes, "entryUUID"], timeout=settings.timeout)
    except ldap.LDAPError as exc:
        raise _wrap(settings, "search", exc) from None
    finally:
        with contextlib.suppress(ldap.LDAPError):
            conn.unbind_s()
    found = [(dn, attrs) for dn, attrs in results if dn is not None]
    return make_entry(settings, *found[0], _uuid_of(*found[0])) if found else None


def _paged(conn: Any, settings: LdapSettings) -> Iterator[tuple[str, dict[str, list[bytes]]]]:
    page = SimplePagedResultsControl(True, size=_PAGE_SIZE, cookie=b"")
    attrs = [*settings.request_attributes, "entryUUID"]
    while True:
        msgid = conn.search_ext(settings.base_dn, ldap.SCOPE_SUBTREE, settings.search_filter, attrs,
                                serverctrls=[page])
        _, results, _, controls = conn.result3(msgid, timeout=settings.timeout)
        yield from ((dn, attrs) for dn, attrs in results if dn is not None)  # None: a referral
        page.cookie = next((c.cookie for c in controls if c.controlType == page.controlType), b"")
        if not page.cookie:
            return


def _uuid_of(dn: str, attrs: dict[str, list[bytes]]) -> str:
    values = attrs.get("entryUUID")
    if not values:
        # Skipping it would look like a deletion downstream: refuse the whole read instead.
        raise LdapSourceError(f"LDAP entry {dn} came without entryUUID: the bind DN needs read access to it")
    return values[0].decode("ascii").lower()


class _Consumer(ldap.ldapobject.LDAPObject, ldap.syncrepl.SyncreplConsumer):  # type: ignore[misc]
    """python-ldap's syncrepl consumer, forwarding each callback as an event."""

    def __init__(self, url: str, settings: LdapSettings, send: Callable[[_Event], None]) -> None:
        super().__init__(url)
        self._settings = settings
        self._send = send

    def syncrepl_get_cookie(self) -> None:
        return None  # the cookie is passed to syncrepl_search explicitly

    def syncrepl_set_cookie(self, cookie: str | bytes) -> None:
        # pyasn1 decodes the OCTET STRING as latin-1; encoding back gives the server's bytes.
        self._send(_Cookie(cookie if isinstance(cookie, bytes) else cookie.encode("latin-1")))

    def syncrepl_entry(self, dn: str, attrs: dict[str, list[bytes]], uuid: str) -> None:
        self._send(_Upsert(make_entry(self._settings, dn, attrs, uuid)))

    def syncrepl_delete(self, uuids: list[str]) -> None:
        self._send(_Delete(tuple(u.lower() for u in uuids)))

    def syncrepl_present(self, uuids: list[str] | None, refreshDeletes: bool = False) -> None:  # noqa: N803 - python-ldap's name
        self._send(_Present(None if uuids is None else tuple(u.lower() for u in uuids), refreshDeletes))

    def syncrepl_refreshdone(self) -> None:
        self._send(_RefreshDone())


def _sync_thread(settings: LdapSettings, cookie: bytes | None, send: Callable[[_Event], None],
                 stop: threading.Event) -> None:
    """The thread: one refreshAndPersist search until stopped or the connection ends."""
    error: BaseException | None = None
    try:
        _sync(settings, cookie, send, stop)
    except ldap.LDAPError as exc:
        error = _wrap(settings, "sync", exc)
    except BaseException as exc:  # ours (from _connect), or a bug: watch() raises it either way
        error = exc
    send(_End(error))


def _sync(settings: LdapSettings, cookie: bytes | None, send: Callable[[_Event], None],
          stop: threading.Event) -> None:
    conn = _connect(settings, lambda url: _Consumer(url, settings, send))
    try:
        msgid = conn.syncrepl_search(settings.base_dn, ldap.SCOPE_SUBTREE, mode="refreshAndPersist",
                                     cookie=cookie, filterstr=settings.search_filter,
                                     attrlist=settings.request_attributes)
        while not stop.is_set():
            try:
                if not conn.syncrepl_poll(msgid=msgid, timeout=_POLL_SECONDS):
                    raise LdapUnavailableError(f"LDAP {settings.url}: the server ended the sync search")
            except ldap.TIMEOUT:
                continue
    finally:
        with contextlib.suppress(ldap.LDAPError):
            conn.unbind_s()


_TRANSIENT = (ldap.SERVER_DOWN, ldap.CONNECT_ERROR, ldap.TIMEOUT, ldap.UNAVAILABLE, ldap.BUSY,
              ldap.UNWILLING_TO_PERFORM, ldap.ADMINLIMIT_EXCEEDED, ldap.TIMELIMIT_EXCEEDED)


def _wrap(settings: LdapSettings, what: str, exc: Any) -> LdapSourceError:
    """A python-ldap error as ours: its description and the server's diagnostic, nothing else."""
    details = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
    reason = str(details.get("desc") or type(exc).__name__)
    if details.get("info"):
        reason = f"{reason} ({details['info']})"
    message = f"LDAP {what} at {settings.url} (base {settings.base_dn}, as {settings.bind_dn}): {reason}"
    if details.get("result") == _SYNC_REFRESH_REQUIRED:
        return _RefreshRequiredError(message)
    if isinstance(exc, _TRANSIENT):
        return LdapUnavailableError(message)
    return LdapSourceError(message)
