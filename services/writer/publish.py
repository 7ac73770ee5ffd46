"""Where the writer's records go: activity, error and control topics, with their metrics.

The consume loop, the scheduler and the app-level rules all report outcomes; this is the
one place that encodes them, sends them and counts them.
"""

from __future__ import annotations

from typing import Any

from schemas import ActivityRecord, ErrorRecord, ProvisioningCommand
from schemas.codecs import encode
from services.runtime import metrics
from services.runtime.records import bounded

__all__ = ["Publisher"]


class Publisher:
    """Sends the writer's records to its topics (``control`` may be absent)."""

    def __init__(self, *, activity: Any, errors: Any, control: Any = None) -> None:
        self.activity_topic = activity
        self.errors_topic = errors
        self.control_topic = control

    @property
    def has_control(self) -> bool:
        return self.control_topic is not None

    async def activity(self, key: bytes, record: ActivityRecord, command: ProvisioningCommand) -> None:
        """Count ``record`` (outcomes, latency since ``command`` was observed) and send it."""
        _count(record, command)
        await self.activity_topic.send(key=key, value=encode(bounded(record)))

    async def error(self, key: bytes, record: ErrorRecord) -> None:
        metrics.ERRORS.labels(service="writer", error_code=record.error_code).inc()
        await self.errors_topic.send(key=key, value=encode(bounded(record)))

    async def control(self, key: bytes, message: Any) -> None:
        """A control message (capabilities, health, removal tally), when there is a topic."""
        if self.control_topic is not None:
            await self.control_topic.send(key=key, value=encode(message))


def _count(activity: ActivityRecord, command: ProvisioningCommand) -> None:
    metrics.OUTCOMES.labels(app=activity.app, object_type=activity.object_type,
                            action=activity.action, status=activity.status).inc()
    if activity.status == "success":
        seconds = (activity.at - command.observed_at).total_seconds()
        metrics.PROVISIONING_LATENCY.labels(app=activity.app).observe(max(0.0, seconds))
