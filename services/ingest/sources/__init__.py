"""The directory sources ingest reads, one module each, all behind ``base.DirectorySource``.

- ``base``: the interface every source implements (scan, watch from a position, fetch one
  object) and the errors a source raises;
- ``file``: a YAML or JSON file (the demo default);
- ``ldap/``: an LDAP directory over RFC 4533 syncrepl: ``index`` (the pure index of
  entries, DNs and memberships, whose DN spelling AD shares), ``connection``, ``syncrepl``
  (the sync search's thread and the session that applies what it sends) and ``source``;
- ``ad``: Active Directory through the DirSync control;
- ``graph``: Microsoft Entra ID through Graph delta queries;
- ``push``: an HTTP endpoint that HR systems and scripts push SCIM resources to.

What every source hands over (``SourceObject``, ``Snapshot``) is ``services/ingest/objects.py``.
The modules are imported one by one (each pulls in its own client library), so this
package exports nothing itself.
"""

__all__: list[str] = []
