"""The provisioning config: one YAML file -> msgspec Structs, validated at start-up.

Errors name the file, the line and what was expected::

    examples/demo.yaml:14: Expected `str`, got `int` (at $.applications[0].target.base_url)

Secrets are never written in the file: a secret field holds a reference, ``env:NAME`` or
``file:/path`` (relative paths resolve against the config file's folder), resolved when the
process starts and shown only as ``Secret('env:NAME')``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import msgspec
import yaml

from services.runtime.errors import ConfigError

__all__ = [
    "ActiveDirectorySource",
    "Application",
    "Assignments",
    "AttributeMapping",
    "Config",
    "FileSource",
    "GraphSource",
    "LdapSource",
    "LoadedConfig",
    "OAuth2",
    "ObjectMapping",
    "OperationLimit",
    "OperationLimits",
    "PushSource",
    "Quarantine",
    "RateLimit",
    "Retries",
    "ScopingClause",
    "ScopingFilter",
    "Secret",
    "Source",
    "Target",
    "load_config",
    "resolve_secrets",
]

Name = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=64)]
SecretRef = Annotated[str, msgspec.Meta(pattern=r"^(env|file):\S+$")]


class Secret:
    """A resolved secret. Its value is reachable only through :meth:`reveal`."""

    __slots__ = ("_value", "ref")

    def __init__(self, ref: str, value: str) -> None:
        self.ref = ref
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({self.ref!r})"

    __str__ = __repr__


class _Base(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


Positive = Annotated[float, msgspec.Meta(gt=0)]
Seconds = Annotated[float, msgspec.Meta(gt=0)]
Count = Annotated[int, msgspec.Meta(ge=1)]


class OAuth2(_Base, frozen=True):
    """OAuth2 client credentials (RFC 6749 section 4.4) for a target's admin API."""

    token_url: Annotated[str, msgspec.Meta(pattern=r"^https?://\S+$")]
    client_id: Annotated[str, msgspec.Meta(min_length=1)]
    client_secret: SecretRef
    """Client secret reference: ``env:NAME`` or ``file:/path``."""
    scope: str | None = None


Operation = Literal["create", "update", "delete", "read"]


class OperationLimit(_Base, frozen=True):
    max_requests_per_second: Positive
    """Requests/s of this operation at most, whatever the app's adaptive rate allows."""


class OperationLimits(_Base, frozen=True):
    """Fixed limits per operation, for targets that publish their own (deletes often lower)."""

    create: OperationLimit | None = None
    """POST (a ``/Bulk`` request counts as one create)."""
    update: OperationLimit | None = None
    """PATCH and PUT."""
    delete: OperationLimit | None = None
    read: OperationLimit | None = None
    """GET: lookups, reads before a PUT, discovery."""


class RateLimit(_Base, frozen=True):
    """The most scimflow asks of one target. Within it the rate adapts: cut on 429s to 0.7
    of what the target let through, then grown back along a cubic curve towards and beyond
    that rate (the AWS SDKs' adaptive mode); random 429s that a lower rate does not cure are
    learnt as noise and do not lower it."""

    max_concurrency: Count = 16
    """Target calls in flight at once for this app."""
    max_requests_per_second: Positive = 500.0
    """All requests of this app, per second at most (the adaptive rate starts here)."""
    operations: OperationLimits = OperationLimits()

    def per_operation(self) -> dict[Operation, float]:
        """The configured requests/s of each operation that has one."""
        ops = self.operations
        limits: dict[Operation, OperationLimit | None] = {
            "create": ops.create, "update": ops.update, "delete": ops.delete, "read": ops.read}
        return {op: limit.max_requests_per_second for op, limit in limits.items() if limit is not None}


class Retries(_Base, frozen=True):
    """Transient failures (network, timeouts, 429, 5xx): exponential backoff with jitter."""

    attempts: Count = 5
    """Attempts of one target call before the object waits for a delayed retry."""
    escrow_after: Count = 10
    """Failed attempts of one object before it is escrowed: reported, retried on later cycles."""
    initial_wait: Positive = 0.5
    max_wait: Positive = 60.0


