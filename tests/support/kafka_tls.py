"""Certificates a test makes for a Kafka broker with TLS listeners: a CA, a broker
certificate for loopback, and a client certificate for mutual TLS.

Everything is PEM, which both sides read as is: the broker (``ssl.keystore.type=PEM``,
``ssl.truststore.type=PEM``) and Python's ``ssl`` module. Keys are unencrypted; they live
in the test's temp dir and die with it.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["Certificates", "make_certificates"]


@dataclass(frozen=True)
class Certificates:
    """Where :func:`make_certificates` wrote each PEM file."""

    ca: Path
    """The CA certificate: the client's ``ssl_cafile`` and the broker's truststore."""
    broker_keystore: Path
    """The broker's private key and certificate in one file (Kafka's PEM keystore)."""
    client_cert: Path
    client_key: Path


def make_certificates(directory: Path) -> Certificates:
    """A fresh CA and the broker and client certificates it signs, written to ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = _key()
    ca_name = _name("scimflow test CA")
    ca_cert = _sign(_builder(ca_name, ca_name, ca_key)
                    .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                    .add_extension(x509.KeyUsage(**_ca_usage()), critical=True), ca_key)
    broker_key = _key()
    broker_cert = _sign(_builder(_name("localhost"), ca_name, broker_key)
                        .add_extension(x509.SubjectAlternativeName([
                            x509.DNSName("localhost"),
                            x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
                        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                                       critical=False), ca_key)
    client_key = _key()
    client_cert = _sign(_builder(_name("scimflow-client"), ca_name, client_key)
                        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                                       critical=False), ca_key)
    certs = Certificates(ca=directory / "ca.pem", broker_keystore=directory / "broker.pem",
                         client_cert=directory / "client.pem", client_key=directory / "client-key.pem")
    certs.ca.write_bytes(_pem(ca_cert))
    certs.broker_keystore.write_bytes(_pem_key(broker_key) + _pem(broker_cert) + _pem(ca_cert))
    certs.client_cert.write_bytes(_pem(client_cert))
    certs.client_key.write_bytes(_pem_key(client_key))
    return certs


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())  # fast to make, and both sides speak it


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(subject: x509.Name, issuer: x509.Name,
             key: ec.EllipticCurvePrivateKey) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1)))


def _ca_usage() -> dict[str, bool]:
    return {"digital_signature": False, "content_commitment": False, "key_encipherment": False,
            "data_encipherment": False, "key_agreement": False, "key_cert_sign": True,
            "crl_sign": True, "encipher_only": False, "decipher_only": False}


def _sign(builder: x509.CertificateBuilder, ca_key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    return builder.sign(ca_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    # PKCS#8: the only private key form Kafka's PEM keystore reads.
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
