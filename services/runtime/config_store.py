"""Applications as data: versioned app and source definitions on the ``control.config`` topic.

What the CLI (``scimflow apply|get|history|rollback``) and the admin API
(``/apps/{app}/config``) share: read the live definitions and one app's history, validate
a definition the way ``scimflow validate`` does, diff two versions, and write a new version
with optimistic concurrency. The record format, keys and the rules for "current version"
and "removal" are in :mod:`schemas.config`.

Concurrency. A write names the version it was based on (``expected``); if the topic holds
a newer one, :class:`VersionConflictError` says which. Kafka has no compare-and-set, so two
writers (two admin replicas, or the CLI and the API) can both read version 3 and both write
a version 4. The topic has one partition and the first record of a version wins (what every
reader follows): after its write, a writer reads the topic back up to its own record and,
if another version 4 came first, raises the conflict. Its own record stays in the log,
ignored. So nothing is lost and nobody is told "saved" for a version that did not win; the
only cost is that loser record.
"""

from __future__ import annotations

import json
import tempfile
import types
import typing
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Literal

import msgspec
import structlog
import yaml

from schemas.codecs import decoder, encode
from schemas.config import ConfigVersion, DefinitionKind
from services.runtime.config import Application, LoadedConfig, load_config
from services.runtime.errors import ConfigError, ScimflowError
from services.runtime.kafka import plain_producer, read_records
from services.runtime.topics import Topics

__all__ = [
    "Change",
    "ConfigStore",
    "Definition",
    "DefinitionError",
    "FileDefinitions",
    "Loader",
    "Planned",
    "Problem",
    "VersionConflictError",
    "default_loader",
    "diff",
    "load_app",
    "read_file",
    "render_diff",
    "validate_app",
]

log = structlog.get_logger("scimflow.config")

Definition = dict[str, Any]
Loader = Callable[[Path], LoadedConfig]
"""Loads and validates a config file; ConfigError names the file, line and JSON path."""

default_loader: Loader = partial(load_config, resolve_secrets=False)
"""Secrets are references checked for form only: the machine that writes a definition need
not hold the secrets; each worker resolves them in its own environment."""

# An app is validated inside a config, which needs a source; apps do not refer to sources.
_PLACEHOLDER_SOURCE = {"type": "file", "name": "placeholder", "path": "placeholder.yaml"}
_AT = " (at "


# -- errors ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Problem:
    """One thing wrong with a definition: where (JSON path, and file:line for a file), what."""

    path: str
    message: str
    file: str | None = None
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}: " if self.file and self.line else ""
        return f"{where}{self.message} (at {self.path})"


class DefinitionError(ScimflowError):
    """A definition is invalid; it is refused whole. ``problems`` lists every one found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("invalid definition: " + "; ".join(str(p) for p in problems))


class VersionConflictError(ScimflowError):
    """The definition changed since the version the write was based on."""

    def __init__(self, kind: str, name: str, expected: int | None, current: int) -> None:
        self.kind, self.name, self.expected, self.current = kind, name, expected, current
        super().__init__(f"{kind} {name!r} is at version {current}, not {expected}: "
                         "read it again, then retry with that version")


# -- validation -----------------------------------------------------------------------------

@dataclass(frozen=True)
class FileDefinitions:
    """A config file's apps and sources: validated, and as the YAML gives them."""

    loaded: LoadedConfig
    apps: dict[str, Definition]
    sources: dict[str, Definition]


def read_file(path: Path, *, load: Loader = default_loader) -> FileDefinitions:
    """Validate the whole file with ``load`` (ConfigError with file:line, as ``validate``),
    then take each app and source as written: ``${VAR}`` unexpanded, secrets as references."""
    loaded = load(path)
    raw = _plain(yaml.safe_load(path.read_text(encoding="utf-8")))
    return FileDefinitions(loaded, {a["name"]: a for a in raw["applications"]},
                           {s["name"]: s for s in raw["sources"]})


