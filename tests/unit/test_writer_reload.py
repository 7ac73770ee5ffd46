"""The writer's pure side of live reload: what a new version keeps, what a removal forgets.

No network: clients are built (``client_for``) but never called; the capabilities read is
held back (``restoring``), as it is in a worker until the config topic was read.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from schemas import CycleMarker, ManagedObject, ProvisioningCommand
from services.runtime.settings import load_settings
from services.writer.apply import owned
from services.writer.cycles import CycleTracker
from services.writer.deletion_guard import DeletionGuard, Staged
from services.writer.worker import CommandProcessor
from tests.support.writer_harness import Recorder, application, loaded_for

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def removal(i: int, app: str = "a") -> Staged:
    cmd = ProvisioningCommand(app=app, object_type="user", source="s", source_id=f"u{i}",
                              operation="deprovision", reason="not assigned", change_id="c",
                              observed_at=T0)
    return Staged(f"{app}/u{i}".encode(), cmd, T0)


def test_a_new_threshold_keeps_the_cycles_count_and_turning_the_guard_off_releases_what_waited() -> None:
    guard = DeletionGuard({"a": 2, "b": 2}, grace=1)
    for i in range(3):
        guard.stage(removal(i))
    guard.stage(removal(9, "b"))
    assert guard.tick("a", T0 + timedelta(seconds=2)).newly_held  # 3 > 2: held
    assert guard.configure("a", 5) == []  # still guarded: nothing released by the change itself
    assert guard.held("a") and guard.waiting("a") == 3
    released = guard.configure("a", 0)
    assert sorted(s.command.source_id for s in released) == ["u0", "u1", "u2"]
    assert not guard.guards("a") and guard.waiting("a") == 0
    assert guard.waiting("b") == 1  # the other app is not touched


def test_a_removed_app_drops_its_staged_removals_and_a_new_app_gets_a_guard() -> None:
    guard = DeletionGuard({"a": 2})
    guard.stage(removal(0))
    assert guard.forget("a") == 1
    assert not guard.guards("a")
    assert guard.configure("c", 3) == []
    assert guard.guards("c") and guard.tally("c") == 0


def marker(app: str, phase: str, origin: int) -> CycleMarker:
    return CycleMarker(source="s", cycle_id="c1", phase=phase, at=T0, app=app,  # type: ignore[arg-type]
                       origin_partition=origin, origin_partitions=2)


def test_a_scan_in_progress_of_a_removed_app_sweeps_nothing_later() -> None:
    cycles = CycleTracker()
    for app in ("a", "b"):
        for origin in (0, 1):
            cycles.on_marker(0, marker(app, "start", origin))
    cycles.forget_app("a")
    ends = [cycles.on_marker(0, marker("a", "end", origin)) for origin in (0, 1)]
    assert ends[0] is None and ends[1] is not None and not ends[1].sweep
    b = [cycles.on_marker(0, marker("b", "end", origin)) for origin in (0, 1)]
    assert b[1] is not None and b[1].sweep  # the other app's scan is whole


def command(**attributes: object) -> ProvisioningCommand:
    return ProvisioningCommand(app="a", object_type="user", source="s", source_id="u1",
                               operation="upsert", reason="in scope", attributes=dict(attributes),
                               change_id="c", observed_at=T0)


def state(**attributes: object) -> ManagedObject:
    return ManagedObject(app="a", object_type="user", source_id="u1", target_id="t1",
                         attributes=dict(attributes), origin="created", created_at=T0, updated_at=T0,
                         unstored=sorted(attributes))


def test_owned_keeps_what_the_command_carries_and_forgets_the_rest() -> None:
    managed = state(userName="x", nickName="n", title="t", active=True)
    kept = owned(command(userName="x", title="t2"), managed)
    assert kept is not None
    assert kept.attributes == {"userName": "x", "title": "t", "active": True}
    assert kept.unstored == ["active", "title", "userName"]
    same = state(userName="x", active=True)
    assert owned(command(userName="x", title="new"), same) is same  # nothing to forget: unchanged
    removal_cmd = ProvisioningCommand(app="a", object_type="user", source="s", source_id="u1",
                                      operation="deprovision", reason="gone", change_id="c", observed_at=T0)
    assert owned(removal_cmd, managed) is managed  # a removal carries no attributes: keep all


def processor() -> CommandProcessor:
    settings = load_settings({}, partitions=3)
    return CommandProcessor(settings, {}, {}, activity=Recorder(), errors=Recorder(),
                            restoring=("capabilities",))


@pytest.mark.anyio
async def test_a_client_is_kept_for_a_mapping_change_and_replaced_for_new_credentials() -> None:
    p = processor()
    a, b = application(name="a", deletion_threshold=5), application(name="b")
    await p.set_application(a, loaded_for(a, "secret-1"))
    await p.set_application(b, loaded_for(b, "secret-b"))
    first, other = p.writers["a"], p.writers["b"]
    renamed = application(name="a", mappings={"user": {"attributes": [
        {"target": "userName", "source": "mail", "matching": 1}]}}, drift="repair", deletion_threshold=5)
    await p.set_application(renamed, loaded_for(renamed, "secret-1"))
    assert p.writers["a"] is not first and p.writers["a"].client is first.client
    assert p.writers["a"].app.drift == "repair"
    await p.set_application(renamed, loaded_for(renamed, "secret-2"))  # a rotated secret
    assert p.writers["a"].client is not first.client
    assert p.writers["b"] is other
    assert p.app_state.guard.guards("a")
    await p.remove_application("a")
    assert "a" not in p.writers and not p.app_state.guard.guards("a")
    await p.close()
