"""Live reload: every worker follows the ``control.config`` topic and runs each app's current version.

:class:`LiveConfig` reads the whole topic from its beginning (no consumer group: every
replica reads all of it) and keeps, per application, the version it runs: the *current*
version as :mod:`schemas.config` defines it (the highest version; the first record of a
version wins; a removal takes the app away). For each app whose definition changes it
builds a :class:`LiveApp` (the definition loaded as ``scimflow validate`` loads a file,
its secrets resolved in this process's environment, relative paths against the folder of
the worker's ``--config`` file) and calls the worker's callbacks.

Start-up. Until :attr:`LiveConfig.caught_up` is set, the worker runs the apps of its
``--config`` file (version 0: the bootstrap). Once the topic has been read to the end
offsets it had at the start, the topic's version of every app it names replaces the file's
(callbacks are called for those that differ, *before* ``caught_up`` is set), then
``caught_up`` is set. An app of the file the topic never named keeps running; with an empty
topic a worker runs exactly its file. :func:`apply_file_at_start` (GitOps) writes the file's
apps to the topic at start when they changed, so normally the two agree.

Bad input never stops the worker: a version it cannot load (unknown fields from a newer
scimflow, a secret that does not resolve here, an invalid definition, a record it cannot
decode) or that a callback refuses (raises: e.g. a mapping that does not compile) is
*rejected*: the last good version of that app keeps running, one ErrorRecord
(``ConfigVersionRejected``, naming app, version and reason) goes to the errors topic, and
``scimflow_config_rejected_total{service,app}`` counts it. At start, the newest version
that loads is the last good one (each newer one is rejected, once per process start).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import socket
import tempfile
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import msgspec
import structlog

from schemas import ErrorRecord
from schemas.codecs import decoder
from schemas.config import ConfigVersion
from services.runtime import metrics
from services.runtime.config import (
    SERVICE_SECRETS,
    Application,
    LoadedConfig,
    SecretScope,
    load_config,
    resolve_secrets,
)
from services.runtime.config_store import ConfigStore, Definition, VersionConflictError, read_file
from services.runtime.errors import ConfigError, ScimflowError
from services.runtime.kafka import CAUGHT_UP, BrokerUnavailableError, create_topics, follow_from_start
from services.runtime.records import error_record
from services.runtime.topics import Topics

__all__ = [
    "AppCallback",
    "ErrorSink",
    "LiveApp",
    "LiveConfig",
    "apply_file_at_start",
    "file_definitions",
    "is_from_file",
    "load_app",
]

log = structlog.get_logger("scimflow.config.live")

Service = Literal["ingest", "mapper", "writer"]


@dataclass(frozen=True)
class LiveApp:
    """One version of one app, ready for a worker to run."""

    name: str
    version: int
    """The version on ``control.config``; 0: the app as the worker's ``--config`` file gives it."""
    app: Application
    loaded: LoadedConfig
    """Where ``app`` came from, its secrets resolved here (``loaded.secret(ref)``) and paths
    relative to the ``--config`` file's folder (``loaded.resolve_path``). For version 0 it is
    the whole file: use ``app``, not ``loaded.config.applications``."""


AppCallback = Callable[[str, LiveApp | None], Awaitable[None] | None]
"""Called with the app's new version, or None when it is removed. Raising rejects the version."""
ErrorSink = Callable[[ErrorRecord], Awaitable[None]]


@dataclass(frozen=True)
class _Candidate:
    """A version read from the topic: its record, or why it could not be decoded."""

    name: str
    version: int
    record: ConfigVersion | None
    problem: str = ""


