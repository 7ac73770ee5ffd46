"""Reaching the LDAP server: the defaults for the source's unset settings, its errors, binding
and plain searches.

The settings are the ``LdapSource`` Struct of ``services/runtime/config.py``; its optional
search keys left unset (``None``) take the defaults below. The bind password is resolved by the
caller and passed separately (the Struct holds only its reference).

Everything python-ldap raises is wrapped here in ``LdapSourceError`` (``LdapUnavailableError``
when a retry may help), with the server's diagnostic and never the password. python-ldap
has no type annotations; its objects are ``Any`` in this module and in ``syncrepl``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import ldap  # type: ignore[import-untyped]
import ldap.filter  # type: ignore[import-untyped]
from ldap.controls import SimplePagedResultsControl  # type: ignore[import-untyped]

from services.ingest.sources.base import SourceError, SourceUnavailableError
from services.ingest.sources.ldap.index import EntryShape, LdapEntry, make_entry
from services.runtime.config import LdapSource as LdapSourceConfig

__all__ = [
    "DEFAULT_ATTRIBUTES",
    "DEFAULT_GROUP_CLASSES",
    "DEFAULT_GROUP_FILTER",
    "DEFAULT_MEMBER_ATTRIBUTES",
    "DEFAULT_USER_FILTER",
    "LdapSourceError",
    "LdapUnavailableError",
    "RefreshRequiredError",
    "connect",
    "entry_shape",
    "read_entries",
    "read_one",
    "request_attributes",
    "search_filter",
    "wrap",
]

DEFAULT_ATTRIBUTES = (
    "uid", "cn", "sn", "givenName", "displayName", "mail", "title", "departmentNumber",
    "employeeNumber", "employeeType", "telephoneNumber", "mobile", "o", "ou", "l", "manager",
    "preferredLanguage", "description",
)
_PAGE_SIZE = 500
_SYNC_REFRESH_REQUIRED = 4096  # RFC 4533 e-syncRefreshRequired: the cookie is too old


DEFAULT_USER_FILTER = "(objectClass=inetOrgPerson)"
DEFAULT_GROUP_FILTER = "(|(objectClass=groupOfNames)(objectClass=groupOfUniqueNames))"
DEFAULT_GROUP_CLASSES = ("groupOfNames", "groupOfUniqueNames")
"""An entry the filters select is a group if it has one of these object classes."""
DEFAULT_MEMBER_ATTRIBUTES = ("member", "uniqueMember")


def entry_shape(settings: LdapSourceConfig) -> EntryShape:
    """The settings' attribute lists, each one its default when unset."""
    return EntryShape(tuple(settings.attributes or DEFAULT_ATTRIBUTES),
                      tuple(settings.group_classes or DEFAULT_GROUP_CLASSES),
                      tuple(settings.member_attributes or DEFAULT_MEMBER_ATTRIBUTES))


def search_filter(settings: LdapSourceConfig) -> str:
    """Users or groups: the filter every search of the source uses."""
    return f"(|{settings.user_filter or DEFAULT_USER_FILTER}{settings.group_filter or DEFAULT_GROUP_FILTER})"


def request_attributes(settings: LdapSourceConfig) -> list[str]:
    shape = entry_shape(settings)
    return [*shape.attributes, "objectClass", *shape.member_attributes]


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


class RefreshRequiredError(LdapUnavailableError):
    """The server no longer knows our cookie; sync again from scratch."""


def connect(settings: LdapSourceConfig, password: str,
            factory: Callable[[str], Any] = ldap.initialize) -> Any:
    """A bound connection (``password`` is the resolved one), or LdapSourceError (never with
    the password in it)."""
    conn = factory(settings.url)
    try:
        conn.set_option(ldap.OPT_PROTOCOL_VERSION, 3)
        conn.set_option(ldap.OPT_REFERRALS, 0)
        conn.set_option(ldap.OPT_NETWORK_TIMEOUT, settings.timeout)
        _keepalive(conn)
        conn.simple_bind_s(settings.bind_dn, password)
    except ldap.LDAPError as exc:
        with contextlib.suppress(ldap.LDAPError):
            conn.unbind_s()
        raise wrap(settings, "bind", exc) from None
    return conn


def _keepalive(conn: Any) -> None:
    # A persist search is silent while nothing changes: TCP keepalive notices a dead peer.
    for option, value in (("OPT_X_KEEPALIVE_IDLE", 60), ("OPT_X_KEEPALIVE_PROBES", 3),
                          ("OPT_X_KEEPALIVE_INTERVAL", 10)):
        if hasattr(ldap, option):
            conn.set_option(getattr(ldap, option), value)


def read_entries(settings: LdapSourceConfig, password: str) -> list[LdapEntry]:
    """Every entry the filters select, read with the simple paged results control."""
    conn = connect(settings, password)
    shape = entry_shape(settings)
    try:
        return [make_entry(shape, dn, attrs, _uuid_of(dn, attrs)) for dn, attrs in _paged(conn, settings)]
    except ldap.LDAPError as exc:
        raise wrap(settings, "search", exc) from None
    finally:
        with contextlib.suppress(ldap.LDAPError):
            conn.unbind_s()


def read_one(settings: LdapSourceConfig, password: str, uuid: str) -> LdapEntry | None:
    """The entry with this entryUUID that the filters select, or None."""
    conn = connect(settings, password)
    try:
        wanted = f"(&{search_filter(settings)}(entryUUID={ldap.filter.escape_filter_chars(uuid)}))"
        results = conn.search_ext_s(settings.base_dn, ldap.SCOPE_SUBTREE, wanted,
                                    [*request_attributes(settings), "entryUUID"], timeout=settings.timeout)
    except ldap.LDAPError as exc:
        raise wrap(settings, "search", exc) from None
    finally:
        with contextlib.suppress(ldap.LDAPError):
            conn.unbind_s()
    found = [(dn, attrs) for dn, attrs in results if dn is not None]
    return make_entry(entry_shape(settings), *found[0], _uuid_of(*found[0])) if found else None


def _paged(conn: Any, settings: LdapSourceConfig) -> Iterator[tuple[str, dict[str, list[bytes]]]]:
    page = SimplePagedResultsControl(True, size=_PAGE_SIZE, cookie=b"")
    attrs = [*request_attributes(settings), "entryUUID"]
    while True:
        msgid = conn.search_ext(settings.base_dn, ldap.SCOPE_SUBTREE, search_filter(settings), attrs,
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


_TRANSIENT = (ldap.SERVER_DOWN, ldap.CONNECT_ERROR, ldap.TIMEOUT, ldap.UNAVAILABLE, ldap.BUSY,
              ldap.UNWILLING_TO_PERFORM, ldap.ADMINLIMIT_EXCEEDED, ldap.TIMELIMIT_EXCEEDED)


def wrap(settings: LdapSourceConfig, what: str, exc: Any) -> LdapSourceError:
    """A python-ldap error as ours: its description and the server's diagnostic, nothing else."""
    details = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
    reason = str(details.get("desc") or type(exc).__name__)
    if details.get("info"):
        reason = f"{reason} ({details['info']})"
    message = f"LDAP {what} at {settings.url} (base {settings.base_dn}, as {settings.bind_dn}): {reason}"
    if details.get("result") == _SYNC_REFRESH_REQUIRED:
        return RefreshRequiredError(message)
    if isinstance(exc, _TRANSIENT):
        return LdapUnavailableError(message)
    return LdapSourceError(message)
