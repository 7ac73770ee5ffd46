"""Escrow: objects that failed transiently too often, kept until they can be written.

After ``retries.escrow_after`` failed attempts an object stops holding back its
partition: its command goes into the writer's ``escrow`` faust table (a compacted
changelog, so it survives a restart or a move to another replica), its offset is
acknowledged, and one error record says so. The processor tries it again every
``escrow_interval`` and whenever a newer command for it arrives; the first outcome that
is not a transient failure takes it out of escrow. Status shows the count
(``scimflow_escrowed_objects``).

With several writer replicas a table can also hold standby copies of other replicas'
partitions (faust keeps them for a fast takeover): only the partitions this replica owns
now are tried again and counted here (:attr:`EscrowStore.owns`), else two replicas would
run the same escrowed object at once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, MutableMapping
from datetime import UTC, datetime, timedelta

import msgspec

from schemas import ProvisioningCommand
from schemas.codecs import decoder, encode
from schemas.messages import EscrowedCommand
from services.runtime.errors import TargetError
from services.runtime.state import read

__all__ = ["EscrowStore"]

_decoder = decoder("writer.escrow")


class EscrowStore:
    """Escrowed commands by key (``app/source_id``), over a bytes -> bytes table."""

    def __init__(self, table: MutableMapping[bytes, bytes] | None = None) -> None:
        self.table: MutableMapping[bytes, bytes] = {} if table is None else table
        self.owns: Callable[[bytes], bool] = _everything
        """Whether a key's partition is this replica's now (the worker sets it at each
        rebalance); standby copies of the others' partitions are neither run nor counted."""

    def get(self, key: bytes) -> EscrowedCommand | None:
        raw = read(self.table, key)
        if raw is None:
            return None
        try:
            entry: EscrowedCommand = _decoder.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None  # unreadable: treat as absent (the next command rewrites it)
        return entry

    def put(self, key: bytes, command: ProvisioningCommand, attempts: int, exc: TargetError,
            now: datetime | None = None) -> bool:
        """Escrow (or re-escrow) ``command``; True if the object was not escrowed before."""
        now = now or datetime.now(UTC)
        before = self.get(key)
        entry = EscrowedCommand(
            command=command, attempts=attempts, error_code=exc.code, reason=str(exc),
            escrowed_at=before.escrowed_at if before else now, last_attempt_at=now)
        self.table[key] = encode(entry)
        return before is None

    def drop(self, key: bytes) -> bool:
        """Take ``key`` out of escrow; True if it was escrowed."""
        if key not in self.table:
            return False
        del self.table[key]
        return True

    def due(self, now: datetime, interval: Callable[[str], float]) -> list[tuple[bytes, EscrowedCommand]]:
        """Escrowed objects whose last attempt is older than their app's ``interval(app)``."""
        out = []
        for key in self._owned():
            entry = self.get(key)
            if entry is None:
                continue
            if now - entry.last_attempt_at >= timedelta(seconds=interval(entry.command.app)):
                out.append((key, entry))
        return out

    def counts(self) -> Counter[str]:
        """Escrowed objects per app."""
        counts: Counter[str] = Counter()
        for key in self._owned():
            entry = self.get(key)
            if entry is not None:
                counts[entry.command.app] += 1
        return counts

    def _owned(self) -> list[bytes]:
        return [key for key in list(self.table.keys()) if self.owns(key)]

    def forget_app(self, app: str) -> int:
        """Drop every escrowed object of ``app`` (a restart); how many there were."""
        prefix = f"{app}/".encode()
        keys = [k for k in list(self.table.keys()) if k.startswith(prefix)]
        for key in keys:
            del self.table[key]
        return len(keys)


def _everything(key: bytes) -> bool:
    return True