def validate_app(name: str, definition: Any, *, load: Loader = default_loader) -> Definition:
    """The app definition, checked as ``scimflow validate`` checks an app in a file; raises
    DefinitionError with every problem found and its JSON path (``$`` is the definition).

    ``load`` decides (the same loader as for files); a walk over the types adds the other
    problems it can see, since the loader stops at the first."""
    if not isinstance(definition, dict):
        raise DefinitionError([Problem("$", "expected an object (the application's definition)")])
    plain: Definition = dict(_plain({"name": name, **definition}))
    problems = [] if plain["name"] == name else [
        Problem("$.name", f"expected {name!r}, the application named in the request")]
    try:
        load_app(plain, load)
    except ConfigError as exc:
        problems.extend(structural_problems(plain, Application))
        first = _problem(exc, prefix="$.applications[0]")
        if all(p.path != first.path for p in problems):
            problems.insert(0, first)
    if problems:
        raise DefinitionError(problems)
    return plain


def load_app(definition: Definition, load: Loader = default_loader) -> LoadedConfig:
    """One app definition as a config of its own (with a placeholder source: apps do not
    refer to sources), through ``load``: what a CLI compiles to preview a live version."""
    with tempfile.TemporaryDirectory(prefix="scimflow-app-") as folder:
        path = Path(folder) / "app.yaml"
        path.write_text(json.dumps({"applications": [definition], "sources": [_PLACEHOLDER_SOURCE]},
                                   indent=1), encoding="utf-8")
        return load(path)


def _problem(exc: ConfigError, *, prefix: str) -> Problem:
    message, at, path = exc.reason.rpartition(_AT)
    if not at:
        return Problem("$", exc.reason)
    path = path.removesuffix(")")
    if path.startswith(prefix):
        path = "$" + path.removeprefix(prefix)
    return Problem(path, message)


def structural_problems(value: Any, tp: Any, path: str = "$") -> list[Problem]:
    """Every type problem of ``value`` against ``tp`` (a config Struct), one per value: each
    field and list item is checked on its own, so one mistake does not hide the next."""
    return list(_walk(value, tp, path))


def _walk(value: Any, tp: Any, path: str) -> Iterator[Problem]:
    struct = _struct_of(tp, value)
    if struct is not None and isinstance(value, dict):
        yield from _walk_struct(value, struct, path)
    elif typing.get_origin(tp) is list and isinstance(value, list):
        for i, item in enumerate(value):
            yield from _walk(item, typing.get_args(tp)[0], f"{path}[{i}]")
    elif isinstance(value, str) and "${" in value:
        return  # expanded from the environment by the loader; it judges the result
    else:
        try:
            msgspec.convert(value, tp)
        except msgspec.ValidationError as exc:
            text, _, at = str(exc).partition(" - at `$")
            yield Problem(path + at.removesuffix("`"), text)


def _walk_struct(value: dict[str, Any], struct: type[msgspec.Struct], path: str) -> Iterator[Problem]:
    fields = {f.encode_name: f for f in msgspec.structs.fields(struct)}
    for key in value:
        if key not in fields:
            yield Problem(f"{path}.{key}", f"unknown field `{key}`")
    for key, info in fields.items():
        if key in value:
            yield from _walk(value[key], info.type, f"{path}.{key}")
        elif info.required:
            yield Problem(path, f"missing required field `{key}`")


