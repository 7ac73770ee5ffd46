"""Scrub credentials from text a server sent back, before it reaches a log, topic or error.

Exact replacement of a known secret is not enough: targets were seen echoing a token
upper-cased, cut short, inside a base64 ``Basic`` header, or as a JWT scimflow never knew.
:class:`Redactor` removes

- credential shapes, whoever's they are: the value after ``Bearer``/``Basic``, JWTs
  (``eyJ….….…``), and the value of ``access_token``, ``client_secret``, ``password``,
  ``api_key`` and similar keys in JSON, form or header text;
- the known secrets in any case, and any word that shares a run of
  :data:`PARTIAL_MATCH` characters with one of them or with their base64 forms (an echo cut
  short or embedded in a longer value). Secrets shorter than :data:`SHORT_SECRET` are only
  replaced whole (any case): a short run of them could be ordinary text.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from typing import Final

__all__ = ["PARTIAL_MATCH", "REDACTED", "SHORT_SECRET", "Redactor"]

REDACTED: Final = "[redacted]"
PARTIAL_MATCH: Final = 10
"""Characters in a row a word must share with a secret to be taken for an echo of it."""
SHORT_SECRET: Final = 16

_WORD = re.compile(rf"[A-Za-z0-9._~+/=\-:]{{{PARTIAL_MATCH},}}")
_SHAPES = (
    # An Authorization header's credentials, in any case ("bearer", "BASIC").
    # Not a word that follows "bearer" in prose ("the bearer token is invalid").
    re.compile(r"(?i)\b(bearer|basic)\s+(?!(?:tokens?|auth\w*|credentials?|header|scheme|realm|"
               r"challenge|is|was|required|missing|invalid)\b)[A-Za-z0-9._~+/=\-]+"),
    # A JWT: base64url JSON header ("eyJ" is '{"'), payload and (maybe empty) signature.
    re.compile(r"\beyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*"),
    # key: value / key=value / "key": "value" for the keys credentials travel under.
    re.compile(r"""(?ix)
        \b((?:(?:access|refresh|id)_?)?token|client_?secret|password|passwd|secret|api_?key
           |x-api-key)
        (\\?["']?\s*[:=]\s*\\?["']?)
        ((?!\[redacted\])[^\s"'\\,&;}]+)"""),
    # An Authorization header of any scheme: the rest of the value.
    re.compile(r"""(?i)\b(authorization)(\\?["']?\s*[:=]\s*\\?["']?)((?!\[redacted\])[^\r\n"'\\&]+)"""),
)


class Redactor:
    """Callable: ``text`` with every credential it can recognise replaced by ``[redacted]``."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._whole: list[re.Pattern[str]] = []
        self._grams: set[str] = set()
        for secret in secrets:
            self._add(secret)

    def __repr__(self) -> str:
        return f"Redactor({len(self._whole)} secrets)"

    def __call__(self, text: str) -> str:
        for shape in _SHAPES:
            text = shape.sub(_keep_label, text)
        for whole in self._whole:
            text = whole.sub(REDACTED, text)
        if self._grams:
            text = _WORD.sub(self._partial, text)
        return text

    def _add(self, secret: str) -> None:
        if not secret:
            return
        self._whole.append(re.compile(re.escape(secret), re.IGNORECASE))
        if len(secret) < SHORT_SECRET:
            return
        for form in (secret, *_base64_forms(secret.encode())):
            lowered = form.lower()
            self._grams.update(lowered[i:i + PARTIAL_MATCH]
                               for i in range(len(lowered) - PARTIAL_MATCH + 1))

    def _partial(self, match: re.Match[str]) -> str:
        word = match.group(0).lower()
        for i in range(len(word) - PARTIAL_MATCH + 1):
            if word[i:i + PARTIAL_MATCH] in self._grams:
                return REDACTED
        return match.group(0)


def _keep_label(match: re.Match[str]) -> str:
    # "Bearer abc" -> "Bearer [redacted]"; "password=abc" -> "password=[redacted]".
    if match.lastindex == 3:
        return f"{match.group(1)}{match.group(2)}{REDACTED}"
    if match.lastindex == 1:
        return f"{match.group(1)} {REDACTED}"
    return REDACTED  # a JWT


def _base64_forms(raw: bytes) -> list[str]:
    """The secret's base64 text at each of the three alignments it can have inside a longer
    encoded value (e.g. ``client:secret`` in a Basic header), standard and URL-safe, without
    the edge characters that depend on the neighbouring bytes."""
    forms = []
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + raw).decode()
        core = encoded[(4 if offset else 0):-4]  # the edges mix in neighbouring bytes
        forms += [core, core.replace("+", "-").replace("/", "_")]
    return [f for f in forms if len(f) >= PARTIAL_MATCH]
