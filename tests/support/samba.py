"""A real Samba Active Directory domain controller for tests (Debian package ``samba``).

``samba-tool domain provision --dns-backend=NONE`` takes about 30 s, so the provisioned
domain is kept as a template under ``~/.cache/scimflow/samba-<version>`` (made once, under a
file lock) and each ``start_samba()`` copies it into a temporary directory and starts
``samba -i -M single`` with only the LDAP service, on port 389 of a random loopback address
(127.x.y.z: every test server gets its own, so they never collide), with
``ldap server require strong auth = no`` so tests can bind with a password over plain LDAP,
and ``ldb:nosync = true`` (as Samba's own selftest: a throwaway database need not be
fsynced; it halves the time of an add). Starting a copy takes a few seconds; adding a
thousand users over one connection (``add_entries``) about eight.

Samba is started with the dev stack's process helper (``services.devstack.processes.spawn``):
in a session of its own, and killed by the kernel when the test runner dies (even by a
SIGTERM or SIGKILL that skips pytest's teardown), so no domain controller is left running.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ldap  # type: ignore[import-untyped]
import ldap.modlist  # type: ignore[import-untyped]

from services.devstack.processes import spawn, terminate

__all__ = ["Entry", "Samba", "samba_missing", "start_samba"]

Entry = tuple[str, dict[str, list[bytes]]]
"""An entry to add: its DN and its attributes (``objectClass`` included)."""

REALM = "SCIMFLOW.TEST"
DOMAIN = "SCIMFLOW"
BASE_DN = "DC=scimflow,DC=test"
ADMIN_PASSWORD = "Scimflow-Adm1n!"  # a throwaway test domain's password
NORMAL_ACCOUNT = 0x200
PASSWD_NOTREQD = 0x20  # lets tests create enabled accounts without setting a password over LDAPS
ACCOUNTDISABLE = 0x2


def samba_missing() -> str | None:
    """Why the Samba tests cannot run here, or None if they can."""
    for tool in ("samba", "samba-tool"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            return f"{tool} is not installed: apt-get install samba"
    return None


class Samba:
    """A running Samba AD DC, and helpers to change its directory as an admin would."""

    def __init__(self, root: Path, address: str, process: subprocess.Popen[bytes]) -> None:
        self.root = root
        self.address = address
        self.process = process
        self.url = f"ldap://{address}:389"
        self.base_dn = BASE_DN
        self.bind_dn = f"Administrator@{REALM.lower()}"
        self.password = ADMIN_PASSWORD
        self.users_dn = f"CN=Users,{BASE_DN}"

    @contextlib.contextmanager
    def connect(self) -> Iterator[Any]:
        conn = ldap.initialize(self.url)
        conn.set_option(ldap.OPT_REFERRALS, 0)
        conn.simple_bind_s(self.bind_dn, self.password)
        try:
            yield conn
        finally:
            conn.unbind_s()

    def add_user(self, sam: str, *, enabled: bool = True, **attrs: str) -> str:
        return self.add_entries([self.user_entry(sam, enabled=enabled, **attrs)])[0]

    def user_entry(self, sam: str, *, enabled: bool = True, **attrs: str) -> Entry:
        """What :meth:`add_user` adds (an account without a password), for :meth:`add_entries`."""
        flags = NORMAL_ACCOUNT | PASSWD_NOTREQD | (0 if enabled else ACCOUNTDISABLE)
        entry = {"objectClass": [b"top", b"person", b"organizationalPerson", b"user"],
                 "sAMAccountName": [sam.encode()], "userPrincipalName": [f"{sam}@scimflow.test".encode()],
                 "userAccountControl": [str(flags).encode()],
                 **{k: [v.encode()] for k, v in attrs.items()}}
        return f"CN={sam},{self.users_dn}", entry

    def add_group(self, name: str, members: list[str] | None = None) -> str:
        return self.add_entries([self.group_entry(name, members)])[0]

    def group_entry(self, name: str, members: list[str] | None = None) -> Entry:
        """What :meth:`add_group` adds, for :meth:`add_entries`."""
        entry: dict[str, list[bytes]] = {"objectClass": [b"top", b"group"], "sAMAccountName": [name.encode()]}
        if members:
            entry["member"] = [m.encode() for m in members]
        return f"CN={name},{self.users_dn}", entry

    def add_entries(self, entries: list[Entry]) -> list[str]:
        """Add many entries, in order, over one connection; returns their DNs."""
        with self.connect() as conn:
            for dn, entry in entries:
                conn.add_s(dn, ldap.modlist.addModlist(entry))
        return [dn for dn, _ in entries]

    def modify(self, dn: str, **attrs: str) -> None:
        with self.connect() as conn:
            conn.modify_s(dn, [(ldap.MOD_REPLACE, k, [v.encode()]) for k, v in attrs.items()])

    def set_enabled(self, dn: str, enabled: bool) -> None:
        flags = NORMAL_ACCOUNT | PASSWD_NOTREQD | (0 if enabled else ACCOUNTDISABLE)
        self.modify(dn, userAccountControl=str(flags))

    def rename(self, dn: str, new_cn: str) -> str:
        with self.connect() as conn:
            conn.rename_s(dn, f"CN={new_cn}")
        return f"CN={new_cn},{self.users_dn}"

    def add_member(self, group: str, member: str) -> None:
        with self.connect() as conn:
            conn.modify_s(group, [(ldap.MOD_ADD, "member", [member.encode()])])

    def remove_member(self, group: str, member: str) -> None:
        with self.connect() as conn:
            conn.modify_s(group, [(ldap.MOD_DELETE, "member", [member.encode()])])

    def delete(self, dn: str) -> None:
        with self.connect() as conn:
            conn.delete_s(dn)

    def guid(self, dn: str) -> str:
        return self.guids([dn])[0]

    def guids(self, dns: list[str]) -> list[str]:
        """The objectGUIDs of ``dns`` (one connection), in order."""
        with self.connect() as conn:
            found = [conn.search_s(dn, ldap.SCOPE_BASE, "(objectClass=*)", ["objectGUID"]) for dn in dns]
        return [str(uuid.UUID(bytes_le=attrs["objectGUID"][0])) for [(_, attrs)] in found]

    def stop(self) -> None:
        terminate(self.process, grace=10)


def _version() -> str:
    out = subprocess.run(["samba", "--version"], capture_output=True, text=True, check=True).stdout
    return out.strip().split()[-1]


def _template() -> Path:
    """The provisioned domain, made once per Samba version (about 30 s)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "scimflow"
    cache.mkdir(parents=True, exist_ok=True)
    template = cache / f"samba-{_version()}"
    with (cache / "samba.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (template / "etc" / "smb.conf").exists():
            shutil.rmtree(template, ignore_errors=True)
            template.mkdir()
            subprocess.run(["samba-tool", "domain", "provision", f"--realm={REALM}", f"--domain={DOMAIN}",
                            "--server-role=dc", "--dns-backend=NONE", "--use-rfc2307",
                            f"--adminpass={ADMIN_PASSWORD}", f"--targetdir={template}",
                            "--option=interfaces=lo", "--option=bind interfaces only=yes"],
                           check=True, capture_output=True, timeout=300)
    return template


def _configure(root: Path, template: Path, address: str) -> Path:
    conf = root / "etc" / "smb.conf"
    text = conf.read_text().replace(str(template), str(root))
    lines = [line for line in text.splitlines()
             if not line.strip().startswith(("interfaces", "server services", "log file"))]
    at = lines.index("[global]") + 1
    lines[at:at] = [f"\tinterfaces = {address}/8", "\tserver services = ldap",
                    "\tldap server require strong auth = no", "\tldb:nosync = true",
                    f"\tpid directory = {root}/run",
                    f"\tlog file = {root}/log.%m", f"\twinbindd socket directory = {root}/winbindd",
                    f"\tntp signd socket directory = {root}/ntp_signd"]
    conf.write_text("\n".join(lines) + "\n")
    (root / "run").mkdir(exist_ok=True)
    return conf


@contextlib.contextmanager
def start_samba() -> Iterator[Samba]:
    """A fresh copy of the test domain, served until the block ends."""
    template = _template()
    root = Path(tempfile.mkdtemp(prefix="scimflow-samba-"))
    shutil.rmtree(root)
    shutil.copytree(template, root, symlinks=True)
    address = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"
    conf = _configure(root, template, address)
    process = spawn(["samba", "-s", str(conf), "-i", "-M", "single"], root / "samba.out")
    server = Samba(root, address, process)
    try:
        _wait_until_ready(server)
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def _wait_until_ready(server: Samba, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"samba exited: {(server.root / 'samba.out').read_text()[-2000:]}")
        with contextlib.suppress(ldap.LDAPError), server.connect():
            return
        time.sleep(0.3)
    raise RuntimeError(f"samba did not answer LDAP within {timeout:.0f}s")
