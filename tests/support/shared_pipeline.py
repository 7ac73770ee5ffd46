"""A whole pipeline that outlives one test: for e2e tests that share one costly initial sync.

``pipeline_factory`` (tests/conftest.py) gives every test its own target and pipeline,
which is right unless the initial sync is what costs: 1,000 users in 50 groups take about
a minute to provision on a 2-core machine. :func:`shared_pipeline` builds the same
:class:`~tests.conftest.Pipeline` (three worker processes under a Supervisor, topics of its
own, the file source) for a module-scoped fixture; the caller owns the target and the
directory, and the workers are killed when the block ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from services.devstack.scim_target import ScimTarget
from tests.conftest import Pipeline, Scim, launch

__all__ = ["shared_pipeline"]


@contextmanager
def shared_pipeline(bootstrap: str, target: ScimTarget, folder: Path, *, app: dict[str, Any],
                    users: list[dict[str, Any]], groups: list[dict[str, Any]],
                    source: dict[str, Any] | None = None) -> Iterator[Pipeline]:
    """Start ingest, mapper and writer on ``folder`` (config, directory file, logs) with
    ``app`` as the one application; ``source`` adds keys to the file source's config."""
    file_source = {"name": "hr", "type": "file", "path": "directory.yaml", "poll_interval": 0.1,
                   **(source or {})}
    topics, sup = launch(bootstrap, target, folder, {"sources": [file_source], "applications": [app]})
    p = Pipeline(folder, topics, bootstrap, Scim(target), sup, folder / "directory.yaml")
    p.write_directory(users, groups)
    sup.start()
    try:
        yield p
    finally:
        sup.kill_all()
