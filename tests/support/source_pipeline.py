"""Run the whole pipeline (three real worker processes) on unique topics with any source config:
what tests/conftest.py's ``pipeline_factory`` does for the file source, for the other sources."""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
import yaml

from schemas import DirectoryChange
from schemas.codecs import decoder
from services.runtime.broker import Broker
from services.runtime.kafka import consume, create_topics, plain_producer
from services.runtime.scim_target import ScimTarget
from services.runtime.supervisor import Supervisor
from services.runtime.topics import Topics
from tests.conftest import PARTITIONS, Pipeline, Scim

__all__ = ["change_events", "send_control", "start_pipeline", "user_app"]


def user_app(groups: list[str], *, user_name: str = "userPrincipalName", given: str = "givenName",
             family: str = "surname", display: str = "displayName", disabled: str = "accountEnabled",
             external: str = "id") -> dict[str, Any]:
    """An app with ``groups`` assigned and the usual user mapping, sources' attribute names given."""
    return {
        "name": "app",
        "target": {"base_url": "${TEST_SCIM_URL}", "token": "env:TEST_SCIM_TOKEN"},
        "assignments": {"groups": groups},
        "disabled_attribute": disabled,
        "mappings": {"user": {"attributes": [
            {"target": "userName", "source": user_name, "matching": 1},
            {"target": "externalId", "source": external},
            {"target": "displayName", "source": display},
            {"target": "name.givenName", "source": given},
            {"target": "name.familyName", "source": family},
        ]}},
    }


def start_pipeline(broker: Broker, scim_target: ScimTarget, tmp_path: Path, sources: list[dict[str, Any]],
                   app: dict[str, Any], env: Mapping[str, str] | None = None, *,
                   start: bool = True) -> Pipeline:
    """Config, topics and the three workers; the caller stops ``pipeline.sup``."""
    prefix = f"t{uuid.uuid4().hex[:8]}."
    topics = Topics(prefix, PARTITIONS)
    create_topics(broker.bootstrap, topics.specs())
    config = {"sources": sources, "applications": [app]}
    (tmp_path / "scimflow.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    full_env = {"SCIMFLOW_KAFKA_BOOTSTRAP": broker.bootstrap, "SCIMFLOW_TOPIC_PREFIX": prefix,
                "SCIMFLOW_PARTITIONS": str(PARTITIONS), "SCIMFLOW_DATA_DIR": str(tmp_path / "data"),
                "SCIMFLOW_LOG_FORMAT": "json", "SCIMFLOW_LOG_LEVEL": os.environ.get("TEST_LOG_LEVEL", "info"),
                "TEST_SCIM_URL": scim_target.base_url, "TEST_SCIM_TOKEN": scim_target.token, **(env or {})}
    sup = Supervisor(config=tmp_path / "scimflow.yaml", env=full_env, log_dir=tmp_path / "logs")
    if start:
        sup.start()
    return Pipeline(tmp_path, topics, broker.bootstrap, Scim(scim_target), sup, tmp_path / "unused")


def change_events(p: Pipeline) -> list[DirectoryChange]:
    """The change events on the changes topic (not the full scans' objects, not markers)."""
    dec = decoder("directory.changes")
    messages = (dec.decode(m.value) for m in consume(p.bootstrap, p.topics.changes, idle_timeout=0.5))
    return [m for m in messages if isinstance(m, DirectoryChange) and m.cycle_id is None]


def send_control(p: Pipeline, key: str, message: Any) -> None:
    """Put one control message on the pipeline's control topic, as the admin API does."""
    producer = plain_producer(p.bootstrap)
    try:
        producer.send(p.topics.control, key=key.encode(), value=msgspec.json.encode(message))
        producer.flush()
    finally:
        producer.close()
