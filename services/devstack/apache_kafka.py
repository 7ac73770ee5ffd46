"""Apache Kafka on the local JVM: the ``apache-kafka`` kind of :mod:`services.devstack.broker`.

Needs Java >= 17, and Maven the first time: ``org.apache.kafka:kafka_2.13`` is resolved
from Maven Central once into ``{data_dir}/kafka-{version}/libs`` (:func:`fetch_kafka`,
with the POM in ``kafka_runtime_pom.xml`` beside this module), then run as a single KRaft
node on free loopback ports, logging through ``kafka_log4j2.xml``.

Without a ``state_dir`` the broker keeps its data in a fresh temp dir, removed when it
stops. With one (``scimflow up``), it keeps its data there, across stops and starts:
topics, records, committed offsets, changelogs. The KRaft log dir is formatted once (a
copy of the cached formatted storage, so the cluster id is the one in ``state_dir``),
and the broker listens on the ports it had last time when they are free, or on new ones:
a single-node KRaft cluster with a static voter set starts on a changed port (it
re-registers its listeners), and nothing else we write depends on the port.

:func:`start_secure` gives a broker with two more listeners, for trying TLS and SASL
against the real thing: ``SASL_SSL`` (SCRAM-SHA-512; users are added through the admin
API, see :func:`services.runtime.kafka.upsert_scram_user`) and ``SSL`` that requires a
client certificate (mutual TLS), both with the PEM certificates the caller gives. The
controller and the PLAINTEXT listener stay as they are.

Two caches make a start cheap (``python -m services.devstack.broker fetch`` fills them):
the formatted storage, copied instead of formatted per broker, and a class archive (CDS)
the JVM maps instead of loading Kafka's classes one by one.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import importlib.resources
import os
import re
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from services.devstack._broker_base import (
    BIND_ATTEMPTS,
    Broker,
    BrokerError,
    Log,
    PortTakenError,
    await_listener,
    stderr_log,
    strip_ansi,
    tail,
    with_fresh_ports,
)
from services.devstack.processes import LOOPBACK, bindable, free_ports, spawn
from services.runtime.settings import Settings

__all__ = ["TlsListeners", "available", "class_archive", "fetch_kafka", "formatted_storage",
           "java_version", "kraft_properties", "start", "start_secure", "with_tls"]

_FETCHED_MARKER = ".fetched"


def available(settings: Settings) -> bool:
    """Whether ``auto`` may pick this kind: Java >= 17, and the jars cached or Maven to
    fetch them."""
    if java_version()[0] < 17:
        return False
    return _is_fetched(_kafka_home(settings)) or shutil.which("mvn") is not None


def fetch_kafka(settings: Settings, log: Log = stderr_log) -> Path:
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
        output = strip_ansi(result.stdout + result.stderr).strip().splitlines()
        raise BrokerError(f"Maven could not fetch org.apache.kafka:kafka_2.13:{version} "
                          f"(exit {result.returncode}):\n" + "\n".join(output[-30:]))


def start(settings: Settings, log: Log, state_dir: Path | None) -> Broker:
    """Apache Kafka, fetched first if need be; its data in ``state_dir`` if given."""
    major, build = java_version()
    if major < 17:
        raise BrokerError(f"Apache Kafka needs Java >= 17 on PATH; found {major or 'none'}")
    libs = fetch_kafka(settings, log)
    storage = formatted_storage(libs, log)

    def launch(workdir: Path, ports: tuple[int, int], keep: bool) -> Broker:
        return _launch_kafka(settings, libs, build, workdir, ports, log, keep=keep)

    if state_dir is not None:
        return _start_kept_kafka(state_dir, storage, launch)

    def launch_fresh(workdir: Path) -> Broker:
        shutil.copytree(storage, workdir / "data")
        return launch(workdir, _port_pair(free_ports(2)), False)

    return with_fresh_ports(launch_fresh, "scimflow-kafka-")


@dataclass(frozen=True)
class TlsListeners:
    """The PEM files of a broker's ``SASL_SSL`` and ``SSL`` listeners (:func:`start_secure`)."""

    keystore: Path
    """The broker's private key (PKCS#8, unencrypted) and certificate chain, in one file."""
    truststore: Path
    """The CA certificate(s) client certificates must chain to on the ``SSL`` listener."""


def start_secure(settings: Settings, tls: TlsListeners, log: Log = stderr_log) -> Broker:
    """Apache Kafka in a temp dir with ``SASL_SSL`` and mutual-TLS ``SSL`` listeners besides
    PLAINTEXT; their addresses are in :attr:`Broker.listeners`."""
    major, build = java_version()
    if major < 17:
        raise BrokerError(f"Apache Kafka needs Java >= 17 on PATH; found {major or 'none'}")
    libs = fetch_kafka(settings, log)
    storage = formatted_storage(libs, log)

    def launch_fresh(workdir: Path) -> Broker:
        shutil.copytree(storage, workdir / "data")
        plain, controller, sasl_ssl, ssl = free_ports(4)
        secure = {"SASL_SSL": sasl_ssl, "SSL": ssl}
        return _launch_kafka(settings, libs, build, workdir, (plain, controller), log, keep=False,
                             secure=(tls, secure))

    return with_fresh_ports(launch_fresh, "scimflow-kafka-tls-")


