"""Capability discovery against a real SCIM server we did not write (scim2-server serves
/ServiceProviderConfig, /ResourceTypes and /Schemas), and the commands that report it:
``scimflow validate --online`` and ``scimflow test-connection`` (direct mode, real broker)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from services import cli as cli_module
from services.devstack.broker import Broker
from services.devstack.scim_target import ScimTarget, start_scim_target
from services.runtime.config import LoadedConfig, load_config
from services.runtime.kafka import create_topics
from services.runtime.topics import Topics
from services.scim.capabilities import case_exact, check_mappings, discover
from services.scim.client import ScimClient
from services.scim.paths import CORE_USER, ENTERPRISE_USER
from tests.conftest import PARTITIONS
from tests.support.fixtures import server_fixture

pytestmark = pytest.mark.integration

runner = CliRunner()

GOOD_MAPPINGS = """\
          - {target: userName, source: userPrincipalName, matching: 1}
          - {target: externalId, source: id}
          - {target: displayName, source: displayName}
          - {target: name.givenName, source: givenName}
          - {target: "emails[type eq \\"work\\"].value", source: mail}
          - {target: "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department", source: dept}
          - {target: "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager", source: manager,
             reference: user}
"""
BAD_MAPPINGS = """\
          - {target: costCentre, source: costCenter}
          - {target: "urn:example:acme:2.0:User:badge", source: badge}
"""


def config_text(base_url: str, token_file: Path, *, bad: bool) -> str:
    return f"""\
sources:
  - {{name: hr, type: file, path: directory.yaml}}
applications:
  - name: app
    target: {{base_url: "{base_url}", token: "file:{token_file}"}}
    mappings:
      user:
        attributes:
{GOOD_MAPPINGS}{BAD_MAPPINGS if bad else ""}\
      group:
        attributes:
          - {{target: displayName, source: displayName, matching: 1}}
          - {{target: externalId, source: id}}
