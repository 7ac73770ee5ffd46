"""The SCIM client package knows nothing of its callers: it imports ``services.runtime`` and
itself, never the writer, the admin API, the ingest or the mapper. Read from the source, so
a lazy import inside a function counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import services.scim

PACKAGE = Path(services.scim.__file__).parent
ALLOWED = ("services.runtime", "services.scim")


def _service_imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name == "services" or name.startswith("services.")}


@pytest.mark.parametrize("module", sorted(PACKAGE.glob("*.py")), ids=lambda p: p.name)
def test_the_scim_package_imports_only_the_runtime_and_itself(module: Path) -> None:
    outside = {name for name in _service_imports(module) if not name.startswith(ALLOWED)}
    assert outside == set()


def test_the_check_sees_imports() -> None:
    imports = _service_imports(PACKAGE / "client.py")
    assert "services.scim._transport" in imports and "services.runtime.errors" in imports
