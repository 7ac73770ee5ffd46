"""SCIM ``/Bulk`` (RFC 7644 §3.7): many creates, replaces, patches and deletes in few requests.

The writer hands :func:`send_bulk` a list of :class:`BulkOperation` and gets one
:class:`BulkResult` per operation back, in the same order. In between:

- **Order.** An operation whose ``data`` (or ``path``) holds ``"bulkId:<id>"`` refers to the
  resource another operation of the list POSTs. Referents are sent before the operations
  that refer to them, otherwise the input order is kept.
- **References.** By default an operation goes in a later request than the POST it refers
  to, with the real id that request's answer gave in place of ``bulkId:`` (RFC 7644
  §3.7.2 lets the client do this). Targets get references within one request wrong:
  SCIMMY 1.3 resolves only the last reference of an operation, keeps the others as the
  literal ``bulkId:`` text and answers 201; it also takes any forward reference for a
  circular one and creates the referring resource twice. ``target_resolves_references``
  sends them in the same request instead, for targets known to resolve them (scim2-server
  0.8 does). Operations that refer to each other in a circle can only travel together,
  for the target to resolve (RFC 7644 §3.7.1; scim2-server 0.8 refuses them with 409).
- **Split.** Requests hold at most ``max_operations`` operations and at most
  ``max_payload_size`` bytes of encoded JSON (the target's ``/ServiceProviderConfig``
  limits, :func:`bulk_limits`), filled in order. Requests are sent one after the other:
  a later one may need the ids of an earlier one.
- **Answers.** Each ``BulkResponse`` operation is matched to its request operation (by
  ``bulkId``, else by method and location, else by order: a target that stops at
  ``failOnErrors`` leaves the rest out), and its ``status`` read whether it is ``"201"``,
  ``201`` or an old draft's ``{"code": 201}``.
- **Errors.** A failed operation's error is the TargetError subclass
  :mod:`services.scim.errors` gives the same HTTP status in a single call (409 ->
  ConflictError, 400 -> RejectedError, ...), so the writer handles a bulk failure as it
  handles a single one. A request that fails as a whole (network, 413, 5xx, an answer that
  is no BulkResponse) gives its error to every operation it carried and to every operation
  not yet sent: nothing more is sent to a target that just failed, and the writer falls
  back to single calls (which look up before they create) for all of them. The bulk
  request itself is sent once, never retried: a retried bulk whose first try landed would
  apply its operations twice, and a group has no unique attribute to refuse the copy.

The HTTP call goes through a :class:`BulkTransport`: ``ScimClient.post_document`` (with its
authorization, rate-limit slot, quarantine gate and error classification) and its
``redact``, which scrubs credentials from what the target says in an operation's error.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Final, Literal, Protocol, get_args
from urllib.parse import unquote, urlsplit

import msgspec
import structlog

from services.runtime.errors import RejectedError, TargetError, TransientError
from services.scim.capabilities import Capabilities
from services.scim.errors import OutcomeUnknownError, error_class

__all__ = [
    "BULK_REQUEST",
    "BULK_RESPONSE",
    "BulkLimits",
    "BulkOperation",
    "BulkResult",
    "BulkTransport",
    "Method",
    "bulk_limits",
    "parse_status",
    "send_bulk",
]

BULK_REQUEST: Final = "urn:ietf:params:scim:api:messages:2.0:BulkRequest"
BULK_RESPONSE: Final = "urn:ietf:params:scim:api:messages:2.0:BulkResponse"
_BULK_PATH: Final = "Bulk"
_REFERENCE: Final = "bulkId:"
_DETAIL_LIMIT = 500

Method = Literal["POST", "PUT", "PATCH", "DELETE"]
_METHODS: Final = frozenset(get_args(Method))

log = structlog.get_logger("scimflow.writer")


class BulkTransport(Protocol):
    """What :func:`send_bulk` needs of a client (``ScimClient`` has both)."""

    async def post_document(self, path: str, body: Mapping[str, Any], *,
                            attempts: int | None = None) -> dict[str, Any]:
        """POST ``body`` to ``<base>/<path>``: the JSON object of a 200 answer, or a TargetError."""
        ...

    def redact(self, text: str) -> str:
        """``text`` without the client's credentials."""
        ...


