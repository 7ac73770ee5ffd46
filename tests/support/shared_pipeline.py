"""A whole pipeline that outlives one test: for e2e tests that share one costly initial sync.

``pipeline_factory`` (tests/conftest.py) gives every test its own target and pipeline,
which is right unless the initial sync is what costs: 1,000 users in 50 groups take about
a minute to provision on a 2-core machine. :func:`shared_pipeline` builds the same
:class:`~tests.conftest.Pipeline` (three worker processes under a Supervisor, topics of its
own, the file source) for a module-scoped fixture; the caller owns the target and the
directory, and the workers are killed when the block ends.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from services.devstack.scim_target import ScimTarget
from services.devstack.supervisor import Supervisor
from services.runtime.kafka import create_topics
from services.runtime.topics import Topics
from tests.conftest import PARTITIONS, Pipeline, Scim

__all__ = ["shared_pipeline"]


@contextmanager
def shared_pipeline(bootstrap: str, target: ScimTarget, folder: Path, *, app: dict[str, Any],
                    users: list[dict[str, Any]], groups: list[dict[str, Any]],
                    source: dict[str, Any] | None = None) -> Iterator[Pipeline]:
    """Start ingest, mapper and writer on ``folder`` (config, directory file, logs) with
    ``app`` as the one application; ``source`` adds keys to the file source's config."""
    prefix = f"t{uuid.uuid4().hex[:8]}."
    topics = Topics(prefix, PARTITIONS)
    create_topics(bootstrap, topics.specs())
    file_source = {"name": "hr", "type": "file", "path": "directory.yaml", "poll_interval": 0.1,
                   **(source or {})}
    config = folder / "scimflow.yaml"
    config.write_text(yaml.safe_dump({"sources": [file_source], "applications": [app]}, sort_keys=False))
    env = {"SCIMFLOW_KAFKA_BOOTSTRAP": bootstrap, "SCIMFLOW_TOPIC_PREFIX": prefix,
           "SCIMFLOW_PARTITIONS": str(PARTITIONS), "SCIMFLOW_DATA_DIR": str(folder / "data"),
           "SCIMFLOW_LOG_FORMAT": "json", "SCIMFLOW_LOG_LEVEL": os.environ.get("TEST_LOG_LEVEL", "info"),
           "TEST_SCIM_URL": target.base_url, "TEST_SCIM_TOKEN": target.token}
    sup = Supervisor(config=config, env=env, log_dir=folder / "logs")
    p = Pipeline(folder, topics, bootstrap, Scim(target), sup, folder / "directory.yaml")
    p.write_directory(users, groups)
    sup.start()
    try:
        yield p
    finally:
        sup.kill_all()
