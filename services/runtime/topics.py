"""Every Kafka topic scimflow uses, named once.

All names share a configurable prefix (default ``scimflow.``). The faust changelog topics
are listed too so that the broker module can create every topic up front with the right
partition count and cleanup policy; brokers like Tansu cannot create them on demand.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TopicSpec", "Topics"]


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """A topic to create: name, partitions and whether it is compacted (state/changelog)."""

    name: str
    partitions: int
    compacted: bool = False


@dataclass(frozen=True, slots=True)
class Topics:
    """Topic names for one deployment (one prefix)."""

    prefix: str = "scimflow."
    partitions: int = 6

    @property
    def changes(self) -> str:
        return f"{self.prefix}directory.changes"

    @property
    def commands(self) -> str:
        return f"{self.prefix}provisioning.commands"

    @property
    def activity(self) -> str:
        return f"{self.prefix}provisioning.activity"

    @property
    def errors(self) -> str:
        return f"{self.prefix}provisioning.errors"

    @property
    def control(self) -> str:
        return f"{self.prefix}control"

    @property
    def audit(self) -> str:
        """Every control action: who, what, when (AuditRecord)."""
        return f"{self.prefix}control.audit"

    @property
    def config(self) -> str:
        """Applications as data (compacted; ConfigVersion). Key ``{kind}/{name}/{version}/{write_id}``:
        one key per version, so compaction keeps the whole history."""
        return f"{self.prefix}control.config"

    @property
    def source_positions(self) -> str:
        """Compacted; key: source name, value: where its change feed stopped (SourcePosition)."""
        return f"{self.prefix}source.positions"

    def app_id(self, service: str) -> str:
        """The faust app id (= consumer group) of a service."""
        return f"{self.prefix}{service}"

    def changelog(self, service: str, table: str) -> str:
        """The changelog topic faust uses for ``table`` of ``service``."""
        return f"{self.app_id(service)}-{table}-changelog"

    @property
    def writer_state(self) -> str:
        return self.changelog("writer", "managed")

    @property
    def writer_escrow(self) -> str:
        """Commands of objects that failed too often, retried on later cycles (compacted)."""
        return self.changelog("writer", "escrow")

    @property
    def writer_held(self) -> str:
        """Commands acknowledged but held: their app is Off, or a removal the deletion guard
        holds (compacted)."""
        return self.changelog("writer", "held")

    def specs(self) -> list[TopicSpec]:
        """Every topic of the pipeline, ready to create."""
        n = self.partitions
        return [
            TopicSpec(self.changes, n),
            TopicSpec(self.commands, n),
            TopicSpec(self.activity, n),
            TopicSpec(self.errors, n),
            TopicSpec(self.control, 1, compacted=True),
            TopicSpec(self.audit, 1),
            # One partition: "the first record of a version wins" needs one total order.
            TopicSpec(self.config, 1, compacted=True),
            TopicSpec(self.writer_state, n, compacted=True),
            TopicSpec(self.writer_escrow, n, compacted=True),
            TopicSpec(self.writer_held, n, compacted=True),
            # A handful of keys (one per source), read whole at ingest start: one partition.
            TopicSpec(self.source_positions, 1, compacted=True),
        ]
