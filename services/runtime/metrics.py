"""Every Prometheus metric scimflow exports, defined once.

The workers import the module-level objects and touch them where things happen, e.g.::

    from services.runtime import metrics

    metrics.CHANGES_INGESTED.labels(source="hr-file", operation="upsert").inc()
    metrics.observe_target_request("crm", "POST", 201, 0.084)
    metrics.set_quarantined("crm", "InvalidCredentials")

Conventions (https://prometheus.io/docs/practices/naming/): a ``scimflow_`` prefix,
counters end in ``_total``, durations are histograms in seconds, timestamps are Unix
seconds. Labels come from small, closed sets (application, source, object type, action,
status, service, HTTP method and status class, error code, topic); a user, group, object
or change id is never a label, because every distinct value is a new time series.

Gauges that describe writer state (managed, escrowed, staged) are per process: each writer
replica reports the objects of the partitions it currently owns, so ``sum by (app)`` over
the replicas is the application's total.

:func:`start_metrics_server` serves ``/metrics`` from the default registry, which also
carries prometheus-client's process, platform and garbage-collector collectors.
"""

from __future__ import annotations

import functools
from importlib import metadata

import prometheus_client
import stamina.instrumentation
from prometheus_client import Counter, Gauge, Histogram, Info

__all__ = [
    "ADMIN_REQUESTS",
    "APP_QUARANTINED",
    "BUILD_INFO",
    "CHANGES_INGESTED",
    "COMMANDS",
    "CONFIG_REJECTED",
    "CONFIG_VERSION",
    "CONSUMER_LAG",
    "CONTROL_ACTIONS",
    "CYCLES",
    "CYCLE_DURATION",
    "CYCLE_PROGRESS",
    "CYCLE_RUNNING",
    "DEFERRED_REFERENCES",
    "ERRORS",
    "ESCROWED_OBJECTS",
    "LAST_SUCCESSFUL_CYCLE",
    "MALFORMED_MESSAGES",
    "MANAGED_OBJECTS",
    "METRIC_NAMES",
    "OUTCOMES",
    "PROCESS_METRIC_NAMES",
    "PROVISIONING_LATENCY",
    "QUARANTINES",
    "REMOVED_APP_COMMANDS",
    "RETRIES_WAITING",
    "SKIPPED_RECORDS",
    "STAGED_DELETES",
    "STALLED_PARTITIONS",
    "TARGET_RATE_LIMIT",
    "TARGET_REQUESTS",
    "TARGET_REQUEST_DURATION",
    "TARGET_RETRIES",
    "TARGET_THROTTLED",
    "cycle_finished",
    "cycle_started",
    "observe_target_request",
    "set_cycle_progress",
    "set_quarantined",
    "start_metrics_server",
    "status_class",
]

# Each counter would otherwise be exported twice (`x_total` and a `x_created` timestamp
# series); nothing we chart or alert on reads the creation time.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

_SERIES_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum"),
    "info": ("_info",),
}
_FAMILIES: list[tuple[str, str]] = []  # (family name, type), filled as metrics are defined


def _counter(name: str, doc: str, labels: tuple[str, ...]) -> Counter:
    _FAMILIES.append((name.removesuffix("_total"), "counter"))
    return Counter(name, doc, labels)


def _gauge(name: str, doc: str, labels: tuple[str, ...]) -> Gauge:
    _FAMILIES.append((name, "gauge"))
    return Gauge(name, doc, labels)


def _histogram(name: str, doc: str, labels: tuple[str, ...], buckets: tuple[float, ...]) -> Histogram:
    _FAMILIES.append((name, "histogram"))
    return Histogram(name, doc, labels, buckets=buckets)


# --- ingest -----------------------------------------------------------------------------

CHANGES_INGESTED = _counter(
    "scimflow_changes_ingested_total",
    "Directory changes published to the changes topic, by source and operation (upsert, delete).",
    ("source", "operation"))

CYCLES = _counter(
    "scimflow_cycles_total",
    "Full-scan cycles that ended, by source and status (complete, interrupted).",
    ("source", "status"))

CYCLE_DURATION = _histogram(
    "scimflow_cycle_duration_seconds",
    "Duration of a full-scan cycle, from its start marker to its end marker.",
    ("source",),
    (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600))

CYCLE_RUNNING = _gauge(
    "scimflow_cycle_running",
    "1 while a full-scan cycle of the source is running, else 0.",
    ("source",))

CYCLE_PROGRESS = _gauge(
    "scimflow_cycle_progress_ratio",
    "Share of the running cycle's objects processed so far (0 to 1; 1 when idle).",
    ("source",))

LAST_SUCCESSFUL_CYCLE = _gauge(
    "scimflow_last_successful_cycle_timestamp_seconds",
    "Unix time at which the source's last complete full-scan cycle ended.",
    ("source",))

