"""Provider signing keys (Ed25519) as PEM files.

The private key (PKCS#8) stays on the provider's machine with mode 0600; the public
key (SubjectPublicKeyInfo) is registered with the enclave, which uses it to check
that a transfer's manifest really comes from that provider.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from secret_sharing.errors import KeyFileError, OutputExistsError

SIGNING_KEY_NAME = "signing.key"
VERIFY_KEY_NAME = "verify.key"


def generate_signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def key_fingerprint(public_key: Ed25519PublicKey) -> str:
    """SHA-256 of the raw 32-byte public key, hex: what manifests record as the signer."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def _write_new(path: Path, data: bytes, mode: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise OutputExistsError(f"{path} already exists; refusing to overwrite a key") from None
    try:
        os.fchmod(fd, mode)  # the umask must not widen or narrow what we promise
        os.write(fd, data)
    finally:
        os.close(fd)


def write_keypair(out_dir: Path) -> tuple[Path, Path]:
    """Create ``out_dir/signing.key`` (0600) and ``out_dir/verify.key``; never overwrite."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    signing_path = out_dir / SIGNING_KEY_NAME
    verify_path = out_dir / VERIFY_KEY_NAME
    for path in (signing_path, verify_path):
        if path.exists():
            raise OutputExistsError(f"{path} already exists; refusing to overwrite a key")
    key = generate_signing_key()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_new(signing_path, private_pem, 0o600)
    try:
        _write_new(verify_path, public_pem, 0o644)
    except BaseException:
        signing_path.unlink(missing_ok=True)
        raise
    return signing_path, verify_path


def _read_key_file(path: Path, what: str) -> bytes:
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise KeyFileError(f"{what} {path} is a directory, not a key file") from None
    except OSError as exc:
        raise KeyFileError(f"cannot read {what} {path}: {exc.strerror}") from None
    if len(data) > 64 * 1024:
        raise KeyFileError(f"{path} is not a PEM key file (too large)")
    return data


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """Load a provider's private signing key (unencrypted PKCS#8 PEM)."""
    data = _read_key_file(path, "signing key")
    if b"PUBLIC KEY" in data and b"PRIVATE KEY" not in data:
        raise KeyFileError(
            f"{path} is a public verify key; splitting needs the private signing key"
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise KeyFileError(f"{path} is password-protected; enclave signing keys are not") from None
    except (ValueError, UnsupportedAlgorithm):
        raise KeyFileError(f"{path} is not a PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} is not an Ed25519 signing key")
    return key


def load_verify_key(path: Path) -> Ed25519PublicKey:
    """Load a provider's public verify key (SubjectPublicKeyInfo PEM)."""
    data = _read_key_file(path, "verify key")
    if b"PRIVATE KEY" in data:
        raise KeyFileError(
            f"{path} is a private signing key; give the public verify key (verify.key) instead"
        )
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise KeyFileError(f"{path} is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path} is not an Ed25519 verify key")
    return key
