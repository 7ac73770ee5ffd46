"""The writer's on-disk table in the deployments (Helm chart and kustomize base).

Both run the writer with ``SCIMFLOW_STATE_STORE=rocksdb`` and give its table a volume of its
own at ``SCIMFLOW_STATE_DIR``'s default (``<data dir>/state``): an emptyDir by default, a
claim of the user's with ``writer.state.existingClaim``, none with the memory store.
"""

from __future__ import annotations

from typing import Any

from tests.unit.test_deploy import BASE, Resource, render
from tests.unit.test_helm import find, helm_fails, helm_template

DATA_DIR = "/var/lib/scimflow"


def _pod(resources: list[Resource], workload: str) -> dict[str, Any]:
    spec: dict[str, Any] = find(resources, "Deployment", f"scimflow-{workload}")["spec"]
    return spec["template"]["spec"]  # type: ignore[no-any-return]


def _state_volume(resources: list[Resource]) -> dict[str, Any] | None:
    pod = _pod(resources, "writer")
    volumes = [v for v in pod["volumes"] if v["name"] == "state"]
    mounts = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "state"]
    assert len(volumes) == len(mounts) <= 1, "a state volume is mounted exactly once"
    if not volumes:
        return None
    assert mounts[0]["mountPath"] == f"{DATA_DIR}/state"  # SCIMFLOW_STATE_DIR's default
    volume: dict[str, Any] = volumes[0]
    return volume


def _settings(resources: list[Resource]) -> dict[str, str]:
    (config_map,) = [r for r in resources if r["kind"] == "ConfigMap"
                     and r["metadata"]["name"].startswith("scimflow-settings")]
    return config_map["data"]  # type: ignore[no-any-return]


def test_base_and_chart_keep_the_writer_table_on_an_empty_dir() -> None:
    for resources in (render(BASE), helm_template()):
        assert _settings(resources)["SCIMFLOW_STATE_STORE"] == "rocksdb"
        assert "SCIMFLOW_STATE_DIR" not in _settings(resources)
        assert _state_volume(resources) == {"name": "state", "emptyDir": {"sizeLimit": "4Gi"}}
        for workload in ("ingest", "mapper"):  # no table that grows: no state volume
            assert all(v["name"] != "state" for v in _pod(resources, workload)["volumes"])


def test_chart_state_volume_values() -> None:
    claim = helm_template("--set", "writer.state.existingClaim=writer-state")
    assert _state_volume(claim) == {"name": "state",
                                    "persistentVolumeClaim": {"claimName": "writer-state"}}
    sized = helm_template("--set", "writer.state.sizeLimit=20Gi")
    assert _state_volume(sized) == {"name": "state", "emptyDir": {"sizeLimit": "20Gi"}}
    memory = helm_template("--set", "settings.stateStore=memory")
    assert _settings(memory)["SCIMFLOW_STATE_STORE"] == "memory"
    assert _state_volume(memory) is None
    assert "settings.stateStore must be memory or rocksdb" in helm_fails(
        "--set", "settings.stateStore=disk")
