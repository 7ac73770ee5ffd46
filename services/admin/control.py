"""The control plane's operations, once: what the admin API serves and what the CLI runs
when it talks to Kafka directly (``scimflow stop APP`` without ``--api``).

Every operation returns plain JSON-able data, so the API sends it as it is and the CLI
prints the same thing whichever way it reached the operation. Every action that changes
something (or probes a target) is recorded on the audit topic with who asked, from where,
and how it ended; a credential is never part of a record.

Applications as data (``config_*``): the definitions on the ``control.config`` topic
(:mod:`services.runtime.config_store`), read, validated, written as new versions with
optimistic concurrency, and every change audited with its author and diff.

Operations block (Kafka reads, a provision trace): the API runs them in a thread.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import msgspec
import structlog

from schemas import ActivityRecord, ErrorRecord
from schemas.codecs import encode
from schemas.config import ConfigVersion
from schemas.control import AllowDeletes, AppStatus, AuditRecord, ProvisionRequest, Restart
from services.admin.provision import provision
from services.admin.status import read_status
from services.runtime import metrics
from services.runtime.config import LoadedConfig
from services.runtime.config_store import (
    ConfigStore,
    Definition,
    DefinitionError,
    Loader,
    Planned,
    VersionConflictError,
    default_loader,
    diff,
    render_diff,
    validate_app,
)
from services.runtime.errors import ConfigError, ScimflowError, TargetError
from services.runtime.kafka import plain_producer, read_records
from services.runtime.settings import Settings
from services.runtime.topics import Topics

# The one place a non-writer builds a target client: test connection must test exactly the
# client (credentials, timeouts, TLS) the writer uses, and read what that target declares
# the way the writer reads it.
from services.scim.capabilities import Capabilities, check_mappings, discover
from services.scim.client import client_for

__all__ = [
    "AssignmentKind",
    "Backend",
    "BadRequestError",
    "Caller",
    "ControlPlane",
    "Evaluator",
    "NoSuchAppError",
    "ProvisionFailedError",
    "wanted",
]

log = structlog.get_logger("scimflow.admin")

Outcome = Literal["accepted", "rejected", "failed", "succeeded"]
AssignmentKind = Literal["user", "group"]


class BadRequestError(ScimflowError):
    """The request itself is wrong (unknown kind, bad parameter): HTTP 400."""


class NoSuchAppError(ScimflowError):
    """No application of that name in the config: HTTP 404."""


class ProvisionFailedError(ScimflowError):
    """Provision on demand did not produce an outcome; ``trace`` holds what arrived."""

    def __init__(self, message: str, trace: dict[str, Any], *, not_found: bool) -> None:
        super().__init__(message)
        self.trace = trace
        self.not_found = not_found


class Backend(Protocol):
    """What the CLI needs; :class:`ControlPlane` and the HTTP client both provide it."""

    def status(self, app: str | None = None) -> list[dict[str, Any]]: ...
    def set_status(self, app: str, status: Literal["on", "off"]) -> dict[str, Any]: ...
    def restart(self, app: str, *, reset_links: bool) -> dict[str, Any]: ...
    def allow_deletes(self, app: str) -> dict[str, Any]: ...
    def provision(self, app: str, object_id: str, object_type: Literal["user", "group"], *,
                  timeout: float | None = None) -> dict[str, Any]: ...
    def test_connection(self, app: str) -> dict[str, Any]: ...
    def records(self, kind: str, *, app: str | None = None, status: str | None = None,
                limit: int = 100) -> list[dict[str, Any]]: ...
    def assignments(self, app: str) -> dict[str, Any]: ...
    def assign(self, app: str, kind: AssignmentKind, object_id: str, *, expected: int | None = None,
               comment: str = "") -> dict[str, Any]: ...
    def unassign(self, app: str, kind: AssignmentKind, object_id: str, *, expected: int | None = None,
                 comment: str = "") -> dict[str, Any]: ...


Previewer = Callable[["ControlPlane", str, dict[str, Any], list[str] | None, int], dict[str, Any]]
"""(plane, app, validated definition, ids, sample) -> the preview (see services/cli/apps.py)."""

Evaluator = Callable[["ControlPlane", str, dict[str, Any], str], dict[str, Any]]
"""(plane, app, validated definition, source object id) -> the SCIM resource that object maps
to, every attribute mapping evaluated by the mapper's engine (see services/cli/apps.py)."""


