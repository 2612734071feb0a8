"""Custody of the enclave master key with SLIP-39 mnemonic shares.

The master key wraps the per-dataset storage keys. It is split among human
custodians as SLIP-39 word lists (checksummed, so a typo or a share from another
key set is caught before any secret is combined), like the unseal keys of a
vault. The state directory keeps only a check value, never the key: a service
that needs the key is unsealed at start by K custodians and holds it in memory.
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import json
import os
import secrets
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from enclave.errors import EnclaveError

CUSTODY_FILE = "custody.json"
CUSTODY_VERSION = 1
MASTER_KEY_BYTES = 32
MAX_CUSTODIANS = 16  # SLIP-39 limit on shares in a group
_CHECK_LABEL = b"enclave master key check v1"
_WRAP_INFO = b"enclave key wrapping v1"
_WRAP_MAGIC = b"EKW1"


class CustodyError(EnclaveError):
    """Master key custody cannot proceed as asked."""


class SealedError(CustodyError):
    """A service needs the master key and was not unsealed."""


def custody_path(state_dir: Path) -> Path:
    return Path(state_dir) / CUSTODY_FILE


def custody_initialised(state_dir: Path) -> bool:
    return custody_path(state_dir).is_file()


def _check_value(master: bytes) -> str:
    return hmac.new(master, _CHECK_LABEL, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class CustodyRecord:
    """What the state directory knows about the master key: enough to check it, not to use it."""

    identifier: int
    threshold: int
    custodians: int
    check: str
    created_at: str

    @classmethod
    def load(cls, state_dir: Path) -> CustodyRecord:
        path = custody_path(state_dir)
        if not path.is_file():
            raise SealedError(
                f"no master key in {state_dir}: run `enclave keys init --state-dir {state_dir}` first"
            )
        try:
            data = json.loads(path.read_text())
            if data.get("version") != CUSTODY_VERSION:
                raise CustodyError(f"{path}: unsupported custody version {data.get('version')!r}")
            return cls(
                identifier=int(data["identifier"]),
                threshold=int(data["threshold"]),
                custodians=int(data["custodians"]),
                check=str(data["check"]),
                created_at=str(data.get("created_at", "")),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise CustodyError(f"{path} is damaged ({exc}); restore it from backup") from None

    def save(self, state_dir: Path) -> None:
        path = custody_path(state_dir)
        payload = {
            "version": CUSTODY_VERSION,
            "identifier": self.identifier,
            "threshold": self.threshold,
            "custodians": self.custodians,
            "check": self.check,
            "created_at": self.created_at,
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(payload, indent=2) + "\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)


class MasterKey:
    """The unsealed master key; it only ever lives in memory."""

    __slots__ = ("_wrap_key",)

    def __init__(self, secret: bytes) -> None:
        if len(secret) != MASTER_KEY_BYTES:
            raise CustodyError("master key must be 32 bytes")
        # Only a derived wrapping key is kept, so a leaked object dump is one step removed.
        self._wrap_key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=_WRAP_INFO
        ).derive(secret)

    def __repr__(self) -> str:
        return "MasterKey(<unsealed>)"

    def wrap(self, data_key: bytes, context: bytes) -> bytes:
        """Encrypt a storage key; ``context`` (e.g. a dataset version id) must match on unwrap."""
        nonce = secrets.token_bytes(12)
        return _WRAP_MAGIC + nonce + AESGCM(self._wrap_key).encrypt(nonce, data_key, context)

    def unwrap(self, blob: bytes, context: bytes) -> bytes:
        if len(blob) < len(_WRAP_MAGIC) + 12 + 16 or not blob.startswith(_WRAP_MAGIC):
            raise CustodyError("wrapped key is malformed")
        nonce = blob[4:16]
        try:
            return AESGCM(self._wrap_key).decrypt(nonce, blob[16:], context)
        except InvalidTag:
            raise CustodyError(
                "wrapped key does not open with this master key (wrong key set or tampered record)"
            ) from None


def init_custody(state_dir: Path, *, custodians: int, threshold: int) -> list[str]:
    """Create a master key, keep its check value in ``state_dir`` and return one mnemonic per custodian."""
    import shamir_mnemonic

    if not 1 <= custodians <= MAX_CUSTODIANS:
        raise CustodyError(f"--custodians must be between 1 and {MAX_CUSTODIANS}, got {custodians}")
    if not 1 <= threshold <= custodians:
        raise CustodyError(
            f"--threshold must be between 1 and --custodians ({custodians}), got {threshold}"
        )
    if threshold == 1 and custodians > 1:
        raise CustodyError(
            "a threshold of 1 with several custodians would hand each of them the whole key; "
            "use --threshold 2 or more (SLIP-39 forbids 1-of-N)"
        )
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    if custody_initialised(state_dir):
        raise CustodyError(
            f"{custody_path(state_dir)} already exists: this enclave has a master key "
            "(a second one would orphan every stored dataset)"
        )
    master = secrets.token_bytes(MASTER_KEY_BYTES)
    groups = shamir_mnemonic.generate_mnemonics(
        group_threshold=1, groups=[(threshold, custodians)], master_secret=master
    )
    mnemonics = groups[0]
    identifier = shamir_mnemonic.Share.from_mnemonic(mnemonics[0]).identifier
    CustodyRecord(
        identifier=identifier,
        threshold=threshold,
        custodians=custodians,
        check=_check_value(master),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    ).save(state_dir)
    return mnemonics


def _normalise(mnemonic: str) -> str:
    return " ".join(mnemonic.lower().split())


def unseal(state_dir: Path, mnemonics: list[str]) -> MasterKey:
    """Recombine K mnemonic shares and check them against the state directory's check value."""
    import shamir_mnemonic
    from shamir_mnemonic import MnemonicError

    record = CustodyRecord.load(state_dir)
    shares: dict[int, str] = {}
    for position, raw in enumerate(mnemonics, start=1):
        words = _normalise(raw)
        if not words:
            continue
        try:
            share = shamir_mnemonic.Share.from_mnemonic(words)
        except MnemonicError as exc:
            raise CustodyError(f"mnemonic {position} is not valid: {exc}") from None
        if share.identifier != record.identifier:
            raise CustodyError(
                f"mnemonic {position} belongs to another key set, not this enclave's"
            )
        shares.setdefault(share.index, words)
    if len(shares) < record.threshold:
        raise CustodyError(
            f"{len(shares)} distinct mnemonic share(s) given, {record.threshold} needed to unseal"
        )
    try:
        secret = shamir_mnemonic.combine_mnemonics(list(shares.values())[: record.threshold])
    except MnemonicError as exc:
        raise CustodyError(f"mnemonics do not combine: {exc}") from None
    if not hmac.compare_digest(_check_value(secret), record.check):
        raise CustodyError(
            "the mnemonics combine to a key that does not match this enclave's check value"
        )
    return MasterKey(secret)


def read_mnemonics(state_dir: Path, *, stdin: IO[str] | None = None) -> MasterKey:
    """Unseal from custodians at a prompt (terminal) or one mnemonic per line (pipe)."""
    stdin = stdin if stdin is not None else sys.stdin
    record = CustodyRecord.load(state_dir)
    how = (
        f"unseal with {record.threshold} of {record.custodians} custodian mnemonics, one per line on "
        "standard input or at the prompt (see `enclave keys unseal --help`)"
    )
    given: list[str] = []
    if stdin.isatty():
        for i in range(1, record.threshold + 1):
            given.append(getpass.getpass(f"mnemonic {i} of {record.threshold}: "))
    else:
        for line in stdin:
            if line.strip():
                given.append(line)
            if len({_normalise(m) for m in given}) >= record.threshold:
                break
    if not given:
        raise SealedError(f"the enclave is sealed: {how}")
    return unseal(state_dir, given)
