"""Who is using the console, and whether a form post really comes from the console.

The session is the admin token itself, in an HttpOnly, SameSite=Strict cookie scoped to
``/console``: the admin service stays stateless (any replica answers, a restart logs no one
out) and revoking a token ends its console sessions too. The token's name, from
:class:`~services.admin.auth.Tokens`, is the caller in the audit trail, as for the API.

CSRF: every form carries a token derived from the session (an HMAC keyed by the admin
token), so a page on another origin cannot produce it; the login form, which has no session
yet, uses a random double-submit cookie instead. Both are compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from aiohttp import web

from services.admin.auth import Tokens

__all__ = [
    "CSRF_FIELD",
    "CSRF_HEADER",
    "LOGIN_COOKIE",
    "SESSION_COOKIE",
    "clear_session",
    "csrf_for",
    "csrf_ok",
    "keep_login_csrf",
    "login_csrf",
    "login_csrf_ok",
    "session_name",
    "start_session",
]

SESSION_COOKIE = "scimflow_console"
LOGIN_COOKIE = "scimflow_console_login"
CSRF_FIELD = "csrf"
CSRF_HEADER = "X-CSRF-Token"
_PATH = "/console"
_PURPOSE = b"scimflow console csrf v1"


def session_name(request: web.Request, tokens: Tokens) -> str | None:
    """The name of the token this browser logged in with, or None (no or a revoked token)."""
    token = request.cookies.get(SESSION_COOKIE, "")
    return tokens.identify(f"Bearer {token}") if token else None


def start_session(response: web.StreamResponse, request: web.Request, token: str) -> None:
    """Log this browser in: the token goes into a cookie scripts cannot read or send cross-site."""
    response.set_cookie(SESSION_COOKIE, token, path=_PATH, httponly=True, samesite="Strict",
                        secure=request.secure)
    response.del_cookie(LOGIN_COOKIE, path=_PATH)


def clear_session(response: web.StreamResponse) -> None:
    response.del_cookie(SESSION_COOKIE, path=_PATH)


def csrf_for(request: web.Request) -> str:
    """This session's CSRF token (empty without a session)."""
    token = request.cookies.get(SESSION_COOKIE, "")
    if not token:
        return ""
    return hmac.new(token.encode(), _PURPOSE, hashlib.sha256).hexdigest()


def csrf_ok(request: web.Request, presented: str | None) -> bool:
    """Whether a post carries this session's CSRF token (form field or htmx header)."""
    expected = csrf_for(request)
    given = presented or request.headers.get(CSRF_HEADER) or ""
    return bool(expected) and hmac.compare_digest(expected.encode(), given.encode())


def login_csrf(request: web.Request) -> str:
    """The login form's CSRF token: the browser's, or a new random one (see :func:`keep_login_csrf`)."""
    return request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(24)


def keep_login_csrf(request: web.Request, response: web.StreamResponse, value: str) -> None:
    """Send the login form's token as a cookie too: the post must bring both, equal."""
    response.set_cookie(LOGIN_COOKIE, value, path=_PATH, httponly=True, samesite="Strict",
                        secure=request.secure)


def login_csrf_ok(request: web.Request, presented: str | None) -> bool:
    cookie = request.cookies.get(LOGIN_COOKIE, "")
    return bool(cookie) and hmac.compare_digest(cookie.encode(), (presented or "").encode())
