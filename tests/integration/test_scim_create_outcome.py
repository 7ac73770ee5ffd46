"""A create (POST) is sent again inside the call only when the failure proves it did not
land; otherwise OutcomeUnknownError, so the writer looks the object up first. Against a
real scim2-server behind the fault proxy, which lets the POST land and then drops or delays
the answer (a real server will not lose its own answers on demand)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from services.devstack.scim_target import ScimTarget, start_scim_target
from services.runtime.errors import TransientError
from services.scim.client import Backoff, ScimClient, attempts_of
from services.scim.errors import OutcomeUnknownError
from services.scim.paths import build_resource
from tests.support.faultproxy import FaultProxy
from tests.support.fixtures import server_fixture

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

FAST = Backoff(wait_initial=0.05, wait_max=0.2, wait_jitter=0.05)

scim_target = server_fixture(start_scim_target, scope="module",
                             doc="One server per module; tests use unique names.")


@pytest.fixture
def proxy(scim_target: ScimTarget) -> Iterator[FaultProxy]:
    with FaultProxy(scim_target.base_url, seed=3) as p:
        yield p


def named(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}@example.com"


def accounts(target: ScimTarget, name: str) -> int:
    response = httpx.get(f"{target.base_url}/Users", params={"filter": f'userName eq "{name}"'},
                         headers={"Authorization": f"Bearer {target.token}"})
    return int(response.json()["totalResults"])


async def test_a_lost_answer_to_a_create_is_not_sent_again(scim_target: ScimTarget,
                                                            proxy: FaultProxy) -> None:
    proxy.lose_answer(method="POST", times=1)
    name = named("lost")
    async with ScimClient(proxy.url, scim_target.token, attempts=5, backoff=FAST) as c:
        with pytest.raises(OutcomeUnknownError, match="outcome unknown") as info:
            await c.create_user(build_resource({"userName": name}))
    assert isinstance(info.value, TransientError)  # the writer's retry path, with a lookup first
    assert attempts_of(info.value) == 1
    assert len(proxy.requests("POST")) == 1
    assert accounts(scim_target, name) == 1  # it did land: a second POST would have doubled it


async def test_a_create_whose_answer_times_out_is_not_sent_again(scim_target: ScimTarget,
                                                                  proxy: FaultProxy) -> None:
    proxy.delay(1.5, method="POST", times=1)
    name = named("slow")
    async with ScimClient(proxy.url, scim_target.token, timeout=0.3, attempts=5, backoff=FAST) as c:
        with pytest.raises(OutcomeUnknownError, match="waiting for the answer"):
            await c.create_user(build_resource({"userName": name}))
    # The proxy delays before forwarding (and drops the request once the client hung up):
    # what is asserted is the error's kind and that no second POST was sent.
    await asyncio.sleep(1.5)
    assert len(proxy.requests("POST")) == 1
    assert accounts(scim_target, name) == 0


async def test_a_bare_503_to_a_create_is_an_unknown_outcome(scim_target: ScimTarget,
                                                            proxy: FaultProxy) -> None:
    proxy.fail(503, method="POST", times=1)
    async with ScimClient(proxy.url, scim_target.token, attempts=5, backoff=FAST) as c:
        with pytest.raises(OutcomeUnknownError):
            await c.create_user(build_resource({"userName": named("bare503")}))
    assert len(proxy.requests("POST")) == 1


@pytest.mark.parametrize(("status", "retry_after"), [(429, "0"), (503, "0"), (408, None)])
async def test_a_refused_create_is_sent_again_and_lands_once(scim_target: ScimTarget, proxy: FaultProxy,
                                                             status: int, retry_after: str | None) -> None:
    proxy.fail(status, retry_after=retry_after, method="POST", times=2)
    name = named(f"refused{status}")
    async with ScimClient(proxy.url, scim_target.token, attempts=5, backoff=FAST) as c:
        created = await c.create_user(build_resource({"userName": name}))
    assert created.body["userName"] == name
    assert [e.status for e in proxy.requests("POST")] == [status, status, 201]
    assert accounts(scim_target, name) == 1


async def test_a_refused_connection_is_retried_and_the_create_lands_once(scim_target: ScimTarget) -> None:
    port = _free_port()
    upstream = httpx.URL(scim_target.base_url)
    name = named("refused")
    async with ScimClient(str(upstream.copy_with(port=port)), scim_target.token, attempts=20,
                          backoff=Backoff(wait_initial=0.1, wait_max=0.2, wait_jitter=0)) as c:
        call = asyncio.create_task(c.create_user(build_resource({"userName": name})))
        await asyncio.sleep(0.5)  # nothing listens yet: every attempt so far was refused
        assert not call.done()
        async with _forwarder(port, upstream.host, upstream.port or 80):
            created = await call
    assert created.body["userName"] == name
    assert accounts(scim_target, name) == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def _forwarder(port: int, host: str, upstream_port: int) -> AsyncIterator[None]:
    """A TCP pipe from 127.0.0.1:``port`` to the target, started late: before it, connects are refused."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(host, upstream_port)
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    try:
        yield
    finally:
        server.close()
