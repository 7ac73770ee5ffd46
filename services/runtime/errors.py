"""The one exception tree of scimflow.

Errors are classified by what the worker does next, not by where they came from:

- ``TransientError``  -> retry with backoff (network, timeout, 429, 5xx)
- ``RejectedError``   -> error topic, move on (bad payload, other 4xx)
- ``ConflictError``   -> look up and reconcile (409)
- ``NotFoundError``   -> look up and reconcile (404 on a known object)
- ``CredentialsError``-> stop calling that target, quarantine (401/403 after refresh)
- ``ConfigError``     -> fail at start-up with file, line and what was expected

Library errors (httpx, Kafka) are wrapped at the boundary with ``raise ... from exc`` so
domain code never sees them.
"""

from __future__ import annotations

__all__ = [
    "AmbiguousMatchError",
    "ConfigError",
    "ConflictError",
    "CredentialsError",
    "IdentityMismatchError",
    "NotFoundError",
    "RejectedError",
    "ScimflowError",
    "TargetError",
    "TransientError",
    "UnfindableConflictError",
]


class ScimflowError(Exception):
    """Root of every error scimflow raises on purpose."""


class ConfigError(ScimflowError):
    """A configuration file or setting is invalid; raised at start-up."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None) -> None:
        self.file = file
        self.line = line
        self.reason = message
        where = file or "<config>"
        if line is not None:
            where = f"{where}:{line}"
        super().__init__(f"{where}: {message}")


class TargetError(ScimflowError):
    """A call to a target application failed.

    ``status`` is the HTTP status when there was a response; ``detail`` is the target's
    own message (SCIM error ``detail``), already free of credentials. ``retry_after`` is the
    wait (seconds) the target asked for with ``Retry-After``, and ``attempts`` how many
    attempts the client made before giving up, so the writer can re-queue the object for
    later instead of blocking its partition.
    """

    code = "TargetError"
    recommended_action = "Check the target application's logs for this request."

    def __init__(self, message: str, *, status: int | None = None, detail: str | None = None,
                 retry_after: float | None = None, attempts: int = 1) -> None:
        self.status = status
        self.detail = detail
        self.retry_after = retry_after
        self.attempts = attempts
        super().__init__(message)


class TransientError(TargetError):
    """Worth retrying: network failure, timeout, 429 or 5xx."""

    code = "TransientTargetError"
    recommended_action = "None needed if it recovers; otherwise check the target's availability."


class RejectedError(TargetError):
    """The target refused the request as invalid; retrying the same request will not help."""

    code = "RequestRejected"
    recommended_action = "Fix the attribute mapping or the source value the target rejected."


class ConflictError(TargetError):
    """The object already exists in the target (409)."""

    code = "EntryConflict"
    recommended_action = "scimflow looks the object up by its matching attribute and adopts it."


class NotFoundError(TargetError):
    """The object we addressed does not exist in the target (404)."""

    code = "EntryNotFound"
    recommended_action = "The object was removed in the target; scimflow recreates it if it manages it."


class CredentialsError(TargetError):
    """The target (or its OAuth2 token endpoint) refused our credentials (401/403, after one
    token refresh when the credentials can be refreshed). The app is quarantined at once."""

    code = "InvalidCredentials"
    recommended_action = "Renew the application's admin credentials, then restart provisioning."


class AmbiguousMatchError(RejectedError):
    """More than one target account has the matching value: scimflow cannot tell which one
    is meant, so it writes none of them."""

    code = "AmbiguousMatch"
    recommended_action = ("Make the matching attribute unique in the target (remove or rename the "
                          "duplicate accounts), or match by an attribute that is unique.")


class IdentityMismatchError(RejectedError):
    """The target answered with an account that is not the one scimflow asked for: a lookup
    result whose matching attribute differs from the searched value, a create answered with
    another account, or a target id already linked to another source object. Nothing is
    written to that account."""

    code = "IdentityMismatch"
    recommended_action = ("Check the target's filter support (`filter=<attribute> eq \"value\"` must "
                          "return only exact matches) and the accounts named here; nothing was "
                          "written to them.")


class UnfindableConflictError(TransientError):
    """A create was refused as a duplicate (409), yet looking the object up by its matching
    attributes finds nothing. Retried with backoff (the target may be catching up), never in
    a tight loop; escrowed if it persists."""

    code = "ConflictNotFound"
    recommended_action = ("The target refuses the create as a duplicate but its filter does not "
                          "find the object: check that the target supports `eq` filters on the "
                          "matching attribute named here, or link the account by hand.")