@dataclass
class Caller:
    """Who asks: the admin token's name (or the CLI user) and their address, for the audit."""

    by: str
    remote: str | None = None


class ControlPlane:
    """Control operations on the topics of one deployment.

    ``loaded`` (the provisioning config) names the applications, so requests for an unknown
    app fail instead of being published; without it (the CLI's ``stop`` with no config),
    any app name is accepted and operations that need the config say so.
    """

    def __init__(self, settings: Settings, bootstrap: str, loaded: LoadedConfig | None,
                 caller: Caller, *, load: Loader = default_loader,
                 previewer: Previewer | None = None, evaluator: Evaluator | None = None) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.loaded = loaded
        self.caller = caller
        self.load = load
        """How a definition is validated (a config file loader; see config_store.validate_app)."""
        self.previewer = previewer
        """What evaluates a definition's mappings for a preview: the mapper's engine, which a
        service may not import, so whoever starts the admin service passes it in."""
        self.evaluator = evaluator
        """What maps one source object to its full target resource (the mapper's engine, too)."""
        self.topics = Topics(settings.topic_prefix, settings.partitions)
        self._producer: Any = None

    def as_caller(self, caller: Caller) -> ControlPlane:
        """The same plane (and producer) acting for another caller (one per API request)."""
        plane = ControlPlane(self.settings, self.bootstrap, self.loaded, caller, load=self.load,
                             previewer=self.previewer, evaluator=self.evaluator)
        plane._producer = self._get_producer()
        return plane

    def app_names(self) -> frozenset[str]:
        """The applications the config names (no Kafka read: cheap enough for every request)."""
        if self.loaded is None:
            return frozenset()
        return frozenset(a.name for a in self.loaded.config.applications)

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close()
            self._producer = None

    # -- reading ---------------------------------------------------------------------------

    def status(self, app: str | None = None) -> list[dict[str, Any]]:
        loaded = self._config("status")
        if app is not None:
            self._check_app(app)
        reports = read_status(loaded, self.bootstrap, self.topics)
        return [msgspec.to_builtins(r) for r in reports if app is None or r.app == app]

    def records(self, kind: str, *, app: str | None = None, status: str | None = None,
                limit: int = 100) -> list[dict[str, Any]]:
        """The most recent activity or error records (newest last), filtered."""
        topic, record_type = self._report_topic(kind)
        dec = msgspec.json.Decoder(record_type)
        found: list[Any] = []
        for message in read_records(self.bootstrap, topic):
            try:
                record = dec.decode(message.value)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
            if wanted(record, app, status):
                found.append(record)
        found.sort(key=lambda r: r.at)
        return [msgspec.to_builtins(r) for r in found[-max(1, min(limit, 10_000)):]]

    def _report_topic(self, kind: str) -> tuple[str, type[Any]]:
        if kind == "activity":
            return self.topics.activity, ActivityRecord
        if kind == "errors":
            return self.topics.errors, ErrorRecord
        raise BadRequestError(f"expected `activity` or `errors`, got {kind!r}")

    # -- control actions -------------------------------------------------------------------

    def set_status(self, app: str, status: Literal["on", "off"]) -> dict[str, Any]:
        if status not in ("on", "off"):
            raise BadRequestError(f"status must be `on` or `off`, got {status!r}")
        action = "start" if status == "on" else "stop"
        message = AppStatus(app=app, status=status, by=self.caller.by, at=datetime.now(UTC))
        return self._act(action, app, "status", message, {"status": status})

    def restart(self, app: str, *, reset_links: bool) -> dict[str, Any]:
        message = Restart(app=app, request_id=uuid.uuid4().hex, reset_links=bool(reset_links),
                          by=self.caller.by, at=datetime.now(UTC))
        return self._act("restart", app, "restart", message,
                         {"reset_links": message.reset_links, "request_id": message.request_id})

    def allow_deletes(self, app: str) -> dict[str, Any]:
        message = AllowDeletes(app=app, before=datetime.now(UTC), by=self.caller.by)
        return self._act("allow-deletes", app, "allow-deletes", message,
                         {"before": message.before.isoformat()})

    def _act(self, action: str, app: str, kind: str, message: msgspec.Struct,
             detail: dict[str, Any]) -> dict[str, Any]:
        self._check_app(app, action=action, detail=detail)
        try:
            self._send(self.topics.control, f"{app}/{kind}", message)
        except Exception as exc:
            self.audit(action, app, detail, "failed")
            raise ScimflowError(f"could not publish the {action} request: {exc}") from exc
        self.audit(action, app, detail, "accepted")
        return {"app": app, "action": action, "outcome": "accepted", "by": self.caller.by, **detail}

    def provision(self, app: str, object_id: str, object_type: Literal["user", "group"], *,
                  timeout: float | None = None) -> dict[str, Any]:
        detail = {"object_id": object_id, "object_type": object_type}
        self._check_app(app, action="provision", detail=detail)
        if object_type not in ("user", "group") or not object_id:
            self.audit("provision", app, detail, "rejected")
            raise BadRequestError("give an object id and a type of `user` or `group`")
        wait = self.settings.provision_timeout if timeout is None else max(0.5, min(timeout, 60.0))
        started = time.monotonic()
        trace = provision(self.bootstrap, self.topics, self._send_request, app=app,
                          object_id=object_id, object_type=object_type, by=self.caller.by,
                          timeout=wait)
        elapsed_ms = round((time.monotonic() - started) * 1000)
        report = {"app": app, **trace.report(wait), "elapsed_ms": elapsed_ms}
        finished = trace.finished
        self.audit("provision", app, {**detail, "request_id": trace.request_id,
                                      "result": report["outcome"]}, "succeeded" if finished else "failed")
        if report["outcome"] in ("notFound", "timeout"):
            raise ProvisionFailedError(f"provision {object_type} {object_id} in {app}: {report['message']}",
                                       report, not_found=report["outcome"] == "notFound")
        return report

    def _send_request(self, request: ProvisionRequest) -> None:
        self._send(self.topics.control, f"{request.app}/provision", request)

    def test_connection(self, app: str) -> dict[str, Any]:
        loaded = self._config("test-connection")
        application = self._check_app(app, action="test-connection")
        assert application is not None
        attribute = _matching_attribute(application)
        try:
            client = client_for(application, loaded, self.settings)
        except ConfigError as exc:
            self.audit("test-connection", app, {"attribute": attribute}, "failed")
            return {"app": app, "ok": False, "attribute": attribute, "message": exc.reason}
        message, capabilities = asyncio.run(_probe(client, attribute))
        ok = message is None
        # Mapping problems are reported, not failed on: the connection itself works.
        problems = check_mappings(application, capabilities, loaded) if capabilities is not None else []
        self.audit("test-connection", app, {"attribute": attribute, "mapping_problems": len(problems)},
                   "succeeded" if ok else "failed")
        return {"app": app, "ok": ok, "attribute": attribute,
                "message": message or f"GET /Users?filter={attribute} eq \"<random GUID>\" answered "
                                      "200 with no users: the target is reachable and filters work",
                "capabilities": msgspec.to_builtins(capabilities) if capabilities is not None else None,
                "problems": [msgspec.to_builtins(p) for p in problems]}

    # -- applications as data -------------------------------------------------------------

    def config_apps(self) -> list[dict[str, Any]]:
        """Every live app definition's current version (without the definitions)."""
        return [_summary(v) for v in self._store().current("app").values()]

    def config_sources(self) -> list[dict[str, Any]]:
        """Every live source definition, whole (for ``get app -o yaml``)."""
        return [_summary(v, definition=True) for v in self._store().current("source").values()]

    def config_get(self, app: str, version: int | None = None) -> dict[str, Any]:
        """One app's current definition (or version ``version``), with its version."""
        store = self._store()
        found = store.current("app").get(app) if version is None else store.version(app, version)
        if found is None or found.removed:
            what = "no application" if version is None else f"no version {version} of application"
            raise NoSuchAppError(f"{what} named {app!r} in the config topic")
        return _summary(found, definition=True)

    def config_history(self, app: str) -> list[dict[str, Any]]:
        """Every version of one app, oldest first, each with what it changed."""
        versions = self._store().history(app)
        if not versions:
            raise NoSuchAppError(f"no application named {app!r} in the config topic")
        before: Definition = {}
        out = []
        for v in versions:
            now = v.definition or {}
            out.append({**_summary(v), "diff": render_diff(diff(before, now))})
            before = now
        return out

    def config_put(self, app: str, definition: Any, *, expected: int | None,
                   comment: str = "") -> dict[str, Any]:
        """Validate ``definition`` and write it as the app's next version, unless it is what is
        live already. ``expected``: the version it was based on (0: a new app; None: any)."""
        try:
            plain = validate_app(app, definition, load=self.load)
        except DefinitionError as exc:
            self.audit("config", app, {"problems": [str(p) for p in exc.problems]}, "rejected")
            raise
        [planned] = self._store().plan("app", {app: plain})
        return self._write(planned, expected=expected, comment=comment, action="config")

    def config_apply(self, apps: dict[str, Definition], sources: dict[str, Definition], *,
                     dry_run: bool, comment: str = "") -> dict[str, Any]:
        """``scimflow apply``: the definitions of a validated file, each written as a new
        version where it differs from what is live (``dry_run``: only the diff)."""
        store = self._store()
        plans = store.plan("source", sources) + store.plan("app", apps)
        if dry_run:
            return {"dry_run": True, "changes": [_planned(p) for p in plans]}
        results = []
        for p in plans:
            expected = p.current.version if p.current is not None else 0
            results.append(self._write(p, expected=expected, comment=comment, action="apply"))
        return {"dry_run": False, "changes": results}

    def config_preview(self, app: str, definition: Any, *, ids: list[str] | None = None,
                       sample: int = 5) -> dict[str, Any]:
        """What ``definition`` would change in the target, per object (``scimflow apply
        --preview``): validated first, nothing written, nothing audited (it changes nothing)."""
        plain = validate_app(app, definition, load=self.load)
        if self.previewer is None:
            raise BadRequestError("this admin service was started without the preview engine "
                                  "(start it with `scimflow admin`)")
        return self.previewer(self, app, plain, ids, sample)

    def config_evaluate(self, app: str, object_id: str, definition: Any = None) -> dict[str, Any]:
        """The SCIM resource source object ``object_id`` maps to under ``definition`` (None:
        the app's live version): every attribute mapping evaluated on the object's latest
        change on the directory topic. Read only: nothing is written or audited."""
        if definition is None:
            definition = self.config_get(app)["definition"]
        plain = validate_app(app, definition, load=self.load)
        if self.evaluator is None:
            raise BadRequestError("this admin service was started without the mapping engine "
                                  "(start it with `scimflow admin`)")
        return self.evaluator(self, app, plain, object_id)

    def config_rollback(self, app: str, to: int, *, comment: str = "") -> dict[str, Any]:
        """Write version ``to`` of the app again, as its next version."""
        old = self._store().version(app, to)
        if old is None or old.definition is None:
            self.audit("rollback", app, {"to": to, "error": "no such version"}, "rejected")
            raise NoSuchAppError(f"application {app!r} has no version {to} with a definition")
        plain = validate_app(app, old.definition, load=self.load)  # still valid for this scimflow?
        [planned] = self._store().plan("app", {app: plain})
        return self._write(planned, expected=None, comment=comment or f"rollback to version {to}",
                           action="rollback", rollback_of=to)

    def config_remove(self, app: str, *, expected: int | None, comment: str = "") -> dict[str, Any]:
        """Record the app's removal as its next version (its history stays)."""
        live = self._store().current("app").get(app)
        if live is None:
            raise NoSuchAppError(f"no application named {app!r} in the config topic")
        planned = Planned("app", app, live, {}, diff(live.definition or {}, {}))
        return self._write(planned, expected=expected, comment=comment, action="remove", remove=True)

    # -- assignments ("Users and groups") ---------------------------------------------------

    def assignments(self, app: str) -> dict[str, Any]:
        """Who is assigned to the app (users and groups), with the app's version."""
        live = self._live(app)
        return _assigned(live.name, live.version, live.definition or {})

    def assign(self, app: str, kind: AssignmentKind, object_id: str, *, expected: int | None = None,
               comment: str = "") -> dict[str, Any]:
        """Add one user or group to the app's assignments, as the app's next version. Adding
        one that is assigned already changes nothing and writes nothing (idempotent)."""
        return self._edit_assignments("assign", app, kind, object_id, expected=expected, comment=comment)

    def unassign(self, app: str, kind: AssignmentKind, object_id: str, *, expected: int | None = None,
                 comment: str = "") -> dict[str, Any]:
        """Remove one user or group from the app's assignments (one not assigned: a no-op)."""
        return self._edit_assignments("unassign", app, kind, object_id, expected=expected, comment=comment)

    def _edit_assignments(self, action: Literal["assign", "unassign"], app: str, kind: str,
                          object_id: Any, *, expected: int | None, comment: str) -> dict[str, Any]:
        detail = {"type": kind, "id": object_id}
        if kind not in ("user", "group") or not isinstance(object_id, str) or not object_id.strip():
            self.audit(action, app, {**detail, "error": "bad request"}, "rejected")
            raise BadRequestError('expected a type of "user" or "group" and a non-empty id')
        live = self._live(app, action=action, detail=detail)
        edited = _with_assignment(live.definition or {}, f"{kind}s", object_id, add=action == "assign")
        try:  # the live definition may no longer load here (a ${VAR} unset): nothing is written
            plain = validate_app(app, edited, load=self.load)
        except DefinitionError as exc:
            self.audit(action, app, {**detail, "problems": [str(p) for p in exc.problems]}, "rejected")
            raise
        [planned] = self._store().plan("app", {app: plain})
        result = self._write(planned, expected=expected, comment=comment, action=action, detail=detail)
        version = result["version"]
        return {**result, **_assigned(app, version, plain)}

    def _live(self, app: str, *, action: str | None = None,
              detail: dict[str, Any] | None = None) -> ConfigVersion:
        live = self._store().current("app").get(app)
        if live is None:
            if action is not None:
                self.audit(action, app, {**(detail or {}), "error": "unknown application"}, "rejected")
            raise NoSuchAppError(f"no application named {app!r} in the config topic")
        return live

    def _write(self, planned: Planned, *, expected: int | None, comment: str, action: str,
               rollback_of: int | None = None, remove: bool = False,
               detail: dict[str, Any] | None = None) -> dict[str, Any]:
        current = planned.current.version if planned.current is not None else 0
        app = planned.name if planned.kind == "app" else None
        where = {**(detail or {}), **({} if planned.kind == "app" else {"source": planned.name})}
        if expected is not None and expected != current:
            self.audit(action, app, {**where, "expected": expected, "current": current,
                                     "error": "version conflict"}, "rejected")
            raise VersionConflictError(planned.kind, planned.name, expected, current)
        if planned.action == "unchanged" and not remove:
            return {**_planned(planned), "version": current, "changed": False}
        try:
            record = self._store().write(planned.kind, planned.name, None if remove else planned.definition,
                                         expected=current, author=self.caller.by, comment=comment,
                                         rollback_of=rollback_of)
        except VersionConflictError as exc:
            self.audit(action, app, {**where, "expected": current, "current": exc.current,
                                     "error": "version conflict"}, "rejected")
            raise
        changes = render_diff(planned.changes)
        self.audit(action, app, {**where, "version": record.version, "previous": current,
                                 "comment": comment, "diff": changes,
                                 **({"rollback_of": rollback_of} if rollback_of else {})}, "succeeded")
        return {**_planned(planned), "action": "remove" if remove else planned.action,
                "version": record.version, "changed": True, "author": record.author}

    def _store(self) -> ConfigStore:
        return ConfigStore(self.bootstrap, self.topics, producer=_Shared(self._get_producer()))

    # -- audit -----------------------------------------------------------------------------

    def audit(self, action: str, app: str | None, detail: dict[str, Any], outcome: Outcome) -> None:
        """Record one control action on the audit topic (best effort: logged if it fails)."""
        metrics.CONTROL_ACTIONS.labels(action=action, outcome=outcome).inc()
        record = AuditRecord(id=uuid.uuid4().hex, at=datetime.now(UTC), by=self.caller.by,
                             action=action, app=app, outcome=outcome, detail=detail,
                             remote=self.caller.remote)
        try:
            self._send(self.topics.audit, app or "-", record)
        except Exception as exc:
            # The action itself already happened (or failed): say so loudly, do not undo it.
            log.exception("audit record not written", action=action, app=app, by=self.caller.by,
                      outcome=outcome, reason=str(exc))

    # -- helpers ---------------------------------------------------------------------------

    def _config(self, what: str) -> LoadedConfig:
        if self.loaded is None:
            raise BadRequestError(f"{what} needs the provisioning config: give --config (or SCIMFLOW_CONFIG)")
        return self.loaded

    def _check_app(self, app: str, *, action: str | None = None,
                   detail: dict[str, Any] | None = None) -> Any:
        if self.loaded is None:
            return None
        for application in self.loaded.config.applications:
            if application.name == app:
                return application
        if action is not None:
            self.audit(action, app, {**(detail or {}), "error": "unknown application"}, "rejected")
        known = ", ".join(a.name for a in self.loaded.config.applications)
        raise NoSuchAppError(f"no application named {app!r} (known: {known})")

    def _get_producer(self) -> Any:
        if self._producer is None:
            self._producer = plain_producer(self.bootstrap)
        return self._producer

    def _send(self, topic: str, key: str, message: msgspec.Struct) -> None:
        self._get_producer().send(topic, key=key.encode(), value=encode(message)).get(timeout=30)


