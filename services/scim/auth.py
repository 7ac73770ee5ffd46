"""Credentials for a target's SCIM API: a static bearer token, or OAuth2 client credentials.

Both give the ``Authorization`` header of the next request, and both can say whether a
401 is worth one more try: a static token cannot change, while OAuth2 fetches a fresh
token (the cached one may have been revoked or rotated before it expired). :class:`Auth` is
what the client needs from them; :class:`BearerToken` is the static token, and OAuth2 is
:class:`services.runtime.http.ClientCredentials`, shared with the Microsoft Graph source.
Secrets never leave them except inside that header: not in a repr, a message or a log
line; :meth:`Auth.redact` scrubs them from any text a target or token endpoint echoed back.
"""

from __future__ import annotations

from typing import Protocol

from services.runtime.http import check_token
from services.runtime.redaction import REDACTED, Redactor

__all__ = ["Auth", "BearerToken"]


class Auth(Protocol):
    """What :class:`~services.scim.client.ScimClient` needs from credentials."""

    async def authorization(self) -> str:
        """The ``Authorization`` header value for the next request."""
        ...

    async def refresh(self, rejected: str) -> bool:
        """The target answered 401 to ``rejected`` (a header value): True if a retry with
        :meth:`authorization` may succeed."""
        ...

    def redact(self, text: str) -> str:
        """``text`` with every secret replaced by ``[redacted]``."""
        ...

    async def aclose(self) -> None: ...


class BearerToken:
    """A static bearer token (``target.token``)."""

    def __init__(self, token: str) -> None:
        check_token(token)
        self._token = token
        self._redact = Redactor([token])

    def __repr__(self) -> str:
        return f"BearerToken({REDACTED})"

    async def authorization(self) -> str:
        return f"Bearer {self._token}"

    async def refresh(self, rejected: str) -> bool:
        return False  # the same token will be refused again

    def redact(self, text: str) -> str:
        return self._redact(text)

    async def aclose(self) -> None:
        return None