# --- mapper -----------------------------------------------------------------------------

COMMANDS = _counter(
    "scimflow_commands_total",
    "Provisioning commands produced, by application and operation (upsert, deprovision, delete).",
    ("app", "operation"))

# --- writer -----------------------------------------------------------------------------

TARGET_REQUESTS = _counter(
    "scimflow_target_requests_total",
    "HTTP requests to target applications, by method and status class "
    "(2xx, 3xx, 4xx, 5xx, or `error` when no response arrived).",
    ("app", "method", "status_class"))

TARGET_REQUEST_DURATION = _histogram(
    "scimflow_target_request_duration_seconds",
    "Duration of one HTTP request to a target application (one attempt).",
    ("app", "method"),
    (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10))

TARGET_RETRIES = _counter(
    "scimflow_target_retries_total",
    "Target requests retried after a transient failure (network, timeout, 429, 5xx).",
    ("app",))

OUTCOMES = _counter(
    "scimflow_provisioning_outcomes_total",
    "Provisioning outcomes (one per activity record), by application, object type, "
    "action (create, update, adopt, disable, delete, skip, stagedDelete) and status.",
    ("app", "object_type", "action", "status"))

PROVISIONING_LATENCY = _histogram(
    "scimflow_provisioning_latency_seconds",
    "Time from the source observing a change to the writer's outcome for it.",
    ("app",),
    (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900))

MANAGED_OBJECTS = _gauge(
    "scimflow_managed_objects",
    "Objects this writer replica manages in the target (created or adopted), by type.",
    ("app", "object_type"))

ESCROWED_OBJECTS = _gauge(
    "scimflow_escrowed_objects",
    "Objects whose last write failed and that wait for a retry (Entra's escrow).",
    ("app",))

STAGED_DELETES = _gauge(
    "scimflow_staged_deletes",
    "Disable/delete actions held by accidental-deletion prevention, waiting for an operator.",
    ("app",))

APP_QUARANTINED = _gauge(
    "scimflow_app_quarantined",
    "1 while the application is quarantined (with the reason), else 0 (reason `none`).",
    ("app", "reason"))

TARGET_RATE_LIMIT = _gauge(
    "scimflow_target_rate_limit",
    "The writer's current limit on one target (adaptive: cut on 429, grown back on a cubic curve), by kind: "
    "`concurrency` (requests in flight) or `requests_per_second`.",
    ("app", "limit"))

TARGET_THROTTLED = _counter(
    "scimflow_target_throttled_total",
    "429 Too Many Requests answers from a target.",
    ("app",))

RETRIES_WAITING = _gauge(
    "scimflow_retries_waiting",
    "Objects waiting for a delayed retry after a transient failure (not yet escrowed).",
    ("app",))

DEFERRED_REFERENCES = _gauge(
    "scimflow_deferred_references",
    "Objects with a reference (manager, group member) waiting for the referenced object "
    "to be provisioned.",
    ("app",))

QUARANTINES = _counter(
    "scimflow_quarantines_total",
    "Times an application entered quarantine, by reason.",
    ("app", "reason"))

REMOVED_APP_COMMANDS = _counter(
    "scimflow_removed_app_commands_total",
    "Commands (and removals found by a full scan) the writer skipped because their "
    "application was removed from the config; nothing is written for them.",
    ("app",))

# --- control plane ----------------------------------------------------------------------

CONTROL_ACTIONS = _counter(
    "scimflow_control_actions_total",
    "Control actions (admin API and CLI), by action and outcome; each is also an audit record.",
    ("action", "outcome"))

ADMIN_REQUESTS = _counter(
    "scimflow_admin_requests_total",
    "Admin API requests, by route template and status class (401s included).",
    ("route", "status_class"))

# --- every service ----------------------------------------------------------------------

ERRORS = _counter(
    "scimflow_errors_total",
    "Records published to the errors topic, by service and error code.",
    ("service", "error_code"))

SKIPPED_RECORDS = _counter(
    "scimflow_skipped_records_total",
    "Records the consumer skipped around a rebalance and the worker read again.",
    ("service",))
STALLED_PARTITIONS = _counter(
    "scimflow_stalled_partitions_total",
    "Partitions whose records the consumer stopped delivering and the worker read again.",
    ("service",))
MALFORMED_MESSAGES = _counter(
    "scimflow_malformed_messages_total",
    "Messages that could not be decoded and were skipped (each also an error record).",
    ("service", "topic"))

CONFIG_VERSION = _gauge(
    "scimflow_config_version",
    "The version of each application's definition (control.config) this process runs; 0: "
    "the one from its --config file, not on the topic.",
    ("service", "app"))

