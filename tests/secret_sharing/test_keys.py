import stat

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from secret_sharing import (
    KeyFileError,
    OutputExistsError,
    key_fingerprint,
    load_signing_key,
    load_verify_key,
    write_keypair,
)


def test_keypair_files(tmp_path):
    signing_path, verify_path = write_keypair(tmp_path / "provider")
    assert stat.S_IMODE(signing_path.stat().st_mode) == 0o600
    assert signing_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    signing, verify = load_signing_key(signing_path), load_verify_key(verify_path)
    assert key_fingerprint(signing.public_key()) == key_fingerprint(verify)
    assert len(key_fingerprint(verify)) == 64
    with pytest.raises(OutputExistsError):
        write_keypair(tmp_path / "provider")


def test_umask_does_not_widen_the_private_key(tmp_path):
    import os

    old = os.umask(0)
    try:
        signing_path, _ = write_keypair(tmp_path / "k")
    finally:
        os.umask(old)
    assert stat.S_IMODE(signing_path.stat().st_mode) == 0o600


def test_files_that_are_not_the_right_key(tmp_path):
    signing_path, verify_path = write_keypair(tmp_path / "provider")
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n")
    ecdsa = ec.generate_private_key(ec.SECP256R1())
    ec_private = tmp_path / "ec.key"
    ec_private.write_bytes(
        ecdsa.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    ec_public = tmp_path / "ec.pub"
    ec_public.write_bytes(
        ecdsa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    locked = tmp_path / "locked.key"
    locked.write_bytes(
        load_signing_key(signing_path).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    cases = [
        (load_signing_key, garbage, "is not a PEM private key"),
        (load_signing_key, ec_private, "is not an Ed25519 signing key"),
        (load_signing_key, verify_path, "is a public verify key"),
        (load_signing_key, locked, "is password-protected"),
        (load_signing_key, tmp_path / "missing.key", "does not exist"),
        (load_signing_key, tmp_path, "is a directory"),
        (load_verify_key, ec_public, "is not an Ed25519 verify key"),
        (load_verify_key, signing_path, "is a private signing key"),
        (load_verify_key, garbage, "is a private signing key"),
    ]
    for loader, path, message in cases:
        with pytest.raises(KeyFileError, match=message) as caught:
            loader(path)
        assert str(path) in str(caught.value)