class LiveConfig:
    """The apps one worker runs, following ``control.config``. Run :meth:`run` as a task."""

    def __init__(self, bootstrap: str, topics: Topics, base: LoadedConfig, *, service: Service,
                 on_error: ErrorSink | None = None, retry_after: float = 5.0) -> None:
        self.bootstrap = bootstrap
        self.topic = topics.config
        self.base = base
        self.service: Service = service
        self.caught_up = asyncio.Event()
        """Set once the topic was read to the end offsets it had when :meth:`run` began."""
        self.apps: dict[str, LiveApp] = {a.name: LiveApp(a.name, 0, a, base)
                                         for a in base.config.applications}
        """What runs now, by app name. Read it; only LiveConfig changes it."""
        self._definitions: dict[str, Definition] = file_definitions(base)
        self._on_error = on_error
        self._callbacks: list[AppCallback] = []
        self._retry_after = retry_after
        self._seen: set[tuple[str, int]] = set()
        self._highest: dict[str, int] = {}
        self._pending: dict[str, list[_Candidate]] = {}
        for live in self.apps.values():
            metrics.CONFIG_VERSION.labels(service=service, app=live.name).set(0)

    def on_app(self, callback: AppCallback) -> None:
        """Call ``callback(name, live)`` whenever what runs for an app changes: a new
        definition (``live``) or a removal (None). A new version whose definition is the
        one running (a rollback to it) changes only ``apps[name].version``: no call."""
        self._callbacks.append(callback)

    async def run(self) -> None:
        """Follow the topic for ever; a broker failure is logged and the topic read again
        (versions already taken are recognised and skipped)."""
        while True:
            try:
                await self._follow()
            except BrokerUnavailableError as exc:
                log.warning("cannot follow the config topic; retrying", service=self.service,
                            reason=str(exc), retry_in=self._retry_after)
                await asyncio.sleep(self._retry_after)

    async def _follow(self) -> None:
        async for value in follow_from_start(self.bootstrap, self.topic):
            if value is CAUGHT_UP:
                if not self.caught_up.is_set():
                    await self.catch_up()
            else:
                await self.take(value)

    async def take(self, value: bytes) -> None:
        """One record of the topic, in order. Before the catch-up they are gathered; after,
        a new highest version of an app is applied at once."""
        candidate = _decode(value)
        if candidate is None:
            return
        key = (candidate.name, candidate.version)
        if key in self._seen:
            return  # a later record of the same version lost a race: readers ignore it
        self._seen.add(key)
        if candidate.version <= self._highest.get(candidate.name, 0):
            return
        self._highest[candidate.name] = candidate.version
        if not self.caught_up.is_set():
            self._pending.setdefault(candidate.name, []).append(candidate)
            return
        await self._apply(candidate)  # rejected: the last good version keeps running

    async def catch_up(self) -> None:
        """The topic was read to the end offsets it had at the start: run the topic's version
        of every app it names, the newest that loads (and that the callbacks accept), trying
        older ones after a rejection; then set ``caught_up``."""
        pending, self._pending = self._pending, {}
        for candidates in pending.values():
            for candidate in sorted(candidates, key=lambda c: c.version, reverse=True):
                if await self._apply(candidate):
                    break
        self.caught_up.set()
        log.info("config topic read", service=self.service,
                 apps={n: a.version for n, a in sorted(self.apps.items())})

    async def _apply(self, candidate: _Candidate) -> bool:
        """Run ``candidate``; False (and reported) if it is rejected."""
        record, name = candidate.record, candidate.name
        if record is None:
            return await self._reject(candidate, candidate.problem)
        if record.removed:
            await self._remove(name, record.version)
            return True
        definition = record.definition or {}
        running = self.apps.get(name)
        if running is not None and definition == self._definitions.get(name):
            self.apps[name] = replace(running, version=record.version)
            metrics.CONFIG_VERSION.labels(service=self.service, app=name).set(record.version)
            return True
        try:
            live = load_app(name, record.version, definition, self.base,
                            secrets=SERVICE_SECRETS[self.service])
            await self._call(name, live)
        except Exception as exc:  # any failure to load or to take it is a rejection, never fatal
            return await self._reject(candidate, _reason(exc))
        self.apps[name], self._definitions[name] = live, definition
        metrics.CONFIG_VERSION.labels(service=self.service, app=name).set(record.version)
        log.info("app definition now in effect", service=self.service, app=name, version=record.version)
        return True

    async def _remove(self, name: str, version: int) -> None:
        if name not in self.apps:
            return
        try:
            await self._call(name, None)
        except Exception as exc:  # a removal cannot be refused; say what went wrong and go on
            log.warning("removing an app failed in a callback", service=self.service, app=name,
                        reason=_reason(exc))
        del self.apps[name]
        self._definitions.pop(name, None)
        with contextlib.suppress(KeyError):
            metrics.CONFIG_VERSION.remove(self.service, name)
        log.info("app removed", service=self.service, app=name, version=version)

    async def _call(self, name: str, live: LiveApp | None) -> None:
        for callback in self._callbacks:
            result = callback(name, live)
            if inspect.isawaitable(result):
                await result

    async def _reject(self, candidate: _Candidate, reason: str) -> bool:
        running = self.apps.get(candidate.name)
        kept = (f"version {running.version} stays in effect" if running is not None
                else "the app does not run here")
        log.warning("app definition rejected", service=self.service, app=candidate.name,
                    version=candidate.version, reason=reason, kept=kept)
        metrics.CONFIG_REJECTED.labels(service=self.service, app=candidate.name).inc()
        metrics.ERRORS.labels(service=self.service, error_code="ConfigVersionRejected").inc()
        if self._on_error is not None:
            record = error_record(
                self.service, "ConfigVersionRejected",
                f"app {candidate.name!r} version {candidate.version} cannot run in {self.service}: "
                f"{reason}; {kept}",
                "Fix the definition and apply a new version (scimflow apply / PUT /apps/{app}/config), "
                "or roll back; check that every secret it names resolves in this worker.",
                app=candidate.name)
            try:
                await self._on_error(record)
            except Exception as exc:  # the errors topic is down too: the log has it
                log.warning("cannot publish the error record", reason=str(exc))
        return False