class Quarantine(_Base, frozen=True):
    """An app whose recent calls mostly fail backs off as a whole until a probe succeeds."""

    failure_ratio: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.8
    min_calls: Count = 20
    """Calls in the window before the ratio counts."""
    window: Positive = 300.0
    """Seconds of recent calls the ratio looks at."""
    consecutive_failures: Count = 50
    """Calls in a row that fail quarantine the app at once, whatever the ratio: an outage
    after hours of good calls would otherwise take most of ``window`` to show."""
    probe_initial: Positive = 5.0
    """Seconds to the first probe once quarantined; doubles up to ``probe_max``."""
    probe_max: Positive = 600.0


class Target(_Base, frozen=True):
    """How to reach an application's SCIM 2.0 API."""

    base_url: Annotated[str, msgspec.Meta(pattern=r"^https?://\S+$")]
    token: SecretRef | None = None
    """Bearer token reference: ``env:NAME`` or ``file:/path``. Or give ``oauth2``."""
    oauth2: OAuth2 | None = None
    dialect: Literal["rfc7644", "entra"] = "rfc7644"
    """``rfc7644``: strict RFC 7644; ``entra``: the requests Entra's SCIM client sends."""
    update_method: Literal["patch", "put"] = "patch"
    """PATCH changed attributes (falls back to PUT on 405/501), or always PUT."""
    max_patch_operations: Count = 100
    """Most operations (or group members) in one PATCH request; larger changes are chunked."""
    page_size: Count | None = None
    """``count`` asked for when listing; unset lets the target choose."""
    bulk: Literal["auto", "references", "off"] = "auto"
    """``auto``: creates, updates and member changes go out in ``/Bulk`` requests when the
    target declares bulk support (``/ServiceProviderConfig``); an operation that refers to
    another's new resource (``bulkId:``, a group and its new members) goes in the next
    request, with the real id. ``references``: the same, and such operations travel in one
    request for the target to resolve (RFC 7644 §3.7.2), for targets known to resolve them
    (scim2-server does; SCIMMY 1.3 keeps all but one reference as literal text).
    ``off``: one request per write."""
    timeout: Positive = 10.0
    max_connections: Count = 32
    rate_limit: RateLimit = RateLimit()
    retries: Retries = Retries()
    quarantine: Quarantine = Quarantine()


class AttributeMapping(_Base, frozen=True):
    """One target attribute and where its value comes from (Entra's mapping types)."""

    target: str
    type: Literal["direct", "constant", "expression", "none"] = "direct"
    source: str | None = None
    """Source attribute (``direct``)."""
    value: Any = None
    """The constant (``constant``)."""
    expression: str | None = None
    """Entra expression (``expression``)."""
    default: Any = None
    """Default value if null; applied only when the object is created."""
    apply: Literal["always", "on_create"] = "always"
    matching: int | None = None
    """Matching precedence (1 first); set on the attributes used to find existing objects."""
    reference: Literal["user", "group"] | None = None
    """The value is the source id of another object (e.g. ``manager``); the writer writes
    that object's target id, deferring until it is provisioned."""


class ScopingClause(_Base, frozen=True):
    """One clause of an Entra scoping filter: ``{attribute: dept, operator: EQUALS, value: Sales}``."""

    attribute: str
    operator: str
    value: str | int | bool | None = None


class ScopingFilter(_Base, frozen=True):
    """Clauses that must all hold (AND); an object is in scope if any filter holds (OR)."""

    clauses: list[ScopingClause]
    name: str | None = None


class ObjectMapping(_Base, frozen=True):
    enabled: bool = True
    scoping_filters: list[ScopingFilter] = []
    actions: list[Literal["create", "update", "delete"]] = msgspec.field(
        default_factory=lambda: ["create", "update", "delete"])
    attributes: list[AttributeMapping] = []


class Mappings(_Base, frozen=True):
    user: ObjectMapping
    group: ObjectMapping | None = None


class Assignments(_Base, frozen=True):
    users: list[str] = []
    groups: list[str] = []
    expand_nested_groups: bool = False
    """Members of groups nested (at any depth) in an assigned group are in scope too."""


