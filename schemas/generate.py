"""Write ``schemas/json/<topic>.schema.json`` from the Structs: ``python -m schemas.generate``.

The files are committed; ``tests/unit/test_schemas.py`` fails when they drift.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from schemas.codecs import TOPIC_TYPES, json_schema

JSON_DIR = Path(__file__).parent / "json"


def render(role: str) -> str:
    """The committed text of one topic's schema file."""
    return json.dumps(json_schema(role), indent=2, sort_keys=True) + "\n"


def main() -> int:
    JSON_DIR.mkdir(exist_ok=True)
    for role in TOPIC_TYPES:
        (JSON_DIR / f"{role}.schema.json").write_text(render(role), encoding="utf-8")
        sys.stdout.write(f"wrote schemas/json/{role}.schema.json\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
