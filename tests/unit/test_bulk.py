"""send_bulk without a network: splitting by count and by bytes, bulkId ordering and
substitution, the shapes a BulkResponse status takes, per-operation errors classified as
single calls are, and requests that fail as a whole.

``BulkServer`` answers BulkRequests the way RFC 7644 §3.7 describes (and scim2-server does):
operations in order, ``bulkId:`` resolved within the request, an error ``response`` per
failed operation. Failures of the whole request go through a real ScimClient over
httpx.MockTransport, so they are classified by the client's own code. The real targets
(scim2-server, SCIMMY) are in tests/integration/test_bulk.py.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Mapping
from typing import Any

import httpx
import msgspec
import pytest

from services.runtime.errors import (
    ConflictError,
    CredentialsError,
    NotFoundError,
    RejectedError,
    TargetError,
    TransientError,
)
from services.scim import client as scim_client
from services.scim.capabilities import capabilities_from
from services.scim.client import Backoff, ScimClient
from services.scim.errors import NotSentError, OutcomeUnknownError, error_class
from services.writer.bulk import (
    BULK_REQUEST,
    BULK_RESPONSE,
    BulkLimits,
    BulkOperation,
    BulkResult,
    bulk_limits,
    parse_status,
    send_bulk,
)

pytestmark = pytest.mark.anyio

BASE = "https://app.example.com/scim/v2"
TOKEN = "s3cr3t-T0ken-value"
NO_WAIT = Backoff(wait_initial=0.0, wait_max=0.0, wait_jitter=0.0, retry_after_cap=0.0)
USER = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
ERROR = "urn:ietf:params:scim:api:messages:2.0:Error"

Outcome = tuple[int, str | None, str]
"""(status, scimType, detail) of a failed operation."""


class BulkServer:
    """A BulkTransport that answers like an RFC 7644 target, recording every request body.

    ``fail`` scripts per-operation failures by bulkId or path; ``status`` formats the
    status of each answer (``str`` by default, as the RFC writes it)."""

    def __init__(self, *, fail: Mapping[str, Outcome] | None = None,
                 status: Callable[[int], Any] = str) -> None:
        self.fail = dict(fail or {})
        self.status = status
        self.requests: list[dict[str, Any]] = []
        self.sizes: list[int] = []
        self.resources: dict[str, dict[str, Any]] = {}
        self._ids = (f"id{n}" for n in itertools.count(1))

    async def post_document(self, path: str, body: Mapping[str, Any], *,
                            attempts: int | None = None) -> dict[str, Any]:
        assert path == "Bulk"
        assert attempts == 1  # a bulk is never retried
        encoded = msgspec.json.encode(body)
        self.sizes.append(len(encoded))
        request = json.loads(encoded)
        self.requests.append(request)
        assert request["schemas"] == [BULK_REQUEST]
        created: dict[str, str] = {}
        answers = [self._apply(op, created) for op in request["Operations"]]
        return {"schemas": [BULK_RESPONSE], "Operations": answers}

    def redact(self, text: str) -> str:
        return text.replace(TOKEN, "[redacted]")

    def _apply(self, op: dict[str, Any], created: dict[str, str]) -> dict[str, Any]:
        answer = {"method": op["method"], **({"bulkId": op["bulkId"]} if "bulkId" in op else {})}
        outcome = self.fail.get(op.get("bulkId") or op["path"])
        data = _resolve(op.get("data"), created)
        if outcome is None and "bulkId:" in json.dumps(data):
            outcome = (409, None, "No resource was created with that bulkId")
        if outcome is not None:
            status, scim_type, detail = outcome
            error = {"schemas": [ERROR], "status": str(status), "detail": detail,
                     **({"scimType": scim_type} if scim_type else {})}
            return {**answer, "status": self.status(status), "response": error}
        if op["method"] == "POST":
            target_id = next(self._ids)
            created[op["bulkId"]] = target_id
            self.resources[target_id] = {"id": target_id, **data}
            location = f"{BASE}{op['path']}/{target_id}"
            return {**answer, "status": self.status(201), "location": location, "version": 'W/"1"'}
        return {**answer, "status": self.status(204 if op["method"] == "DELETE" else 200),
                "location": f"{BASE}{op['path']}"}


def _resolve(value: Any, ids: Mapping[str, str]) -> Any:
    text = json.dumps(value)
    for bulk_id, target_id in ids.items():
        text = text.replace(f'"bulkId:{bulk_id}"', json.dumps(target_id))
    return json.loads(text)


def new_user(n: int, **extra: Any) -> BulkOperation:
    return BulkOperation("POST", "/Users", bulk_id=f"u{n}",
                         data={"schemas": [USER], "userName": f"user{n}@example.com", **extra})


def new_group(name: str, members: list[str]) -> BulkOperation:
    return BulkOperation("POST", "/Groups", bulk_id=name, data={
        "schemas": [GROUP], "displayName": name,
        "members": [{"value": f"bulkId:{m}"} for m in members]})


def sent_ids(request: dict[str, Any]) -> list[str]:
    return [op.get("bulkId") or op["path"] for op in request["Operations"]]


def errors_of(results: list[BulkResult]) -> list[type[TargetError] | None]:
    return [type(r.error) if r.error is not None else None for r in results]


# -- whether to use bulk -----------------------------------------------------------------


@pytest.mark.parametrize(("bulk", "expected"), [
    ({"supported": True, "maxOperations": 1000, "maxPayloadSize": 1048576}, BulkLimits(1000, 1048576)),
    ({"supported": "true", "maxOperations": "50"}, BulkLimits(50, None)),
    ({"supported": False, "maxOperations": 0, "maxPayloadSize": 0}, None),  # scim2-server's "no"
    ({"supported": True, "maxOperations": 0}, None),
    ({}, None),
    (None, None),  # not declared: unknown, so not used
])
def test_bulk_is_used_only_when_the_target_declares_it_with_limits(
        bulk: dict[str, Any] | None, expected: BulkLimits | None) -> None:
    config = {"patch": {"supported": True}, **({"bulk": bulk} if bulk is not None else {})}
    assert bulk_limits(capabilities_from(config)) == expected


# -- splitting --------------------------------------------------------------------------


async def test_requests_hold_at_most_max_operations_and_results_keep_input_order() -> None:
    server = BulkServer()
    ops = [new_user(n) for n in range(7)]
    results = await send_bulk(server, ops, max_operations=3, max_payload_size=None)
    assert [len(r["Operations"]) for r in server.requests] == [3, 3, 1]
    assert [r.bulk_id for r in results] == [f"u{n}" for n in range(7)]
    assert all(r.ok and r.status == 201 for r in results)
    assert [r.id for r in results] == [f"id{n}" for n in range(1, 8)]
    assert results[0].location == f"{BASE}/Users/id1"
    assert results[0].version == 'W/"1"'


async def test_requests_stay_within_max_payload_size_and_are_filled() -> None:
    server = BulkServer()
    ops = [new_user(n, displayName="x" * (40 + 13 * n)) for n in range(12)]
    limit = 1200
    results = await send_bulk(server, ops, max_operations=1000, max_payload_size=limit)
    assert all(r.ok for r in results)
    assert len(server.requests) > 1
    assert all(size <= limit for size in server.sizes)
    # Greedy: the next operation would not have fitted in the previous request.
    for request, size, following in zip(server.requests, server.sizes, server.requests[1:],
                                        strict=False):
        first_next = following["Operations"][0]
        assert size + 1 + len(msgspec.json.encode(first_next)) > limit, request
    assert sum(len(r["Operations"]) for r in server.requests) == 12


async def test_the_payload_limit_is_exact_to_the_byte() -> None:
    ops = [new_user(n) for n in range(4)]
    one = BulkServer()
    await send_bulk(one, ops, max_operations=1000, max_payload_size=None)
    whole = one.sizes[0]
    exact, short = BulkServer(), BulkServer()
    await send_bulk(exact, ops, max_operations=1000, max_payload_size=whole)
    await send_bulk(short, ops, max_operations=1000, max_payload_size=whole - 1)
    assert exact.sizes == [whole]
    assert len(short.requests) == 2


async def test_an_operation_too_large_for_any_request_fails_alone_unsent() -> None:
    server = BulkServer()
    ops = [new_user(0), new_user(1, displayName="x" * 5000), new_user(2)]
    results = await send_bulk(server, ops, max_operations=10, max_payload_size=2000)
    assert errors_of(results) == [None, RejectedError, None]
    assert results[1].status is None
    assert "send it on its own" in str(results[1].error)
    assert [sent_ids(r) for r in server.requests] == [["u0", "u2"]]


async def test_fail_on_errors_is_sent_and_counted_over_requests() -> None:
    server = BulkServer(fail={"u1": (400, "invalidValue", "bad")})
    ops = [new_user(n) for n in range(6)]
    results = await send_bulk(server, ops, max_operations=2, max_payload_size=None, fail_on_errors=1)
    assert server.requests[0]["failOnErrors"] == 1
    assert len(server.requests) == 1  # the error count was reached: nothing more sent
    assert errors_of(results) == [None, RejectedError] + [TransientError] * 4
    assert "failOnErrors (1)" in str(results[2].error)


# -- bulkId ----------------------------------------------------------------------------


async def test_references_wait_for_the_ids_of_an_earlier_request_by_default() -> None:
    server = BulkServer()
    ops = [new_group("g1", ["u1", "u2"]), new_user(1), new_user(9), new_user(2)]
    results = await send_bulk(server, ops, max_operations=10, max_payload_size=None)
    assert [sent_ids(r) for r in server.requests] == [["u1", "u2", "u9"], ["g1"]]
    assert server.requests[1]["Operations"][0]["data"]["members"] == [
        {"value": results[1].id}, {"value": results[3].id}]
    assert [r.bulk_id for r in results] == ["g1", "u1", "u9", "u2"]
    assert all(r.ok for r in results)


async def test_operations_that_wait_do_not_hold_back_the_ones_after_them() -> None:
    server = BulkServer()
    ops = [new_user(1), new_group("g1", ["u1"]), new_user(2), new_group("g2", ["u2", "g1"]),
           new_user(3)]
    results = await send_bulk(server, ops, max_operations=10, max_payload_size=None)
    assert [sent_ids(r) for r in server.requests] == [["u1", "u2", "u3"], ["g1"], ["g2"]]
    assert server.resources[results[3].id or ""]["members"] == [
        {"value": results[2].id}, {"value": results[1].id}]


async def test_referents_are_sent_before_the_operations_that_refer_to_them() -> None:
    server = BulkServer()
    ops = [new_group("g1", ["u1", "u2"]), new_user(1), new_user(9), new_user(2)]
    results = await send_bulk(server, ops, max_operations=10, max_payload_size=None,
                              target_resolves_references=True)
    assert [sent_ids(r) for r in server.requests] == [["u1", "u2", "g1", "u9"]]
    # Within one request the references stay for the target to resolve.
    assert server.requests[0]["Operations"][2]["data"]["members"] == [
        {"value": "bulkId:u1"}, {"value": "bulkId:u2"}]
    assert [r.bulk_id for r in results] == ["g1", "u1", "u9", "u2"]
    group = server.resources[results[0].id or ""]
    assert group["members"] == [{"value": results[1].id}, {"value": results[3].id}]


async def test_references_to_an_earlier_request_get_the_ids_it_returned() -> None:
    server = BulkServer()
    ops = [new_user(n) for n in range(5)] + [new_group("g", ["u0", "u4"])]
    results = await send_bulk(server, ops, max_operations=2, max_payload_size=None,
                              target_resolves_references=True)
    assert [sent_ids(r) for r in server.requests] == [["u0", "u1"], ["u2", "u3"], ["u4", "g"]]
    members = server.requests[2]["Operations"][1]["data"]["members"]
    assert members == [{"value": results[0].id}, {"value": "bulkId:u4"}]
    assert server.resources[results[5].id or ""]["members"] == [
        {"value": results[0].id}, {"value": results[4].id}]


async def test_references_in_a_path_are_resolved_too() -> None:
    server = BulkServer()
    patch = BulkOperation("PATCH", "/Groups/bulkId:g", data={
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{"op": "add", "path": "members", "value": [{"value": "bulkId:u1"}]}]})
    ops = [patch, new_group("g", []), new_user(1)]
    results = await send_bulk(server, ops, max_operations=2, max_payload_size=None)
    assert [sent_ids(r) for r in server.requests] == [["g", "u1"], [f"/Groups/{results[1].id}"]]
    assert results[0].ok
    assert results[0].path == f"/Groups/{results[1].id}"
    assert server.requests[1]["Operations"][0]["data"]["Operations"][0]["value"] == [
        {"value": results[2].id}]


async def test_an_operation_whose_referent_failed_is_not_sent() -> None:
    server = BulkServer(fail={"u1": (409, "uniqueness", "userName taken")})
    ops = [new_user(1), new_user(2), new_group("g", ["u1", "u2"])]
    results = await send_bulk(server, ops, max_operations=2, max_payload_size=None)
    assert [sent_ids(r) for r in server.requests] == [["u1", "u2"]]
    assert errors_of(results) == [ConflictError, None, TransientError]
    assert "bulkId:u1" in str(results[2].error)
    assert "userName taken" in str(results[2].error)


async def test_a_reference_no_post_creates_is_rejected_unsent() -> None:
    server = BulkServer()
    results = await send_bulk(server, [new_user(1), new_group("g", ["nobody"])],
                              max_operations=10, max_payload_size=None)
    assert errors_of(results) == [None, RejectedError]
    assert [sent_ids(r) for r in server.requests] == [["u1"]]


async def test_operations_referring_to_each_other_in_a_circle_travel_together() -> None:
    server = BulkServer(fail={"a": (409, None, "circular reference")})
    ops = [new_user(1), new_user(2), new_user(3), new_group("a", ["b"]), new_group("b", ["a"])]
    results = await send_bulk(server, ops, max_operations=2, max_payload_size=None)
    assert [sent_ids(r) for r in server.requests] == [["u1", "u2"], ["u3"], ["a", "b"]]
    # What the target made of them is its answer (here: it refuses the circle).
    assert errors_of(results)[3:] == [ConflictError, ConflictError]
    too_big = await send_bulk(BulkServer(), ops[3:], max_operations=1, max_payload_size=None)
    assert errors_of(too_big) == [RejectedError, RejectedError]
    assert "in a circle" in str(too_big[0].error)


def test_invalid_operations_and_limits_are_refused_before_anything_is_sent() -> None:
    with pytest.raises(ValueError, match="bulk_id"):
        BulkOperation("POST", "/Users", data={"userName": "x"})
    with pytest.raises(ValueError, match="method"):
        BulkOperation("GET", "/Users/1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs data"):
        BulkOperation("PUT", "/Users/1")


async def test_a_bulk_id_used_twice_or_a_zero_limit_is_refused() -> None:
    server = BulkServer()
    with pytest.raises(ValueError, match="two POSTs"):
        await send_bulk(server, [new_user(1), new_user(1)], max_operations=10, max_payload_size=None)
    with pytest.raises(ValueError, match="max_operations"):
        await send_bulk(server, [new_user(1)], max_operations=0, max_payload_size=None)
    assert server.requests == []


# -- reading the answer ----------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [
    ("201", 201), (201, 201), ({"code": "201"}, 201), ({"code": 409}, 409),
    (" 409 Conflict", 409), ("created", None), (None, None), (True, None), ("20", None),
])
def test_status_shapes(value: Any, expected: int | None) -> None:
    assert parse_status(value) == expected


@pytest.mark.parametrize("style", [str, int, lambda s: {"code": str(s)}])
async def test_every_status_style_gives_the_same_results(style: Callable[[int], Any]) -> None:
    server = BulkServer(status=style, fail={"u1": (409, "uniqueness", "taken")})
    results = await send_bulk(server, [new_user(0), new_user(1)], max_operations=10,
                              max_payload_size=None)
    assert [r.status for r in results] == [201, 409]
    assert errors_of(results) == [None, ConflictError]


async def test_failed_operations_get_the_error_class_of_a_single_call() -> None:
    server = BulkServer(fail={
        "u1": (409, "uniqueness", "userName user1@example.com is taken"),
        "u2": (400, "invalidValue", "userName is required"),
        "/Users/gone": (404, None, "no such user"),
        "/Users/stale": (412, None, "version mismatch"),
        "/Users/busy": (503, None, "try later"),
        "/Users/forbidden": (403, None, "not allowed"),
    })
    ops = [new_user(0), new_user(1), new_user(2), BulkOperation("DELETE", "/Users/gone"),
           BulkOperation("PUT", "/Users/stale", data={"userName": "s"}, version='W/"2"'),
           BulkOperation("DELETE", "/Users/busy"), BulkOperation("DELETE", "/Users/forbidden"),
           BulkOperation("DELETE", "/Users/fine")]
    results = await send_bulk(server, ops, max_operations=100, max_payload_size=None)
    assert errors_of(results) == [None, ConflictError, RejectedError, NotFoundError, ConflictError,
                                  TransientError, CredentialsError, None]
    assert [type(r.error) for r in results if r.error] == [
        error_class(r.status or 0) for r in results if r.error]
    conflict = results[1].error
    assert conflict is not None
    assert conflict.status == 409
    assert conflict.detail == "userName user1@example.com is taken"
    assert "bulk POST /Users (bulkId u1) -> 409 Conflict [uniqueness]" in str(conflict)
    assert server.requests[0]["Operations"][4]["version"] == 'W/"2"'
    assert results[7].id == "fine"
    assert results[7].status == 204


async def test_answers_are_matched_by_bulk_id_location_and_method_not_position() -> None:
    ops = [new_user(1), BulkOperation("DELETE", "/Users/a"), new_user(2),
           BulkOperation("DELETE", "/Users/b")]

    class Shuffled(BulkServer):
        async def post_document(self, path: str, body: Mapping[str, Any], *,
                                attempts: int | None = None) -> dict[str, Any]:
            answer = await super().post_document(path, body, attempts=attempts)
            answer["Operations"].reverse()
            return answer

    results = await send_bulk(Shuffled(), ops, max_operations=10, max_payload_size=None)
    assert [r.id for r in results] == ["id1", "a", "id2", "b"]


async def test_operations_left_out_of_the_answer_are_not_applied() -> None:
    class Stops(BulkServer):
        """Stops at the first error, as a target honouring failOnErrors 1 does."""

        async def post_document(self, path: str, body: Mapping[str, Any], *,
                                attempts: int | None = None) -> dict[str, Any]:
            answer = await super().post_document(path, body, attempts=attempts)
            answer["Operations"] = answer["Operations"][:2]
            return answer

    server = Stops(fail={"u1": (400, None, "bad")})
    results = await send_bulk(server, [new_user(n) for n in range(4)], max_operations=10,
                              max_payload_size=None, fail_on_errors=1)
    assert errors_of(results) == [None, RejectedError, TransientError, TransientError]
    assert results[2].status is None
    assert "no result for it" in str(results[2].error)


async def test_a_resource_in_the_answer_and_a_relative_location_give_the_id() -> None:
    class Returns(BulkServer):
        async def post_document(self, path: str, body: Mapping[str, Any], *,
                                attempts: int | None = None) -> dict[str, Any]:
            answer = await super().post_document(path, body, attempts=attempts)
            first, second = answer["Operations"]
            first["response"] = {"id": "from-body", "userName": "x", "meta": {"version": 'W/"7"'}}
            del first["location"], first["version"]
            second["location"] = "/scim/v2/Users/relative%2Fid"
            return answer

    results = await send_bulk(Returns(), [new_user(0), new_user(1)], max_operations=10,
                              max_payload_size=None)
    assert (results[0].id, results[0].version, results[0].resource) == (
        "from-body", 'W/"7"', {"id": "from-body", "userName": "x", "meta": {"version": 'W/"7"'}})
    assert results[1].id == "relative/id"


async def test_a_created_resource_without_location_or_id_is_an_error() -> None:
    class Silent(BulkServer):
        async def post_document(self, path: str, body: Mapping[str, Any], *,
                                attempts: int | None = None) -> dict[str, Any]:
            answer = await super().post_document(path, body, attempts=attempts)
            del answer["Operations"][0]["location"]
            return answer

    results = await send_bulk(Silent(), [new_user(0), new_group("g", ["u0"])], max_operations=1,
                              max_payload_size=None)
    assert errors_of(results) == [RejectedError, TransientError]
    assert results[0].status == 201


# -- whole requests failing, through a real ScimClient ---------------------------------


class ClientTransport:
    """ScimClient as a BulkTransport: its ``post_document`` once it has one, until then the
    same code through its private ``_call`` (proposed for scim_client.py)."""

    def __init__(self, client: ScimClient) -> None:
        self.client = client

    async def post_document(self, path: str, body: Mapping[str, Any], *,
                            attempts: int | None = None) -> dict[str, Any]:
        post = getattr(self.client, "post_document", None)
        if post is not None:
            answer: dict[str, Any] = await post(path, body, attempts=attempts)
            return answer
        response = await self.client._call("POST", path.lstrip("/"), body=body, ok=(200,),
                                           attempts=attempts)
        return scim_client._json_object(response)

    def redact(self, text: str) -> str:
        return self.client._redact(text)


class Script:
    """A MockTransport handler giving one answer to every request, recording them."""

    def __init__(self, answer: httpx.Response | Exception) -> None:
        self.answer = answer
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def scim(status: int, body: object) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.Response(status, content=content,
                          headers={"Content-Type": scim_client.SCIM_JSON})


@pytest.mark.parametrize(("answer", "expected", "status"), [
    (scim(413, {"schemas": [ERROR], "status": "413", "detail": "The payload exceeds the "
                "maxPayloadSize (1048576 bytes)"}), RejectedError, 413),
    (scim(500, {"detail": "boom"}), OutcomeUnknownError, 500),  # a POST that may have landed
    (scim(501, {"detail": "Bulk is not supported"}), RejectedError, 501),
    (scim(404, b"Cannot POST /Bulk"), NotFoundError, 404),
    (scim(401, {"detail": "who?"}), CredentialsError, 401),
    (scim(200, {"schemas": [ERROR], "detail": "odd"}), RejectedError, 200),
    (scim(200, b"<html>proxy</html>"), TransientError, 200),
    (httpx.ConnectError("refused"), NotSentError, None),
])
async def test_a_failed_request_fails_its_operations_and_stops_the_bulk(
        answer: httpx.Response | Exception, expected: type[TargetError], status: int | None) -> None:
    script = Script(answer)
    ops = [new_user(n) for n in range(5)]
    async with ScimClient(BASE, TOKEN, attempts=3, backoff=NO_WAIT,
                          transport=httpx.MockTransport(script)) as client:
        results = await send_bulk(ClientTransport(client), ops, max_operations=2,
                                  max_payload_size=None)
    assert len(script.requests) == 1  # sent once (no retry), and nothing after it failed
    assert errors_of(results) == [expected] * 5
    assert {r.error.status for r in results if r.error} == {status}
    assert len({id(r.error) for r in results}) == 5  # one exception per operation
    request = script.requests[0]
    assert request.url == f"{BASE}/Bulk"
    assert request.headers["Content-Type"] == scim_client.SCIM_JSON
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"


async def test_sizes_on_the_wire_are_within_the_limit() -> None:
    sizes: list[int] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sizes.append(len(request.content))
        ops = json.loads(request.content)["Operations"]
        return scim(200, {"schemas": [BULK_RESPONSE], "Operations": [
            {"method": "POST", "bulkId": op["bulkId"], "status": "201",
             "location": f"{BASE}/Users/x-{op['bulkId']}"} for op in ops]})

    ops = [new_user(n, displayName="é" * n) for n in range(40)]  # two bytes per é
    async with ScimClient(BASE, TOKEN, backoff=NO_WAIT, transport=httpx.MockTransport(answer)) as c:
        results = await send_bulk(ClientTransport(c), ops, max_operations=1000, max_payload_size=1500)
    assert all(r.ok for r in results)
    assert len(sizes) > 2
    assert max(sizes) <= 1500


async def test_the_token_echoed_in_an_operation_error_is_redacted() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return scim(200, {"schemas": [BULK_RESPONSE], "Operations": [
            {"method": "POST", "bulkId": "u0", "status": "400",
             "response": {"schemas": [ERROR], "status": "400", "detail": f"bad token {TOKEN}?"}}]})

    async with ScimClient(BASE, TOKEN, backoff=NO_WAIT, transport=httpx.MockTransport(answer)) as c:
        [result] = await send_bulk(ClientTransport(c), [new_user(0)], max_operations=10,
                                   max_payload_size=None)
    assert isinstance(result.error, RejectedError)
    assert TOKEN not in str(result.error)
    assert TOKEN not in (result.error.detail or "")
    assert "[redacted]" in str(result.error)
