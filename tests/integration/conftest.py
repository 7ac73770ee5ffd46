"""Fixtures of the integration tests: the second real SCIM server (SCIMMY, see
tests/support/scimmy_target.py). The broker and scim2-server fixtures are in tests/conftest.py."""

from __future__ import annotations

from tests.support.fixtures import server_fixture
from tests.support.scimmy_target import start_scimmy_target

scimmy_target = server_fixture(start_scimmy_target,
                               doc="A fresh, empty SCIMMY server per test (it starts in ~0.4 s).")
