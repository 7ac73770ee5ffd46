"""Reading a SCIM target for assertions, apart from the client under test."""

from __future__ import annotations

from typing import Any

import httpx


def all_of(http: httpx.Client, kind: str) -> list[dict[str, Any]]:
    """Every resource of ``kind`` (``Users``/``Groups``), paged by what each page held."""
    out: list[dict[str, Any]] = []
    while True:
        page = http.get(f"/{kind}", params={"startIndex": len(out) + 1, "count": 1000}).json()
        out.extend(page.get("Resources", []))
        if not page.get("Resources") or len(out) >= page["totalResults"]:
            return out
