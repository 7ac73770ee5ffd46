"""A real, throwaway OpenLDAP ``slapd`` for tests: started and stopped by the tests themselves.

:func:`start_slapd` writes a fresh ``cn=config`` (mdb backend, the ``syncprov`` overlay
with a session log, one suffix and a root DN with a random password) into a temporary
directory, loads it with ``slapadd -n 0``, and runs ``slapd`` in the foreground on a free
loopback port as the current user. Nothing system-wide is read except the schema files and
modules the Debian packages install; nothing system-wide is written. :meth:`Slapd.stop`
stops the server (SIGTERM, then SIGKILL) and removes the directory; :meth:`Slapd.restart`
stops it and starts it again on the same port with the same data.

The helpers (:meth:`Slapd.add_user`, :meth:`Slapd.add_group`, :meth:`Slapd.modify`, ...)
write through the root DN with python-ldap, so the code under test sees the changes exactly
as it would see an administrator's.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import ldap  # type: ignore[import-untyped]
import ldap.modlist  # type: ignore[import-untyped]

from services.devstack.processes import free_port, spawn

__all__ = ["Entry", "Slapd", "SlapdError", "slapd_binary", "slapd_missing", "start_slapd"]

Entry = tuple[str, dict[str, str | list[str]]]
"""An entry to add: its DN and its attributes (``objectClass`` included)."""

_SCHEMA_DIRS = ("/etc/ldap/schema", "/etc/openldap/schema", "/usr/local/etc/openldap/schema")
_MODULE_DIRS = ("/usr/lib/ldap", "/usr/lib64/openldap", "/usr/lib/openldap", "/usr/local/libexec/openldap")
_SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/usr/libexec")
_SCHEMAS = ("core", "cosine", "inetorgperson")
_START_TIMEOUT = 15.0
_STOP_GRACE = 10.0


class SlapdError(RuntimeError):
    """slapd is not installed, or did not start."""


def slapd_binary(name: str = "slapd") -> str | None:
    """Where ``slapd`` (or ``slapadd``) is, also when ``/usr/sbin`` is not on PATH."""
    found = shutil.which(name)
    if found:
        return found
    for folder in _SBIN_DIRS:
        candidate = Path(folder) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def slapd_missing() -> str | None:
    """Why the slapd tests cannot run here, or None if they can."""
    if slapd_binary("slapd") is None or slapd_binary("slapadd") is None:
        return "OpenLDAP slapd is not installed: apt-get install slapd ldap-utils"
    return None


class Slapd:
    """A running slapd: where it answers, how to bind, and helpers to change entries."""

    def __init__(self, *, root: Path, port: int, base_dn: str, password: str, refint: bool = False) -> None:
        self.root = root
        self.refint = refint
        self.port = port
        self.base_dn = base_dn
        self.bind_dn = f"cn=admin,{base_dn}"
        self.password = password
        self.people_dn = f"ou=people,{base_dn}"
        self.groups_dn = f"ou=groups,{base_dn}"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start slapd on this instance's port and wait until a root bind succeeds."""
        self._process = spawn(
            [_require("slapd"), "-F", str(self.root / "slapd.d"), "-h", f"{self.url}/", "-d", "0"],
            self.root / "slapd.log")
        _LIVE.add(self)
        self._wait_until_ready()

    def stop(self) -> None:
        """Stop slapd (SIGTERM, then SIGKILL after a grace period), keeping the data."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=_STOP_GRACE)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop slapd and remove its directory. Idempotent."""
        _LIVE.discard(self)
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Slapd:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        # Never the password: reprs end up in test reports.
        return f"Slapd(url={self.url!r}, base_dn={self.base_dn!r}, running={self.running})"

    def log_tail(self, limit: int = 2000) -> str:
        try:
            text = (self.root / "slapd.log").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "<no log>"
        return text[-limit:].strip() or "<empty log>"

    # -- entries -----------------------------------------------------------------------------

    def add_user(self, uid: str, **attributes: str | list[str]) -> str:
        """Add an inetOrgPerson ``uid=<uid>`` under ``ou=people``; returns its DN."""
        return self.add_entries([self.user_entry(uid, **attributes)])[0]

    def user_entry(self, uid: str, **attributes: str | list[str]) -> Entry:
        """What :meth:`add_user` adds, for :meth:`add_entries`."""
        values: dict[str, str | list[str]] = {
            "objectClass": ["inetOrgPerson"], "uid": uid, "cn": uid.title(), "sn": uid.title(),
            "mail": f"{uid}@example.com", **attributes}
        return f"uid={uid},{self.people_dn}", values

    def add_group(self, cn: str, members: list[str] | tuple[str, ...] = (), *,
                  unique: bool = False, **attributes: str | list[str]) -> str:
        """Add a groupOfNames (or groupOfUniqueNames) under ``ou=groups``; returns its DN.

        A groupOfNames must have a member, so an empty one gets the root DN (as LDAP
        administrators do); it is not a user, so it resolves to no member id.
        """
        return self.add_entries([self.group_entry(cn, members, unique=unique, **attributes)])[0]

    def group_entry(self, cn: str, members: list[str] | tuple[str, ...] = (), *,
                    unique: bool = False, **attributes: str | list[str]) -> Entry:
        """What :meth:`add_group` adds, for :meth:`add_entries`."""
        attr = "uniqueMember" if unique else "member"
        values = list(members) or ([] if unique else [self.bind_dn])
        kind = "groupOfUniqueNames" if unique else "groupOfNames"
        extra: dict[str, str | list[str]] = {attr: values} if values else {}
        return f"cn={cn},{self.groups_dn}", {"objectClass": [kind], "cn": cn, **extra, **attributes}

    def add(self, dn: str, object_classes: list[str], **attributes: str | list[str]) -> str:
        return self.add_entries([(dn, {"objectClass": object_classes, **attributes})])[0]

    def add_entries(self, entries: list[Entry]) -> list[str]:
        """Add many entries, in order, over one connection (a directory of thousands in
        seconds); returns their DNs."""
        with self.connect() as conn:
            for dn, attributes in entries:
                conn.add_s(dn, ldap.modlist.addModlist(_encode(attributes)))
        return [dn for dn, _ in entries]

    def modify(self, dn: str, **attributes: str | list[str]) -> None:
        """Replace the given attributes of ``dn`` (an empty list removes the attribute)."""
        changes = [(ldap.MOD_REPLACE, name, _values(value)) for name, value in attributes.items()]
        with self.connect() as conn:
            conn.modify_s(dn, changes)

    def add_member(self, group_dn: str, member_dn: str, attr: str = "member") -> None:
        with self.connect() as conn:
            conn.modify_s(group_dn, [(ldap.MOD_ADD, attr, [member_dn.encode()])])

    def remove_member(self, group_dn: str, member_dn: str, attr: str = "member") -> None:
        with self.connect() as conn:
            conn.modify_s(group_dn, [(ldap.MOD_DELETE, attr, [member_dn.encode()])])

    def delete(self, dn: str) -> None:
        with self.connect() as conn:
            conn.delete_s(dn)

    def rename(self, dn: str, new_rdn: str) -> str:
        """Rename ``dn`` in place (modrdn, old RDN value removed); returns the new DN."""
        with self.connect() as conn:
            conn.rename_s(dn, new_rdn, delold=1)
        return f"{new_rdn},{dn.split(',', 1)[1]}"

    def entry_uuid(self, dn: str) -> str:
        return self.entry_uuids([dn])[0]

    def entry_uuids(self, dns: list[str]) -> list[str]:
        """The entryUUIDs of ``dns`` (one connection), in order."""
        with self.connect() as conn:
            found = [conn.search_s(dn, ldap.SCOPE_BASE, "(objectClass=*)", ["entryUUID"]) for dn in dns]
        return [str(attrs["entryUUID"][0].decode()).lower() for [(_, attrs)] in found]

    @contextlib.contextmanager
    def connect(self) -> Iterator[Any]:
        """A python-ldap connection bound as the root DN, unbound on exit."""
        conn = ldap.initialize(self.url)
        conn.set_option(ldap.OPT_NETWORK_TIMEOUT, 5.0)
        try:
            conn.simple_bind_s(self.bind_dn, self.password)
            yield conn
        finally:
            conn.unbind_s()

    # -- internals ---------------------------------------------------------------------------

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if not self.running:
                raise SlapdError(f"slapd exited before answering; log: {self.log_tail()}")
            with contextlib.suppress(ldap.SERVER_DOWN), self.connect():
                return
            time.sleep(0.05)
        self.stop()
        raise SlapdError(f"slapd at {self.url} did not answer within {_START_TIMEOUT:.0f}s; "
                         f"log: {self.log_tail()}")


