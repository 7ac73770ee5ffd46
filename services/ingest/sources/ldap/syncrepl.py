"""The syncrepl session: one RFC 4533 refreshAndPersist search, and applying what it sends.

The search runs in a thread (python-ldap's ``SyncreplConsumer`` blocks), which forwards each
callback as an ``Event`` to the event loop through an ``asyncio.Queue``. There ``Session``
applies the events in order to the ``DirectoryIndex``: collected during the refresh phase,
live after it. A new cookie is handed to ``on_cookie`` only after every change it covers went
through ``on_change``, so a cookie persisted by the caller never skips a change.
``SyncState`` is what outlives one connection (the index, what downstream has seen, the
cookie handed out).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import ldap  # type: ignore[import-untyped]
import ldap.ldapobject  # type: ignore[import-untyped]
import ldap.syncrepl  # type: ignore[import-untyped]
import structlog

from services.ingest.objects import SourceObject
from services.ingest.sources.base import OnChange, Operation
from services.ingest.sources.ldap.connection import (
    LdapUnavailableError,
    connect,
    entry_shape,
    request_attributes,
    search_filter,
    wrap,
)
from services.ingest.sources.ldap.index import DirectoryIndex, EntryShape, LdapEntry, make_entry
from services.runtime.config import LdapSource as LdapSourceConfig

__all__ = ["POLL_SECONDS", "Event", "LdapStats", "OnCookie", "Session", "SyncState", "sync_thread"]

log = structlog.get_logger("scimflow.ingest.ldap")

OnCookie = Callable[[bytes], Awaitable[None]]

POLL_SECONDS = 0.5  # how long the sync thread blocks in libldap before looking at its stop flag


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


Event = _Upsert | _Delete | _Present | _Cookie | _RefreshDone | _End


@dataclass
class SyncState:
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


_Plan = dict[str, tuple[Operation, SourceObject | None]]


class Session:
    """Applies what one sync search sends, in order: collected during the refresh, live after it."""

    def __init__(self, state: SyncState, on_change: OnChange, on_cookie: OnCookie, url: str) -> None:
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

    async def run(self, queue: asyncio.Queue[Event]) -> None:
        while True:
            event = await queue.get()
            if isinstance(event, _End):
                if event.error is not None:
                    raise event.error
                return
            self._apply(event)
            if self.refreshed:
                await self._flush()

    def _apply(self, event: Event) -> None:
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


# -- the sync thread: python-ldap objects are Any from here on ----------------------------------


class _Consumer(ldap.ldapobject.LDAPObject, ldap.syncrepl.SyncreplConsumer):  # type: ignore[misc]
    """python-ldap's syncrepl consumer, forwarding each callback as an event."""

    def __init__(self, url: str, shape: EntryShape, send: Callable[[Event], None]) -> None:
        super().__init__(url)
        self._shape = shape
        self._send = send

    def syncrepl_get_cookie(self) -> None:
        return None  # the cookie is passed to syncrepl_search explicitly

    def syncrepl_set_cookie(self, cookie: str | bytes) -> None:
        # pyasn1 decodes the OCTET STRING as latin-1; encoding back gives the server's bytes.
        self._send(_Cookie(cookie if isinstance(cookie, bytes) else cookie.encode("latin-1")))

    def syncrepl_entry(self, dn: str, attrs: dict[str, list[bytes]], uuid: str) -> None:
        self._send(_Upsert(make_entry(self._shape, dn, attrs, uuid)))

    def syncrepl_delete(self, uuids: list[str]) -> None:
        self._send(_Delete(tuple(u.lower() for u in uuids)))

    def syncrepl_present(self, uuids: list[str] | None, refreshDeletes: bool = False) -> None:  # noqa: N803 - python-ldap's name
        self._send(_Present(None if uuids is None else tuple(u.lower() for u in uuids), refreshDeletes))

    def syncrepl_refreshdone(self) -> None:
        self._send(_RefreshDone())


def sync_thread(settings: LdapSourceConfig, password: str, cookie: bytes | None,
                send: Callable[[Event], None], stop: threading.Event) -> None:
    """The thread: one refreshAndPersist search until stopped or the connection ends."""
    error: BaseException | None = None
    try:
        _sync(settings, password, cookie, send, stop)
    except ldap.LDAPError as exc:
        error = wrap(settings, "sync", exc)
    except BaseException as exc:  # ours (from connect), or a bug: watch() raises it either way
        error = exc
    send(_End(error))


def _sync(settings: LdapSourceConfig, password: str, cookie: bytes | None, send: Callable[[Event], None],
          stop: threading.Event) -> None:
    shape = entry_shape(settings)
    conn = connect(settings, password, lambda url: _Consumer(url, shape, send))
    try:
        msgid = conn.syncrepl_search(settings.base_dn, ldap.SCOPE_SUBTREE, mode="refreshAndPersist",
                                     cookie=cookie, filterstr=search_filter(settings),
                                     attrlist=request_attributes(settings))
        while not stop.is_set():
            try:
                if not conn.syncrepl_poll(msgid=msgid, timeout=POLL_SECONDS):
                    raise LdapUnavailableError(f"LDAP {settings.url}: the server ended the sync search")
            except ldap.TIMEOUT:
                continue
    finally:
        with contextlib.suppress(ldap.LDAPError):
            conn.unbind_s()
