"""What a target echoes back loses every credential, however it is disguised."""

from __future__ import annotations

import base64

import pytest

from services.runtime.redaction import REDACTED, Redactor

TOKEN = "Zq8vR2nT5wXyL0pKc7mB3dFh"  # 24 characters, shaped like a real bearer token
SECRET = "client-secret-9f8e7d6c5b4a"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize("echo", [
    TOKEN,
    TOKEN.upper(),
    TOKEN.lower(),
    TOKEN[:12],                      # cut short
    TOKEN[6:20],                     # a middle piece
    f"xx{TOKEN}yy",                  # glued to other text
    b64(TOKEN),
    b64(f"app:{TOKEN}"),             # inside a Basic header, at another alignment
    b64(f"ab:{TOKEN}"),
    base64.urlsafe_b64encode(f"a:{SECRET}".encode()).decode(),
    SECRET.upper(),
])
def test_every_disguise_of_a_known_secret_is_removed(echo: str) -> None:
    redact = Redactor([TOKEN, SECRET])
    out = redact(f"the server said: {echo} is not valid")
    assert out.startswith("the server said: ") and out.endswith(" is not valid")
    assert REDACTED in out
    left = out.lower()
    for secret in (TOKEN, SECRET, b64(TOKEN)):
        pieces = {secret.lower()[i:i + 8] for i in range(len(secret) - 7)}
        assert not any(p in left for p in pieces), out


@pytest.mark.parametrize(("text", "expected"), [
    ("Authorization: Bearer abc.def", "Authorization: [redacted]"),
    ("got bearer 0123456789abcdef", "got bearer [redacted]"),
    ("BASIC dXNlcjpwYXNz rejected", "BASIC [redacted] rejected"),
    ('{"access_token": "tok", "expires_in": 3600}', '{"access_token": "[redacted]", "expires_in": 3600}'),
    ("client_secret=abc&grant_type=client_credentials",
     "client_secret=[redacted]&grant_type=client_credentials"),
    ('{\\"password\\": \\"hunter2\\"}', '{\\"password\\": \\"[redacted]\\"}'),
    ("token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl expired", "token [redacted] expired"),
    ("X-Api-Key: k-123", "X-Api-Key: [redacted]"),
])
def test_credential_shapes_are_removed_whoever_they_belong_to(text: str, expected: str) -> None:
    assert Redactor()(text) == expected


@pytest.mark.parametrize("text", [
    "userName 'ada@example.com' must be unique",
    "the token is required",
    "Attribute 'password' is read-only",
    'scimType "invalidValue": displayName too long',
    "urn:ietf:params:scim:schemas:core:2.0:User",
    "Missing or invalid bearer token",
    "the target refused the bearer token",
])
def test_ordinary_target_messages_are_left_alone(text: str) -> None:
    assert Redactor([TOKEN, SECRET])(text) == text


def test_a_short_secret_is_replaced_only_whole() -> None:
    redact = Redactor(["pa55"])
    assert redact("PA55 and pa555") == f"{REDACTED} and {REDACTED}5"
    assert redact("pa5") == "pa5"