CONFIG_REJECTED = _counter(
    "scimflow_config_rejected_total",
    "Versions of an application's definition this process could not load and did not run "
    "(the last good version stays in effect; each is also an error record).",
    ("service", "app"))

CONSUMER_LAG = _gauge(
    "scimflow_consumer_lag",
    "Messages in the topic not yet processed by this replica's partitions (high water - position).",
    ("service", "topic"))

_FAMILIES.append(("scimflow_build", "info"))
BUILD_INFO = Info("scimflow_build", "The scimflow version this process runs.")


def _version() -> str:
    try:
        return metadata.version("scimflow")
    except metadata.PackageNotFoundError:
        return "unknown"


BUILD_INFO.info({"version": _version()})

# stamina (the target-call retries) also counts retries, in ``stamina_retries_total``
# {callable, retry_num}; register it up front so its HELP/TYPE are there from the start.
# Its series appear after the first retry; dashboards use scimflow_target_retries_total.
stamina.instrumentation.get_prometheus_counter()

# What prometheus-client's default collectors export on Linux (process_* needs /proc).
PROCESS_METRIC_NAMES: frozenset[str] = frozenset({
    "process_cpu_seconds_total",
    "process_max_fds",
    "process_open_fds",
    "process_resident_memory_bytes",
    "process_start_time_seconds",
    "process_virtual_memory_bytes",
    "python_gc_collections_total",
    "python_gc_objects_collected_total",
    "python_gc_objects_uncollectable_total",
    "python_info",
})

METRIC_NAMES: frozenset[str] = frozenset(
    {family + suffix for family, kind in _FAMILIES for suffix in _SERIES_SUFFIXES[kind]}
    | PROCESS_METRIC_NAMES
)
"""Every series name ``/metrics`` exposes, as PromQL sees it (``_total``, ``_bucket`` ...)."""


# --- helpers ----------------------------------------------------------------------------


def status_class(status: int | None) -> str:
    """``201`` -> ``"2xx"``; ``None`` (no response: connect error, timeout) -> ``"error"``."""
    if status is None or not 100 <= status <= 599:
        return "error"
    return f"{status // 100}xx"


def observe_target_request(app: str, method: str, status: int | None, seconds: float) -> None:
    """Count one HTTP request to a target and record how long it took."""
    counter, histogram = _target_request_series(app, method.upper(), status_class(status))
    counter.inc()
    histogram.observe(seconds)


@functools.cache
def _target_request_series(app: str, method: str, outcome: str) -> tuple[Counter, Histogram]:
    # Two requests per object synced: resolving the labelled children once per label set
    # (a lock and a dict per .labels() call) is worth it. The label sets are few and fixed.
    return (TARGET_REQUESTS.labels(app=app, method=method, status_class=outcome),
            TARGET_REQUEST_DURATION.labels(app=app, method=method))


_quarantine_reason: dict[str, str] = {}


def set_quarantined(app: str, reason: str | None) -> None:
    """Quarantine ``app`` for ``reason`` (a small fixed set, e.g. an error code), or lift it.

    Only one series per app exists at a time, so ``max by (app)`` and ``sum`` stay 0/1.
    """
    label = reason or "none"
    previous = _quarantine_reason.get(app)
    if previous is not None and previous != label:
        APP_QUARANTINED.remove(app, previous)
    _quarantine_reason[app] = label
    APP_QUARANTINED.labels(app=app, reason=label).set(1 if reason else 0)


def cycle_started(source: str) -> None:
    """A full-scan cycle of ``source`` began."""
    CYCLE_RUNNING.labels(source=source).set(1)
    CYCLE_PROGRESS.labels(source=source).set(0)


def set_cycle_progress(source: str, done: int, total: int) -> None:
    """``done`` of ``total`` objects of the running cycle are processed."""
    CYCLE_PROGRESS.labels(source=source).set(min(1.0, done / total) if total > 0 else 1.0)


def cycle_finished(source: str, seconds: float, *, complete: bool, ended_at: float) -> None:
    """A cycle ended after ``seconds``; only a complete one counts as a successful cycle."""
    CYCLES.labels(source=source, status="complete" if complete else "interrupted").inc()
    CYCLE_DURATION.labels(source=source).observe(seconds)
    CYCLE_RUNNING.labels(source=source).set(0)
    CYCLE_PROGRESS.labels(source=source).set(1)
    if complete:
        LAST_SUCCESSFUL_CYCLE.labels(source=source).set(ended_at)


def start_metrics_server(port: int, addr: str = "127.0.0.1") -> None:
    """Serve ``/metrics`` on ``addr:port`` from a daemon thread; ``port == 0`` disables it."""
    if port == 0:
        return
    prometheus_client.start_http_server(port, addr)
