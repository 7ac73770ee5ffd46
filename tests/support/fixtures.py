"""Fixture factories: a pytest fixture that starts one throwaway server (scim2-server, SCIMMY,
Samba, slapd, the local Graph) for each test, module or session, and stops it after.

The start-skip-yield body lives here once. A module that wants another server, another
scope or other settings assigns one line, named after the fixture it defines::

    scim_target = server_fixture(start_scimmy_target)          # SCIMMY in place of scim2-server
    samba = server_fixture(start_samba, scope="module", missing=samba_missing)
    graph = server_fixture(functools.partial(start_graph_server, page_size=7))
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any, Literal, TypeVar

import pytest

__all__ = ["Scope", "server_fixture"]

Scope = Literal["session", "package", "module", "class", "function"]
T = TypeVar("T")


def server_fixture(start: Callable[[], AbstractContextManager[T]], *, scope: Scope = "function",
                   missing: Callable[[], str | None] | None = None, doc: str | None = None) -> Any:
    """A fixture yielding what ``start()`` enters, one per ``scope``.

    ``missing``: says why the server cannot run on this machine (the test is skipped with
    that reason), or None when it can. ``doc``: the fixture's docstring (``pytest --fixtures``).
    """
    def server() -> Iterator[T]:
        if missing is not None and (why := missing()) is not None:
            pytest.skip(why)
        with start() as running:
            yield running

    server.__doc__ = doc or f"{getattr(start, '__name__', 'a server')}(), one per {scope}."
    # pytest's fixture object is not public API; callers only assign it to a module name.
    return pytest.fixture(scope=scope)(server)