def with_tls(props: dict[str, str], tls: TlsListeners, ports: dict[str, int]) -> dict[str, str]:
    """``props`` of :func:`kraft_properties` plus ``SASL_SSL`` and ``SSL`` listeners on
    ``ports`` (by listener name)."""
    listeners = ",".join(f"{name}://{LOOPBACK}:{port}" for name, port in ports.items())
    return {
        **props,
        "listeners": f"{props['listeners']},{listeners}",
        "advertised.listeners": f"{props['advertised.listeners']},{listeners}",
        "listener.security.protocol.map": ",".join(
            [props["listener.security.protocol.map"], *(f"{name}:{name}" for name in ports)]),
        "sasl.enabled.mechanisms": "SCRAM-SHA-512",
        # The broker only checks SCRAM credentials (kept in the metadata log): no user here.
        "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config":
            "org.apache.kafka.common.security.scram.ScramLoginModule required;",
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(tls.keystore),
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(tls.truststore),
        "listener.name.ssl.ssl.client.auth": "required",
    }


_KEPT_PORTS = "ports"
"""In a ``state_dir``: the broker and controller ports of the last start, tried first."""


def _start_kept_kafka(home: Path, storage: Path,
                      launch: Callable[[Path, tuple[int, int], bool], Broker]) -> Broker:
    """Kafka on the log dir in ``home``, formatted on the first start only, on the ports
    of the last start if they are free (else new ones, remembered for the next start)."""
    home.mkdir(parents=True, exist_ok=True)
    _seed_log_dir(storage, home / "data")
    ports = _kept_ports(home)
    for _ in range(BIND_ATTEMPTS):
        _rotate(home / "broker.log")  # so a port clash found in the log is this start's
        try:
            broker = launch(home, ports, True)
        except PortTakenError:
            ports = _port_pair(free_ports(2))
            continue
        _write_atomically(home / _KEPT_PORTS, f"{ports[0]} {ports[1]}\n")
        return broker
    raise BrokerError(f"could not bind free loopback ports in {BIND_ATTEMPTS} attempts")


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
    if len(kept) == 2 and all(bindable(port) for port in kept):
        return kept[0], kept[1]
    return _port_pair(free_ports(2))


def _port_pair(ports: list[int]) -> tuple[int, int]:
    return ports[0], ports[1]


def _rotate(log_file: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        log_file.replace(log_file.with_name(log_file.name + ".1"))


def _launch_kafka(settings: Settings, libs: Path, java_build: str, workdir: Path,
                  ports: tuple[int, int], log: Log, *, keep: bool,
                  secure: tuple[TlsListeners, dict[str, int]] | None = None) -> Broker:
    """Run Kafka on the formatted log dir ``workdir/data``, with a config for ``ports``
    (and the ``secure`` listeners) written anew (the advertised listener is the only thing
    that names the port)."""
    broker_port, controller_port = ports
    config = _write_config(workdir, broker_port, controller_port, settings.partitions, secure)
    cds, keep_archive = _class_sharing(libs.parent, java_build, workdir)
    log_file = workdir / "broker.log"
    process = spawn(_java(libs, workdir, "-Xmx512m", *_SHORT_RUN_JVM, *cds, "kafka.Kafka", str(config)),
                    log_file)
    name = f"Apache Kafka {settings.kafka_version}"
    await_listener(name, process, broker_port, log_file)
    secure_ports = {} if secure is None else secure[1]
    for port in secure_ports.values():
        await_listener(name, process, port, log_file)
    return Broker("apache-kafka", f"{LOOPBACK}:{broker_port}", version=settings.kafka_version,
                  data_dir=workdir, keeps_data=keep, process=process, on_exit=keep_archive,
                  log=log, listeners={n: f"{LOOPBACK}:{p}" for n, p in secure_ports.items()})


def _class_sharing(home: Path, java_build: str,
                   workdir: Path) -> tuple[list[str], Callable[[int], None] | None]:
    """JVM options to map Kafka's classes from a CDS archive; that halves a broker's start.

    An archive (~50 MB) only fits the JVM build and classpath it was made with, so it is
    named after the build. While there is none, the broker dumps one as it exits (dynamic
    CDS, JDK >= 13) and the returned callback moves it into the cache for later brokers.
    A missing or unusable archive costs only the speed-up: the JVM then loads classes as usual.
    """
    archive = class_archive(home, java_build)
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


def formatted_storage(libs: Path, log: Log) -> Path:
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
                  partitions: int, secure: tuple[TlsListeners, dict[str, int]] | None = None) -> Path:
    props = kraft_properties(listen=f"{LOOPBACK}:{broker_port}",
                             advertised=f"{LOOPBACK}:{broker_port}",
                             controller=f"{LOOPBACK}:{controller_port}",
                             partitions=partitions)
    if secure is not None:
        props = with_tls(props, *secure)
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


def kraft_properties(*, listen: str, advertised: str, controller: str,
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
                          f"{tail(log_file)}")


_SHORT_RUN_JVM = ("-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC")
"""C1 only and serial GC, for the storage tool and the one small local broker: in runs of
a few minutes (tests, `make run`, the bench) C2's compiling and G1's concurrent threads cost
more than they return (a fifth of the tool's run time, half the broker's CPU per message).
Production runs a real cluster, not this."""


def class_archive(home: Path, java_build: str) -> Path:
    """Where the class archive for ``java_build`` lives in the cache ``home`` (if made)."""
    # Named by the JVM build and the flags it was dumped with: another pair cannot map it.
    return home / f"classes-{re.sub(r'[^A-Za-z0-9.+-]', '_', java_build)}-c1-serial.jsa"


def java_version() -> tuple[int, str]:
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


def _resource(name: str) -> str:
    return importlib.resources.files("services.devstack").joinpath(name).read_text("utf-8")


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)
