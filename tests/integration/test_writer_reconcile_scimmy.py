"""The reconcile scenarios again, against the second SCIM server we did not write (SCIMMY:
its own filter, PATCH and paging code; see docs/targets.md for how it differs)."""

from __future__ import annotations

import pytest

from tests.integration.test_writer_reconcile import (  # the fixtures are tests/conftest.py's
    test_a_409_that_no_lookup_explains_is_one_error_with_bounded_retries,
    test_a_full_scan_after_a_restart_reads_the_target_once_and_writes_nothing,
    test_a_full_scan_repairs_drift_and_leaves_unmanaged_accounts_alone,
    test_a_restart_with_state_kept_writes_nothing,
    test_a_target_that_ignores_filter_never_gets_an_account_taken_over,
    test_an_attribute_scimflow_does_not_map_survives_every_update,
    test_discovery_follows_targets_that_ignore_count,
    test_put_renaming_a_group_keeps_every_member,
    test_state_lost_readoption_writes_nothing_and_adds_no_member_twice,
)
from tests.support.fixtures import server_fixture
from tests.support.scimmy_target import start_scimmy_target

__all__ = [
    "test_a_409_that_no_lookup_explains_is_one_error_with_bounded_retries",
    "test_a_full_scan_after_a_restart_reads_the_target_once_and_writes_nothing",
    "test_a_full_scan_repairs_drift_and_leaves_unmanaged_accounts_alone",
    "test_a_restart_with_state_kept_writes_nothing",
    "test_a_target_that_ignores_filter_never_gets_an_account_taken_over",
    "test_an_attribute_scimflow_does_not_map_survives_every_update",
    "test_discovery_follows_targets_that_ignore_count",
    "test_put_renaming_a_group_keeps_every_member",
    "test_state_lost_readoption_writes_nothing_and_adds_no_member_twice",
]

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


scim_target = server_fixture(start_scimmy_target,
                             doc="SCIMMY in place of scim2-server for every scenario imported above.")