@dataclass(frozen=True, slots=True)
class BulkOperation:
    """One operation of a BulkRequest, as the single request it stands for would be.

    ``path`` is relative to the SCIM root (``/Users``, ``/Groups/<id>``); ``bulk_id`` names
    a POST's resource for other operations, which refer to it as ``"bulkId:<bulk_id>"`` in
    their ``data`` or ``path``; ``version`` makes a PUT, PATCH or DELETE conditional on the
    resource's ETag (the bulk form of ``If-Match``).
    """

    method: Method
    path: str
    data: Mapping[str, Any] | None = None
    bulk_id: str | None = None
    version: str | None = None

    def __post_init__(self) -> None:
        if self.method not in _METHODS:
            raise ValueError(f"bulk method must be one of {sorted(_METHODS)}, not {self.method!r}")
        if self.method == "POST" and not self.bulk_id:
            raise ValueError(f"a bulk POST needs a bulk_id (RFC 7644 §3.7): POST {self.path}")
        if self.method != "DELETE" and self.data is None:
            raise ValueError(f"a bulk {self.method} needs data: {self.method} {self.path}")


@dataclass(frozen=True, slots=True)
class BulkResult:
    """The outcome of one :class:`BulkOperation`. ``error`` is None when it succeeded."""

    method: str
    path: str
    """As sent, with the ids of earlier requests in place of ``bulkId:`` references."""
    bulk_id: str | None = None
    status: int | None = None
    """The operation's HTTP status; None when it was not sent or the target did not say."""
    location: str | None = None
    id: str | None = None
    """The target id of the resource (from the returned resource, the location or the path)."""
    version: str | None = None
    resource: dict[str, Any] | None = None
    """The resource, when the target returned it (most return only ``location``)."""
    error: TargetError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True, slots=True)
class BulkLimits:
    """What one BulkRequest to a target may hold (its ``/ServiceProviderConfig``)."""

    max_operations: int
    max_payload_size: int | None
    """Bytes of the encoded request; None when the target did not say."""


def bulk_limits(capabilities: Capabilities) -> BulkLimits | None:
    """The target's bulk limits, or None when bulk is not to be used: the target does not
    declare ``bulk.supported`` (not declared is unknown, and a ``POST /Bulk`` to a target
    without it is a 404 or 501 at best), or declares no ``maxOperations`` (RFC 7643 §5
    requires one; a target that says 0 does not mean it)."""
    if not capabilities.bulk or capabilities.bulk_max_operations is None:
        return None
    return BulkLimits(capabilities.bulk_max_operations, capabilities.bulk_max_payload_size)


async def send_bulk(client: BulkTransport, operations: Iterable[BulkOperation], *,
                    max_operations: int, max_payload_size: int | None,
                    fail_on_errors: int | None = None,
                    target_resolves_references: bool = False) -> list[BulkResult]:
    """Send ``operations`` as few ``POST /Bulk`` requests as the limits allow; one result
    per operation, in their order.

    ``fail_on_errors`` asks the target to stop after that many failed operations, counted
    over all requests (unsent operations then carry a TransientError).
    ``target_resolves_references`` lets an operation travel in the same request as the
    POST it refers to by ``bulkId:``, for the target to resolve; by default it waits for
    the next request and carries the real id instead. One request fewer per level of
    reference, for targets known to resolve them right: SCIMMY 1.3 resolves only the
    last reference of an operation and stores the others as the literal ``bulkId:`` text,
    yet answers 201.

    Raises ValueError for a list that cannot be sent as asked (bad limits, a bulk_id used
    twice), before anything is sent.
    """
    ops = list(operations)
    _check_limits(max_operations, max_payload_size, fail_on_errors)
    _check_bulk_ids(ops)
    limits = BulkLimits(max_operations, max_payload_size)
    return await _Bulk(client, ops, limits, fail_on_errors, target_resolves_references).run()


# -- one call of send_bulk --------------------------------------------------------------