"""


scim_target = server_fixture(start_scim_target, scope="module",
                             doc="One server per module: discovery only reads, so the tests share it.")


def write_config(folder: Path, target: ScimTarget, *, bad: bool, base_url: str | None = None) -> Path:
    token = folder / "token"
    token.write_text(target.token)
    (folder / "directory.yaml").write_text("users: []\ngroups: []\n")
    path = folder / "scimflow.yaml"
    path.write_text(config_text(base_url or target.base_url, token, bad=bad))
    return path


def line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), start=1) if needle in line)


@pytest.fixture
def loaded(tmp_path: Path, scim_target: ScimTarget) -> LoadedConfig:
    return load_config(write_config(tmp_path, scim_target, bad=True))


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_discovers_what_scim2_server_declares(scim_target: ScimTarget, loaded: LoadedConfig,
                                                    anyio_backend: str) -> None:
    async with ScimClient(scim_target.base_url, scim_target.token) as client:
        caps = await discover(client)
    assert caps.complete, (caps.unavailable, caps.failed)
    assert (caps.patch, caps.bulk, caps.filter, caps.etag, caps.sort) == (True, True, True, True, True)
    assert caps.bulk_max_operations is not None and caps.bulk_max_operations > 0
    assert caps.filter_max_results is not None and caps.filter_max_results > 0
    user = caps.resources["user"]
    assert user.endpoint == "/Users" and user.extensions == (ENTERPRISE_USER,)
    assert user.schemas_read == (CORE_USER, ENTERPRISE_USER)
    assert user.attributes["groups"].mutability == "readOnly"
    assert case_exact(caps, "user", "userName") is False
    assert case_exact(caps, "user", "externalId") is True
    assert case_exact(caps, "group", "displayName") is False

    problems = check_mappings(loaded.config.applications[0], caps, loaded)
    assert [(p.target, p.kind) for p in problems] == [
        ("costCentre", "unknown-attribute"), ("urn:example:acme:2.0:User:badge", "undeclared-extension")]
    config = Path(loaded.file)
    assert problems[0].line == line_of(config, "target: costCentre")
    assert problems[1].line == line_of(config, "urn:example:acme")
    assert str(problems[0]).startswith(f"{config}:{problems[0].line}: app: user mapping 'costCentre': ")


def test_validate_online_reports_mapping_problems_with_their_lines(tmp_path: Path,
                                                                   scim_target: ScimTarget) -> None:
    config = write_config(tmp_path, scim_target, bad=True)
    result = runner.invoke(cli_module.cli, ["validate", str(config), "--online"])
    assert result.exit_code == 1, result.output
    assert "PATCH            supported" in result.output
    assert f"User             {CORE_USER}; extensions: {ENTERPRISE_USER};" in result.output
    assert "mapping problems (2)" in result.output
    assert f"{config}:{line_of(config, 'target: costCentre')}: app: user mapping 'costCentre': " \
           f"the target's schema {CORE_USER} declares no attribute 'costCentre'" in result.output
    assert f"{config}:{line_of(config, 'urn:example:acme')}: app: user mapping " in result.output


def test_validate_online_passes_the_standard_mappings(tmp_path: Path, scim_target: ScimTarget) -> None:
    config = write_config(tmp_path, scim_target, bad=False)
    offline = runner.invoke(cli_module.cli, ["validate", str(config)])
    assert offline.exit_code == 0 and "capabilities" not in offline.output
    result = runner.invoke(cli_module.cli, ["validate", str(config), "--online"])
    assert result.exit_code == 0, result.output
    assert "mappings: every mapped attribute is one the target declares" in result.output


def test_validate_online_against_a_target_serving_no_capabilities(tmp_path: Path,
                                                                  scim_target: ScimTarget) -> None:
    # Under another path scim2-server answers 404 to all three: the common case of a
    # target that does not serve the discovery endpoints.
    config = write_config(tmp_path, scim_target, bad=True, base_url=scim_target.base_url + "/elsewhere")
    result = runner.invoke(cli_module.cli, ["validate", str(config), "--online"])
    assert result.exit_code == 0, result.output
    assert "features         unknown (/ServiceProviderConfig not read)" in result.output
    assert "/Schemas not served: GET " in result.output and "404 Not Found" in result.output
    assert "reports no mapping as wrong" in result.output
    assert "mappings: not checked (no schema of the target was read)" in result.output


def test_validate_online_fails_when_the_target_refuses_the_token(tmp_path: Path,
                                                                 scim_target: ScimTarget) -> None:
    config = write_config(tmp_path, scim_target, bad=False)
    (tmp_path / "token").write_text("not-the-token")
    result = runner.invoke(cli_module.cli, ["validate", str(config), "--online"])
    assert result.exit_code == 1, result.output
    assert "/Schemas could not be read now: " in result.output and "401" in result.output
    assert "its capabilities are not known" in result.output
    assert "not-the-token" not in result.output


def test_test_connection_shows_capabilities_and_mapping_problems(
        tmp_path: Path, scim_target: ScimTarget, broker: Broker) -> None:
    config = write_config(tmp_path, scim_target, bad=True)
    prefix = f"t{uuid.uuid4().hex[:8]}."
    create_topics(broker.bootstrap, Topics(prefix, PARTITIONS).specs())
    env = {"SCIMFLOW_KAFKA_BOOTSTRAP": broker.bootstrap, "SCIMFLOW_TOPIC_PREFIX": prefix,
           "SCIMFLOW_PARTITIONS": str(PARTITIONS), "SCIMFLOW_ADMIN_URL": "", "SCIMFLOW_CONFIG": ""}
    result = runner.invoke(cli_module.cli, ["test-connection", "app", "--config", str(config)], env=env)
    # the connection works: mapping problems are reported, not failed on
    assert result.exit_code == 0, result.output
    assert "app: OK" in result.output
    assert "filter           supported" in result.output
    line = line_of(config, "target: costCentre")
    assert f"{config}:{line}: app: user mapping 'costCentre'" in result.output
    as_json = runner.invoke(cli_module.cli, ["test-connection", "app", "--config", str(config), "--json"],
                            env=env)
    assert '"kind":"undeclared-extension"' in as_json.stdout
    assert '"capabilities":{"patch":true' in as_json.stdout
