"""Applications as data: one version of one app (or source) definition (topic ``control.config``).

The topic is compacted and every record has a key of its own,
``"{kind}/{name}/{version}/{write_id}"`` (e.g. ``app/crm/3/9f1c2a7b``), so compaction
never drops a version: the whole history stays readable for ever.

- The **current** version of a name is the highest version in the topic; if that record is
  a removal (``removed: true``), the name is not live.
- **Version n** of a name is the *first* record in the topic (offset order, one partition)
  with that kind, name and version. A writer that loses a race for the same version (two
  admin replicas writing at once) finds an earlier record when it reads back, and reports a
  conflict; its own record stays in the log, ignored by every reader.
- A **removal** is a new version with ``removed: true`` and no definition (never a Kafka
  tombstone, which would erase that version's history).

``definition`` is the app's (or source's) mapping exactly as the YAML file gives it:
secrets stay references (``env:NAME``, ``file:/path``) and ``${VAR}`` stays unexpanded; a
resolved secret never enters the topic.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from schemas.messages import Message

__all__ = ["ConfigMessage", "ConfigVersion", "DefinitionKind"]

DefinitionKind = Literal["app", "source"]


class ConfigVersion(Message, tag="control.config.v1", frozen=True, kw_only=True):
    """One complete, validated version of one app (or source) definition, with who wrote it,
    when and why."""

    kind: DefinitionKind
    name: str
    version: int
    """1 for the first definition of ``name``; each change adds one."""
    definition: dict[str, Any] | None = None
    """The definition as the YAML file gives it; None when ``removed``."""
    removed: bool = False
    author: str
    at: datetime
    comment: str = ""
    write_id: str
    """Unique per write: part of the key, so racing writers never share one."""
    rollback_of: int | None = None
    """Set when this version restores an earlier one (``scimflow rollback A --to N``)."""


ConfigMessage = ConfigVersion