class _Bulk:
    """The state of one :func:`send_bulk` call: what is sent, resolved and failed."""

    def __init__(self, client: BulkTransport, ops: list[BulkOperation], limits: BulkLimits,
                 fail_on_errors: int | None, target_resolves: bool) -> None:
        self._client = client
        self._ops = ops
        self._max_operations = limits.max_operations
        self._max_payload_size = limits.max_payload_size
        self._fail_on_errors = fail_on_errors
        self._target_resolves = target_resolves
        self._creators: dict[str | None, int] = {op.bulk_id: i for i, op in enumerate(ops)
                                                 if op.method == "POST" and op.bulk_id}
        self._references = [_references_of(op) for op in ops]
        self._results: list[BulkResult | None] = [None] * len(ops)
        self._ids: dict[str, str] = {}
        """bulk_id -> target id of the POSTs that succeeded."""
        self._target_errors = 0
        self._stop: TargetError | None = None
        """Why nothing more is sent (a failed request, failOnErrors reached)."""

    async def run(self) -> list[BulkResult]:
        pending = deque(_units(self._ops, self._creators, self._references))
        while pending:
            if self._stop is not None:
                self._fail(pending.popleft(), self._stop, copy=True)
                continue
            batch, encoded = self._take(pending)
            if batch:
                await self._send(batch, encoded)
        done = [result for result in self._results if result is not None]
        if len(done) != len(self._ops):  # pragma: no cover - every path above records a result
            raise AssertionError("send_bulk lost an operation's result")
        return done

    # -- building one request ------------------------------------------------------------

    def _take(self, pending: deque[list[int]]) -> tuple[dict[int, dict[str, Any]], int]:
        """The operations of the next request (index -> operation JSON) and their encoded
        size, taken from ``pending`` while they fit; a unit that fits in no request fails.
        Units that must wait for this request's answer stay pending, in their order."""
        batch: dict[int, dict[str, Any]] = {}
        encoded = 0
        waiting: list[list[int]] = []
        while pending:
            unit = pending[0]
            if self._must_wait(unit, batch, waiting):
                waiting.append(pending.popleft())
                continue
            prepared = self._prepare(unit, batch)
            if prepared is None:  # failed: a referent failed or is unknown
                pending.popleft()
                continue
            size = sum(len(msgspec.json.encode(body)) for body in prepared.values())
            if self._fits(len(batch) + len(unit), encoded + size):
                batch.update(prepared)
                encoded += size
                pending.popleft()
            elif not self._fits(len(unit), size):
                self._fail(pending.popleft(), self._too_large(unit, size))
            else:
                break  # the next request takes it, with the ids this one returns
        pending.extendleft(reversed(waiting))
        return batch, encoded

    def _must_wait(self, unit: list[int], batch: Mapping[int, Any], waiting: list[list[int]]) -> bool:
        """Whether ``unit`` refers to a POST that waits, or (unless the target resolves
        references) to one in this request: it needs that POST's id."""
        referents = {self._creators.get(r) for i in unit for r in self._references[i]}
        if not referents:
            return False  # most operations (users) refer to nothing: no set to build
        unresolved = {i for w in waiting for i in w}
        if not self._target_resolves:
            unresolved.update(batch)
        return not referents.isdisjoint(unresolved)

    def _fits(self, count: int, encoded: int) -> bool:
        if count > self._max_operations:
            return False
        limit = self._max_payload_size
        return limit is None or self._request_size(count, encoded) <= limit

    def _request_size(self, count: int, encoded: int) -> int:
        """Bytes of the encoded BulkRequest holding ``count`` operations of ``encoded`` bytes."""
        return len(msgspec.json.encode(self._envelope())) + encoded + max(count - 1, 0)

    def _envelope(self) -> dict[str, Any]:
        """The BulkRequest without its operations (``Operations`` last: sizes add up)."""
        body: dict[str, Any] = {"schemas": [BULK_REQUEST]}
        if self._fail_on_errors is not None:
            body["failOnErrors"] = self._fail_on_errors - self._target_errors
        body["Operations"] = []
        return body

    def _prepare(self, unit: list[int],
                 batch: Mapping[int, dict[str, Any]]) -> dict[int, dict[str, Any]] | None:
        """The unit's operations as JSON, references to earlier requests replaced by ids;
        None (and the unit failed) when a referent failed or is unknown."""
        travelling = {self._ops[i].bulk_id for i in (*unit, *batch) if self._ops[i].method == "POST"}
        for i in unit:
            for reference in self._references[i]:
                if reference in travelling or reference in self._ids:
                    continue
                self._fail(unit, self._unresolved(i, reference))
                return None
        return {i: _operation_json(self._ops[i], self._ids) for i in unit}

    # -- sending it and reading the answer -----------------------------------------------

    async def _send(self, batch: dict[int, dict[str, Any]], encoded: int) -> None:
        body = {**self._envelope(), "Operations": list(batch.values())}
        log.debug("sending a bulk request", operations=len(batch),
                  bytes=self._request_size(len(batch), encoded))
        try:
            # Once: a retried bulk whose first try landed would apply its operations twice.
            answer = await self._client.post_document(_BULK_PATH, body, attempts=1)
            entries = _entries(answer)
        except TargetError as exc:
            self._stop = exc
            self._fail(list(batch), exc, copy=True)
            return
        matched = _match(entries, batch)
        for i, operation in batch.items():
            entry = matched.get(i)
            result = (self._result(operation, entry) if entry is not None
                      else self._unanswered(operation))
            self._record(i, result)
        if self._fail_on_errors is not None and self._target_errors >= self._fail_on_errors:
            self._stop = TransientError(f"not sent: failOnErrors ({self._fail_on_errors}) was "
                                        "reached by earlier operations of this bulk")

    def _result(self, operation: Mapping[str, Any], entry: Mapping[str, Any]) -> BulkResult:
        method, path = operation["method"], operation["path"]
        status = parse_status(entry.get("status"))
        location = _text(entry.get("location"))
        response = entry.get("response")
        common = {"method": method, "path": path, "bulk_id": operation.get("bulkId"),
                  "status": status, "location": location}
        if status is None:
            return BulkResult(**common, error=OutcomeUnknownError(
                f"{_where(operation)}: the BulkResponse gives no readable status "
                f"({entry.get('status')!r}), so its outcome is unknown"))
        if not 200 <= status < 300:
            return BulkResult(**common, error=self._status_error(operation, status, response))
        resource = response if isinstance(response, dict) and _text(response.get("id")) else None
        target_id = _text(resource.get("id")) if resource else None
        target_id = (target_id or _last_segment(location)
                     or (None if method == "POST" else _last_segment(path)))
        version = _text(entry.get("version")) or _version_of(resource)
        if target_id is None:
            return BulkResult(**common, version=version, resource=resource, error=RejectedError(
                f"{_where(operation)} -> {status}: the target created it but its answer gives "
                "neither a location nor an id", status=status))
        return BulkResult(**common, id=target_id, version=version, resource=resource)

    def _status_error(self, operation: Mapping[str, Any], status: int, response: Any) -> TargetError:
        detail, scim_type = _scim_error(response)
        detail = self._client.redact(detail) if detail else None
        message = f"{_where(operation)} -> {status} {_reason(status)}"
        message += f" [{scim_type}]" if scim_type else ""
        message += f": {detail}" if detail else ""
        return error_class(status)(self._client.redact(message), status=status, detail=detail)

    def _unanswered(self, operation: Mapping[str, Any]) -> BulkResult:
        return BulkResult(method=operation["method"], path=operation["path"],
                          bulk_id=operation.get("bulkId"), error=TransientError(
                              f"{_where(operation)}: the BulkResponse has no result for it (the "
                              "target stopped at failOnErrors, or left it out); not applied"))

    def _record(self, i: int, result: BulkResult) -> None:
        self._results[i] = result
        bulk_id = self._ops[i].bulk_id
        if result.error is not None:
            if result.status is not None:
                self._target_errors += 1
        elif bulk_id is not None and result.id is not None and self._ops[i].method == "POST":
            self._ids[bulk_id] = result.id

    # -- failures before sending ---------------------------------------------------------

    def _fail(self, indices: Iterable[int], error: TargetError, *, copy: bool = False) -> None:
        """Record ``error`` for each operation: ``error`` itself for the first unless
        ``copy`` (it was raised elsewhere already), a copy for the others."""
        for n, i in enumerate(indices):
            op = self._ops[i]
            self._results[i] = BulkResult(method=op.method, path=op.path, bulk_id=op.bulk_id,
                                          error=error if n == 0 and not copy else _copy(error))

    def _unresolved(self, i: int, reference: str) -> TargetError:
        where = _where(_operation_json(self._ops[i], {}))
        creator = self._creators.get(reference)
        if creator is None:
            return RejectedError(f"{where}: refers to bulkId:{reference}, which no POST of this bulk "
                                 "creates")
        failed = self._results[creator]
        why = f": {failed.error}" if failed is not None and failed.error is not None else ""
        return TransientError(f"not sent: {where} refers to bulkId:{reference}, whose POST "
                              f"failed{why}")

    def _too_large(self, unit: Sequence[int], size: int) -> TargetError:
        first = _where(_operation_json(self._ops[unit[0]], self._ids))
        what = (first if len(unit) == 1
                else f"{first} and {len(unit) - 1} operation(s) it refers to in a circle")
        return RejectedError(
            f"not sent: {what} would make a bulk request of {len(unit)} operation(s) and "
            f"{self._request_size(len(unit), size)} bytes, over the target's limits "
            f"({self._max_operations} operations, {self._max_payload_size} bytes); "
            "send it on its own")