def _reason(exc: Exception) -> str:
    # ConfigError.reason is the message without the (temporary) file name; never a secret
    # value. Its paths are the definition's own ($ is the app), as the admin API shows them.
    if isinstance(exc, ConfigError):
        return exc.reason.replace("$.applications[0]", "$")
    return f"{type(exc).__name__}: {exc}"


_config_versions = decoder("control.config")


def _decode(value: bytes) -> _Candidate | None:
    """A version from the topic; one it cannot decode is named from its JSON if it can be."""
    try:
        record = _config_versions.decode(value)
    except (msgspec.DecodeError, msgspec.ValidationError, TypeError) as exc:
        return _undecodable(value, str(exc))
    if record.kind != "app":
        return None  # kind "source": sources are restarted by ingest's own file for now
    return _Candidate(record.name, record.version, record)


def _undecodable(value: bytes, problem: str) -> _Candidate | None:
    with contextlib.suppress(msgspec.DecodeError):
        data = msgspec.json.decode(value)
        if isinstance(data, dict) and data.get("kind") == "app" and isinstance(data.get("name"), str) \
                and isinstance(data.get("version"), int):
            return _Candidate(data["name"], data["version"], None,
                              f"cannot read this record (written by a newer scimflow?): {problem}")
    log.warning("config record skipped: not a definition this scimflow can read", reason=problem)
    return None


# -- loading one definition -----------------------------------------------------------------

