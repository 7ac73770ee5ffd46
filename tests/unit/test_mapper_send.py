"""The mapper sends commands straight to faust's producer; one it could not deliver is said."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError
from aiokafka.partitioner import DefaultPartitioner
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from services.mapper.main import _sender

pytestmark = pytest.mark.anyio


def _undelivered_count() -> float:
    return REGISTRY.get_sample_value(
        "scimflow_errors_total", {"service": "mapper", "error_code": "CommandNotDelivered"}) or 0.0


class _Producer:
    """Records what was sent; each send's delivery is a future the test settles."""

    def __init__(self) -> None:
        self.sent: list[tuple[Any, ...]] = []
        self.deliveries: list[asyncio.Future[Any]] = []

    async def send(self, *args: Any) -> asyncio.Future[Any]:
        self.sent.append(args)
        delivery: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.deliveries.append(delivery)
        return delivery


class _App:
    def __init__(self) -> None:
        self.producer = _Producer()


async def test_a_command_goes_to_the_topic_with_its_key_and_partition() -> None:
    app = _App()
    send = _sender(app, "p.provisioning.commands", 6)
    await send(b"app/u1", b"{}")
    await send(b"cycle", b"{}", 3)
    # The key's partition as the producer's own partitioner picks it.
    mine = DefaultPartitioner()(b"app/u1", list(range(6)), list(range(6)))
    assert app.producer.sent == [("p.provisioning.commands", b"app/u1", b"{}", mine, None, None),
                                 ("p.provisioning.commands", b"cycle", b"{}", 3, None, None)]


async def test_a_command_the_producer_gave_up_on_is_logged_and_counted(
        caplog: pytest.LogCaptureFixture) -> None:
    app = _App()
    send = _sender(app, "p.provisioning.commands", 6)
    before = _undelivered_count()
    await send(b"app/u1", b"{}")
    await send(b"app/u2", b"{}")
    app.producer.deliveries[0].set_result(None)
    with capture_logs() as logs:
        app.producer.deliveries[1].set_exception(KafkaTimeoutError("request timed out"))
        await asyncio.sleep(0)  # the done callbacks run
    assert _undelivered_count() == before + 1
    assert [entry["log_level"] for entry in logs] == ["error"]
    assert "could not be delivered" in logs[0]["event"]
    assert "request timed out" in logs[0]["error"]