# -- ordering -------------------------------------------------------------------------


def _units(ops: Sequence[BulkOperation], creators: Mapping[str | None, int],
           references: Sequence[frozenset[str]]) -> list[list[int]]:
    """The operations in groups that must travel together (a circle of references, else one
    operation each), referents' groups first, otherwise in input order: Tarjan's strongly
    connected components, which come out in exactly that order when the walk starts from
    each operation in turn and follows its references in order."""
    edges = [sorted(creators[r] for r in refs if r in creators) for refs in references]
    index: dict[int, int] = {}
    low: dict[int, int] = {}
    stack: list[int] = []
    on_stack: set[int] = set()
    units: list[list[int]] = []
    for root in range(len(ops)):
        if root not in index:
            _strong_components(root, edges, index, low, stack, on_stack, units)
    return units


def _strong_components(root: int, edges: Sequence[Sequence[int]], index: dict[int, int],
                       low: dict[int, int], stack: list[int], on_stack: set[int],
                       units: list[list[int]]) -> None:
    """Tarjan's walk from ``root``, without recursion (a chain of nested groups is deep)."""
    work = [(root, 0)]
    while work:
        node, child = work.pop()
        if child == 0:
            index[node] = low[node] = len(index)
            stack.append(node)
            on_stack.add(node)
        if child < len(edges[node]):
            work.append((node, child + 1))
            successor = edges[node][child]
            if successor not in index:
                work.append((successor, 0))
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
            continue
        if low[node] == index[node]:
            units.append(sorted(_pop_component(node, stack, on_stack)))
        if work:
            parent = work[-1][0]
            low[parent] = min(low[parent], low[node])


