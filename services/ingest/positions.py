"""Where each source's change feed stopped: the compacted ``source.positions`` topic.

Key: the source's name (or ``control:{app}/{kind}`` for the last control request ingest
acted on, so a restarted ingest does not act on it twice); value: a ``SourcePosition``
whose ``position`` is the opaque position as base64 text (for an LDAP source, the RFC 4533
syncrepl cookie; for Graph, both deltaLinks; for AD, the DirSync cookie). Compaction keeps
the latest one per source, so a restarted or rescheduled ingest reads the whole
(small) topic at start and resumes from there.

A position is stored only after every change it covers is on the changes topic (the
caller flushes first), so resuming from it never skips a change; at worst a change that
was sent just before a crash is sent again (at-least-once, as everywhere).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import msgspec
import stamina
import structlog

from schemas.codecs import decoder, encode
from schemas.messages import SourcePosition
from services.runtime.kafka import BrokerUnavailableError, read_latest

__all__ = ["Positions", "decode_position", "position_message"]

log = structlog.get_logger("scimflow.ingest.positions")

Send = Callable[[bytes, bytes], Awaitable[None]]
"""Puts ``(key, value)`` on the positions topic."""

_LOAD_ATTEMPTS = 5
_LOAD_TIMEOUT = 120.0


def position_message(source: str, position: bytes) -> tuple[bytes, bytes]:
    """The key and value that store ``position`` as the latest of ``source``."""
    message = SourcePosition(source=source, position=base64.b64encode(position).decode("ascii"),
                             at=datetime.now(UTC))
    return source.encode(), encode(message)


def decode_position(value: bytes) -> bytes | None:
    """The position in a stored value; None (start over) if the value is not one."""
    try:
        message = decoder("source.positions").decode(value)
        return base64.b64decode(message.position, validate=True)
    except (msgspec.DecodeError, msgspec.ValidationError, binascii.Error) as exc:
        log.warning("stored source position unreadable; starting without one", reason=str(exc))
        return None


class Positions:
    """Load a source's last position at start, store each new one."""

    def __init__(self, bootstrap: str, topic: str, send: Send) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self._send = send

    async def load(self, source: str) -> bytes | None:
        """The last position stored for ``source``, or None if it never stored one."""
        stored = await self._read()
        value = stored.get(source.encode())
        return None if value is None else decode_position(value)

    async def load_prefixed(self, prefix: str) -> dict[str, bytes]:
        """Every stored position whose key starts with ``prefix`` (key -> position)."""
        stored = await self._read()
        found = {key.decode("utf-8", "replace"): decode_position(value) for key, value in stored.items()
                 if key.startswith(prefix.encode())}
        return {key: value for key, value in found.items() if value is not None}

    async def store(self, source: str, position: bytes) -> None:
        key, value = position_message(source, position)
        await self._send(key, value)

    @stamina.retry(on=BrokerUnavailableError, attempts=_LOAD_ATTEMPTS, timeout=_LOAD_TIMEOUT)
    async def _read(self) -> dict[bytes, bytes]:
        # Starting without the position would re-read the whole directory: retry a while first.
        return await asyncio.to_thread(read_latest, self.bootstrap, self.topic)
