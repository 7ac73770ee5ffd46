"""Mapping throughput: 20-attribute mapping sets (Direct + Expression) over N users.

Two mixes: an expression-heavy one (10 Direct, 10 Expression including regex Replace and
NormalizeDiacritics) and Entra's default SCIM user mapping (18 Direct, 2 Expression).

    python bench/mapping.py [--users 100000]

Runs the mapper's real compiled mappings and planner (scope, enabled flag, mappings,
command construction) on one core, without Kafka: what one mapper process can do per
second of CPU. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from schemas import DirectoryChange
from schemas.codecs import encode
from services.mapper.main import compile_apps
from services.mapper.planner import plan
from services.runtime.config import load_config

DIRECT = ["userPrincipalName", "id", "givenName", "surname", "mail", "jobTitle", "department",
          "employeeId", "mobilePhone", "city"]
EXPRESSIONS = {
    "displayName": 'Join(" ", [givenName], [surname])',
    "nickName": 'ToLower(NormalizeDiacritics(StripSpaces(Join(".", [givenName], [surname]))))',
    "title": 'Switch([department], "Staff", "Engineering", "Engineer", "Sales", "Seller")',
    "userType": 'IIF([employeeType]="Contractor", "Contractor", "Employee")',
    "locale": 'Left([countryCode], 2)',
    "preferredLanguage": 'Coalesce([preferredLanguage], "en-US")',
    "profileUrl": 'Append("https://people.example.com/", [id])',
    "timezone": 'Replace([city], , "(?<c>.+)", , "Europe/${c}", , )',
    "emails[type eq \"other\"].value": 'ToLower(Replace([mail], "@example.com", , , "@corp.example", , ))',
    "phoneNumbers[type eq \"work\"].value": 'StripSpaces([mobilePhone])',
}
ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
TARGETS = ["userName", "externalId", "name.givenName", "name.familyName",
           'emails[type eq "work"].value', f"{ENTERPRISE}:organization", f"{ENTERPRISE}:department",
           f"{ENTERPRISE}:employeeNumber",
           'phoneNumbers[type eq "mobile"].value', 'addresses[type eq "work"].locality']


# Entra's default "Azure AD -> SCIM" user mapping: 18 Direct, 2 Expression.
ENTRA_DEFAULT_DIRECT = dict(zip(
    [*TARGETS, "title", "preferredLanguage", "displayName", "nickName", "locale", "timezone",
     'addresses[type eq "work"].postalCode', 'addresses[type eq "work"].country'],
    [*DIRECT, "jobTitle", "preferredLanguage", "displayName", "id", "countryCode", "city",
     "employeeId", "countryCode"], strict=True))
ENTRA_DEFAULT_EXPRESSIONS = {
    "active": 'Switch([IsSoftDeleted], , "False", "True", "True", "False")',
    'emails[type eq "other"].value': 'Join("@", [id], "example.com")',
}


def config_text(direct: dict[str, str] | None = None, expressions: dict[str, str] | None = None) -> str:
    direct = dict(zip(TARGETS, DIRECT, strict=True)) if direct is None else direct
    expressions = EXPRESSIONS if expressions is None else expressions
    attrs: list[dict[str, Any]] = [
        {"target": t, "source": s, **({"matching": 1} if t == "userName" else {})}
        for t, s in direct.items()
    ]
    attrs += [{"target": t, "type": "expression", "expression": e} for t, e in expressions.items()]
    return yaml.safe_dump({
        "sources": [{"name": "hr", "type": "file", "path": "directory.yaml"}],
        "applications": [{"name": "bench", "target": {"base_url": "http://127.0.0.1:1/v2", "token": "env:X"},
                          "scope": "all", "mappings": {"user": {"attributes": attrs}}}],
    })


def person(i: int) -> dict[str, Any]:
    return {"id": f"u{i:06d}", "userPrincipalName": f"user{i}@example.com", "givenName": f"Zoë {i % 97}",
            "surname": f"Ng-Sørensen{i % 13}", "mail": f"user{i}@example.com", "jobTitle": "Engineer",
            "department": ("Engineering", "Sales", "Legal")[i % 3], "employeeId": str(100000 + i),
            "mobilePhone": "+1 555 0100", "city": "Lisbon", "employeeType": ("Contractor", "FTE")[i % 2],
            "countryCode": "PRT", "accountEnabled": True, "IsSoftDeleted": "False"}


def run_mapping(users: int) -> dict[str, Any]:
    """Both mixes: the expression-heavy one (10 + 10) and Entra's default (18 + 2)."""
    heavy = _run(users, config_text())
    default = _run(users, config_text(ENTRA_DEFAULT_DIRECT, ENTRA_DEFAULT_EXPRESSIONS))
    return {"mapping_users": users, "mapping_attributes": 20,
            "mapping_10expr_users_per_cpu_s": heavy[0],
            "mapping_10expr_with_encoding_users_per_cpu_s": heavy[1],
            "mapping_entra_default_users_per_cpu_s": default[0],
            "mapping_entra_default_with_encoding_users_per_cpu_s": default[1]}


def _run(users: int, text: str) -> tuple[int, int]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.yaml"
        path.write_text(text)
        loaded = load_config(path, resolve_secrets=False)
    compiled = compile_apps(loaded)[0]
    user = compiled.user
    assert len(user.attributes) + len(user.direct) + len(user.simple) == 20
    now = datetime.now(UTC)
    changes = [DirectoryChange(source="hr", object_type="user", object_id=p["id"], operation="upsert",
                               attributes=p, change_id="c", observed_at=now)
               for p in (person(i) for i in range(users))]
    t0 = time.process_time()
    for change in changes:
        command = plan(compiled, change)
        assert command is not None
    mapped = time.process_time() - t0
    t0 = time.process_time()
    for change in changes:
        encode(plan(compiled, change))  # type: ignore[arg-type]
    with_encoding = time.process_time() - t0
    return round(users / mapped), round(users / with_encoding)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=100_000)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    print(json.dumps(run_mapping(args.users), sort_keys=True))


if __name__ == "__main__":
    main()
