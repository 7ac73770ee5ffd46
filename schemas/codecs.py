"""One encoder and one decoder per topic, built once (msgspec's fast path).

Topics are named by their role, not their full name, because the prefix is a deployment
setting: ``directory.changes``, ``provisioning.commands``, ``provisioning.activity``,
``provisioning.errors``, the writer's state changelogs ``writer.managed``,
``writer.escrow`` and ``writer.held``, where each source's change feed stopped,
``source.positions``; ``control`` and its audit trail ``control.audit``; applications as
data, ``control.config``.
"""

from __future__ import annotations

from typing import Any

import msgspec

from schemas.config import ConfigMessage
from schemas.control import AuditRecord, ControlMessage
from schemas.messages import (
    ActivityRecord,
    DirectoryMessage,
    ErrorRecord,
    EscrowedCommand,
    HeldCommand,
    ManagedObject,
    ProvisioningMessage,
    SourcePosition,
)

__all__ = ["TOPIC_TYPES", "decoder", "encode", "json_schema"]

TOPIC_TYPES: dict[str, Any] = {
    "directory.changes": DirectoryMessage,
    "provisioning.commands": ProvisioningMessage,
    "provisioning.activity": ActivityRecord,
    "provisioning.errors": ErrorRecord,
    "writer.managed": ManagedObject,
    "writer.escrow": EscrowedCommand,
    "writer.held": HeldCommand,
    "source.positions": SourcePosition,
    "control": ControlMessage,
    "control.audit": AuditRecord,
    "control.config": ConfigMessage,
}

_encoder = msgspec.json.Encoder()
_decoders: dict[str, msgspec.json.Decoder[Any]] = {
    role: msgspec.json.Decoder(t) for role, t in TOPIC_TYPES.items()
}


def encode(message: msgspec.Struct) -> bytes:
    """Encode any scimflow message as JSON bytes."""
    return _encoder.encode(message)


def decoder(role: str) -> msgspec.json.Decoder[Any]:
    """The decoder for a topic role; raises ``msgspec.DecodeError`` on bad input."""
    return _decoders[role]


def json_schema(role: str) -> dict[str, Any]:
    """The JSON Schema (2020-12) of a topic's messages."""
    schema: dict[str, Any] = msgspec.json.schema(TOPIC_TYPES[role])
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = f"scimflow topic {role}"
    return schema
