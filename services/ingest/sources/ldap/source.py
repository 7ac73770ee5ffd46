"""The LDAP source: ``LdapSource`` reads and follows one directory, ``LdapDirectory`` is it
behind the interface the ingest loop drives (its position is the syncrepl cookie).

``scan`` is a normal paged search into a fresh index; ``watch`` runs syncrepl sessions
(``syncrepl.py``) one after another, reconnecting with backoff from the last cookie; on a
fresh process resuming from a stored cookie the index is first filled by a plain search
(nothing emitted for it). See the package docstring for what that can and cannot know.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

import stamina
import structlog

from services.ingest.objects import ObjectType, Snapshot, SourceObject
from services.ingest.sources.base import DirectorySource, OnChange, OnPosition
from services.ingest.sources.ldap.connection import (
    LdapUnavailableError,
    RefreshRequiredError,
    read_entries,
    read_one,
)
from services.ingest.sources.ldap.index import DirectoryIndex
from services.ingest.sources.ldap.syncrepl import (
    POLL_SECONDS,
    Event,
    LdapStats,
    OnCookie,
    Session,
    SyncState,
    sync_thread,
)
from services.runtime.config import LdapSource as LdapSourceConfig

__all__ = ["LdapDirectory", "LdapSource"]

log = structlog.get_logger("scimflow.ingest.ldap")


class LdapSource:
    """One LDAP directory: full reads with ``scan``, changes as they happen with ``watch``."""

    def __init__(self, settings: LdapSourceConfig, password: str, *, cookie: bytes | None = None) -> None:
        """``password`` is the resolved bind password (``settings.password`` is only its reference)."""
        self.settings = settings
        self._password = password
        self._state = SyncState(cookie)
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
        index.load(await asyncio.to_thread(read_entries, self.settings, self._password))
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
        entry = await asyncio.to_thread(read_one, self.settings, self._password, uuid.lower())
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
            thread.join(timeout=POLL_SECONDS + 2 * self.settings.timeout)
        self._threads.clear()

    async def _session(self, on_change: OnChange, on_cookie: OnCookie) -> None:
        """One sync search until its connection ends. Returns normally if it got past the refresh
        (the caller reconnects at once); raises LdapUnavailableError if it did not (backoff)."""
        if self._closed:
            return
        state = self._state
        if state.cookie is not None and not len(state.index):
            await self._seed()
        queue: asyncio.Queue[Event] = asyncio.Queue()
        stop = self._start_thread(queue)
        state.stats.sessions += 1
        log.info("ldap sync connecting", url=self.settings.url, base_dn=self.settings.base_dn,
                 resumed=state.cookie is not None)
        session = Session(state, on_change, on_cookie, self.settings.url)
        try:
            await session.run(queue)
        except RefreshRequiredError:
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
        entries = await asyncio.to_thread(read_entries, self.settings, self._password)
        self._state.index.load(entries, cold=True)
        self._state.blind = True
        self._state.stats.seeded += len(entries)
        log.info("ldap index filled before resuming", url=self.settings.url, entries=len(entries))

    def _start_thread(self, queue: asyncio.Queue[Event]) -> threading.Event:
        loop = asyncio.get_running_loop()
        stop = threading.Event()

        def send(event: Event) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed while the thread was ending
                loop.call_soon_threadsafe(queue.put_nowait, event)

        args = (self.settings, self._password, self._state.cookie, send, stop)
        thread = threading.Thread(target=sync_thread, args=args,
                                  name="ldap-syncrepl", daemon=True)
        self._threads = [(t, s) for t, s in self._threads if t.is_alive()] + [(thread, stop)]
        thread.start()
        return stop


class LdapDirectory(DirectorySource):
    """An ``LdapSource`` behind the interface the ingest loop drives; the position is the cookie."""

    def __init__(self, settings: LdapSourceConfig, password: str) -> None:
        """``password`` is the resolved bind password (``settings.password`` is only its reference)."""
        self.name = settings.name
        self.settings = settings
        self._password = password
        self.full_scan_interval = settings.full_scan_interval
        self.reconnect_initial = settings.reconnect_initial
        self.reconnect_max = settings.reconnect_max
        self.source: LdapSource | None = None

    async def start(self, position: bytes | None) -> None:
        self.source = LdapSource(self.settings, self._password, cookie=position)
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
