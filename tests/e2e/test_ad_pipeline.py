"""The whole pipeline from Active Directory: a real Samba AD DC read with DirSync -> ingest ->
mapper -> writer -> real scim2-server, the three workers as real processes on a real broker.
Skipped with the reason when Samba is not installed (apt-get install samba)."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.devstack.broker import Broker
from services.devstack.scim_target import ScimTarget
from tests.conftest import Pipeline
from tests.support.fixtures import server_fixture
from tests.support.samba import Samba, samba_missing, start_samba
from tests.support.source_pipeline import (
    find_user,
    is_member,
    loaded_groups,
    resume_ingest,
    start_pipeline,
    target_groups,
    target_user,
    user_app,
    wait_for_directory,
)

pytestmark = pytest.mark.e2e

USERS, GROUPS = 1000, 50  # every user in one group, every group assigned; one more user in none
PER = USERS // GROUPS
CHANGE_WITHIN = 20.0
LOAD_WITHIN = 240.0


samba = server_fixture(start_samba, missing=samba_missing, doc="A fresh copy of the test domain per test.")


def test_ad_users_land_change_and_resume_from_the_dirsync_cookie(
        broker: Broker, scim_target: ScimTarget, samba: Samba, tmp_path: Path) -> None:
    # One connection for the whole directory; accounts without passwords (no hashing).
    dns = samba.add_entries([samba.user_entry(f"emp{i:04d}", givenName=f"Given{i}", sn=f"Sur{i}")
                             for i in range(USERS)])
    outsider = samba.add_user("outsider", givenName="Out", sn="Side")
    groups = samba.add_entries([samba.group_entry(f"team{g:02d}", dns[g * PER:(g + 1) * PER])
                                for g in range(GROUPS)])
    guid = dict(zip(dns[:10], samba.guids(dns[:10]), strict=True))
    source = {"name": "corp-ad", "type": "ad", "url": samba.url, "base_dn": samba.base_dn,
              "bind_dn": samba.bind_dn, "password": "env:TEST_AD_PASSWORD", "poll_interval": 0.5,
              "reconnect_initial": 0.5, "reconnect_max": 2}
    app = user_app(samba.guids(groups), family="sn", display="sAMAccountName", external="sAMAccountName",
                   group_name="sAMAccountName")
    p = start_pipeline(broker, scim_target, tmp_path, [source], app, {"TEST_AD_PASSWORD": samba.password})
    try:
        _scenario(p, samba, dns, outsider, groups, guid)
    finally:
        p.sup.kill_all()


def _upn(i: int) -> str:
    return f"emp{i:04d}@scimflow.test"


def _loaded_groups() -> dict[str, set[str]]:
    """The groups as loaded: displayName -> members' userNames."""
    return loaded_groups(lambda g: f"team{g:02d}", _upn, users=USERS, groups=GROUPS)


def _scenario(p: Pipeline, samba: Samba, dns: list[str], outsider: str, groups: list[str],
              guid: dict[str, str]) -> None:
    # Initial load: every user, every group, and each group's members, in the target.
    wait_for_directory(p, {_upn(i) for i in range(USERS)}, _loaded_groups(), timeout=LOAD_WITHIN)
    assert target_user(p, _upn(0))["name"] == {"givenName": "Given0", "familyName": "Sur0"}

    samba.add_member(groups[0], outsider)  # joins an assigned group
    p.wait_for("the new member", lambda: find_user(p, "outsider@scimflow.test") is not None,
               timeout=CHANGE_WITHIN)
    p.wait_for("the new member a member of its group in the target",
               lambda: is_member(p, "outsider@scimflow.test", "team00"), timeout=CHANGE_WITHIN)
    samba.modify(dns[1], givenName="Changed")
    p.wait_for("the modified givenName", lambda: target_user(p, _upn(1))["name"]["givenName"] == "Changed",
               timeout=CHANGE_WITHIN)
    samba.modify(dns[2], userPrincipalName="renamed@scimflow.test")
    p.wait_for("the renamed userName", lambda: find_user(p, "renamed@scimflow.test") is not None,
               timeout=CHANGE_WITHIN)
    assert find_user(p, _upn(2)) is None
    samba.set_enabled(dns[3], False)
    p.wait_for("the disabled user", lambda: target_user(p, _upn(3))["active"] is False, timeout=CHANGE_WITHIN)
    samba.remove_member(groups[0], dns[4])
    p.wait_for("the unassigned user disabled", lambda: target_user(p, _upn(4))["active"] is False,
               timeout=CHANGE_WITHIN)
    p.wait_for("the unassigned user no longer a member of its group in the target",
               lambda: not is_member(p, _upn(4), "team00"), timeout=CHANGE_WITHIN)
    samba.add_member(groups[1], dns[8])  # a second group
    p.wait_for("the user a member of its second group in the target", lambda: is_member(p, _upn(8), "team01"),
               timeout=CHANGE_WITHIN)
    samba.delete(dns[5])
    p.wait_for("the deleted user gone", lambda: find_user(p, _upn(5)) is None, timeout=CHANGE_WITHIN)

    resumed = resume_ingest(p, lambda: samba.modify(dns[7], givenName="WhileDown"),
                            "the change made while ingest was down",
                            lambda: target_user(p, _upn(7))["name"]["givenName"] == "WhileDown")
    assert {c.object_id for c in resumed} == {guid[dns[7]]}  # resumed from the cookie, not re-read
    # Every group as loaded, but for the membership changes.
    expected = _loaded_groups()
    expected["team00"] = (expected["team00"] - {_upn(2), _upn(4), _upn(5)}) | {"outsider@scimflow.test",
                                                                                "renamed@scimflow.test"}
    expected["team01"] |= {_upn(8)}
    assert target_groups(p) == expected
    assert p.errors() == []
