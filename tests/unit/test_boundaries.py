"""The rule the package layout depends on: services do not import each other.

``ingest``, ``mapper``, ``writer`` and ``admin`` are services: each may import its own
modules, the shared production code in ``services.runtime``, the SCIM client library
``services.scim`` (a library, not a service) and ``schemas``. None imports another service,
the CLI, or ``services.devstack`` (the embedded broker and demo target, a development
tool). ``services.scim``, ``services.runtime`` and ``services.devstack`` know nothing of
their callers. Only the CLI may import anything (``scimflow up`` starts the dev stack).
Checked statically, from each module's import statements, so a lazy import inside a
function counts as much as one at the top.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ROOT / "services"

# package -> the services.* packages it may import besides itself
ALLOWED: dict[str, frozenset[str]] = {
    "ingest": frozenset({"runtime"}),
    "mapper": frozenset({"runtime"}),
    "writer": frozenset({"runtime", "scim"}),
    "admin": frozenset({"runtime", "scim"}),
    "scim": frozenset({"runtime"}),
    "runtime": frozenset(),
    "devstack": frozenset({"runtime"}),
}


def _modules(package: str) -> list[Path]:
    return sorted((SERVICES / package).rglob("*.py"))


def _imported(path: Path) -> Iterator[tuple[int, str]]:
    """Every absolute module name ``path`` imports, with its line."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
            for alias in node.names:  # `from services import writer`
                if node.module == "services":
                    yield node.lineno, f"services.{alias.name}"


def _violations(package: str) -> list[str]:
    allowed = ALLOWED[package] | {package}
    found = []
    for path in _modules(package):
        for line, name in _imported(path):
            parts = name.split(".")
            if parts[0] == "services" and len(parts) > 1 and parts[1] not in allowed:
                found.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_service_imports_no_other_service_and_no_devstack(package: str) -> None:
    assert _modules(package), f"services/{package} has no modules: is the layout still the one ALLOWED names?"
    assert _violations(package) == []


def test_the_check_sees_a_violation(tmp_path: Path) -> None:
    """The checker itself: an import it must refuse is found (so an empty result means something)."""
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from services.devstack.broker import start\n", encoding="utf-8")
    assert list(_imported(module)) == [(2, "services.devstack.broker")]
