"""Fixtures of the integration tests: the second real SCIM server (SCIMMY, see
tests/support/scimmy_target.py). The broker and scim2-server fixtures are in tests/conftest.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from services.devstack.scim_target import ScimTarget
from tests.support.scimmy_target import start_scimmy_target


@pytest.fixture
def scimmy_target() -> Iterator[ScimTarget]:
    """A fresh, empty SCIMMY server per test (it starts in ~0.4 s)."""
    with start_scimmy_target() as target:
        yield target