class Application(_Base, frozen=True):
    """One target application (Entra's enterprise app with automatic provisioning)."""

    name: Name
    target: Target
    mappings: Mappings
    mode: Literal["automatic", "manual"] = "automatic"
    status: Literal["on", "off"] = "on"
    scope: Literal["assigned", "all"] = "assigned"
    """``assigned``: assigned users and members of assigned groups; ``all``: everyone."""
    assignments: Assignments = Assignments()
    skip_out_of_scope_deletions: bool = False
    deletion_threshold: Annotated[int, msgspec.Meta(ge=0)] = 500
    """Accidental-deletion prevention: more disables + deletes than this in one cycle are
    held as ``stagedDelete`` until an operator allows them (0 turns the check off)."""
    disabled_attribute: str = "accountEnabled"
    """Source attribute that says whether the account is enabled (false -> disable)."""
    dry_run: bool = False
    """Compute and report every action (status ``dryRun``) but write nothing to the target."""
    drift: Literal["repair", "report", "ignore"] = "repair"
    """What a full scan does with a managed object that differs in the target from what
    scimflow wrote (edited, disabled or deleted there directly): ``repair`` writes it back
    and reports ``repair``; ``report`` only reports; ``ignore`` compares with what scimflow
    last wrote, as Entra does."""


class FileSource(_Base, frozen=True, tag="file", tag_field="type"):
    """A YAML, JSON or JSON Lines file of users and groups; the embedded demo source (JSON
    Lines is read incrementally, see docs/sources.md)."""

    name: Name
    path: str
    full_scan_interval: Seconds = 600.0
    poll_interval: Seconds = 0.25


LdapFilter = Annotated[str, msgspec.Meta(pattern=r"^\(.*\)$")]


class LdapSource(_Base, frozen=True, tag="ldap", tag_field="type"):
    """An LDAP directory read with RFC 4533 syncrepl (OpenLDAP ``syncprov``); see docs/sources.md.

    The optional search settings left unset (``None``) take the LDAP source's own defaults
    (the ``DEFAULT_*`` constants of ``services/ingest/sources/ldap/connection.py``), documented
    in docs/sources.md.
    """

    name: Name
    url: Annotated[str, msgspec.Meta(pattern=r"^(?i:ldaps?|ldapi)://\S*$")]
    base_dn: Annotated[str, msgspec.Meta(min_length=1)]
    bind_dn: Annotated[str, msgspec.Meta(min_length=1)]
    password: SecretRef
    """Bind password reference: ``env:NAME`` or ``file:/path``."""
    user_filter: LdapFilter | None = None
    group_filter: LdapFilter | None = None
    attributes: Annotated[list[str], msgspec.Meta(min_length=1)] | None = None
    group_classes: Annotated[list[str], msgspec.Meta(min_length=1)] | None = None
    member_attributes: Annotated[list[str], msgspec.Meta(min_length=1)] | None = None
    timeout: Seconds = 10.0
    """Seconds to connect, and for each search page."""
    reconnect_initial: Seconds = 0.2
    reconnect_max: Seconds = 30.0
    full_scan_interval: Seconds = 600.0


HttpUrl = Annotated[str, msgspec.Meta(pattern=r"^https?://\S+$")]


class GraphSource(_Base, frozen=True, tag="graph", tag_field="type"):
    """Microsoft Entra ID read through Microsoft Graph delta queries (``/users/delta``,
    ``/groups/delta``) with app-only client credentials; see docs/sources.md."""

    name: Name
    tenant_id: Annotated[str, msgspec.Meta(min_length=1)]
    client_id: Annotated[str, msgspec.Meta(min_length=1)]
    client_secret: SecretRef
    """Client secret reference: ``env:NAME`` or ``file:/path``."""
    graph_url: HttpUrl = "https://graph.microsoft.com/v1.0"
    token_url: HttpUrl | None = None
    """Default: ``https://login.microsoftonline.com/{tenant_id}/oauth2/v2.0/token``."""
    scope: str = "https://graph.microsoft.com/.default"
    user_attributes: Annotated[list[str], msgspec.Meta(min_length=1)] | None = None
    """User properties asked for with ``$select`` (``id`` is always added); unset: ``DEFAULT_USER_ATTRIBUTES``
    of ``services/ingest/sources/graph.py``."""
    group_attributes: Annotated[list[str], msgspec.Meta(min_length=1)] | None = None
    """Group properties asked for with ``$select`` (``id`` and ``members`` are always added); unset:
    ``DEFAULT_GROUP_ATTRIBUTES`` of ``services/ingest/sources/graph.py``."""
    page_size: Annotated[int, msgspec.Meta(ge=1, le=999)] | None = None
    """Objects per page (``Prefer: odata.maxpagesize``); unset lets Graph choose."""
    poll_interval: Seconds = 5.0
    """Seconds between two rounds of the deltaLinks."""
    timeout: Seconds = 30.0
    max_retries: Annotated[int, msgspec.Meta(ge=0)] = 5
    """Attempts after a 429/503/5xx (each after ``Retry-After``, or a backoff) before giving up."""
    full_scan_interval: Seconds = 600.0


