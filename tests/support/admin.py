"""Helpers for tests of the control plane: start the real admin service next to a pipeline,
and run the real ``scimflow`` CLI against it (or directly against Kafka); :func:`admin_stack`
is the one way an admin-service test module builds its stack (topics, config file, admin)."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import msgspec
import yaml
from typer.testing import CliRunner

from schemas.control import AuditRecord
from services.cli import cli
from services.devstack.processes import free_port
from services.devstack.supervisor import Supervisor
from services.runtime.kafka import consume, create_topics
from services.runtime.topics import Topics
from tests.conftest import PARTITIONS

SOURCE = {"name": "hr", "type": "file", "path": "directory.yaml"}
"""The file source of every admin stack (an empty directory.yaml next to the config)."""


@dataclass
class Admin:
    """A running admin service: its URL, one token (name ``ops``) and a client holding it."""

    url: str
    token: str
    token_file: Path
    http: httpx.Client

    def cli(self, sup: Supervisor, *args: str, api: bool = True, check: bool = True,
            process: bool = False, timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
        """Run ``scimflow ARGS`` with the pipeline's environment, through the API or not:
        in this process (fast), or as a real ``python -m services.cli`` process."""
        env = {**sup.env, "SCIMFLOW_ADMIN_URL": "", "SCIMFLOW_ADMIN_TOKEN": ""}
        if api:
            env |= {"SCIMFLOW_ADMIN_URL": self.url, "SCIMFLOW_ADMIN_TOKEN": self.token}
        if process:
            done = subprocess.run([sys.executable, "-m", "services.cli", *args], env={**os.environ, **env},
                                  capture_output=True, text=True, timeout=timeout, check=False)
        else:
            result = CliRunner().invoke(cli, list(args), env=env)
            done = subprocess.CompletedProcess(list(args), result.exit_code, result.stdout, result.stderr)
        if check:
            assert done.returncode == 0, f"scimflow {' '.join(args)}: {done.stdout}\n{done.stderr}"
        return done


def start_admin(sup: Supervisor, folder: Path) -> Admin:
    """Start ``scimflow admin`` under ``sup`` (stopped with the workers) with a fresh token."""
    token = secrets.token_urlsafe(24)
    token_file = folder / "admin-token"
    token_file.write_text(token)
    url = sup.start_admin(port=free_port(), tokens=f"ops=file:{token_file}")
    http = httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {token}"})
    return Admin(url, token, token_file, http)


@dataclass
class AdminStack:
    """Fresh topics, a config file naming some apps, and ``scimflow admin`` running on them."""

    admin: Admin
    topics: Topics
    bootstrap: str
    sup: Supervisor
    dir: Path


S = TypeVar("S", bound=AdminStack)


@contextmanager
def admin_stack(bootstrap: str, folder: Path, applications: list[dict[str, Any]], kind: type[S], *,
                scim_url: str, scim_token: str) -> Iterator[S]:
    """``kind`` (an :class:`AdminStack`, or a module's subclass with its helpers) on topics
    with a fresh prefix; the apps' ``${TEST_SCIM_URL}`` and ``env:TEST_SCIM_TOKEN`` are
    ``scim_url`` and ``scim_token``. Every process it started is killed on exit."""
    prefix = f"t{uuid.uuid4().hex[:8]}."
    topics = Topics(prefix, PARTITIONS)
    create_topics(bootstrap, topics.specs())
    (folder / "directory.yaml").write_text("users: []\ngroups: []\n")
    (folder / "scimflow.yaml").write_text(yaml.safe_dump(
        {"sources": [SOURCE], "applications": applications}, sort_keys=False))
    env = {"SCIMFLOW_KAFKA_BOOTSTRAP": bootstrap, "SCIMFLOW_TOPIC_PREFIX": prefix,
           "SCIMFLOW_PARTITIONS": str(PARTITIONS), "SCIMFLOW_DATA_DIR": str(folder / "data"),
           "SCIMFLOW_LOG_FORMAT": "json", "TEST_SCIM_URL": scim_url, "TEST_SCIM_TOKEN": scim_token}
    sup = Supervisor(config=folder / "scimflow.yaml", env=env, log_dir=folder / "logs")
    try:
        yield kind(start_admin(sup, folder), topics, bootstrap, sup, folder)
    finally:
        sup.kill_all()


def audit_records(bootstrap: str, topics: Topics) -> list[AuditRecord]:
    dec = msgspec.json.Decoder(AuditRecord)
    return [dec.decode(m.value) for m in consume(bootstrap, topics.audit, idle_timeout=0.5)]


def json_lines(text: str) -> Any:
    return msgspec.json.decode(text.strip().encode())
