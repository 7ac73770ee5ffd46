"""The SCIMFLOW_KAFKA_* security settings: checked together at start, the password only
ever a reference, and the client arguments each library gets (no broker here; the real
handshakes are in tests/integration/test_kafka_security.py)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from services.runtime.errors import ConfigError
from services.runtime.kafka import client_security, faust_credentials, kafka_security
from services.runtime.settings import load_settings

SASL = {"SCIMFLOW_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "SCIMFLOW_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "SCIMFLOW_KAFKA_SASL_USERNAME": "svc",
        "SCIMFLOW_KAFKA_SASL_PASSWORD": "env:TEST_KAFKA_PASSWORD"}


@pytest.mark.parametrize(("env", "expected"), [
    ({"SCIMFLOW_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "needs SCIMFLOW_KAFKA_SASL_MECHANISM"),
    ({**SASL, "SCIMFLOW_KAFKA_SASL_USERNAME": ""}, "needs SCIMFLOW_KAFKA_SASL_USERNAME"),
    ({"SCIMFLOW_KAFKA_SASL_USERNAME": "svc"}, "uses no SASL"),
    ({**SASL, "SCIMFLOW_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
      "SCIMFLOW_KAFKA_SSL_CAFILE": "/ca.pem"}, "uses no TLS"),
    ({"SCIMFLOW_KAFKA_SECURITY_PROTOCOL": "SSL", "SCIMFLOW_KAFKA_SSL_KEYFILE": "/k.pem"},
     "SCIMFLOW_KAFKA_SSL_KEYFILE given without SCIMFLOW_KAFKA_SSL_CERTFILE"),
    ({"SCIMFLOW_KAFKA_SECURITY_PROTOCOL": "TLS"}, "kafka_security_protocol"),
    ({**SASL, "SCIMFLOW_KAFKA_SASL_MECHANISM": "GSSAPI"}, "kafka_sasl_mechanism"),
])
def test_invalid_combinations_are_a_settings_error(env: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_settings(environ=env)


def test_a_password_given_as_a_value_is_refused_without_showing_it() -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(environ={**SASL, "SCIMFLOW_KAFKA_SASL_PASSWORD": "hunter2-value"})
    assert "kafka_sasl_password" in str(refused.value) and "hunter2-value" not in str(refused.value)


def test_the_password_reference_must_resolve(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("TEST_KAFKA_PASSWORD", raising=False)
    with pytest.raises(ConfigError, match="environment variable TEST_KAFKA_PASSWORD is not set"):
        kafka_security(load_settings(environ=SASL))
    empty = tmp_path / "empty"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="the file is empty"):
        kafka_security(load_settings(environ={**SASL, "SCIMFLOW_KAFKA_SASL_PASSWORD": f"file:{empty}"}))


def test_missing_tls_files_are_a_settings_error() -> None:
    env = {"SCIMFLOW_KAFKA_SECURITY_PROTOCOL": "SSL", "SCIMFLOW_KAFKA_SSL_CAFILE": "/nonexistent/ca.pem"}
    with pytest.raises(ConfigError, match="cannot load the Kafka TLS files"):
        kafka_security(load_settings(environ=env))


def test_sasl_ssl_gives_every_client_the_same_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_KAFKA_PASSWORD", "pa55-word")
    security = kafka_security(load_settings(environ={**SASL, "SCIMFLOW_KAFKA_SSL_CHECK_HOSTNAME": "false"}))
    assert "pa55-word" not in repr(security) and "env:TEST_KAFKA_PASSWORD" in repr(security)
    kwargs = client_security(security)
    assert kwargs["security_protocol"] == "SASL_SSL" and kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (kwargs["sasl_plain_username"], kwargs["sasl_plain_password"]) == ("svc", "pa55-word")
    context = kwargs["ssl_context"]
    assert isinstance(context, ssl.SSLContext) and not context.check_hostname
    assert context.verify_mode == ssl.CERT_REQUIRED  # no hostname check still checks the CA
    faust = faust_credentials(security)
    assert faust.protocol.value == "SASL_SSL" and faust.mechanism.value == "SCRAM-SHA-512"
    assert faust.password == "pa55-word" and "pa55-word" not in repr(faust)


def test_plaintext_changes_nothing() -> None:
    security = kafka_security(load_settings(environ={}))
    assert client_security(security) == {} and faust_credentials(security) is None