def _pop_component(node: int, stack: list[int], on_stack: set[int]) -> Iterator[int]:
    while True:
        member = stack.pop()
        on_stack.discard(member)
        yield member
        if member == node:
            return


def _references_of(op: BulkOperation) -> frozenset[str]:
    """The bulkIds ``op`` refers to, other than its own."""
    found = {r for r in _strings(op.data) if r.startswith(_REFERENCE)}
    found |= {s for s in op.path.split("/") if s.startswith(_REFERENCE)}
    return frozenset(r.removeprefix(_REFERENCE) for r in found) - {op.bulk_id}


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


def _substitute(value: Any, ids: Mapping[str, str]) -> Any:
    """``value`` with every ``"bulkId:<id>"`` whose id is known replaced by the target id."""
    if isinstance(value, str):
        known = ids.get(value.removeprefix(_REFERENCE)) if value.startswith(_REFERENCE) else None
        return known if known is not None else value
    if isinstance(value, Mapping):
        return {key: _substitute(item, ids) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_substitute(item, ids) for item in value]
    return value


def _operation_json(op: BulkOperation, ids: Mapping[str, str]) -> dict[str, Any]:
    """One entry of ``Operations`` (RFC 7644 §3.7), references to known ids resolved."""
    body: dict[str, Any] = {"method": op.method,
                            "path": "/".join(_substitute(s, ids) for s in op.path.split("/"))}
    if op.bulk_id is not None:
        body["bulkId"] = op.bulk_id
    if op.version is not None:
        body["version"] = op.version
    if op.data is not None:
        body["data"] = _substitute(op.data, ids)
    return body


# -- reading a BulkResponse -----------------------------------------------------------


def parse_status(value: Any) -> int | None:
    """An operation's HTTP status as a BulkResponse gives it: ``"201"`` (RFC 7644),
    ``201``, ``"201 Created"``, or ``{"code": "201"}`` (drafts before the RFC). None if
    none of these."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, Mapping):
        return parse_status(value.get("code"))
    if isinstance(value, str):
        digits = value.strip()[:3]
        return int(digits) if len(digits) == 3 and digits.isdigit() else None
    return None


def _entries(answer: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The ``Operations`` of a BulkResponse; RejectedError for any other JSON object."""
    operations = _get(answer, "Operations")
    if not isinstance(operations, list):
        schemas = answer.get("schemas")
        raise RejectedError(f"POST /Bulk -> 200: the answer is JSON but not a SCIM BulkResponse "
                            f"(no Operations; schemas {schemas!r}): the target may not implement "
                            "/Bulk", status=200)
    return [entry for entry in operations if isinstance(entry, Mapping)]