PushFormat = Literal["scim", "bulk", "directory-change"]


class PushSource(_Base, frozen=True, tag="push", tag_field="type"):
    """An HTTP endpoint in the ingest where an HR system or a script pushes users and groups:
    SCIM 2.0 resources, SCIM BulkRequests and DirectoryChange JSON; see docs/sources.md."""

    name: Name
    token: SecretRef
    """Bearer token the pushing client must send: ``env:NAME`` or ``file:/path``."""
    listen: Annotated[str, msgspec.Meta(pattern=r"^[^\s:]*:[0-9]{1,5}$")] = "127.0.0.1:8085"
    """``host:port`` the endpoint listens on: loopback unless you say otherwise (``0.0.0.0:8085``
    in a pod, where the Service reaches it on the pod's IP)."""
    max_bulk_operations: Annotated[int, msgspec.Meta(ge=1)] = 1000
    max_payload_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 5_000_000


class ActiveDirectorySource(_Base, frozen=True, tag="ad", tag_field="type"):
    """Active Directory read with the DirSync control over LDAP(S); see docs/sources.md."""

    name: Name
    url: Annotated[str, msgspec.Meta(pattern=r"^(?i:ldaps?)://\S*$")]
    base_dn: Annotated[str, msgspec.Meta(min_length=1)]
    bind_dn: Annotated[str, msgspec.Meta(min_length=1)]
    """The account to bind as (a DN or ``user@domain``); it needs "Replicating Directory Changes"."""
    password: SecretRef
    user_filter: LdapFilter = "(&(objectCategory=person)(objectClass=user))"
    group_filter: LdapFilter = "(objectClass=group)"
    attributes: Annotated[list[str], msgspec.Meta(min_length=1)] | None = None
    """Unset: ``DEFAULT_ATTRIBUTES`` of ``services/ingest/sources/ad.py``."""
    poll_interval: Seconds = 5.0
    """Seconds between two DirSync searches from the last cookie."""
    timeout: Seconds = 10.0
    reconnect_initial: Seconds = 0.5
    reconnect_max: Seconds = 30.0
    full_scan_interval: Seconds = 600.0


Source = FileSource | LdapSource | GraphSource | PushSource | ActiveDirectorySource


class Config(_Base, frozen=True):
    applications: list[Application]
    sources: list[Source]


@dataclass(frozen=True)
class LoadedConfig:
    """A validated config plus where each of its values came from."""

    config: Config
    file: str
    lines: dict[str, int] = field(default_factory=dict)
    secrets: dict[str, Secret] = field(default_factory=dict)

    def error(self, path: str, message: str) -> ConfigError:
        """A ConfigError for the value at JSON path ``path`` (e.g. ``$.applications[0]``)."""
        return ConfigError(f"{message} (at {path})", file=self.file, line=_line_for(self.lines, path))

    def secret(self, ref: str) -> Secret:
        """The resolved secret; ConfigError if this process did not resolve it (a service
        resolves only the secrets its own work needs)."""
        try:
            return self.secrets[ref]
        except KeyError:
            raise ConfigError(f"secret {ref} is not available to this process (each service "
                              "resolves only the secrets it uses)", file=self.file) from None

    def resolve_path(self, relative: str) -> Path:
        """A path from the config, relative to the config file's folder."""
        p = Path(relative)
        return p if p.is_absolute() else Path(self.file).parent / p

    def application(self, name: str) -> Application:
        for app in self.config.applications:
            if app.name == name:
                return app
        known = ", ".join(a.name for a in self.config.applications)
        raise ConfigError(f"no application named {name!r} (known: {known})", file=self.file)