_LIVE: set[Slapd] = set()


@atexit.register
def _close_all() -> None:
    """Stop the servers still running when the interpreter exits (a crashed test run)."""
    for server in list(_LIVE):
        server.close()


def start_slapd(base_dn: str = "dc=example,dc=com", *, refint: bool = False) -> Slapd:
    """Configure and start a throwaway slapd with ``ou=people`` and ``ou=groups`` under ``base_dn``.

    ``refint``: add the referential integrity overlay, which rewrites (or removes) group
    member DNs when the member is renamed (or deleted), as most production directories do.
    """
    root = Path(tempfile.mkdtemp(prefix="scimflow-slapd-"))
    server = Slapd(root=root, port=free_port(), base_dn=base_dn, password=secrets.token_urlsafe(18),
                   refint=refint)
    try:
        _configure(server)
        server.start()
        _add_base_entries(server)
    except BaseException:
        server.close()
        raise
    return server


def _configure(server: Slapd) -> None:
    (server.root / "db").mkdir(mode=0o700)
    (server.root / "slapd.d").mkdir(mode=0o700)
    ldif = server.root / "config.ldif"
    ldif.touch(mode=0o600)  # it holds the root password
    ldif.write_text(_config_ldif(server), encoding="utf-8")
    done = subprocess.run(
        [_require("slapadd"), "-n", "0", "-F", str(server.root / "slapd.d"), "-l", str(ldif)],
        capture_output=True, text=True, check=False,
    )
    if done.returncode != 0:
        raise SlapdError(f"slapadd -n 0 failed ({done.returncode}): {done.stderr.strip()[-2000:]}")


