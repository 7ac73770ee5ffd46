"""A small fault-injecting HTTP proxy, for what a real SCIM server will not do on demand.

It forwards every request to a real upstream (scim2-server in the tests) unless a rule
says otherwise: answer 429 with ``Retry-After`` (seconds or an HTTP-date), 503, any other
status or body; wait before answering (slow target, client timeouts); drop the connection
(reset); rewrite the upstream's JSON answer (e.g. make some operations of a BulkResponse
fail); fail everything for N seconds (an outage); or let through only so many requests
per second (``token_bucket``: a published rate limit, 429 + ``Retry-After`` beyond it).
Every request is logged with a monotonic timestamp, so tests can assert that waits were
honoured::

    with FaultProxy(scim_target.base_url) as proxy:
        proxy.fail(429, retry_after="2", method="POST", times=1)
        client = ScimClient(proxy.url, scim_target.token)
        ...
        first, second = proxy.requests("POST")
        assert second.at - first.at >= 2

The proxy runs an aiohttp server on its own event loop in a daemon thread, so it serves
while a test's own loop (or a worker process) talks to it. Rules and the log are guarded
by a lock: tests may add rules while requests flow.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import re
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

import aiohttp
from aiohttp import web
from yarl import URL

__all__ = ["FaultProxy", "LogEntry", "Rule", "TokenBucket"]

# Hop-by-hop and framing headers: the proxy re-frames bodies itself.
_SKIPPED_HEADERS = {"host", "connection", "keep-alive", "transfer-encoding", "content-length",
                    "content-encoding", "proxy-connection", "te", "upgrade"}
OutageMode = Literal["reset", "503"]


@dataclass
class Rule:
    """What to do with matching requests; ``times`` None applies to every match.

    ``path`` is a regular expression searched in the request path (e.g. ``"/Groups"``);
    ``probability`` picks a random share of the matches (seeded: runs are reproducible).
    """

    status: int | None = None
    retry_after: str | None = None
    body: str | None = None
    content_type: str = "application/scim+json"
    delay: float = 0.0
    reset: bool = False
    lose_answer: bool = False
    """Forward the request, then reset the connection: the target acted, the client never hears."""
    rewrite: Callable[[Any, Any], Any] | None = None
    """Forward the request, then answer ``rewrite(request JSON, answer JSON)`` instead."""
    method: str | None = None
    path: str | None = None
    times: int | None = None
    probability: float = 1.0
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        if self.method is not None and self.method.upper() != method.upper():
            return False
        return self.path is None or re.search(self.path, path) is not None


@dataclass
class TokenBucket:
    """A target's published rate limit: ``rate`` requests/s, ``burst`` at once; beyond it 429
    with ``Retry-After`` (whole seconds until the next token, at least 1), as SaaS APIs do."""

    rate: float
    burst: float
    method: str | None = None
    path: str | None = None
    tokens: float = 0.0
    at: float = 0.0

    def take(self, method: str, path: str, now: float) -> Rule | None:
        """None if the request may pass (it took a token), else the 429 to answer."""
        if (self.method is not None and self.method.upper() != method.upper()) or (
                self.path is not None and re.search(self.path, path) is None):
            return None
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return None
        wait = (1 - self.tokens) / self.rate
        return Rule(status=429, retry_after=str(max(1, math.ceil(wait))))


@dataclass(frozen=True)
class LogEntry:
    """One request the proxy received: when it arrived (``time.monotonic()``), what, and what
    it answered.

    ``status`` is None when no answer went out (dropped connection, client gave up);
    ``fault`` names the injected fault (``"429"``, ``"reset"``, ``"delay"``, ``"outage"``;
    ``", client gone"`` appended when the client hung up first), None when forwarded untouched.
    """

    at: float
    method: str
    path: str
    query: str
    status: int | None
    fault: str | None
    body: bytes = field(repr=False, default=b"")

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class FaultProxy:
    """A programmable proxy in front of ``upstream_url`` (e.g. ``http://127.0.0.1:P/v2``).

    ``url`` is the same base URL through the proxy (same path), so a client can be pointed
    at it unchanged.
    """

    def __init__(self, upstream_url: str, *, seed: int = 0) -> None:
        self.upstream = URL(upstream_url)
        self._rules: list[Rule] = []
        self._log: list[LogEntry] = []
        self._lock = threading.Lock()
        self._random = random.Random(seed)
        self._outage_until = 0.0
        self._outage_mode: OutageMode = "reset"
        self._page_size: int | None = None
        self._buckets: list[TokenBucket] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="faultproxy", daemon=True)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.port = 0

    # -- lifecycle -----------------------------------------------------------------------

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    @property
    def url(self) -> str:
        return str(self.upstream.with_host("127.0.0.1").with_port(self.port))

    # -- programming faults --------------------------------------------------------------

    def add(self, rule: Rule) -> Rule:
        """Add ``rule``; the first matching rule (in the order added) applies."""
        with self._lock:
            self._rules.append(rule)
        return rule

    def fail(self, status: int = 503, *, retry_after: str | float | None = None, body: str | None = None,
             content_type: str = "application/scim+json", method: str | None = None,
             path: str | None = None, times: int | None = None, probability: float = 1.0,
             delay: float = 0.0) -> Rule:
        """Answer ``status`` (with ``Retry-After`` and a SCIM error body unless ``body``)."""
        retry = None if retry_after is None else (
            retry_after if isinstance(retry_after, str) else f"{retry_after:g}")
        return self.add(Rule(status=status, retry_after=retry, body=body, content_type=content_type,
                             method=method, path=path, times=times, probability=probability, delay=delay))

    def delay(self, seconds: float, *, method: str | None = None, path: str | None = None,
              times: int | None = None, probability: float = 1.0) -> Rule:
        """Forward matching requests after ``seconds`` (longer than a client timeout: a timeout)."""
        return self.add(Rule(delay=seconds, method=method, path=path, times=times, probability=probability))

    def reset(self, *, method: str | None = None, path: str | None = None, times: int | None = None,
              probability: float = 1.0) -> Rule:
        """Drop matching connections without an answer (TCP RST)."""
        return self.add(Rule(reset=True, method=method, path=path, times=times, probability=probability))

    def lose_answer(self, *, method: str | None = None, path: str | None = None, times: int | None = None,
                    probability: float = 1.0) -> Rule:
        """Forward matching requests, then drop the connection before the answer (TCP RST):
        the target created or changed something the client cannot know about."""
        return self.add(Rule(lose_answer=True, method=method, path=path, times=times,
                             probability=probability))

    def rewrite(self, change: Callable[[Any, Any], Any], *, method: str | None = None,
                path: str | None = None, times: int | None = None) -> Rule:
        """Forward matching requests and answer ``change(request JSON, answer JSON)``, with the
        upstream's status: what the target did stays done, the client hears something else
        (a BulkResponse whose operations failed, say)."""
        return self.add(Rule(rewrite=change, method=method, path=path, times=times))

    def token_bucket(self, rate: float, burst: float | None = None, *, method: str | None = None,
                     path: str | None = None) -> TokenBucket:
        """Let matching requests through at ``rate`` per second (``burst`` at once, default one
        second's worth, full at the start) and answer the others 429 with ``Retry-After``.
        Checked before the rules: a request the bucket lets through may still meet one."""
        bucket = TokenBucket(rate, rate if burst is None else burst, method, path)
        with self._lock:
            bucket.tokens, bucket.at = bucket.burst, time.monotonic()
            self._buckets.append(bucket)
        return bucket

    def outage(self, seconds: float, *, mode: OutageMode = "reset") -> None:
        """Fail every request for the next ``seconds``: reset connections, or answer 503."""
        with self._lock:
            self._outage_until = time.monotonic() + seconds
            self._outage_mode = mode

    def page_size(self, size: int | None) -> None:
        """Answer list requests (``GET /Users``, ``GET /Groups``) ``size`` resources per
        page whatever ``count`` the client asked for, as targets that default to 20 or 50
        per page and ignore ``count`` do (None: forward ``count`` as sent)."""
        with self._lock:
            self._page_size = size

    def clear(self) -> None:
        """Remove every rule and token bucket and end any outage (the log is kept)."""
        with self._lock:
            self._rules.clear()
            self._buckets.clear()
            self._outage_until = 0.0

    # -- what happened -------------------------------------------------------------------

    @property
    def log(self) -> list[LogEntry]:
        with self._lock:
            return list(self._log)

    def requests(self, method: str | None = None, path: str | None = None) -> list[LogEntry]:
        """Logged requests, optionally of one method and with ``path`` (a regex) in their path."""
        return [e for e in self.log
                if (method is None or e.method == method.upper())
                and (path is None or re.search(path, e.path) is not None)]

    def clear_log(self) -> None:
        with self._lock:
            self._log.clear()

    # -- serving -------------------------------------------------------------------------

    async def _start(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server  # aiohttp exposes the bound port only through the server
        assert isinstance(server, asyncio.Server)
        self.port = server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def _choose(self, method: str, path: str) -> tuple[Rule | None, str | None]:
        """(the rule to apply, or None to forward; the fault name for an outage)."""
        with self._lock:
            if time.monotonic() < self._outage_until:
                return Rule(reset=self._outage_mode == "reset",
                            status=503 if self._outage_mode == "503" else None), "outage"
            now = time.monotonic()
            for bucket in self._buckets:
                refused = bucket.take(method, path, now)
                if refused is not None:
                    return refused, None
            for rule in self._rules:
                if rule.matches(method, path) and self._random.random() < rule.probability:
                    rule.hits += 1
                    return rule, None
        return None, None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()  # logged times are arrival times: what Retry-After is about
        body = await request.read()
        rule, outage = self._choose(request.method, request.path)
        status: int | None = None
        fault = outage
        try:
            if rule is not None and rule.delay:
                fault = fault or "delay"
                await asyncio.sleep(rule.delay)
            if rule is not None and rule.reset:
                fault = outage or "reset"
                return _reset(request)
            if rule is not None and rule.status is not None:
                status, fault = rule.status, outage or str(rule.status)
                return _fault_response(rule)
            response = await self._forward(request, body)
            if rule is not None and rule.rewrite is not None:
                fault = "rewritten"
                response = _rewritten(response, rule.rewrite, body)
            if rule is not None and rule.lose_answer:
                status, fault = response.status, "lost answer"
                return _reset(request)
        except asyncio.CancelledError:
            fault = f"{fault or 'forward'}, client gone"
            raise
        else:
            status = response.status
            return response
        finally:
            self._record(arrived, request, body, status, fault)

    async def _forward(self, request: web.Request, body: bytes) -> web.Response:
        assert self._session is not None
        query = dict(request.query)
        with self._lock:
            page_size = self._page_size
        if page_size is not None and request.method == "GET" and re.search(r"/(Users|Groups)$", request.path):
            query["count"] = str(page_size)
        target = self.upstream.with_path(request.path).with_query(query)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _SKIPPED_HEADERS}
        async with self._session.request(request.method, target, headers=headers, data=body or None,
                                         allow_redirects=False) as upstream:
            content = await upstream.read()
            kept = {k: v for k, v in upstream.headers.items() if k.lower() not in _SKIPPED_HEADERS}
            return web.Response(status=upstream.status, body=content, headers=kept)

    def _record(self, at: float, request: web.Request, body: bytes, status: int | None,
                fault: str | None) -> None:
        entry = LogEntry(at=at, method=request.method, path=request.path,
                         query=request.query_string, status=status, fault=fault, body=body)
        with self._lock:
            self._log.append(entry)


def _fault_response(rule: Rule) -> web.Response:
    assert rule.status is not None
    headers = {"Retry-After": rule.retry_after} if rule.retry_after is not None else {}
    body = rule.body if rule.body is not None else json.dumps({
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:Error"],
        "status": str(rule.status), "detail": f"injected by the fault proxy ({rule.status})"})
    return web.Response(status=rule.status, body=body.encode(),
                        headers={**headers, "Content-Type": rule.content_type})


def _rewritten(response: web.Response, change: Callable[[Any, Any], Any], sent: bytes) -> web.Response:
    assert isinstance(response.body, bytes)
    answer = change(json.loads(sent) if sent else None, json.loads(response.body) if response.body else None)
    return web.Response(status=response.status, body=json.dumps(answer).encode(),
                        headers={"Content-Type": response.content_type or "application/scim+json"})


def _reset(request: web.Request) -> web.Response:
    """Abort the connection with a TCP RST (SO_LINGER 0), as a crashed server would."""
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    return web.Response(status=500)  # never reaches the client: the connection is gone