def _match(entries: Sequence[Mapping[str, Any]],
           batch: Mapping[int, Mapping[str, Any]]) -> dict[int, Mapping[str, Any]]:
    """Which answer belongs to which operation: by bulkId, else the first unanswered
    operation of the same method (and location, when the answer has one)."""
    unanswered = list(batch)
    by_bulk_id = {op["bulkId"]: i for i, op in batch.items() if op["method"] == "POST" and "bulkId" in op}
    matched: dict[int, Mapping[str, Any]] = {}
    for entry in entries:
        i = by_bulk_id.get(_text(entry.get("bulkId")) or "")
        if i is None or i not in unanswered:
            i = _same_operation(entry, unanswered, batch)
        if i is not None:
            matched[i] = entry
            unanswered.remove(i)
    return matched


def _same_operation(entry: Mapping[str, Any], unanswered: Sequence[int],
                    batch: Mapping[int, Mapping[str, Any]]) -> int | None:
    method = str(entry.get("method") or "").upper()
    candidates = [i for i in unanswered if not method or batch[i]["method"] == method]
    target = _last_segment(_text(entry.get("location")))
    if target is not None:
        by_location = [i for i in candidates if _last_segment(batch[i]["path"]) == target]
        candidates = by_location or candidates
    return candidates[0] if candidates else None


def _scim_error(response: Any) -> tuple[str | None, str | None]:
    """(detail, scimType) of an operation's SCIM error ``response``."""
    if not isinstance(response, Mapping):
        return None, None
    detail, scim_type = _get(response, "detail"), _get(response, "scimType")
    return (str(detail)[:_DETAIL_LIMIT] if detail else None,
            str(scim_type) if scim_type else None)


def _version_of(resource: Mapping[str, Any] | None) -> str | None:
    meta = resource.get("meta") if resource else None
    return _text(meta.get("version")) if isinstance(meta, Mapping) else None


def _last_segment(url: str | None) -> str | None:
    """The id at the end of a location or path (``.../Users/<id>`` -> ``<id>``)."""
    if not url:
        return None
    segment = urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]
    return unquote(segment) or None


def _get(mapping: Mapping[str, Any], name: str) -> Any:
    """A SCIM attribute, whatever the case of its name (RFC 7643 §2.1)."""
    if name in mapping:
        return mapping[name]
    folded = name.lower()
    return next((v for k, v in mapping.items() if isinstance(k, str) and k.lower() == folded), None)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "(unknown status)"


def _where(operation: Mapping[str, Any]) -> str:
    bulk_id = operation.get("bulkId")
    return f"bulk {operation['method']} {operation['path']}" + (f" (bulkId {bulk_id})" if bulk_id else "")


def _copy(error: TargetError) -> TargetError:
    """The same failure as a new exception: one per operation, so that raising one does not
    grow the traceback of the others."""
    copied = type(error)(str(error), status=error.status, detail=error.detail,
                         retry_after=error.retry_after, attempts=error.attempts)
    copied.__cause__ = error.__cause__ or error
    return copied


# -- checks ---------------------------------------------------------------------------


def _check_limits(max_operations: int, max_payload_size: int | None,
                  fail_on_errors: int | None) -> None:
    if max_operations < 1:
        raise ValueError(f"max_operations must be at least 1, not {max_operations}")
    if max_payload_size is not None and max_payload_size < 1:
        raise ValueError(f"max_payload_size must be at least 1 byte, not {max_payload_size}")
    if fail_on_errors is not None and fail_on_errors < 1:
        raise ValueError(f"fail_on_errors must be at least 1, not {fail_on_errors}")


def _check_bulk_ids(ops: Sequence[BulkOperation]) -> None:
    seen: set[str] = set()
    for op in ops:
        if op.method == "POST" and op.bulk_id is not None:
            if op.bulk_id in seen:
                raise ValueError(f"bulk_id {op.bulk_id!r} is used by two POSTs: references to it "
                                 "would be ambiguous")
            seen.add(op.bulk_id)