def load_app(name: str, version: int, definition: Definition, base: LoadedConfig, *,
             secrets: SecretScope = "targets") -> LiveApp:
    """Load one app's definition from the topic as a worker runs it: validated as
    ``scimflow validate`` validates a file (``${VAR}`` expanded here), relative paths and
    ``file:`` secrets against the folder of ``base`` (the worker's ``--config``), secrets
    resolved here. ConfigError says what is wrong (never a secret's value)."""
    if definition.get("name", name) != name:
        raise ConfigError(f"the definition names app {definition.get('name')!r}, not {name!r}")
    with tempfile.TemporaryDirectory(prefix="scimflow-live-") as folder:
        path = Path(folder) / "app.json"
        path.write_text(json.dumps({"applications": [{**definition, "name": name}],
                                    "sources": [_PLACEHOLDER_SOURCE]}), encoding="utf-8")
        loaded = load_config(path, resolve_secrets=False)
    config = msgspec.structs.replace(loaded.config, sources=base.config.sources)
    where = str(Path(base.file).parent / f"control.config[app {name} v{version}]")
    rebased = LoadedConfig(config=config, file=where, lines=loaded.lines, secrets=dict(base.secrets))
    resolve_secrets(rebased, "targets" if secrets in ("all", "targets") else "none")
    return LiveApp(name, version, config.applications[0], rebased)


_PLACEHOLDER_SOURCE = {"type": "file", "name": "placeholder", "path": "placeholder.yaml"}


def file_definitions(loaded: LoadedConfig) -> dict[str, Definition]:
    """The apps of a config file as the YAML gives them (``${VAR}`` unexpanded), by name:
    what the topic holds for them once they are applied."""
    path = Path(loaded.file)
    if not path.is_file():
        return {}
    return read_file(path, load=lambda _: loaded).apps


# -- GitOps: the --config file at start ------------------------------------------------------

_FROM_FILE = "applied from "
_AT_START = " at start"


def is_from_file(version: ConfigVersion) -> bool:
    """Whether ``version`` was written by :func:`apply_file_at_start` (its comment says so)."""
    return version.comment.startswith(_FROM_FILE) and version.comment.endswith(_AT_START)


def apply_file_at_start(bootstrap: str, topics: Topics, loaded: LoadedConfig, *, service: str,
                        attempts: int = 5) -> list[ConfigVersion]:
    """Write the apps of the ``--config`` file to ``control.config`` where the file changed.

    An app is written when the file's definition differs from the last version that was
    itself applied from a file, and from what is live: an edit made through the API or the
    CLI survives a restart with an unchanged file; a changed file (a GitOps commit) wins.
    Apps on the topic that the file does not name are left alone (no prune). Workers that
    start together race; the store's read-back sees the loser, which plans again and finds
    the winner's version. Returns the versions written by this call."""
    definitions = file_definitions(loaded)
    if not definitions:
        return []
    create_topics(bootstrap, [s for s in topics.specs() if s.name == topics.config])
    store = ConfigStore(bootstrap, topics)
    author = f"scimflow-{service}@{socket.gethostname()}"
    comment = f"{_FROM_FILE}{loaded.file}{_AT_START}"
    try:
        return [v for name, d in definitions.items()
                if (v := _apply_one(store, name, d, author, comment, attempts)) is not None]
    finally:
        store.close()


def _apply_one(store: ConfigStore, name: str, definition: Definition, author: str, comment: str,
               attempts: int) -> ConfigVersion | None:
    for _ in range(attempts):
        history = store.history(name)
        if not _needs_write(history, definition):
            return None
        expected = history[-1].version if history else 0
        try:
            written = store.write("app", name, definition, expected=expected, author=author, comment=comment)
        except VersionConflictError:
            continue  # another worker (or an admin) wrote first: plan again on what is there now
        log.info("app applied from the config file", app=name, version=written.version, author=author)
        return written
    raise ScimflowError(f"could not apply app {name!r} from the config file: the topic kept changing")


def _needs_write(history: Iterable[ConfigVersion], definition: Definition) -> bool:
    versions = list(history)
    from_file = [v for v in versions if is_from_file(v)]
    if from_file and from_file[-1].definition == definition:
        return False  # the file did not change since it was applied: later edits stand
    current = versions[-1] if versions else None
    return current is None or current.removed or current.definition != definition