def _config_ldif(server: Slapd) -> str:
    schemas = _find_dir(_SCHEMA_DIRS, "core.ldif", "OpenLDAP schema files")
    modules = _find_dir(_MODULE_DIRS, "syncprov.la", "OpenLDAP modules (syncprov)")
    includes = "\n".join(f"include: file://{schemas}/{name}.ldif" for name in _SCHEMAS)
    return f"""\
dn: cn=config
objectClass: olcGlobal
cn: config
olcPidFile: {server.root}/slapd.pid
olcArgsFile: {server.root}/slapd.args

dn: cn=module{{0}},cn=config
objectClass: olcModuleList
cn: module{{0}}
olcModulePath: {modules}
olcModuleLoad: back_mdb
olcModuleLoad: syncprov
olcModuleLoad: refint

dn: cn=schema,cn=config
objectClass: olcSchemaConfig
cn: schema

{includes}

dn: olcDatabase={{-1}}frontend,cn=config
objectClass: olcDatabaseConfig
objectClass: olcFrontendConfig
olcDatabase: {{-1}}frontend

dn: olcDatabase={{0}}config,cn=config
objectClass: olcDatabaseConfig
olcDatabase: {{0}}config
olcAccess: {{0}}to * by * none

dn: olcDatabase={{1}}mdb,cn=config
objectClass: olcDatabaseConfig
objectClass: olcMdbConfig
olcDatabase: {{1}}mdb
olcSuffix: {server.base_dn}
olcRootDN: {server.bind_dn}
olcRootPW: {server.password}
olcDbDirectory: {server.root}/db
olcDbMaxSize: 268435456
olcDbIndex: objectClass eq
olcDbIndex: entryCSN,entryUUID eq
olcDbIndex: member,uniqueMember eq
olcAccess: {{0}}to * by * read
{_overlays(server)}"""


def _overlays(server: Slapd) -> str:
    # refint goes first ({0}), so that syncprov sees the member DNs it rewrites.
    overlays = ["refint"] if server.refint else []
    overlays.append("syncprov")
    return "".join(_OVERLAY[name].format(i=i, base_dn=server.base_dn) for i, name in enumerate(overlays))


_OVERLAY = {
    "refint": """
dn: olcOverlay={{{i}}}refint,olcDatabase={{1}}mdb,cn=config
objectClass: olcOverlayConfig
objectClass: olcRefintConfig
olcOverlay: {{{i}}}refint
olcRefintAttribute: member uniqueMember
olcRefintNothing: cn=admin,{base_dn}
""",
    "syncprov": """
dn: olcOverlay={{{i}}}syncprov,olcDatabase={{1}}mdb,cn=config
objectClass: olcOverlayConfig
objectClass: olcSyncProvConfig
olcOverlay: {{{i}}}syncprov
olcSpCheckpoint: 100 10
olcSpSessionlog: 1000
""",
}


def _add_base_entries(server: Slapd) -> None:
    top = server.base_dn.split(",", 1)[0].split("=", 1)[1]
    server.add(server.base_dn, ["dcObject", "organization"], dc=top, o=top)
    server.add(server.people_dn, ["organizationalUnit"], ou="people")
    server.add(server.groups_dn, ["organizationalUnit"], ou="groups")


def _find_dir(candidates: tuple[str, ...], marker: str, what: str) -> str:
    for folder in candidates:
        if (Path(folder) / marker).exists():
            return folder
    raise SlapdError(f"{what} not found in {', '.join(candidates)}; apt-get install slapd")


def _require(name: str) -> str:
    path = slapd_binary(name)
    if path is None:
        raise SlapdError(f"{name} is not installed (apt-get install slapd ldap-utils)")
    return path


def _values(value: str | list[str]) -> list[bytes]:
    return [v.encode() for v in ([value] if isinstance(value, str) else value)]


def _encode(entry: dict[str, Any]) -> dict[str, list[bytes]]:
    return {name: _values(value) for name, value in entry.items()}
