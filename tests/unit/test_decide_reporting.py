"""What an outcome is called in activity and error records (services/writer/decide.py): a
write that repairs drift is reported as ``repair``, and a failure as the write that was
attempted. Decisions come from ``decide``/``after_lookup`` on real commands, managed state
and target resources read with the SCIM client's own ``read_path``."""

from __future__ import annotations

from typing import Any

import pytest

from services.scim.paths import read_path
from services.writer.decide import ABSENT, Decision, after_lookup, decide, failed_action, reported_action
from tests.unit.test_decide import ALL, cmd, managed  # a user command and its managed state


def edited_in_target() -> Decision:
    """A title scimflow wrote, changed directly in the target; ``drift: repair`` writes it back."""
    target = {"userName": "ada", "title": "Edited", "active": True}
    return decide(cmd(userName="ada", title="Staff"), managed(userName="ada", title="Staff"), ALL,
                  target=target, drift="repair", read=read_path)


def reenabled_in_target() -> Decision:
    """A user scimflow disabled, enabled again directly in the target."""
    return decide(cmd("deprovision", "not assigned"), managed(active=False), ALL,
                  target={"userName": "ada", "active": True}, drift="repair", read=read_path)


def deleted_in_target() -> Decision:
    """A managed user the target no longer holds: looked up and re-created."""
    lookup = decide(cmd(userName="ada"), managed(userName="ada"), ALL, target=ABSENT, drift="repair",
                    read=read_path)
    assert lookup.action == "lookup"
    return after_lookup(cmd(userName="ada"), None, ALL, read_path, repair=lookup.repair)


# -- reported_action ------------------------------------------------------------------------


@pytest.mark.parametrize(("decision", "action"), [(edited_in_target, "update"),
                                                  (reenabled_in_target, "disable"),
                                                  (deleted_in_target, "create")])
def test_a_write_that_repairs_drift_is_reported_as_repair(decision: Any, action: str) -> None:
    made = decision()
    assert made.action == action
    assert reported_action(made.action, made) == "repair"


def test_a_write_the_source_asked_for_keeps_its_own_name() -> None:
    update = decide(cmd(userName="ada", title="Lead"), managed(userName="ada", title="Staff"), ALL)
    disable = decide(cmd("deprovision", "not assigned"), managed(), ALL)
    assert reported_action(update.action, update) == "update"
    assert reported_action(disable.action, disable) == "disable"


def test_a_drift_report_that_writes_nothing_is_not_called_a_repair() -> None:
    reported = decide(cmd(userName="ada", title="Staff"), managed(userName="ada", title="Staff"), ALL,
                      target={"userName": "ada", "title": "Edited", "active": True}, drift="report",
                      read=read_path)
    assert reported.action == "skip" and reported.repair
    assert reported_action(reported.action, reported) == "skip"


# -- failed_action --------------------------------------------------------------------------


def test_a_failed_lookup_is_reported_as_the_create_it_was_for() -> None:
    assert failed_action(decide(cmd(userName="ada"), None, ALL)) == "create"


def test_a_failed_recreate_of_an_object_deleted_in_the_target_is_a_failed_repair() -> None:
    lookup = decide(cmd(userName="ada"), managed(userName="ada"), ALL, target=ABSENT, drift="repair",
                    read=read_path)
    assert failed_action(lookup) == "repair"


def test_a_failure_with_nothing_to_write_is_reported_as_a_skip() -> None:
    assert failed_action(decide(cmd(userName="ada"), managed(userName="ada"), ALL)) == "skip"


def test_a_failed_write_is_reported_as_that_write() -> None:
    assert failed_action(decide(cmd("delete", "deleted in source"), managed(), ALL)) == "delete"
    assert failed_action(decide(cmd("deprovision", "not assigned"), managed(), ALL)) == "disable"
    assert failed_action(edited_in_target()) == "repair"
