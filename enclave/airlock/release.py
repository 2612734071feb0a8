"""Releases: the approved files of a request, a signed manifest, and one zip to download.

A release lives in ``<state>/airlock/releases/<id>/``: ``release.zip`` holds ``files/...`` (the
approved files, as copied at submission), ``manifest.json`` and ``manifest.sig``. The manifest
(format ``enclave-release/1``) names the request, the requester, the reviewers' votes, and
every released file with its size, SHA-256 and lineage run; ``manifest.sig`` is the site's
Ed25519 signature over the manifest's exact bytes, so anyone holding the site's public key
(``enclave airlock key``) can show a file came out of the enclave's review unchanged:
``enclave airlock verify release.zip``.

Building a release is idempotent: an interrupted one is rebuilt from the staged copies.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from enclave.errors import EnclaveError

FORMAT = "enclave-release/1"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
ZIP_NAME = "release.zip"


class ReleaseError(EnclaveError):
    """A release cannot be built or does not verify (named in the message)."""


class Signer(Protocol):
    """The site's Ed25519 key (``catalog.audit``'s checkpoint key signs releases too)."""

    def sign(self, data: bytes) -> bytes: ...

    def public_key_bytes(self) -> bytes: ...


def key_id(public_key: bytes) -> str:
    return hashlib.sha256(public_key).hexdigest()[:16]


def build_manifest(
    request: Any, files: Iterable[Any], *, site: str, public_key: bytes
) -> dict[str, Any]:
    """The manifest of ``request`` (a ``catalog.airlock.RequestView``) releasing ``files``."""
    return {
        "format": FORMAT,
        "site": site,
        "request_id": request.id,
        "round": request.round,
        "requester": request.requester,
        "justification": request.justification,
        "submitted_at": request.submitted_at.isoformat() if request.submitted_at else None,
        "decided_at": request.decided_at.isoformat() if request.decided_at else None,
        "released_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "votes": [
            {
                "reviewer": v.reviewer,
                "decision": v.decision.value,
                "at": v.at.isoformat() if v.at else None,
            }
            for v in request.votes
        ],
        "files": [
            {
                "name": f.name,
                "size": f.size_bytes,
                "sha256": f.sha256,
                "kind": f.kind,
                "lineage_run": (f.lineage or {}).get("run_id"),
                "datasets": [
                    {k: d.get(k) for k in ("name", "version", "content_hash")}
                    for d in (f.lineage or {}).get("datasets", [])
                ],
            }
            for f in files
        ],
        "signer": {"algorithm": "Ed25519", "key_id": key_id(public_key)},
    }


@dataclass(frozen=True)
class Release:
    folder: Path
    zip_path: Path
    manifest_sha256: str


def build_release(
    folder: Path,
    staged: Path,
    request: Any,
    signer: Signer,
    *,
    site: str,
) -> Release:
    """Copy the released files of ``request`` from ``staged`` and zip them with the signed
    manifest; the hashes are checked against the request's records on the way."""
    files = [f for f in request.files if f.released]
    if not files:
        raise ReleaseError(f"export request {request.id} releases no file")
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    os.chmod(tmp, 0o700)
    manifest = build_manifest(request, files, site=site, public_key=signer.public_key_bytes())
    body = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    signature = base64.b64encode(signer.sign(body)) + b"\n"
    zip_tmp = tmp / ZIP_NAME
    with zipfile.ZipFile(zip_tmp, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
        zf.writestr(MANIFEST, body)
        zf.writestr(SIGNATURE, signature)
        for f in files:
            source = staged / f.name
            digest = hashlib.sha256()
            with (
                open(source, "rb") as src,
                zf.open(f"files/{f.name}", "w", force_zip64=True) as dst,
            ):
                while block := src.read(1024 * 1024):
                    digest.update(block)
                    dst.write(block)
            if digest.hexdigest() != f.sha256:
                raise ReleaseError(
                    f"export request {request.id}: the staged copy of {f.name} no longer "
                    "matches the hash it was reviewed with"
                )
    (tmp / MANIFEST).write_bytes(body)
    (tmp / SIGNATURE).write_bytes(signature)
    os.sync()
    shutil.rmtree(folder, ignore_errors=True)
    os.rename(tmp, folder)
    return Release(folder, folder / ZIP_NAME, hashlib.sha256(body).hexdigest())


def verify_release(zip_path: Path, public_key: bytes) -> dict[str, Any]:
    """Check a downloaded release: the manifest's signature and every file's hash.
    Returns the manifest; raises ``ReleaseError`` naming the first thing that is wrong."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        zf = zipfile.ZipFile(zip_path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise ReleaseError(f"{zip_path} is not a release zip: {exc}") from None
    with zf:
        names = set(zf.namelist())
        for needed in (MANIFEST, SIGNATURE):
            if needed not in names:
                raise ReleaseError(f"{zip_path} has no {needed}")
        body = zf.read(MANIFEST)
        try:
            signature = base64.b64decode(zf.read(SIGNATURE).strip(), validate=True)
            Ed25519PublicKey.from_public_bytes(public_key).verify(signature, body)
        except (InvalidSignature, ValueError):
            raise ReleaseError(
                f"{zip_path}: the manifest's signature does not verify with key "
                f"{key_id(public_key)}"
            ) from None
        manifest = json.loads(body)
        listed = set()
        for entry in manifest.get("files", []):
            member = f"files/{entry['name']}"
            listed.add(member)
            if member not in names:
                raise ReleaseError(f"{zip_path}: {entry['name']} is in the manifest, not the zip")
            digest = hashlib.sha256()
            with zf.open(member) as fh:
                while block := fh.read(1024 * 1024):
                    digest.update(block)
            if digest.hexdigest() != entry["sha256"]:
                raise ReleaseError(f"{zip_path}: {entry['name']} does not match its manifest hash")
        extra = sorted(n for n in names - listed - {MANIFEST, SIGNATURE} if not n.endswith("/"))
        if extra:
            raise ReleaseError(f"{zip_path}: {extra[0]} is not in the signed manifest")
    return dict(manifest)