SecretScope = Literal["all", "targets", "sources", "none"]
"""Which secrets a process resolves: each Deployment gets only the Secrets it uses (the
writer the targets' credentials, ingest the sources'), so each resolves only those."""

SERVICE_SECRETS: dict[str, SecretScope] = {
    "ingest": "sources", "mapper": "none", "writer": "targets", "admin": "targets"}


def load_config(path: str | Path, *, resolve_secrets: bool = True,
                secrets: SecretScope = "all") -> LoadedConfig:
    """Read, parse and validate the config file; raise ConfigError naming file and line."""
    file = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config: {exc.strerror}", file=file) from exc
    text = _text(raw, file)
    try:
        data, lines = _parse_yaml(text, file)
    except ConfigError as exc:
        if exc.file is None:
            raise ConfigError(exc.reason, file=file, line=exc.line) from None
        raise
    try:
        config = msgspec.convert(data, Config)
    except msgspec.ValidationError as exc:
        raise _validation_error(str(exc), file, lines) from None
    loaded = LoadedConfig(config=config, file=file, lines=lines)
    _check(loaded)
    if resolve_secrets:
        loaded.secrets.update(_resolve_secrets(loaded, secrets))
    return loaded


def _text(raw: bytes, file: str) -> str:
    """The file as text; a binary or non-UTF-8 file is a ConfigError naming where it breaks."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"not UTF-8 text: byte 0x{raw[exc.start]:02x} at offset {exc.start} "
                          "(a config is a UTF-8 YAML file)", file=file, line=line) from None


MAX_VALUES = 100_000
"""Most values (scalars, mappings, lists) a config may expand to: far above any real config
(a thousand apps of a hundred mappings), and a YAML alias bomb stops here instead of
exhausting memory."""


def _parse_yaml(text: str, file: str) -> tuple[Any, dict[str, int]]:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else None
        raise ConfigError(f"invalid YAML: {exc.problem}", file=file, line=line) from None
    except yaml.reader.ReaderError as exc:
        # Control characters (e.g. NUL in a binary file that happens to be valid UTF-8).
        line = text.count("\n", 0, exc.position) + 1
        raise ConfigError(f"invalid YAML: character {exc.character!r} at offset {exc.position} "
                          "is not allowed in YAML", file=file, line=line) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", file=file) from None
    if node is None:
        raise ConfigError("the file is empty; expected a mapping with `applications` and `sources`",
                          file=file, line=1)
    lines: dict[str, int] = {}
    return _to_python(node, "$", lines, _Budget()), lines


class _Budget:
    """Counts the values a document expands to (aliases expand once per use)."""

    def __init__(self) -> None:
        self.left = MAX_VALUES

    def take(self, node: yaml.Node, path: str) -> None:
        self.left -= 1
        if self.left < 0:
            raise ConfigError(f"the file expands to more than {MAX_VALUES:,} values (nested YAML "
                              f"aliases?) (at {path})", line=node.start_mark.line + 1)


def _to_python(node: yaml.Node, path: str, lines: dict[str, int], budget: _Budget) -> Any:
    budget.take(node, path)
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key in out:
                # YAML says keys are unique; PyYAML would let the last one silently win.
                raise ConfigError(f"duplicate key `{key}` (first at line {lines[f'{path}.{key}']}) "
                                  f"(at {path}.{key})", line=key_node.start_mark.line + 1)
            out[key] = _to_python(value_node, f"{path}.{key}", lines, budget)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(n, f"{path}[{i}]", lines, budget) for i, n in enumerate(node.value)]
    # Scalars: let PyYAML's resolver give bool/int/float/null their usual meaning.
    value = _SCALARS.construct_object(node, deep=True)
    # Entra expressions use ${group} in Replace(); they are never environment-expanded.
    if isinstance(value, str) and "${" in value and not path.endswith(".expression"):
        value = _interpolate(value, path, lines)
    return value


_VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")


def _interpolate(value: str, path: str, lines: dict[str, int]) -> str:
    """Expand ``${NAME}`` and ``${NAME:-default}`` from the environment (not for secrets)."""

    def one(match: re.Match[str]) -> str:
        name, default = match.group("name"), match.group("default")
        found = os.environ.get(name, default)
        if found is None:
            raise ConfigError(f"environment variable {name} is not set and has no default "
                              f"(write ${{{name}:-default}}) (at {path})", line=lines[path])
        return found

    return _VAR.sub(one, value)


_SCALARS = yaml.SafeLoader("")
_AT = re.compile(r" - at `(?P<path>\$[^`]*)`$")
_UNKNOWN = re.compile(r"unknown field `(?P<field>[^`]+)`")
_MISSING = re.compile(r"missing required field `(?P<field>[^`]+)`")


def _validation_error(message: str, file: str, lines: dict[str, int]) -> ConfigError:
    match = _AT.search(message)
    path = match.group("path") if match else "$"
    text = _AT.sub("", message)
    unknown = _UNKNOWN.search(text)
    if unknown:
        path = f"{path}.{unknown.group('field')}"
        text = f"unknown field `{unknown.group('field')}`"
    elif _MISSING.search(text):
        text = text.replace("Object missing", "missing")
    return ConfigError(f"{text} (at {path})", file=file, line=_line_for(lines, path))


def _line_for(lines: dict[str, int], path: str) -> int | None:
    while path:
        if path in lines:
            return lines[path]
        cut = max(path.rfind("."), path.rfind("["))
        if cut <= 0:
            break
        path = path[:cut]
    return lines.get("$")


def _check(loaded: LoadedConfig) -> None:
    """Rules msgspec's types cannot say; each error points at the offending value."""
    cfg = loaded.config
    _unique(loaded, [a.name for a in cfg.applications], "$.applications", "application")
    _unique(loaded, [s.name for s in cfg.sources], "$.sources", "source")
    if not cfg.sources:
        raise loaded.error("$.sources", "expected at least one source")
    for i, source in enumerate(cfg.sources):
        if isinstance(source, LdapSource | ActiveDirectorySource):
            _check_ldap_source(loaded, source, f"$.sources[{i}]")
    _check_push_ports(loaded)
    for i, app in enumerate(cfg.applications):
        _check_no_userinfo(loaded, app.target.base_url, f"$.applications[{i}].target.base_url")
        if app.target.oauth2 is not None:
            _check_no_userinfo(loaded, app.target.oauth2.token_url,
                               f"$.applications[{i}].target.oauth2.token_url")
        _check_rate_limit(loaded, app.target.rate_limit, f"$.applications[{i}].target.rate_limit")
        if (app.target.token is None) == (app.target.oauth2 is None):
            raise loaded.error(f"$.applications[{i}].target",
                               "expected exactly one of `token` (bearer) and `oauth2` (client credentials)")
        _check_object_mapping(loaded, app.mappings.user, f"$.applications[{i}].mappings.user")
        if app.mappings.group is not None:
            _check_object_mapping(loaded, app.mappings.group, f"$.applications[{i}].mappings.group")


