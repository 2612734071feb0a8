"""Where the ingestion service keeps things, and the limits it applies.

State directory layout (``--state-dir``; the catalog and custody files sit beside these)::

    STATE/
      receivers/<j>/<transfer id>/    receiver j's store: share-<j>.part while receiving,
                                      share-<j> once complete and verified, meta.json
                                      (in production each receiver runs on its own host with
                                      its own disk, so no single store ever holds k shares)
      staging/<transfer id>/          reconstruction scratch: the only place plaintext exists,
                                      from reconstruction until it is stored or quarantined;
                                      wiped when the worker starts and after every transfer.
                                      A transfer that fits comfortably in memory is staged
                                      in /dev/shm/enclave-staging-<state dir hash>/ instead
                                      (tmpfs: its plaintext never reaches a disk)
      store/<store id>/               encrypted dataset versions (see ingestion.store)
      quarantine/<transfer id>/       report.json and report.html of a refused submission
      ingest/worker-token             shared secret receivers expect from the worker (0600)
      ingest/service.json             URLs of the running service, for the CLI
"""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_PORT = 8470
DEFAULT_RECEIVERS = 5
DEFAULT_QUOTA_BYTES = 64 * 1024**3
# Largest upload prologue (header + block-hash index + manifest): 32 B per 4 MiB segment,
# so 8 MiB covers shares of about 1 TiB.
PROLOGUE_MAX_BYTES = 8 * 1024 * 1024
UPLOAD_CHUNK_BYTES = 64 * 1024 * 1024  # the upload client's default PUT body (ingestion.client)
WORKER_ACTOR = "ingest-worker"
MEMORY_STAGING_ROOT = Path("/dev/shm")


def default_state_dir() -> Path:
    return Path(os.environ.get("ENCLAVE_STATE_DIR", ".enclave"))


@dataclass(frozen=True)
class IngestPaths:
    """The ingestion service's folders inside one state directory."""

    state_dir: Path

    @property
    def receivers(self) -> Path:
        return self.state_dir / "receivers"

    def receiver_store(self, index: int) -> Path:
        return self.receivers / str(index)

    @property
    def staging(self) -> Path:
        return self.state_dir / "staging"

    @property
    def memory_staging(self) -> Path:
        """This state directory's staging folder on tmpfs (private to it, by path hash)."""
        digest = hashlib.sha256(str(Path(self.state_dir).resolve()).encode()).hexdigest()[:16]
        return MEMORY_STAGING_ROOT / f"enclave-staging-{digest}"

    def staging_roots(self) -> list[Path]:
        return [self.staging, self.memory_staging]

    @property
    def store(self) -> Path:
        return self.state_dir / "store"

    @property
    def quarantine(self) -> Path:
        return self.state_dir / "quarantine"

    @property
    def ingest(self) -> Path:
        return self.state_dir / "ingest"

    @property
    def worker_token_file(self) -> Path:
        return self.ingest / "worker-token"

    @property
    def service_file(self) -> Path:
        return self.ingest / "service.json"

    def worker_token(self) -> str:
        """The receivers' shared secret with the worker, created on first use."""
        path = self.worker_token_file
        if path.is_file():
            return path.read_text().strip()
        path.parent.mkdir(parents=True, exist_ok=True)
        token = secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(token + "\n")
        return token


@dataclass
class WorkerSettings:
    """How the reconstruction worker behaves."""

    poll_interval_s: float = 0.3
    # Pause between reconstruction and validation; only for fault-injection tests
    # (ENCLAVE_INGEST_STAGE_DELAY, seconds).
    stage_delay_s: float = field(
        default_factory=lambda: float(os.environ.get("ENCLAVE_INGEST_STAGE_DELAY", "0") or 0)
    )
    # Delete a transfer's shares from the receivers once it is cataloged, quarantined or failed.
    purge_shares: bool = True
    # Stage a transfer on tmpfs (IngestPaths.memory_staging) when its plaintext is at most this
    # fraction of the memory available and of the tmpfs's free space; 0 always stages on disk.
    # Creating thousands of files on the disk's filesystem cost more CPU than writing them,
    # and plaintext on tmpfs never reaches a disk. A dataset larger than memory goes to disk.
    memory_staging_fraction: float = 0.25
