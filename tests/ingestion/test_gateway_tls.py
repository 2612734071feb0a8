"""The gateway over TLS with client certificates (``--tls-cert/--tls-key/--tls-ca``): a peer
without a certificate, or with one its CA did not sign, is refused in the handshake; a peer
with a certificate from the CA stores a study (pynetdicom's SCU and dcmtk's ``storescu +tls``)."""

from __future__ import annotations

import datetime as dt
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydicom import dcmread
from pydicom.data import get_testdata_file

from tests.ingestion.gateway_peers import gateway_config, needs, running_gateway

CT = str(get_testdata_file("CT_small.dcm", download=False))


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path
    stranger_key: Path


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    usage: x509.ObjectIdentifier | None = None,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if subject == "localhost":
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _write(root: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey):
    cert_path, key_path = root / f"{stem}.pem", root / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    """A throwaway CA, the gateway's server certificate, a client certificate from the CA,
    and a self-signed stranger."""
    root = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _issue("Enclave test CA", ca_key, _name("Enclave test CA"), ca_key, ca=True)
    ca, _ = _write(root, "ca", ca_cert, ca_key)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _issue(
        "localhost", server_key, ca_cert.subject, ca_key, usage=ExtendedKeyUsageOID.SERVER_AUTH
    )
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _issue(
        "PACS", client_key, ca_cert.subject, ca_key, usage=ExtendedKeyUsageOID.CLIENT_AUTH
    )
    stranger_key = ec.generate_private_key(ec.SECP256R1())
    stranger = _issue("PACS", stranger_key, _name("PACS"), stranger_key)
    return Pki(
        ca,
        *_write(root, "server", server, server_key),
        *_write(root, "client", client, client_key),
        *_write(root, "stranger", stranger, stranger_key),
    )


@pytest.fixture
def tls_gateway(pki, tmp_path):
    config = gateway_config(
        tmp_path / "gw",
        allowed=frozenset({"PACS"}),
        tls_cert=pki.server_cert,
        tls_key=pki.server_key,
        tls_ca=pki.ca,
    )
    with running_gateway(config) as gateway:
        yield config, gateway


def client_context(pki: Pki, cert: Path | None = None, key: Path | None = None):
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca))
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


def store_with_pynetdicom(config, ctx: ssl.SSLContext) -> int | None:
    """The C-STORE status, or None when no association was established."""
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

    ae = AE(ae_title="PACS")
    ae.add_requested_context(CTImageStorage, dcmread(CT).file_meta.TransferSyntaxUID)
    assoc = ae.associate(
        "127.0.0.1", config.port, ae_title=config.ae_title, tls_args=(ctx, "localhost")
    )
    if not assoc.is_established:
        return None
    try:
        return int(assoc.send_c_store(dcmread(CT)).Status)
    finally:
        assoc.release()


def test_a_peer_with_a_certificate_from_the_ca_stores_a_study(pki, tls_gateway):
    config, gateway = tls_gateway
    assert store_with_pynetdicom(config, client_context(pki, pki.client_cert, pki.client_key)) == 0
    assert gateway.received == 1


def test_a_peer_without_a_client_certificate_is_refused(pki, tls_gateway):
    config, gateway = tls_gateway
    assert store_with_pynetdicom(config, client_context(pki)) is None
    assert gateway.received == 0


def test_a_peer_whose_certificate_the_ca_did_not_sign_is_refused(pki, tls_gateway):
    config, gateway = tls_gateway
    ctx = client_context(pki, pki.stranger_cert, pki.stranger_key)
    assert store_with_pynetdicom(config, ctx) is None
    assert gateway.received == 0


def test_a_plain_tcp_peer_is_refused_by_the_tls_gateway(tls_gateway):
    config, gateway = tls_gateway
    result = subprocess.run(
        [
            needs("storescu"),
            "-aet",
            "PACS",
            "-aec",
            config.ae_title,
            "127.0.0.1",
            str(config.port),
            CT,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and gateway.received == 0


def test_dcmtk_storescu_over_tls_with_the_client_certificate_is_accepted(pki, tls_gateway):
    config, gateway = tls_gateway
    result = subprocess.run(
        [
            needs("storescu"),
            "-aet",
            "PACS",
            "-aec",
            config.ae_title,
            "+tls",
            str(pki.client_key),
            str(pki.client_cert),
            "+cf",
            str(pki.ca),
            "localhost",
            str(config.port),
            CT,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert gateway.received == 1
