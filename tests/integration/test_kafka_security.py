"""TLS and SASL against the real Apache Kafka: one broker per module with a ``SASL_SSL``
listener (SCRAM-SHA-512) and a mutual-TLS ``SSL`` listener, on certificates this test
makes. Every client goes through services/runtime/kafka.py, configured by settings as a
deployment would be; a faust worker runs as its own process, configured by its environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.devstack.apache_kafka import TlsListeners, java_version, start_secure
from services.devstack.broker import Broker
from services.runtime.kafka import (
    KafkaSecurity,
    KafkaSecurityError,
    TopicReader,
    create_topics,
    kafka_security,
    plain_producer,
    upsert_scram_user,
)
from services.runtime.settings import Settings, load_settings
from services.runtime.topics import TopicSpec
from tests.support.echo_worker import IN, OUT
from tests.support.kafka_tls import Certificates, make_certificates

pytestmark = pytest.mark.skipif(java_version()[0] < 17, reason="Apache Kafka needs Java >= 17")

USER = "scimflow"
PASSWORD = "s3cret-" + uuid.uuid4().hex
WRONG = "wrong-" + uuid.uuid4().hex
ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def broker(certs: Certificates) -> Iterator[Broker]:
    with start_secure(load_settings(), TlsListeners(certs.broker_keystore, certs.ca)) as started:
        upsert_scram_user(started.bootstrap, USER, PASSWORD)
        yield started


def _password_file(directory: Path, password: str) -> Path:
    path = directory / f"kafka-password-{uuid.uuid4().hex}"
    path.write_text(password + "\n", encoding="utf-8")
    return path


def _sasl_env(broker: Broker, certs: Certificates, password_file: Path) -> dict[str, str]:
    return {"SCIMFLOW_KAFKA_BOOTSTRAP": broker.listeners["SASL_SSL"],
            "SCIMFLOW_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "SCIMFLOW_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "SCIMFLOW_KAFKA_SASL_USERNAME": USER,
            "SCIMFLOW_KAFKA_SASL_PASSWORD": f"file:{password_file}",
            "SCIMFLOW_KAFKA_SSL_CAFILE": str(certs.ca)}


def _settings(env: dict[str, str]) -> Settings:
    return load_settings(environ=env)


def _round_trip(bootstrap: str, security: KafkaSecurity) -> None:
    topic = f"sec-{uuid.uuid4().hex[:8]}"
    create_topics(bootstrap, [TopicSpec(topic, 1)], security=security)
    producer = plain_producer(bootstrap, security=security)
    try:
        producer.send(topic, key=b"k", value=b"over tls").get(timeout=30)
    finally:
        producer.close()
    assert _read(bootstrap, topic, security, count=1) == [b"over tls"]


def _read(bootstrap: str, topic: str, security: KafkaSecurity, *, count: int,
          timeout: float = 30.0) -> list[bytes]:
    values: list[bytes] = []
    deadline = time.monotonic() + timeout
    with TopicReader(bootstrap, [topic], security=security) as reader:
        while len(values) < count and time.monotonic() < deadline:
            values += [r.value for r in reader.poll(0.5)]
    return values


def test_producer_and_reader_round_trip_over_sasl_ssl_scram(broker: Broker, certs: Certificates,
                                                              tmp_path: Path) -> None:
    env = _sasl_env(broker, certs, _password_file(tmp_path, PASSWORD))
    security = kafka_security(_settings(env))
    assert PASSWORD not in repr(security)
    _round_trip(broker.listeners["SASL_SSL"], security)


def test_round_trip_over_mutual_tls(broker: Broker, certs: Certificates) -> None:
    env = {"SCIMFLOW_KAFKA_SECURITY_PROTOCOL": "SSL", "SCIMFLOW_KAFKA_SSL_CAFILE": str(certs.ca),
           "SCIMFLOW_KAFKA_SSL_CERTFILE": str(certs.client_cert),
           "SCIMFLOW_KAFKA_SSL_KEYFILE": str(certs.client_key)}
    _round_trip(broker.listeners["SSL"], kafka_security(_settings(env)))


def test_mutual_tls_without_a_client_certificate_is_refused_clearly(broker: Broker,
                                                                    certs: Certificates) -> None:
    env = {"SCIMFLOW_KAFKA_SECURITY_PROTOCOL": "SSL", "SCIMFLOW_KAFKA_SSL_CAFILE": str(certs.ca)}
    with pytest.raises(KafkaSecurityError, match="client certificate"):
        plain_producer(broker.listeners["SSL"], security=kafka_security(_settings(env)))


def test_wrong_password_is_a_clear_error_at_once(broker: Broker, certs: Certificates,
                                                 tmp_path: Path) -> None:
    env = _sasl_env(broker, certs, _password_file(tmp_path, WRONG))
    started = time.monotonic()
    with pytest.raises(KafkaSecurityError) as refused:
        TopicReader(broker.listeners["SASL_SSL"], ["anything"], security=kafka_security(_settings(env)))
    assert time.monotonic() - started < 10
    message = str(refused.value)
    assert "refused SASL authentication" in message and "SCRAM-SHA-512" in message
    assert USER in message and WRONG not in message and PASSWORD not in message


def test_no_ca_is_a_clear_certificate_error(broker: Broker, certs: Certificates, tmp_path: Path) -> None:
    env = _sasl_env(broker, certs, _password_file(tmp_path, PASSWORD))
    del env["SCIMFLOW_KAFKA_SSL_CAFILE"]  # the system's CAs: none signed the test's broker
    with pytest.raises(KafkaSecurityError) as refused:
        plain_producer(broker.listeners["SASL_SSL"], security=kafka_security(_settings(env)))
    message = str(refused.value)
    assert "CERTIFICATE_VERIFY_FAILED" in message and "SCIMFLOW_KAFKA_SSL_CAFILE" in message
    assert PASSWORD not in message


def _start_worker(env: dict[str, str], tmp_path: Path) -> subprocess.Popen[str]:
    full = {**os.environ, **env, "SCIMFLOW_DATA_DIR": str(tmp_path / "data"),
            "SCIMFLOW_PARTITIONS": "1", "SCIMFLOW_TOPIC_PREFIX": f"sec{uuid.uuid4().hex[:6]}."}
    return subprocess.Popen([sys.executable, "-m", "tests.support.echo_worker"], env=full, cwd=ROOT,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_faust_worker_consumes_and_produces_over_sasl_ssl(broker: Broker, certs: Certificates,
                                                           tmp_path: Path) -> None:
    env = _sasl_env(broker, certs, _password_file(tmp_path, PASSWORD))
    bootstrap, security = env["SCIMFLOW_KAFKA_BOOTSTRAP"], kafka_security(_settings(env))
    create_topics(bootstrap, [TopicSpec(IN, 1), TopicSpec(OUT, 1)], security=security)
    worker = _start_worker(env, tmp_path)
    try:
        producer = plain_producer(bootstrap, security=security)
        producer.send(IN, value=b"through faust").get(timeout=30)
        producer.close()
        assert _read(bootstrap, OUT, security, count=1, timeout=45) == [b"through faust"]
    finally:
        worker.terminate()
        output, _ = worker.communicate(timeout=30)
    assert "followed through faust" in output  # aiokafka outside faust: the same security
    assert PASSWORD not in output


def test_faust_worker_with_a_wrong_password_stops_at_start_with_a_clear_error(
        broker: Broker, certs: Certificates, tmp_path: Path) -> None:
    env = _sasl_env(broker, certs, _password_file(tmp_path, WRONG))
    started = time.monotonic()
    worker = _start_worker(env, tmp_path)
    try:
        output, _ = worker.communicate(timeout=30)
    finally:
        worker.kill()
    assert worker.returncode != 0
    assert time.monotonic() - started < 30
    assert "refused SASL authentication" in output and "KafkaSecurityError" in output
    assert WRONG not in output
