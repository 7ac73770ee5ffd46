"""A worker's HTTP endpoints for Kubernetes and Prometheus, served from its event loop.

- ``/healthz`` (liveness): the event loop answers. It is served by the loop itself, so a
  loop stuck in a blocking call or a busy loop fails the probe by not answering at all.
- ``/readyz`` (readiness): connected to Kafka (a metadata request succeeded in the last
  :data:`KAFKA_STALE` seconds), the consumer has joined its group and is not rebalancing,
  and the tables are restored from their changelogs; 503 with the failing checks otherwise.
- ``/metrics``: the Prometheus exposition.

Before, the probes hit ``/metrics``, served from a thread of its own: a stuck loop or a
lost broker looked healthy.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Final

import structlog
from aiohttp import web
from aiokafka import AIOKafkaClient
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.runtime.kafka import client_security, kafka_security
from services.runtime.settings import Settings

__all__ = ["KAFKA_STALE", "Probes"]

log = structlog.get_logger("scimflow.probes")

KAFKA_STALE: Final = 12.0
"""Seconds after the last successful metadata request that Kafka counts as lost."""
_KAFKA_EVERY: Final = 3.0
_KAFKA_TIMEOUT: Final = 5.0

Check = Callable[[], bool]


class Probes:
    """The endpoints of one faust worker; :meth:`install` starts them with the app."""

    def __init__(self, app: Any, settings: Settings, bootstrap: str, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._app = app
        self._settings = settings
        self._bootstrap = bootstrap
        self._clock = clock
        self._kafka_ok_at: float | None = None
        self._checks: dict[str, Check] = {"kafka": self._kafka_connected}
        if not getattr(app, "producer_only", False):
            self._checks["consumer"] = self._consumer_settled
            self._checks["tables"] = self._tables_restored

    def add_check(self, name: str, check: Check) -> None:
        """One more condition of readiness (e.g. the writer's link index restored)."""
        self._checks[name] = check

    def install(self) -> None:
        """Serve on the metrics host and port once the app starts (port 0: nothing)."""
        if self._settings.metrics_port == 0:
            return
        self._app.task(self.serve)
        self._app.task(self.watch_kafka)

    def failing(self) -> list[str]:
        """The readiness checks that do not hold now."""
        return [name for name, check in self._checks.items() if not check()]

    async def serve(self) -> None:
        web_app = web.Application()
        web_app.router.add_get("/healthz", self._healthz)
        web_app.router.add_get("/readyz", self._readyz)
        web_app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(web_app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self._settings.metrics_host, self._settings.metrics_port)
        await site.start()
        try:
            await asyncio.Event().wait()  # until the app stops its tasks
        finally:
            await runner.cleanup()

    async def watch_kafka(self) -> None:
        """Ask the cluster for metadata every few seconds; readiness follows the answers."""
        client = AIOKafkaClient(bootstrap_servers=self._bootstrap,
                                request_timeout_ms=int(_KAFKA_TIMEOUT * 1000),
                                **client_security(kafka_security(self._settings)))
        try:
            while True:
                await self._ask(client)
                await asyncio.sleep(_KAFKA_EVERY)
        finally:
            await client.close()

    async def _ask(self, client: AIOKafkaClient) -> None:
        try:
            if self._kafka_ok_at is None:
                await asyncio.wait_for(client.bootstrap(), _KAFKA_TIMEOUT)
            await asyncio.wait_for(client.fetch_all_metadata(), _KAFKA_TIMEOUT)
        except Exception as exc:  # any failure means "not reachable now"; the next try decides
            log.debug("kafka metadata request failed", reason=f"{type(exc).__name__}: {exc}")
            return
        self._kafka_ok_at = self._clock()

    def _kafka_connected(self) -> bool:
        return self._kafka_ok_at is not None and self._clock() - self._kafka_ok_at <= KAFKA_STALE

    def _consumer_settled(self) -> bool:
        consumer = getattr(self._app, "_consumer", None)
        return consumer is not None and not self._app.rebalancing

    def _tables_restored(self) -> bool:
        recovery = self._app.tables.recovery
        return bool(recovery.completed.is_set()) and not recovery.in_recovery

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        failing = self.failing()
        return web.json_response({"ready": not failing, "failing": failing},
                                 status=503 if failing else 200)

    async def _metrics(self, request: web.Request) -> web.Response:
        response = web.Response(body=generate_latest())
        response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return response
