"""Named bearer tokens of the admin API.

``SCIMFLOW_ADMIN_TOKENS`` lists them as ``name=env:VAR,name2=file:/path``: only references
are in the setting, so the token values stay in a Secret or a mounted file. The name is
what the audit trail records, so an operator can tell which automation or person acted
and revoke one token without touching the others.

Tokens are compared in constant time against every configured token (no early exit), and
no token value is ever part of a log line, an error message or a ``repr``.
"""

from __future__ import annotations

import hmac
import os
import re
from pathlib import Path

from services.runtime.errors import ConfigError

__all__ = ["Tokens", "parse_tokens"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
_WHERE = "SCIMFLOW_ADMIN_TOKENS"


class Tokens:
    """The admin API's tokens by name; :meth:`identify` says whose a presented token is."""

    __slots__ = ("_tokens",)

    def __init__(self, tokens: dict[str, str]) -> None:
        if not tokens:
            raise ConfigError("no admin token configured: set SCIMFLOW_ADMIN_TOKENS to "
                              "name=env:VAR (or name=file:/path)", file=_WHERE)
        self._tokens = {name: value.encode() for name, value in tokens.items()}

    @property
    def names(self) -> list[str]:
        return sorted(self._tokens)

    def identify(self, authorization: str | None) -> str | None:
        """The name of the token in an ``Authorization: Bearer ...`` header, or None."""
        scheme, _, presented = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            return None
        given = presented.strip().encode()
        found = None
        for name, value in self._tokens.items():
            # Compare with every token so the time taken does not say which one was close.
            if hmac.compare_digest(given, value):
                found = name
        return found

    def __repr__(self) -> str:
        return f"Tokens(names={self.names!r})"


def parse_tokens(spec: str | None, *, environ: dict[str, str] | None = None) -> Tokens:
    """Resolve ``name=env:VAR,name2=file:/path`` into :class:`Tokens`; ConfigError on bad input."""
    env = dict(os.environ) if environ is None else environ
    tokens: dict[str, str] = {}
    for part in (p.strip() for p in (spec or "").split(",")):
        if not part:
            continue
        name, eq, ref = part.partition("=")
        name = name.strip()
        if not eq or not _NAME.match(name):
            raise ConfigError(f"expected name=env:VAR or name=file:/path, got {_shown(part)!r}",
                              file=_WHERE)
        if name in tokens:
            raise ConfigError(f"token name {name!r} is given twice", file=_WHERE)
        tokens[name] = _resolve(name, ref.strip(), env)
    return Tokens(tokens)


def _resolve(name: str, ref: str, env: dict[str, str]) -> str:
    kind, _, where = ref.partition(":")
    if kind == "env" and where:
        value = env.get(where, "")
        if not value.strip():
            raise ConfigError(f"token {name!r}: environment variable {where} is not set", file=_WHERE)
        return value.strip()
    if kind == "file" and where:
        try:
            value = Path(where).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"token {name!r}: cannot read {where} ({exc.strerror})", file=_WHERE) from None
        if not value:
            raise ConfigError(f"token {name!r}: {where} is empty", file=_WHERE)
        return value
    raise ConfigError(f"token {name!r}: expected env:VAR or file:/path (a reference, never the "
                      "token itself)", file=_WHERE)


def _shown(part: str) -> str:
    """A malformed entry as it may be shown: someone may have pasted a raw token in it."""
    name, eq, _ = part.partition("=")
    return f"{name}=..." if eq else "<entry without '='>"
