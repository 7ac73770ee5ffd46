"""Apache Kafka in Docker: the ``testcontainers`` kind of :mod:`services.devstack.broker`.

The ``apache/kafka`` image of the configured version, started through testcontainers
(dev extra) wherever a Docker engine answers. The container's log dir is not mounted, so
this kind starts empty every time, ``state_dir`` or not.
"""

from __future__ import annotations

from pathlib import Path

from services.devstack._broker_base import Broker, BrokerError, Log, say_not_kept
from services.devstack.apache_kafka import kraft_properties
from services.devstack.processes import LOOPBACK, free_ports
from services.runtime.settings import Settings

__all__ = ["available", "start"]


def available() -> bool:
    """Whether ``auto`` may pick this kind: testcontainers is installed and Docker answers."""
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


def start(settings: Settings, log: Log, state_dir: Path | None) -> Broker:
    """The ``apache/kafka`` image in a container, its port bound 1:1 on the host."""
    from testcontainers.core.container import DockerContainer  # noqa: PLC0415  # dev extra

    if state_dir is not None:
        # Not mounted: the image's user, its log dir and its storage formatting would all
        # have to agree with a host directory, and no engine here to prove it works.
        say_not_kept(log, "testcontainers", "its log dir lives in the container",
                     "a broker that keeps it, set SCIMFLOW_BROKER=apache-kafka "
                     "(Java >= 17 and Maven)")

    # testcontainers' KafkaContainer drives Confluent's image through its own start
    # script; the Apache image is configured by environment alone, so a plain container
    # with the host port bound 1:1 lets us advertise the address clients will use.
    image = f"apache/kafka:{settings.kafka_version}"
    port = free_ports(1)[0]
    try:
        container = DockerContainer(image)
    except Exception as exc:
        raise BrokerError(f"could not reach the Docker engine for {image}: {exc}") from exc
    host = container.get_docker_client().host()
    host = LOOPBACK if host in ("localhost", "", "::1") else host
    props = kraft_properties(listen=f"0.0.0.0:{port}", advertised=f"{host}:{port}",
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
