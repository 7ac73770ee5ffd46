"""Held commands: acknowledged, not applied yet, kept where a restart finds them.

Two rules hold a command after its offset was acknowledged: its app is Off (the latest
command of each object waits for On), and the deletion guard (``deletion_guard``) stages
a removal and may hold it past the threshold until ``scimflow allow-deletes``. Kept only in
memory, a restart (or ``kill -9``) would lose them, and a push source has no full scan to
send them again. So each one is also written to the writer's ``held`` faust table (a
compacted changelog partitioned like the commands topic: the entries move with their
partition at a rebalance), keyed by the object, and deleted once the command ran or a newer
one superseded it. At start the writer reloads them (``AppState.reload_held``).
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from datetime import datetime
from typing import Literal

import msgspec

from schemas import HeldCommand, ProvisioningCommand
from schemas.codecs import decoder, encode
from services.runtime.state import read

__all__ = ["HeldStore"]

_decoder = decoder("writer.held")


class HeldStore:
    """Held commands by key (``app/source_id``), over a bytes -> bytes table."""

    def __init__(self, table: MutableMapping[bytes, bytes] | None = None) -> None:
        self.table: MutableMapping[bytes, bytes] = {} if table is None else table

    def get(self, key: bytes) -> HeldCommand | None:
        raw = read(self.table, key)
        if raw is None:
            return None
        try:
            entry: HeldCommand = _decoder.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None  # unreadable: treat as absent (the next full scan sends the object again)
        return entry

    def put(self, key: bytes, command: ProvisioningCommand, reason: Literal["off", "removal"],
            at: datetime, *, reported: bool = False) -> None:
        """Hold ``command`` (replacing whatever the object had held: one entry per object)."""
        self.table[key] = encode(HeldCommand(command=command, reason=reason, held_at=at,
                                             reported=reported))

    def reported(self, key: bytes) -> None:
        """The held removal of ``key`` was reported as ``stagedDelete``."""
        entry = self.get(key)
        if entry is not None and not entry.reported:
            self.table[key] = encode(msgspec.structs.replace(entry, reported=True))

    def drop(self, key: bytes) -> bool:
        """The object's held command ran or was superseded; True if there was one."""
        if key not in self.table:
            return False
        del self.table[key]
        return True

    def held_keys(self) -> list[bytes]:
        return list(self.table.keys())

    def entries(self, keys: list[bytes]) -> Iterator[tuple[bytes, HeldCommand]]:
        for key in keys:
            entry = self.get(key)
            if entry is not None:
                yield key, entry

    def forget_app(self, app: str) -> int:
        """Drop every held command of ``app`` (the app was removed); how many there were."""
        prefix = f"{app}/".encode()
        keys = [k for k in self.held_keys() if k.startswith(prefix)]
        for key in keys:
            del self.table[key]
        return len(keys)
