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

The modules: ``index`` (the pure index; AD shares its DN spelling), ``connection``
(defaults for unset settings, errors, bind and plain searches), ``syncrepl`` (the sync
search's thread and the session that applies what it sends) and ``source`` (``LdapSource``,
``LdapDirectory``). The settings are the ``LdapSource`` Struct of ``services/runtime/config.py``;
the bind password comes resolved, beside it.
python-ldap has no type annotations; ``Any`` stays in ``connection`` and ``syncrepl``, and
every python-ldap error is wrapped in ``LdapSourceError`` there.
"""

from services.ingest.sources.ldap.connection import LdapSourceError, LdapUnavailableError
from services.ingest.sources.ldap.source import LdapDirectory, LdapSource
from services.ingest.sources.ldap.syncrepl import LdapStats

__all__ = [
    "LdapDirectory",
    "LdapSource",
    "LdapSourceError",
    "LdapStats",
    "LdapUnavailableError",
]
