"""The Active Directory source: users and groups through the DirSync control.

DirSync (LDAP control ``1.2.840.113556.1.4.841``, [MS-ADTS] 3.1.1.3.4.1.3) is how AD tells a
client what changed since a cookie: a search of the naming context with the control
returns the objects changed since the cookie (from an empty cookie: every object) with
the attributes that changed, and a new cookie; ``moreResults`` says to search again at
once. Deleted objects come back as tombstones (``isDeleted: TRUE``) when the search also
carries the show-deleted control (``1.2.840.113556.1.4.417``). python-ldap has no DirSync
class, so the control value is built and read here with pyasn1 (BER)::

    DirSyncRequestValue  ::= SEQUENCE { Flags INTEGER, MaxBytes INTEGER, Cookie OCTET STRING }
    DirSyncResponseValue ::= SEQUENCE { MoreResults INTEGER, unused INTEGER, CookieServer OCTET STRING }

Objects are keyed by ``objectGUID`` (as a GUID string; it survives renames and moves).
``userAccountControl`` bit 2 (ACCOUNTDISABLE) becomes ``accountEnabled: false``. Because
DirSync sends only changed attributes, the source keeps an index (GUID -> attributes, DN ->
GUID, group -> member DNs) to publish each object's whole state and users' memberships. The
position is the DirSync cookie. A restarted ingest fills the index from a DirSync from
scratch (publishing nothing) and then resumes from the stored cookie.

The bind account needs the "Replicating Directory Changes" right on the domain (or use
``LDAP_DIRSYNC_OBJECT_SECURITY``, not done here); the search base must be the naming context
(the domain DN), as DirSync requires.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import ldap  # type: ignore[import-untyped]
import structlog
from ldap.controls import LDAPControl, RequestControl, ResponseControl  # type: ignore[import-untyped]
from pyasn1.codec.ber import decoder, encoder  # type: ignore[import-untyped]
from pyasn1.type import namedtype, univ  # type: ignore[import-untyped]

from services.ingest.objects import ObjectType, Snapshot, SourceObject
from services.ingest.sources.base import (
    DirectorySource,
    OnChange,
    OnPosition,
    Operation,
    SourceError,
    SourceUnavailableError,
)
from services.ingest.sources.ldap.index import normalize_dn
from services.runtime.config import ActiveDirectorySource

__all__ = [
    "DIRSYNC_OID",
    "SHOW_DELETED_OID",
    "AdDirectory",
    "AdIndex",
    "AdSourceError",
    "DirSyncRequest",
    "DirSyncResponse",
    "attributes",
    "decode_entry",
    "guid_text",
    "search_filter",
]

log = structlog.get_logger("scimflow.ingest.ad")

DIRSYNC_OID = "1.2.840.113556.1.4.841"
SHOW_DELETED_OID = "1.2.840.113556.1.4.417"
ACCOUNTDISABLE = 0x2
DEFAULT_ATTRIBUTES = (
    "sAMAccountName", "userPrincipalName", "cn", "name", "givenName", "sn", "displayName", "mail",
    "title", "department", "company", "employeeID", "employeeNumber", "telephoneNumber", "mobile",
    "manager", "description", "physicalDeliveryOfficeName", "l", "c", "co",
)
_MAX_BYTES = 1_048_576
_SYSTEM = ("objectGUID", "objectClass", "isDeleted", "userAccountControl", "member")


class _DirSyncValue(univ.Sequence):  # type: ignore[misc]
    componentType = namedtype.NamedTypes(  # noqa: N815 - pyasn1's name
        namedtype.NamedType("flags", univ.Integer()),
        namedtype.NamedType("maxBytes", univ.Integer()),
        namedtype.NamedType("cookie", univ.OctetString()),
    )


class DirSyncRequest(RequestControl):  # type: ignore[misc]
    """The DirSync request control: flags, the most bytes per answer, the cookie (empty: all)."""

    def __init__(self, cookie: bytes = b"", *, flags: int = 0, max_bytes: int = _MAX_BYTES,
                 criticality: bool = True) -> None:
        super().__init__(DIRSYNC_OID, criticality)
        self.cookie, self.flags, self.max_bytes = cookie, flags, max_bytes

    def encodeControlValue(self) -> bytes:  # noqa: N802 - python-ldap's name
        value = _DirSyncValue()
        value["flags"] = self.flags
        value["maxBytes"] = self.max_bytes
        value["cookie"] = self.cookie
        encoded: bytes = encoder.encode(value)
        return encoded


class DirSyncResponse(ResponseControl):  # type: ignore[misc]
    """The DirSync response control: more results to fetch now?, and the new cookie."""

    controlType = DIRSYNC_OID  # noqa: N815 - python-ldap's name

    def __init__(self, controlType: str = DIRSYNC_OID, criticality: bool = False,  # noqa: N803 - python-ldap's name
                 encodedControlValue: bytes | None = None) -> None:  # noqa: N803
        super().__init__(controlType, criticality)
        self.more = False
        self.cookie = b""
        if encodedControlValue is not None:
            self.decodeControlValue(encodedControlValue)

    def decodeControlValue(self, encoded: bytes) -> None:  # noqa: N802 - python-ldap's name
        value, _ = decoder.decode(encoded, asn1Spec=_DirSyncValue())
        self.more = int(value["flags"]) != 0
        self.cookie = bytes(value["cookie"])


class AdSourceError(SourceError):
    """AD refused what we asked (credentials, rights, base DN, filter): retrying will not help."""

    code = "AdSourceFailed"
    recommended_action = ("Check the AD source's url, base_dn (the domain's DN), bind_dn and password, "
                          "and that the account has the Replicating Directory Changes right.")


class AdUnavailableError(AdSourceError, SourceUnavailableError):
    code = "AdUnavailable"
    recommended_action = "None needed if it recovers; otherwise check that the domain controller is up."


def attributes(settings: ActiveDirectorySource) -> tuple[str, ...]:
    """The attributes read: the configured ones, or ``DEFAULT_ATTRIBUTES`` when unset."""
    return tuple(settings.attributes or DEFAULT_ATTRIBUTES)


def search_filter(settings: ActiveDirectorySource) -> str:
    # Tombstones keep objectClass but lose objectCategory: match them separately.
    return f"(|{settings.user_filter}{settings.group_filter}(isDeleted=TRUE))"


# -- decoding (pure) -----------------------------------------------------------------------------


def guid_text(raw: bytes) -> str:
    """An objectGUID (16 bytes, the first three fields little-endian) as AD writes it."""
    return str(uuid.UUID(bytes_le=raw))


@dataclass(frozen=True)
class AdEntry:
    """One DirSync result: what changed of one object."""

    guid: str
    dn: str
    deleted: bool
    object_type: ObjectType | None
    """None when the result does not say (a change that did not include objectClass)."""
    attributes: dict[str, Any]
    members: frozenset[str] | None = None
    """Normalized member DNs, when the result carries ``member`` (a group's full list)."""


def decode_entry(dn: str, attrs: dict[str, list[bytes]], names: Iterable[str]) -> AdEntry:
    """A DirSync result entry (python-ldap's ``{name: [bytes]}``) decoded."""
    by_name = {k.lower(): v for k, v in attrs.items()}
    guid_raw = (by_name.get("objectguid") or [b""])[0]
    if len(guid_raw) != 16:
        raise AdSourceError(f"AD entry {dn} came without a 16-byte objectGUID")
    classes = {v.decode("utf-8", "replace").lower() for v in by_name.get("objectclass", [])}
    kind: ObjectType | None = "group" if "group" in classes else "user" if "user" in classes else None
    deleted = (by_name.get("isdeleted") or [b"FALSE"])[0].upper() == b"TRUE"
    attributes: dict[str, Any] = {"dn": dn}
    for name in names:
        if (values := by_name.get(name.lower())) is not None:
            texts = [_text(v) for v in values]
            attributes[name] = texts[0] if len(texts) == 1 else texts
    if (uac := by_name.get("useraccountcontrol")) is not None:
        flags = int(uac[0])
        attributes["userAccountControl"] = flags
        attributes["accountEnabled"] = not flags & ACCOUNTDISABLE
    members = None
    if "member" in by_name or any(k.startswith("member;range=") for k in by_name):
        members = frozenset(normalize_dn(v.decode("utf-8", "replace")) for v in by_name.get("member", []))
    return AdEntry(guid_text(guid_raw), dn, deleted, kind, attributes, members)


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.hex()


class AdIndex:
    """The objects DirSync described so far; turns one result into the changes it makes."""

    def __init__(self) -> None:
        self.kinds: dict[str, ObjectType] = {}
        self.attributes: dict[str, dict[str, Any]] = {}
        self.dns: dict[str, str] = {}  # normalized DN (current or former) -> guid
        self.members: dict[str, frozenset[str]] = {}  # group guid -> member DNs
        self.blind = False
        """Catching up from a stored cookie over an index filled from scratch: a delete of an
        unknown GUID, and every member of a changed group, are still news downstream."""

    def ids(self) -> set[tuple[ObjectType, str]]:
        return {(kind, guid) for guid, kind in self.kinds.items()}

    def apply(self, entry: AdEntry) -> list[tuple[Operation, ObjectType, str]]:
        if entry.deleted:
            return self._delete(entry)
        kind = entry.object_type or self.kinds.get(entry.guid)
        if kind is None:
            return []  # a partial change of an object we never saw selected: not ours
        self.kinds[entry.guid] = kind
        attrs = self.attributes.setdefault(entry.guid, {})
        attrs.update(entry.attributes)
        self.dns[normalize_dn(entry.dn)] = entry.guid
        changes: list[tuple[Operation, ObjectType, str]] = [("upsert", kind, entry.guid)]
        if entry.members is not None:
            # Compared as GUIDs: AD rewrites a renamed member's DN in the group, not a change of members.
            before = self._resolve(self.members.get(entry.guid, frozenset()))
            self.members[entry.guid] = entry.members
            after = self._resolve(entry.members)
            moved = after if self.blind else before ^ after
            changes += [("upsert", "user", g) for g in sorted(moved) if self.kinds.get(g) == "user"]
        return changes

    def _delete(self, entry: AdEntry) -> list[tuple[Operation, ObjectType, str]]:
        guid = entry.guid
        kind = self.kinds.pop(guid, None)
        if kind is None:
            # A tombstone keeps its objectClass: only a user or group can be one of ours.
            if self.blind and entry.object_type is not None:
                return [("delete", entry.object_type, guid)]
            return []
        self.attributes.pop(guid, None)
        members = self.members.pop(guid, frozenset())
        changes: list[tuple[Operation, ObjectType, str]] = [("delete", kind, guid)]
        changes += [("upsert", "user", g) for g in self._resolve(members) if self.kinds.get(g) == "user"]
        keys = {dn for dn, owner in self.dns.items() if owner == guid}
        changes += [("upsert", "group", g) for g, m in self.members.items() if m & keys]
        return changes

    def object(self, kind: ObjectType, guid: str) -> SourceObject | None:
        if self.kinds.get(guid) != kind:
            return None
        attrs = {"objectGUID": guid, **self.attributes.get(guid, {})}
        if kind == "group":
            members = tuple(sorted(self._resolve(self.members.get(guid, frozenset()))))
            return SourceObject("group", guid, attrs, members=members)
        keys = {dn for dn, owner in self.dns.items() if owner == guid}
        groups = tuple(sorted(g for g, m in self.members.items() if m & keys and g in self.kinds))
        return SourceObject("user", guid, attrs, memberships=groups)

    def snapshot(self) -> Snapshot:
        objects = (self.object(kind, guid) for kind, guid in self.ids())
        return {obj.key: obj for obj in objects if obj is not None}

    def _resolve(self, dns: Iterable[str]) -> set[str]:
        return {g for dn in dns if (g := self.dns.get(dn)) is not None and g in self.kinds}


# -- the source ----------------------------------------------------------------------------------


Change = tuple[Operation, ObjectType, str]


class AdDirectory(DirectorySource):
    """An AD domain read with DirSync; the position is the DirSync cookie."""

    def __init__(self, settings: ActiveDirectorySource, password: str) -> None:
        """``password`` is the resolved bind password (``settings.password`` is only its reference)."""
        self.name = settings.name
        self.settings = settings
        self._password = password
        self.full_scan_interval = settings.full_scan_interval
        self.reconnect_initial = settings.reconnect_initial
        self.reconnect_max = settings.reconnect_max
        self.index = AdIndex()
        self.cookie: bytes | None = None
        self._seeded = False

    async def start(self, position: bytes | None) -> None:
        self.cookie = position or None
        log.info("ad source starting", source=self.name, url=self.settings.url,
                 resumed=self.cookie is not None)

    async def scan(self) -> Snapshot:
        index = AdIndex()
        entries, _ = await asyncio.to_thread(_dirsync, self.settings, self._password, b"")
        for entry in entries:
            index.apply(entry)
        return index.snapshot()

    async def watch(self, on_change: OnChange, on_position: OnPosition) -> None:
        while True:
            await self.sync(on_change, on_position)
            await asyncio.sleep(self.settings.poll_interval)

    async def sync(self, on_change: OnChange, on_position: OnPosition) -> None:
        """One DirSync round from the cookie (from scratch without one); publishes what changed."""
        if self.cookie is not None and not self._seeded:
            seed = AdIndex()
            for entry in (await asyncio.to_thread(_dirsync, self.settings, self._password, b""))[0]:
                seed.apply(entry)
            seed.blind, self.index = True, seed
        entries, cookie = await asyncio.to_thread(_dirsync, self.settings, self._password, self.cookie or b"")
        if self.cookie is None:
            self.index = AdIndex()
        changes: list[Change] = []
        for entry in entries:
            changes += self.index.apply(entry)
        await self._emit(changes, on_change)
        self.index.blind, self._seeded = False, True
        if cookie != self.cookie:
            await on_position(cookie)
            self.cookie = cookie

    async def fetch(self, object_id: str, object_type: ObjectType) -> SourceObject | None:
        """The object as the index has it (DirSync cannot read one object; the index follows it)."""
        return self.index.object(object_type, object_id)

    async def _emit(self, changes: list[Change], on_change: OnChange) -> None:
        latest: dict[tuple[ObjectType, str], Operation] = {}
        for op, kind, guid in changes:
            latest.pop((kind, guid), None)
            latest[(kind, guid)] = op
        for (kind, guid), op in latest.items():
            obj = self.index.object(kind, guid)
            if op == "delete" and obj is None:
                await on_change("delete", SourceObject(kind, guid, {}))
            elif op == "upsert" and obj is not None:
                await on_change("upsert", obj)


# -- the LDAP boundary -----------------------------------------------------------------------------


def _dirsync(settings: ActiveDirectorySource, password: str, cookie: bytes) -> tuple[list[AdEntry], bytes]:
    """Every DirSync result since ``cookie`` (following moreResults); and the last cookie."""
    conn = _connect(settings, password)
    read = attributes(settings)
    try:
        entries: list[AdEntry] = []
        while True:
            controls = [DirSyncRequest(cookie), LDAPControl(SHOW_DELETED_OID, True)]
            msgid = conn.search_ext(settings.base_dn, ldap.SCOPE_SUBTREE, search_filter(settings),
                                    [*read, *_SYSTEM], serverctrls=controls)
            _, results, _, response = conn.result3(msgid, timeout=settings.timeout,
                                                  resp_ctrl_classes={DIRSYNC_OID: DirSyncResponse})
            entries += [decode_entry(dn, attrs, read) for dn, attrs in results if dn]
            answer = next((c for c in response if c.controlType == DIRSYNC_OID), None)
            if answer is None:
                raise AdSourceError(f"AD {settings.url}: the server did not answer the DirSync control")
            cookie = answer.cookie
            if not answer.more:
                return entries, cookie
    except ldap.LDAPError as exc:
        raise _wrap(settings, exc) from None
    finally:
        with contextlib.suppress(ldap.LDAPError):
            conn.unbind_s()


def _connect(settings: ActiveDirectorySource, password: str) -> Any:
    conn = ldap.initialize(settings.url)
    try:
        conn.set_option(ldap.OPT_PROTOCOL_VERSION, 3)
        conn.set_option(ldap.OPT_REFERRALS, 0)
        conn.set_option(ldap.OPT_NETWORK_TIMEOUT, settings.timeout)
        conn.simple_bind_s(settings.bind_dn, password)
    except ldap.LDAPError as exc:
        with contextlib.suppress(ldap.LDAPError):
            conn.unbind_s()
        raise _wrap(settings, exc) from None
    return conn


_TRANSIENT = (ldap.SERVER_DOWN, ldap.CONNECT_ERROR, ldap.TIMEOUT, ldap.UNAVAILABLE, ldap.BUSY)


def _wrap(settings: ActiveDirectorySource, exc: Any) -> AdSourceError:
    details = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
    reason = str(details.get("desc") or type(exc).__name__)
    if details.get("info"):
        reason = f"{reason} ({details['info']})"
    message = f"AD DirSync at {settings.url} (base {settings.base_dn}, as {settings.bind_dn}): {reason}"
    return AdUnavailableError(message) if isinstance(exc, _TRANSIENT) else AdSourceError(message)