def _check_no_userinfo(loaded: LoadedConfig, url: str, path: str) -> None:
    # Credentials in a URL end up in logs and errors, and the target never sees them as
    # auth: scimflow sends `token` or `oauth2`. The value itself is not repeated here.
    if "@" in urlsplit(url).netloc:
        raise loaded.error(path, "expected a URL without credentials (`user:pass@`): give them "
                                 "as `token` (a bearer token reference) or `oauth2`")


def _check_rate_limit(loaded: LoadedConfig, limit: RateLimit, path: str) -> None:
    for op, rate in limit.per_operation().items():
        if rate > limit.max_requests_per_second:
            raise loaded.error(f"{path}.operations.{op}.max_requests_per_second",
                               f"expected at most the app's max_requests_per_second "
                               f"({limit.max_requests_per_second:g}): it caps every operation")


def _check_push_ports(loaded: LoadedConfig) -> None:
    seen: set[str] = set()
    for i, source in enumerate(loaded.config.sources):
        if isinstance(source, PushSource):
            if source.listen in seen:
                raise loaded.error(f"$.sources[{i}].listen",
                                   f"another push source already listens on {source.listen}")
            seen.add(source.listen)


def _check_ldap_source(loaded: LoadedConfig, source: LdapSource | ActiveDirectorySource, path: str) -> None:
    if source.reconnect_max < source.reconnect_initial:
        raise loaded.error(f"{path}.reconnect_max",
                           f"expected at least reconnect_initial ({source.reconnect_initial:g})")
    for key in ("user_filter", "group_filter"):
        value: str | None = getattr(source, key)
        if value is not None and value.count("(") != value.count(")"):
            raise loaded.error(f"{path}.{key}", f"unbalanced parentheses in LDAP filter {value!r}")


