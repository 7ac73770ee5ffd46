"""The whole pipeline from Active Directory: a real Samba AD DC read with DirSync -> ingest ->
mapper -> writer -> real scim2-server, the three workers as real processes on a real broker.
Skipped with the reason when Samba is not installed (apt-get install samba)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.runtime.broker import Broker
from services.runtime.scim_target import ScimTarget
from tests.conftest import Pipeline
from tests.support.samba import Samba, samba_missing, start_samba
from tests.support.source_pipeline import change_events, start_pipeline, user_app

pytestmark = pytest.mark.e2e

USERS = 20
CHANGE_WITHIN = 20.0


@pytest.fixture
def samba() -> Iterator[Samba]:
    if (why := samba_missing()) is not None:
        pytest.skip(why)
    with start_samba() as server:
        yield server


def test_ad_users_land_change_and_resume_from_the_dirsync_cookie(
        broker: Broker, scim_target: ScimTarget, samba: Samba, tmp_path: Path) -> None:
    dns = [samba.add_user(f"emp{i:02d}", givenName=f"Given{i}", sn=f"Sur{i}") for i in range(USERS)]
    outsider = samba.add_user("outsider", givenName="Out", sn="Side")
    staff = samba.add_group("staff", dns)
    guid = {dn: samba.guid(dn) for dn in [*dns, outsider]}
    source = {"name": "corp-ad", "type": "ad", "url": samba.url, "base_dn": samba.base_dn,
              "bind_dn": samba.bind_dn, "password": "env:TEST_AD_PASSWORD", "poll_interval": 0.5,
              "reconnect_initial": 0.5, "reconnect_max": 2}
    app = user_app([samba.guid(staff)], family="sn", display="sAMAccountName", external="sAMAccountName")
    p = start_pipeline(broker, scim_target, tmp_path, [source], app, {"TEST_AD_PASSWORD": samba.password})
    try:
        _scenario(p, samba, dns, outsider, staff, guid)
    finally:
        p.sup.kill_all()


def _scenario(p: Pipeline, samba: Samba, dns: list[str], outsider: str, staff: str,
              guid: dict[str, str]) -> None:
    def target(name: str) -> dict[str, object]:
        return p.scim.by_username()[f"{name}@scimflow.test"]

    p.wait_for(f"{USERS} users in the target", lambda: p.scim.count() >= USERS, timeout=60)
    assert set(p.scim.by_username()) == {f"emp{i:02d}@scimflow.test" for i in range(USERS)}
    assert target("emp00")["name"] == {"givenName": "Given0", "familyName": "Sur0"}

    samba.add_member(staff, outsider)  # joins the assigned group
    p.wait_for("the new member", lambda: "outsider@scimflow.test" in p.scim.by_username(),
               timeout=CHANGE_WITHIN)
    samba.modify(dns[1], givenName="Changed")
    p.wait_for("the modified givenName",
               lambda: target("emp01")["name"]["givenName"] == "Changed",  # type: ignore[index]
               timeout=CHANGE_WITHIN)
    samba.modify(dns[2], userPrincipalName="renamed@scimflow.test")
    p.wait_for("the renamed userName", lambda: "renamed@scimflow.test" in p.scim.by_username(),
               timeout=CHANGE_WITHIN)
    samba.set_enabled(dns[3], False)
    p.wait_for("the disabled user", lambda: target("emp03")["active"] is False, timeout=CHANGE_WITHIN)
    samba.remove_member(staff, dns[4])
    p.wait_for("the unassigned user disabled", lambda: target("emp04")["active"] is False,
               timeout=CHANGE_WITHIN)
    samba.delete(dns[5])
    p.wait_for("the deleted user gone", lambda: "emp05@scimflow.test" not in p.scim.by_username(),
               timeout=CHANGE_WITHIN)

    before = {c.change_id for c in change_events(p)}
    p.sup.procs["ingest"].send_signal(signal.SIGKILL)
    p.sup.procs.pop("ingest").wait(10)
    samba.modify(dns[7], givenName="WhileDown")
    p.sup.start_one("ingest")
    p.wait_for("the change made while ingest was down",
               lambda: target("emp07")["name"]["givenName"] == "WhileDown", timeout=60)  # type: ignore[index]
    resumed = [c for c in change_events(p) if c.change_id not in before]
    assert {c.object_id for c in resumed} == {guid[dns[7]]}  # resumed from the cookie, not re-read
    assert p.errors() == []
