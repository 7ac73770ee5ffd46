"""The admin API's routing, auth and error mapping, with aiohttp's test client and a control
plane that records calls instead of touching Kafka (the real one is in
tests/integration/test_admin_api.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import pytest
from aiohttp.test_utils import TestClient, TestServer

from services.admin.api import build_api
from services.admin.auth import parse_tokens
from services.admin.control import (
    BadRequestError,
    Caller,
    ControlPlane,
    NoSuchAppError,
    ProvisionFailedError,
)
from services.admin.refusals import Refusals
from services.runtime.errors import ScimflowError
from services.runtime.settings import load_settings

TOKEN = "unit-token-1234"


class FakePlane(ControlPlane):
    """Records (caller, operation, arguments); raises what the real one raises for app ``bad``."""

    def __init__(self, calls: list[tuple[Any, ...]], caller: Caller) -> None:
        super().__init__(load_settings({}), "unused:9092", None, caller)
        self.calls = calls

    def as_caller(self, caller: Caller) -> FakePlane:
        return FakePlane(self.calls, caller)

    def close(self) -> None:
        self.calls.append(("closed",))

    def app_names(self) -> frozenset[str]:
        return frozenset({"crm", "bad", "down", "boom"})

    def _note(self, *call: Any) -> dict[str, Any]:
        self.calls.append((self.caller.by, *call))
        if call[1:2] == ("ghost",):
            raise NoSuchAppError("no application named 'ghost'")
        if call[1:2] == ("down",):
            raise ScimflowError("broker at x did not answer")
        if call[1:2] == ("boom",):
            raise RuntimeError("secret internals")
        return {"op": call[0]}

    def status(self, app: str | None = None) -> list[dict[str, Any]]:
        return [self._note("status", app)]

    def set_status(self, app: str, status: Literal["on", "off"]) -> dict[str, Any]:
        return self._note("set_status", app, status)

    def restart(self, app: str, *, reset_links: bool) -> dict[str, Any]:
        return self._note("restart", app, reset_links)

    def allow_deletes(self, app: str) -> dict[str, Any]:
        return self._note("allow_deletes", app)

    def provision(self, app: str, object_id: str, object_type: Literal["user", "group"], *,
                  timeout: float | None = None) -> dict[str, Any]:
        if object_id == "missing":
            raise ProvisionFailedError("ObjectNotFound: nowhere", {"outcome": "notFound"}, not_found=True)
        if object_id == "slow":
            raise ProvisionFailedError("no outcome", {"outcome": "timeout"}, not_found=False)
        return self._note("provision", app, object_id, object_type, timeout)

    def test_connection(self, app: str) -> dict[str, Any]:
        return self._note("test_connection", app)

    def records(self, kind: str, *, app: str | None = None, status: str | None = None,
                limit: int = 100) -> list[dict[str, Any]]:
        if kind not in ("activity", "errors"):
            raise BadRequestError("bad kind")
        return [self._note("records", kind, app, status, limit)]

    def audit(self, action: str, app: str | None, detail: dict[str, Any], outcome: Any) -> None:
        self.calls.append(("audit", self.caller.by, action, app, outcome))


def _with_client(test: Callable[[TestClient[Any, Any], list[tuple[Any, ...]]], Awaitable[None]]) -> None:
    async def run() -> None:
        calls: list[tuple[Any, ...]] = []
        tokens = parse_tokens("ops=env:T,ci=env:U", environ={"T": TOKEN, "U": "other-token"})
        app = build_api(FakePlane(calls, Caller("admin")), tokens)
        async with TestClient(TestServer(app)) as client:
            await test(client, calls)
    asyncio.run(run())


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_every_route_maps_to_its_operation_with_the_token_name() -> None:
    async def test(client: TestClient[Any, Any], calls: list[tuple[Any, ...]]) -> None:
        expected = [
            ("GET", "/apps", None, ("ops", "status", None)),
            ("GET", "/apps/crm", None, ("ops", "status", "crm")),
            ("POST", "/apps/crm/start", None, ("ops", "set_status", "crm", "on")),
            ("POST", "/apps/crm/stop", None, ("ops", "set_status", "crm", "off")),
            ("POST", "/apps/crm/restart", None, ("ops", "restart", "crm", False)),
            ("POST", "/apps/crm/restart", {"reset_links": True}, ("ops", "restart", "crm", True)),
            ("POST", "/apps/crm/provision", {"id": "u1"}, ("ops", "provision", "crm", "u1", "user", None)),
            ("POST", "/apps/crm/provision", {"id": "g1", "type": "group", "timeout": 2},
             ("ops", "provision", "crm", "g1", "group", 2)),
            ("POST", "/apps/crm/test-connection", None, ("ops", "test_connection", "crm")),
            ("POST", "/apps/crm/allow-deletes", None, ("ops", "allow_deletes", "crm")),
            ("GET", "/activity?app=crm&status=failure&limit=5", None,
             ("ops", "records", "activity", "crm", "failure", 5)),
            ("GET", "/errors", None, ("ops", "records", "errors", None, None, 100)),
        ]
        for method, path, body, call in expected:
            calls.clear()
            r = await client.request(method, path, json=body, headers=AUTH)
            assert r.status == 200, (path, await r.text())
            assert calls == [call], path
        r = await client.get("/apps", headers={"Authorization": "Bearer other-token"})
        assert r.status == 200 and calls[-1][0] == "ci"
    _with_client(test)


def test_no_token_or_a_wrong_one_is_401_and_refused_posts_are_audited() -> None:
    async def test(client: TestClient[Any, Any], calls: list[tuple[Any, ...]]) -> None:
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": TOKEN}):
            for method, path in (("GET", "/apps"), ("POST", "/apps/crm/stop"), ("GET", "/errors")):
                r = await client.request(method, path, headers=headers)
                assert r.status == 401
                assert TOKEN not in await r.text()
        assert [c for c in calls if c[0] != "audit"] == []
        refused = [c for c in calls if c[0] == "audit"]
        # Sampled: the first refusal of the window is recorded, the others are counted.
        assert [c[1:] for c in refused] == [("<unauthenticated>", "stop", "crm", "rejected")]
        assert (await client.get("/healthz")).status == 200
        metrics = await client.get("/metrics")
        assert metrics.status == 200 and "text/plain" in metrics.headers["Content-Type"]
        text = await (await client.get("/metrics")).text()
        assert 'scimflow_admin_requests_total{route="/apps/{app}/stop",status_class="4xx"}' in text
    _with_client(test)


def test_errors_map_to_clear_statuses_without_internals() -> None:
    async def test(client: TestClient[Any, Any], calls: list[tuple[Any, ...]]) -> None:
        cases = [
            ("POST", "/apps/ghost/stop", None, 404, "no application named 'ghost'"),
            ("POST", "/apps/down/stop", None, 503, "did not answer"),
            ("POST", "/apps/boom/stop", None, 500, "internal error"),
            ("POST", "/apps/crm/restart", {"reset_links": "yes"}, 400, "reset_links"),
            ("POST", "/apps/crm/provision", {"type": "user"}, 400, "expected"),
            ("POST", "/apps/crm/provision", {"id": "u1", "type": "robot"}, 400, "expected"),
            ("POST", "/apps/crm/provision", {"id": "u1", "timeout": "soon"}, 400, "timeout"),
            ("POST", "/apps/crm/provision", [1, 2], 400, "JSON object"),
            ("POST", "/apps/crm/provision", {"id": "missing"}, 404, "ObjectNotFound"),
            ("POST", "/apps/crm/provision", {"id": "slow"}, 504, "no outcome"),
            ("GET", "/activity?limit=many", None, 400, "limit"),
        ]
        for method, path, body, status, text in cases:
            r = await client.request(method, path, json=body, headers=AUTH)
            payload = await r.json()
            assert (r.status, path) == (status, path)
            assert text in payload["error"]
            assert "secret internals" not in payload["error"]
        bad_json = await client.post("/apps/crm/restart", data=b"{oops", headers=AUTH)
        assert bad_json.status == 400
        trace = await (await client.post("/apps/crm/provision", json={"id": "slow"}, headers=AUTH)).json()
        assert trace["trace"] == {"outcome": "timeout"}
    _with_client(test)


def test_a_flood_of_refused_requests_costs_one_audit_record_and_no_metric_series(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # One window for the whole flood: on a loaded machine 3,000 requests can take longer
    # than the real 10 s window, and each window rightly audits one more refusal.
    monkeypatch.setattr(Refusals, "WINDOW", 3600.0)

    async def test(client: TestClient[Any, Any], calls: list[tuple[Any, ...]]) -> None:
        before = await (await client.get("/metrics")).text()
        for i in range(3000):
            path = f"/apps/flooded{i}/act{i}" if i % 2 else f"/random/{i}/x"
            assert (await client.post(path)).status in (401, 404)
        audited = [c for c in calls if c[0] == "audit"]
        assert len(audited) == 1  # one window: the rest are counted, not recorded
        by, action, app, outcome = audited[0][1:]
        assert (by, app, outcome) == ("<unauthenticated>", None, "rejected")  # no stranger's app name
        assert action == "unknown-route"  # the route's, never a string from the path
        after = await (await client.get("/metrics")).text()
        assert len(after) - len(before) < 2_000, "metric series must not grow with request paths"
        # Names no other test uses: under xdist, earlier tests of this process add series of
        # their own apps (app1, ...) to the same registry.
        assert "flooded1" not in after and "act1" not in after
    _with_client(test)