def _unique(loaded: LoadedConfig, names: list[str], path: str, what: str) -> None:
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name in seen:
            raise loaded.error(f"{path}[{i}].name", f"duplicate {what} name {name!r}")
        seen.add(name)


def _check_object_mapping(loaded: LoadedConfig, mapping: ObjectMapping, path: str) -> None:
    targets: set[str] = set()
    for j, attr in enumerate(mapping.attributes):
        here = f"{path}.attributes[{j}]"
        needed = {"direct": "source", "constant": "value", "expression": "expression"}.get(attr.type)
        if needed is not None and getattr(attr, needed) is None:
            raise loaded.error(here, f"a `{attr.type}` mapping needs `{needed}`")
        if attr.target in targets:
            raise loaded.error(f"{here}.target", f"target attribute {attr.target!r} is mapped twice")
        targets.add(attr.target)
    if mapping.enabled and not any(a.matching is not None for a in mapping.attributes):
        raise loaded.error(f"{path}.attributes",
                           "expected at least one attribute with `matching: <precedence>` "
                           "to find existing objects in the target")


def _secret_refs(loaded: LoadedConfig, scope: SecretScope = "all") -> Iterator[tuple[str, str]]:
    if scope in ("all", "targets"):
        yield from _target_refs(loaded)
    if scope in ("all", "sources"):
        yield from _source_refs(loaded)


def _target_refs(loaded: LoadedConfig) -> Iterator[tuple[str, str]]:
    for i, app in enumerate(loaded.config.applications):
        if app.target.token is not None:
            yield f"$.applications[{i}].target.token", app.target.token
        if app.target.oauth2 is not None:
            yield f"$.applications[{i}].target.oauth2.client_secret", app.target.oauth2.client_secret


def _source_refs(loaded: LoadedConfig) -> Iterator[tuple[str, str]]:
    for i, source in enumerate(loaded.config.sources):
        if isinstance(source, LdapSource | ActiveDirectorySource):
            yield f"$.sources[{i}].password", source.password
        elif isinstance(source, GraphSource):
            yield f"$.sources[{i}].client_secret", source.client_secret
        elif isinstance(source, PushSource):
            yield f"$.sources[{i}].token", source.token


def resolve_secrets(loaded: LoadedConfig, scope: SecretScope = "all", *, missing_ok: bool = False) -> None:
    """Resolve the secret references (of ``scope``) ``loaded`` does not hold yet, in this
    process's environment (``file:`` relative to ``loaded.file``'s folder); ConfigError names
    the one that does not resolve, unless ``missing_ok`` (the admin API: a target secret its
    pod lacks makes test-connection say so, nothing else)."""
    for path, ref in _secret_refs(loaded, scope):
        if ref not in loaded.secrets:
            try:
                loaded.secrets[ref] = _resolve_one(loaded, path, ref)
            except ConfigError:
                if not missing_ok:
                    raise


def _resolve_secrets(loaded: LoadedConfig, scope: SecretScope = "all") -> dict[str, Secret]:
    return {ref: _resolve_one(loaded, path, ref) for path, ref in _secret_refs(loaded, scope)}


def _resolve_one(loaded: LoadedConfig, path: str, ref: str) -> Secret:
    kind, _, name = ref.partition(":")
    if kind == "env":
        value = os.environ.get(name)
        if value is None:
            raise loaded.error(path, f"environment variable {name} is not set (secret {ref})")
    else:
        try:
            value = loaded.resolve_path(name).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise loaded.error(path, f"cannot read secret file ({exc.strerror})") from None
    return Secret(ref, value)