class _Shared:
    """The plane's producer lent to a store, which must not close it."""

    def __init__(self, producer: Any) -> None:
        self._producer = producer

    def send(self, *args: Any, **kwargs: Any) -> Any:
        return self._producer.send(*args, **kwargs)

    def close(self) -> None:
        pass


def _summary(v: ConfigVersion, *, definition: bool = False) -> dict[str, Any]:
    shown: dict[str, Any] = {"kind": v.kind, "name": v.name, "version": v.version, "author": v.author,
                             "at": v.at.isoformat(), "comment": v.comment, "removed": v.removed,
                             "rollback_of": v.rollback_of}
    if definition:
        shown["definition"] = v.definition
    return shown


def _assigned(app: str, version: int, definition: Definition) -> dict[str, Any]:
    given = definition.get("assignments") or {}
    return {"app": app, "version": version, "scope": definition.get("scope", "assigned"),
            "users": list(given.get("users", [])), "groups": list(given.get("groups", [])),
            "expand_nested_groups": bool(given.get("expand_nested_groups", False))}


def _with_assignment(definition: Definition, field: str, object_id: str, *, add: bool) -> Definition:
    """``definition`` with ``object_id`` added to (or removed from) its ``assignments.<field>``
    (the others keep their order; a new one goes last). Already so: ``definition`` itself,
    so the plan finds nothing to write."""
    given = definition.get("assignments") or {}
    ids = list(given.get(field, []))
    if (object_id in ids) == add:
        return definition
    ids = [*ids, object_id] if add else [i for i in ids if i != object_id]
    return {**definition, "assignments": {**given, field: ids}}


def _planned(p: Planned) -> dict[str, Any]:
    return {"kind": p.kind, "name": p.name, "action": p.action,
            "from_version": p.current.version if p.current is not None else 0,
            "diff": render_diff(p.changes)}


def wanted(record: Any, app: str | None, status: str | None) -> bool:
    """The filter of ``tail`` and ``/activity``: this app, this status (or error code)."""
    if app and record.app != app:
        return False
    if status:
        return status in (getattr(record, "status", None), getattr(record, "error_code", None))
    return True


def _matching_attribute(app: Any) -> str:
    """The user mapping's first matching attribute (lowest precedence), as Entra tests with."""
    matching = [a for a in app.mappings.user.attributes if a.matching is not None]
    return min(matching, key=lambda a: a.matching).target if matching else "userName"


async def _probe(client: Any, attribute: str) -> tuple[str | None, Capabilities | None]:
    """(None, what the target declares) when the connection test passes, else (exactly
    what failed, None): a target that cannot be reached has nothing to declare."""
    try:
        await client.test_connection(attribute)
        return None, await discover(client)
    except TargetError as exc:
        return str(exc) + (f" (target said: {exc.detail})" if exc.detail else ""), None
    finally:
        await client.aclose()
