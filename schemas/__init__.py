"""The contract between scimflow's services and with consumers of its topics.

Imports only msgspec. ``schemas.codecs`` builds one encoder/decoder per topic;
``schemas/json/`` holds the JSON Schema generated from these Structs for each topic.
"""

from schemas.config import ConfigVersion
from schemas.messages import (
    ActivityRecord,
    CycleMarker,
    DirectoryChange,
    DirectoryMessage,
    ErrorRecord,
    EscrowedCommand,
    HeldCommand,
    ManagedObject,
    MatchingAttribute,
    Message,
    ModifiedProperty,
    Origin,
    ProvisioningCommand,
    ProvisioningMessage,
    SourcePosition,
    Step,
)

__all__ = [
    "ActivityRecord",
    "ConfigVersion",
    "CycleMarker",
    "DirectoryChange",
    "DirectoryMessage",
    "ErrorRecord",
    "EscrowedCommand",
    "HeldCommand",
    "ManagedObject",
    "MatchingAttribute",
    "Message",
    "ModifiedProperty",
    "Origin",
    "ProvisioningCommand",
    "ProvisioningMessage",
    "SourcePosition",
    "Step",
]
