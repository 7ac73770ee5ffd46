"""What the writer publishes when an app enters or leaves quarantine — pure builders.

The SCIM client's quarantine gate tells its listeners once per reason on entering and once
on leaving. The writer turns that into one ``AppQuarantined`` error record per reason (what
an operator must act on) and an ``AppHealth`` control message on enter and on leave (key
``"{app}/health"``, compacted), from which status and the admin API show sync details.
"""

from __future__ import annotations

from schemas import ErrorRecord
from schemas.control import AppHealth
from services.runtime.records import error_record
from services.scim.quarantine import CREDENTIALS, QuarantineEvent

__all__ = ["app_health", "health_key", "quarantine_error"]

_ACTIONS = {
    CREDENTIALS: "Renew the application's admin credentials (token or OAuth2 client secret); "
                 "scimflow probes the target and resumes by itself once they work.",
}
_DEFAULT_ACTION = ("Check the target's availability and its logs; scimflow probes it with a "
                   "growing interval and resumes by itself when a probe succeeds. Nothing queued "
                   "is lost.")


def health_key(app: str) -> bytes:
    return f"{app}/health".encode()


def app_health(event: QuarantineEvent) -> AppHealth:
    """The control-topic message for an enter or leave event."""
    return AppHealth(app=event.app, quarantined=event.quarantined,
                     reason=f"{event.reason}: {event.detail}" if event.quarantined else None,
                     since=event.since if event.quarantined else None,
                     next_probe=event.next_probe, at=event.at)


def quarantine_error(event: QuarantineEvent) -> ErrorRecord:
    """The one error record for entering quarantine for ``event.reason``."""
    return error_record(
        "writer", "AppQuarantined",
        f"application {event.app} is quarantined ({event.reason}): {event.detail}",
        _ACTIONS.get(event.reason, _DEFAULT_ACTION), app=event.app)