def _struct_of(tp: Any, value: Any) -> type[msgspec.Struct] | None:
    """The untagged Struct ``tp`` is (or ``X | None`` holds, for a value that is not None)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and value is not None:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = args[0] if len(args) == 1 else None
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct) and tp.__struct_config__.tag is None:
        return tp
    return None


def _plain(value: Any) -> Any:
    """JSON data only (YAML dates become text), as it will read back from the topic."""
    return msgspec.json.decode(msgspec.json.encode(value, enc_hook=str))


# -- diff -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Change:
    """One difference between two definitions, at a JSON path. List items that carry a
    ``name`` or a ``target`` are addressed by it (``attributes[target=mail]``), so adding
    one mapping is one change, not a shift of every mapping after it."""

    op: Literal["add", "remove", "change"]
    path: str
    old: Any = None
    new: Any = None

    def __str__(self) -> str:
        if self.op == "add":
            return f"+ {self.path}: {_show(self.new)}"
        if self.op == "remove":
            return f"- {self.path}: {_show(self.old)}"
        return f"~ {self.path}: {_show(self.old)} -> {_show(self.new)}"


def diff(old: Any, new: Any, path: str = "$") -> list[Change]:
    """What changed from ``old`` to ``new``: stable (keys in sorted order) and readable."""
    if isinstance(old, dict) and isinstance(new, dict):
        return _diff_dicts(old, new, path)
    if isinstance(old, list) and isinstance(new, list):
        return _diff_lists(old, new, path)
    if old == new and type(old) is type(new):
        return []
    return [Change("change", path, old, new)]


def render_diff(changes: Iterable[Change]) -> list[str]:
    return [str(c) for c in changes]


def _diff_dicts(old: dict[str, Any], new: dict[str, Any], path: str) -> list[Change]:
    return _diff_keyed(old, new, lambda key: f"{path}.{key}")


def _diff_keyed(old: dict[str, Any], new: dict[str, Any], where: Callable[[str], str]) -> list[Change]:
    changes: list[Change] = []
    for key in sorted(old.keys() | new.keys()):
        if key not in new:
            changes.append(Change("remove", where(key), old=old[key]))
        elif key not in old:
            changes.append(Change("add", where(key), new=new[key]))
        else:
            changes.extend(diff(old[key], new[key], where(key)))
    return changes


def _diff_lists(old: list[Any], new: list[Any], path: str) -> list[Change]:
    field = _identity(old, new)
    if field is None:
        pairs = enumerate(zip(old, new, strict=False))
        changes = [c for i, (a, b) in pairs for c in diff(a, b, f"{path}[{i}]")]
        changes += [Change("remove", f"{path}[{i}]", old=v) for i, v in enumerate(old) if i >= len(new)]
        return changes + [Change("add", f"{path}[{i}]", new=v) for i, v in enumerate(new) if i >= len(old)]
    before, after = ({item[field]: item for item in items} for items in (old, new))
    changes = _diff_keyed(before, after, lambda key: f"{path}[{field}={key}]")
    if [k for k in before if k in after] != [k for k in after if k in before]:
        changes.append(Change("change", f"{path}#order", [item[field] for item in old],
                              [item[field] for item in new]))
    return changes


def _identity(old: list[Any], new: list[Any]) -> str | None:
    """``name`` or ``target`` if every item of both lists has a unique text value for it."""
    items = old + new
    for field in ("name", "target"):
        if items and all(isinstance(i, dict) and isinstance(i.get(field), str) for i in items) \
                and all(len({i[field] for i in lst}) == len(lst) for lst in (old, new)):
            return field
    return None


def _show(value: Any) -> str:
    return msgspec.json.encode(value, order="sorted").decode()


# -- the store ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Planned:
    """What writing ``definition`` for ``name`` would change (nothing: ``changes`` empty)."""

    kind: DefinitionKind
    name: str
    current: ConfigVersion | None
    definition: Definition
    changes: list[Change]

    @property
    def action(self) -> Literal["create", "update", "unchanged"]:
        if self.current is None or self.current.removed:
            return "create"
        return "update" if self.changes else "unchanged"


class ConfigStore:
    """The definitions on one deployment's ``control.config`` topic. Every read is a fresh
    snapshot of the topic (it holds one record per version: small), so there is no cache to
    go stale between two admin API replicas."""

    def __init__(self, bootstrap: str, topics: Topics, *, producer: Any = None,
                 timeout: float = 30.0) -> None:
        self.bootstrap = bootstrap
        self.topic = topics.config
        self.timeout = timeout
        self._producer = producer

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close()
            self._producer = None

    # reading

    def versions(self, *, upto: int | None = None) -> list[ConfigVersion]:
        """Every version (the first record of each), in the order written."""
        seen: set[tuple[str, str, int]] = set()
        found: list[ConfigVersion] = []
        for record in self._records(upto):
            key = (record.kind, record.name, record.version)
            if key not in seen:  # a later record of the same version lost a race
                seen.add(key)
                found.append(record)
        return found

    def latest(self, kind: DefinitionKind = "app") -> dict[str, ConfigVersion]:
        """The newest version of every name of ``kind``, removals included."""
        latest: dict[str, ConfigVersion] = {}
        for v in self.versions():
            if v.kind == kind and (v.name not in latest or v.version > latest[v.name].version):
                latest[v.name] = v
        return latest

    def current(self, kind: DefinitionKind = "app") -> dict[str, ConfigVersion]:
        """The live definitions of ``kind`` by name (removed ones are not live), sorted."""
        return {n: v for n, v in sorted(self.latest(kind).items()) if not v.removed}

    def history(self, name: str, kind: DefinitionKind = "app") -> list[ConfigVersion]:
        return sorted((v for v in self.versions() if v.kind == kind and v.name == name),
                      key=lambda v: v.version)

    def version(self, name: str, number: int, kind: DefinitionKind = "app") -> ConfigVersion | None:
        return next((v for v in self.history(name, kind) if v.version == number), None)

    # planning and writing

    def plan(self, kind: DefinitionKind, definitions: dict[str, Definition]) -> list[Planned]:
        """What writing each definition would change against what is live now."""
        latest = self.latest(kind)
        plans = []
        for name, definition in definitions.items():
            current = latest.get(name)
            live = current.definition if current is not None and not current.removed else {}
            plans.append(Planned(kind, name, current, definition, diff(live, definition)))
        return plans

    def write(self, kind: DefinitionKind, name: str, definition: Definition | None, *,
              expected: int | None, author: str, comment: str = "",
              rollback_of: int | None = None) -> ConfigVersion:
        """Write the next version of ``name`` (``definition`` None: its removal).

        ``expected`` is the version this change was based on (0: none yet; None: whatever
        is current). Raises VersionConflictError if the topic has another version, before
        writing or (a race) when reading back."""
        now = self.latest(kind).get(name)
        current = now.version if now is not None else 0
        if expected is not None and expected != current:
            raise VersionConflictError(kind, name, expected, current)
        record = ConfigVersion(kind=kind, name=name, version=current + 1, definition=definition,
                               removed=definition is None, author=author, at=datetime.now(UTC),
                               comment=comment, write_id=uuid.uuid4().hex[:12], rollback_of=rollback_of)
        offset = self._send(record)
        winner = next(v for v in self.versions(upto=offset + 1)
                      if (v.kind, v.name, v.version) == (kind, name, record.version))
        if winner.write_id != record.write_id:
            log.warning("config write lost a race", kind=kind, name=name, version=record.version,
                        winner=winner.author)
            raise VersionConflictError(kind, name, current, record.version)
        return record

    def _records(self, upto: int | None) -> Iterator[ConfigVersion]:
        dec = decoder("control.config")
        for message in read_records(self.bootstrap, self.topic, timeout=self.timeout):
            if upto is not None and message.offset >= upto:
                continue
            try:
                yield dec.decode(message.value)
            except (msgspec.DecodeError, msgspec.ValidationError, TypeError):
                # Written by a newer scimflow (or not by scimflow): not ours to interpret.
                log.warning("config record skipped", offset=message.offset, key=message.key)

    def _send(self, record: ConfigVersion) -> int:
        if self._producer is None:
            self._producer = plain_producer(self.bootstrap)
        key = f"{record.kind}/{record.name}/{record.version}/{record.write_id}"
        meta = self._producer.send(self.topic, key=key.encode(), value=encode(record)).get(timeout=30)
        return int(meta.offset)
